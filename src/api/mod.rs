//! The operator REST API (actix-web): thin handlers, all routes in
//! [`configure`], bearer API keys with scopes, JSON errors, OpenAPI.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod feeds;
pub mod health;
pub mod node;
pub mod openapi;
pub mod outputs;
pub mod pull_inputs;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use actix_web::web;
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::auth::publish::Admission;
use crate::config::Config;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::store::Db;
use error::ApiError;

pub use crate::readiness::{NodeState, Readiness};

/// What handlers share. Cheap to clone (everything behind `Arc`).
pub struct AppState {
    pub db: Db,
    pub admission: Arc<Admission>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub readiness: Arc<Readiness>,
    /// Open RTMP and SRT client connections (what a drain waits for).
    pub sessions: TaskTracker,
    /// This node's pull inputs and push outputs.
    pub relays: Arc<crate::relay::Relays>,
    pub started: Instant,
    /// This node's place in the cluster (set when it joins).
    pub membership: crate::cluster::MembershipSlot,
    /// Permits for `GET /tokens?stream=` regex matching
    /// (`api.stream_filter_concurrency`).
    pub stream_filter: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The running cluster shell, when `redis.url` is set.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.membership.get().and_then(|m| m.cluster.as_ref())
    }

    /// This node for the command service ([`crate::cluster::commands`]):
    /// what handlers hand their node commands to.
    pub fn node(&self) -> crate::cluster::commands::Node {
        let cluster = self.cluster().cloned();
        let readiness = self.readiness.clone();
        let lease = cluster.clone();
        crate::cluster::commands::Node::new(
            self.config.node_id.clone(),
            self.engine.clone(),
            self.admission.clone(),
            cluster,
            Arc::new(move || {
                readiness.begin_drain();
                if let Some(c) = &lease {
                    c.set_draining();
                }
            }),
        )
    }
}

/// One page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 1-based.
    pub page: u32,
    pub per_page: u32,
    /// Items matching the filter, over all pages.
    pub total: i64,
}

pub const DEFAULT_PER_PAGE: u32 = 50;

/// Validate paging parameters.
pub fn paging(
    page: Option<u32>,
    per_page: Option<u32>,
    state: &AppState,
) -> Result<(u32, u32), ApiError> {
    let page = page.unwrap_or(1);
    let max = state.config.api.max_per_page;
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE.min(max));
    if page == 0 || page > 1_000_000 {
        return Err(ApiError::unprocessable(
            "page: must be between 1 and 1000000",
        ));
    }
    if per_page == 0 || per_page > max {
        return Err(ApiError::unprocessable(format!(
            "per_page: must be between 1 and {max}"
        )));
    }
    Ok((page, per_page))
}

/// Every route of the API.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            .error_handler(error::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(web::PathConfig::default().error_handler(error::path_error))
    .route("/api/health", web::get().to(health::health))
    .route("/api/ready", web::get().to(health::ready))
    .route("/api/openapi.json", web::get().to(health::openapi))
    .route("/metrics", web::get().to(health::metrics))
    .service(
        web::scope("/api/v1")
            .route("/tokens", web::post().to(tokens::create))
            .route("/tokens", web::get().to(tokens::list))
            .route("/tokens/{id}", web::get().to(tokens::show))
            .route("/tokens/{id}", web::patch().to(tokens::update))
            .route("/tokens/{id}", web::delete().to(tokens::delete))
            .route("/tokens/{id}/refresh", web::post().to(tokens::refresh))
            .route(
                "/tokens/{id}/reprioritize",
                web::post().to(tokens::reprioritize),
            )
            .route("/streams", web::get().to(feeds::list_streams))
            .route("/streams/{name:.+}", web::get().to(feeds::show_stream))
            .route("/feeds/{id}", web::delete().to(feeds::kick))
            .route("/api-keys", web::post().to(api_keys::create))
            .route("/api-keys", web::get().to(api_keys::list))
            .route("/api-keys/{id}", web::delete().to(api_keys::revoke))
            .route("/audit", web::get().to(audit::list))
            .route("/node/drain", web::post().to(node::drain))
            .route("/pull-inputs", web::post().to(pull_inputs::create))
            .route("/pull-inputs", web::get().to(pull_inputs::list))
            .route("/pull-inputs/{id}", web::get().to(pull_inputs::show))
            .route("/pull-inputs/{id}", web::delete().to(pull_inputs::delete))
            .route("/outputs", web::post().to(outputs::create))
            .route("/outputs", web::get().to(outputs::list))
            .route("/outputs/{id}", web::get().to(outputs::show))
            .route("/outputs/{id}", web::patch().to(outputs::patch))
            .route("/outputs/{id}", web::delete().to(outputs::delete))
            .route("/cluster/nodes", web::get().to(cluster::nodes))
            .route(
                "/cluster/nodes/{node}/drain",
                web::post().to(cluster::drain_node),
            )
            .route("/director/publish", web::get().to(cluster::director)),
    )
    .default_service(web::to(not_found));
}

async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

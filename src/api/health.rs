//! Liveness, readiness and the OpenAPI document: no API key needed.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{AppState, NodeState};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the process and its database connection are fine.
    #[schema(example = "ok")]
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
    pub node_id: String,
    pub region: String,
    pub version: String,
    /// Whether `/api/ready` answers 200: started, not draining, every
    /// listener up.
    pub ready: bool,
    /// `starting`, `ready` or `draining`.
    pub state: NodeState,
    /// The RTMP, SRT and HTTP listeners. One that is not `up` makes the
    /// node not ready (liveness stays 200: it is being repaired).
    pub listeners: Vec<ListenerView>,
    /// RTMP and SRT client connections open (publishing, playing or
    /// between the two): what a drain waits for.
    pub sessions: u64,
    /// Publishing feeds on this node.
    pub publishers: i64,
    /// Players on this node.
    pub players: i64,
    /// Present while draining.
    pub drain: Option<DrainStatus>,
    pub uptime_seconds: u64,
    /// Cluster coordination (only with `redis.url`). Redis being down does
    /// not fail liveness: streams stay on air without it.
    pub redis: Option<crate::cluster::RedisState>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListenerView {
    /// `rtmp`, `srt` or `http`.
    #[schema(example = "rtmp")]
    pub name: String,
    /// The bound address.
    #[schema(example = "0.0.0.0:1935")]
    pub address: String,
    /// `up`; `failing` (it runs but cannot accept connections, e.g. out of
    /// file descriptors); or `down` (its task ended and it is being bound
    /// again with backoff).
    #[schema(example = "up")]
    pub status: String,
    /// Why it is not up.
    pub reason: Option<String>,
    /// How long it has not been up.
    pub since_ms: Option<u64>,
    /// Times its task ended and it was bound again.
    pub restarts: u64,
}

impl From<crate::supervise::ListenerStatus> for ListenerView {
    fn from(l: crate::supervise::ListenerStatus) -> Self {
        use crate::supervise::ListenerState;
        let (reason, since) = match &l.state {
            ListenerState::Up => (None, None),
            ListenerState::Failing { reason, since } | ListenerState::Down { reason, since } => (
                Some(reason.clone()),
                Some(since.elapsed().as_millis() as u64),
            ),
        };
        Self {
            name: l.name.into(),
            address: l.addr.to_string(),
            status: l.state.label().into(),
            reason,
            since_ms: since,
            restarts: l.restarts,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrainStatus {
    /// How long the drain has been going on.
    pub elapsed_ms: u64,
    /// Sessions still open at this point are closed (`shutdown.max_wait_ms`).
    pub max_wait_ms: u64,
}

/// Liveness: 200 while the process and its database connection are fine
/// (also while draining). `state` says whether the node is starting, ready
/// or draining, and `sessions` how many connections a drain still waits for.
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Database unreachable", body = Health),
    ))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let db_ok = tokio::time::timeout(Duration::from_secs(2), state.db.ping())
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let body = Health {
        status: if db_ok { "ok" } else { "unavailable" }.into(),
        database: if db_ok { "ok" } else { "unavailable" }.into(),
        node_id: state.config.node_id.clone(),
        region: state.config.region.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        ready: state.readiness.is_ready(),
        state: state.readiness.state(),
        listeners: state
            .readiness
            .listeners()
            .snapshot()
            .into_iter()
            .map(ListenerView::from)
            .collect(),
        sessions: state.sessions.len() as u64,
        publishers: state.metrics.feeds.get(),
        players: state.metrics.players.get(),
        drain: state.readiness.draining_for().map(|d| DrainStatus {
            elapsed_ms: d.as_millis() as u64,
            max_wait_ms: state.config.shutdown.max_wait_ms,
        }),
        uptime_seconds: state.started.elapsed().as_secs(),
        redis: state.cluster().map(|c| c.redis_state()),
    };
    if db_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// Readiness: 200 once start-up has finished and while every listener is
/// up; 503 before that, while draining, and while a listener cannot accept
/// or is being bound again (the message says which and why).
#[utoipa::path(get, path = "/api/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Ready),
        (status = 503, description = "Starting, draining, or a listener is not up", body = ErrorBody),
    ))]
pub async fn ready(state: web::Data<AppState>) -> Result<web::Json<Ready>, ApiError> {
    if state.readiness.is_ready() {
        Ok(web::Json(Ready { ready: true }))
    } else {
        Err(ApiError::unavailable("not_ready", state.readiness.reason()))
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi::document_json())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

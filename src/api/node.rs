//! `/api/v1/node/drain` (admin scope): drain this node as SIGTERM does.
//!
//! The call is audited before the drain begins, so a node never drains on
//! an unrecorded request; the lifecycle (`crate::lifecycle`) then runs the
//! drain and the process exits once it is done.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Admin, Auth};
use super::error::{ApiError, ErrorBody};
use super::{AppState, NodeState};
use crate::store::audit::{decision, Change};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrainStarted {
    /// Always `draining` after this call.
    pub state: NodeState,
    /// True when a drain (signal or earlier call) was already under way;
    /// the call then changes nothing.
    pub already_draining: bool,
    /// RTMP and SRT connections still open.
    pub sessions: u64,
    /// Existing sessions are closed when the drain has lasted this long.
    pub max_wait_ms: u64,
}

/// Drain this node: `/api/ready` answers 503 at once, new publishes and plays
/// are refused (RTMP `SHUTTING_DOWN`, SRT 1503), existing sessions go on
/// until they end or `shutdown.max_wait_ms` passes, then the process exits
/// with status 0. Calling it again while draining changes nothing.
#[utoipa::path(post, path = "/api/v1/node/drain", tag = "node",
    responses(
        (status = 202, description = "The drain began or was already under way", body = DrainStarted),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The API key lacks the admin scope", body = ErrorBody),
        (status = 503, description = "Database unavailable (the call could not be audited; nothing changed)", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn drain(
    state: web::Data<AppState>,
    auth: Auth<Admin>,
) -> Result<HttpResponse, ApiError> {
    let before = state.readiness.state();
    let already_draining = before == NodeState::Draining;
    if !already_draining {
        let actor = auth.actor();
        let target = format!("node:{}", state.config.node_id);
        let change = Change::new(
            "node.drain",
            Some(serde_json::json!({ "state": before })),
            Some(serde_json::json!({ "state": NodeState::Draining })),
        );
        state
            .db
            .run(move |c| decision(c, &actor, &target, change))
            .await?;
        if state.readiness.begin_drain() {
            tracing::info!(caller = %auth.actor(), "drain requested through the API");
        }
    }
    Ok(HttpResponse::Accepted().json(DrainStarted {
        state: state.readiness.state(),
        already_draining,
        sessions: state.sessions.len() as u64,
        max_wait_ms: state.config.shutdown.max_wait_ms,
    }))
}

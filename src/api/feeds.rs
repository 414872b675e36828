//! `/api/v1/streams` and `/api/v1/feeds`: what is live on this node, and
//! kicking a feed. Answers come from the engine (live state is not
//! persisted).

use actix_web::web;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Auth, Read, Write};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::cluster::commands::{self, KickError};
use crate::domain::{FeedId, StreamName};
use crate::engine::{FeedView, SourceView, StreamView};
use crate::relay::pull::PullStatus;
use crate::relay::push::OutputStatus;
use crate::store::audit::{decision, Change};

fn engine_gone(_: crate::engine::EngineGone) -> ApiError {
    ApiError::unavailable("engine_stopped", "the gateway is shutting down")
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamsQuery {
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Streams per page (default 50).
    pub per_page: Option<u32>,
}

/// Live streams on this node: sources, their primary, every feed.
#[utoipa::path(get, path = "/api/v1/streams", tag = "streams",
    params(StreamsQuery),
    responses(
        (status = 200, description = "One page of streams, by name", body = Page<StreamView>),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid page size", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list_streams(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<StreamsQuery>,
) -> Result<web::Json<Page<StreamView>>, ApiError> {
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    let all = state.engine.snapshot().await.map_err(engine_gone)?;
    let total = all.len() as i64;
    let items = all
        .into_iter()
        .skip(((page - 1) as usize).saturating_mul(per_page as usize))
        .take(per_page as usize)
        .collect();
    Ok(web::Json(Page {
        items,
        page,
        per_page,
        total,
    }))
}

/// One stream: its live sources, and its pull inputs and push outputs on
/// this node with their state.
#[utoipa::path(get, path = "/api/v1/streams/{name}", tag = "streams",
    params(("name" = String, Path, description = "Stream name (may contain /)")),
    responses(
        (status = 200, description = "The stream, with the pull inputs and push outputs of it on this node", body = StreamDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such live stream, pull input or output", body = ErrorBody),
        (status = 422, description = "Invalid stream name", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn show_stream(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    name: web::Path<String>,
) -> Result<web::Json<StreamDetail>, ApiError> {
    let name: StreamName = name
        .into_inner()
        .parse()
        .map_err(|e: crate::domain::NameError| ApiError::unprocessable(format!("name: {e}")))?;
    let all = state.engine.snapshot().await.map_err(engine_gone)?;
    let live = all.into_iter().find(|s| s.name == name.as_str());
    let mut pull_inputs: Vec<StreamPullInput> = state
        .relays
        .pulls
        .status(None)
        .await
        .into_iter()
        .filter(|(_, r)| r.key.stream == name)
        .map(|(id, r)| StreamPullInput {
            id,
            source_id: r.key.source.to_string(),
            status: r.view(),
        })
        .collect();
    pull_inputs.sort_by(|a, b| (&a.source_id, a.id).cmp(&(&b.source_id, b.id)));
    let mut outputs: Vec<StreamOutput> = state
        .relays
        .outputs
        .status(None)
        .await
        .into_iter()
        .filter(|(_, r)| r.key.stream == name)
        .map(|(id, r)| StreamOutput {
            id,
            source_id: r.key.source.to_string(),
            status: r.view(),
        })
        .collect();
    outputs.sort_by(|a, b| (&a.source_id, a.id).cmp(&(&b.source_id, b.id)));
    if live.is_none() && pull_inputs.is_empty() && outputs.is_empty() {
        return Err(ApiError::not_found("live stream"));
    }
    let sources = live.map(|s| s.sources).unwrap_or_default();
    Ok(web::Json(StreamDetail {
        name: name.to_string(),
        sources,
        pull_inputs,
        outputs,
    }))
}

/// One stream on this node: its live sources, and the pull inputs feeding
/// it and push outputs sending it that run here.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamDetail {
    pub name: String,
    pub sources: Vec<SourceView>,
    pub pull_inputs: Vec<StreamPullInput>,
    pub outputs: Vec<StreamOutput>,
}

/// A pull input of the stream and what it is doing (see `/pull-inputs`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamPullInput {
    pub id: Uuid,
    pub source_id: String,
    pub status: PullStatus,
}

/// A push output of the stream and what it is doing (see `/outputs`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamOutput {
    pub id: Uuid,
    pub source_id: String,
    pub status: OutputStatus,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KickQuery {
    /// Refuse the feed's token on this source for this many seconds (a kick
    /// that sticks). Default 0; at most 86400.
    pub ban_seconds: Option<u32>,
}

/// The feed with id `id` among the streams of this node's election (its
/// own feeds and the other nodes' it knows).
fn find_feed(streams: Vec<StreamView>, id: Uuid) -> Option<FeedView> {
    streams
        .into_iter()
        .flat_map(|s| s.sources)
        .flat_map(|s| s.feeds)
        .find(|f| f.feed_id == id)
}

/// Disconnect one feed now, optionally banning its token from the source.
///
/// The decision is audited before it is carried out: the audit record is
/// written (in its own transaction) first, and when it cannot be written
/// nothing is kicked and the answer is an error. A feed that leaves in
/// between is answered 404; its record stays, as the decision was taken.
#[utoipa::path(delete, path = "/api/v1/feeds/{id}", tag = "streams",
    params(("id" = Uuid, Path, description = "Feed id"), KickQuery),
    responses(
        (status = 200, description = "The feed as it was when kicked", body = FeedView),
        (status = 400, description = "Malformed id or query", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such live feed on any node", body = ErrorBody),
        (status = 422, description = "ban_seconds out of range", body = ErrorBody),
        (status = 500, description = "The audit record could not be written; nothing was kicked", body = ErrorBody),
        (status = 503, description = "Shutting down or database unavailable; nothing was kicked", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn kick(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
    query: web::Query<KickQuery>,
) -> Result<web::Json<FeedView>, ApiError> {
    let ban = query.ban_seconds.unwrap_or(0);
    if ban > 86_400 {
        return Err(ApiError::unprocessable(
            "ban_seconds: must be between 0 and 86400",
        ));
    }
    let id = id.into_inner();
    // What is to be kicked, as this node's election knows it.
    let streams = state.engine.snapshot().await.map_err(engine_gone)?;
    let Some(known) = find_feed(streams, id) else {
        return Err(ApiError::not_found("live feed"));
    };
    // The decision, on record before anything is done.
    let actor = auth.actor();
    let after = serde_json::json!({"ban_seconds": ban, "token_id": known.token_id,
        "stream": known.stream, "source_id": known.source_id, "node": known.node});
    let change = Change::new("feed.kick", serde_json::to_value(&known).ok(), Some(after));
    let audit_actor = actor.clone();
    state
        .db
        .run(move |c| decision(c, &audit_actor, &format!("feed:{id}"), change))
        .await?;
    // Carried out here, or by whichever node has it.
    let view = match commands::kick(&state.node(), &actor, FeedId(id), ban).await {
        Ok(v) => v,
        Err(KickError::Engine(e)) => return Err(engine_gone(e)),
        Err(KickError::NotFound { unanswered }) if !unanswered.is_empty() => {
            let names: Vec<String> = unanswered.iter().map(|n| n.node.clone()).collect();
            return Err(ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "live feed not found; nodes {} did not answer",
                    names.join(", ")
                ),
            ));
        }
        Err(KickError::NotFound { .. }) => return Err(ApiError::not_found("live feed")),
    };
    tracing::info!(feed = %id, node = %view.node, ban_seconds = ban, "feed kicked");
    Ok(web::Json(view))
}

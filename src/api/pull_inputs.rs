//! `/api/v1/pull-inputs`: persistent pull streams. Handlers validate with
//! the same function that checks rows at start-up
//! (`PullInputDef::from_row`), write the row and an audit record in one
//! transaction, then start or stop the worker.
//!
//! A stored row that cannot be used is shown with its `problem` and is
//! never overwritten or deleted through the API (409 naming the row): it
//! is left for an operator to fix or remove in the database.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Auth, Read, Write};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::relay::pull::{audit_value, redacted_urls, PullInputDef, PullStatus};
use crate::store::audit::{audited, Change};
use crate::store::pull_inputs::{self as q, PullInputRow};
use crate::store::StoreError;

/// How long a delete waits for the worker to leave the election.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// A pull input as operators see it. URLs have their secrets masked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PullInput {
    pub id: Uuid,
    /// The node that runs it (and restores it at start-up).
    pub node_id: String,
    #[schema(example = "match1")]
    pub stream: String,
    pub source_id: String,
    #[schema(example = json!(["rtmp://origin-a.example/live/***?token=***", "srt://origin-b.example:9000?streamid=#!::r=match1,m=request,s=***"]))]
    pub urls: Vec<String>,
    /// Election priority of its feed; `null` is the lowest.
    pub priority: Option<i32>,
    pub persistent: bool,
    /// Failed passes over every URL tolerated in a row before the input is
    /// deleted; `null` = retry forever.
    pub retry_count: Option<i32>,
    pub no_input_timeout_ms: i64,
    pub reconnect_delay_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the stored row cannot be used. Such a row is skipped at
    /// start-up, left untouched, and writes over it are refused.
    pub problem: Option<String>,
    /// Live state, on the node that runs it.
    pub status: Option<PullStatus>,
}

impl PullInput {
    pub fn from_row(row: &PullInputRow, status: Option<PullStatus>) -> Self {
        Self {
            id: row.id,
            node_id: row.node_id.clone(),
            stream: row.stream.clone(),
            source_id: row.source_id.clone(),
            urls: redacted_urls(&row.urls),
            priority: row.priority,
            persistent: row.persistent,
            retry_count: row.retry_count,
            no_input_timeout_ms: row.no_input_timeout_ms,
            reconnect_delay_ms: row.reconnect_delay_ms,
            created_at: row.created_at,
            updated_at: row.updated_at,
            problem: PullInputDef::from_row(row).err().map(|e| e.to_string()),
            status,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_no_input() -> i64 {
    5_000
}
fn default_reconnect() -> i64 {
    2_000
}

/// Create a pull input, or replace one (same `id`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullInputRequest {
    /// Replace the pull input with this id (created if absent); a new id
    /// is generated when omitted.
    pub id: Option<Uuid>,
    #[schema(example = "match1")]
    pub stream: String,
    /// Empty = the default source.
    #[serde(default)]
    pub source_id: String,
    /// 1–16 `rtmp://HOST[:PORT]/APP/KEY[?QUERY]` or
    /// `srt://HOST:PORT[?streamid=…&latency=MS&passphrase=…]` URLs, tried in
    /// order.
    #[schema(example = json!(["rtmp://origin-a.example/live/match1", "srt://origin-b.example:9000?streamid=match1"]))]
    pub urls: Vec<String>,
    /// Election priority of its feed (default `null`, the lowest).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Restored at start-up (default true). A pull input that is not
    /// persistent is removed when its node restarts.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// Failed passes over every URL tolerated in a row before the input
    /// and its row are deleted (0–1000000); `null` (default) = forever.
    #[serde(default)]
    pub retry_count: Option<i32>,
    /// A connection without media for this long is dropped (100–3600000,
    /// default 5000).
    #[serde(default = "default_no_input")]
    pub no_input_timeout_ms: i64,
    /// Wait between passes (100–3600000, default 2000).
    #[serde(default = "default_reconnect")]
    pub reconnect_delay_ms: i64,
}

/// Refuse a write over `row` when it is unusable or owned by another node.
pub(super) fn check_writable(
    what: &str,
    id: Uuid,
    problem: Option<String>,
    owner: &str,
    node: &str,
) -> Result<(), StoreError> {
    if let Some(p) = problem {
        return Err(StoreError::Conflict(format!(
            "{what} {id} is stored but cannot be used ({p}); it is left untouched and \
             cannot be overwritten or deleted through the API: fix or delete the row in the database"
        )));
    }
    if owner != node {
        return Err(StoreError::Conflict(format!(
            "{what} {id} belongs to node {owner}; change it through that node's API"
        )));
    }
    Ok(())
}

/// Create a pull input, or replace the one with the given `id`.
#[utoipa::path(post, path = "/api/v1/pull-inputs", tag = "pull-inputs",
    request_body = PullInputRequest,
    responses(
        (status = 201, description = "Created and started", body = PullInput),
        (status = 200, description = "Replaced and restarted", body = PullInput),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 409, description = "The stored row with this id cannot be used, or belongs to another node", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    body: web::Json<PullInputRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let now = Utc::now();
    let node = state.config.node_id.clone();
    let row = PullInputRow {
        id: body.id.unwrap_or_else(Uuid::new_v4),
        node_id: node.clone(),
        stream: body.stream,
        source_id: body.source_id,
        urls: body.urls.into_iter().map(Some).collect(),
        priority: body.priority,
        persistent: body.persistent,
        retry_count: body.retry_count,
        no_input_timeout_ms: body.no_input_timeout_ms,
        reconnect_delay_ms: body.reconnect_delay_ms,
        created_at: now,
        updated_at: now,
    };
    PullInputDef::from_row(&row).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let actor = auth.actor();
    let (row, created) = state
        .db
        .run(move |c| {
            let target = format!("pull_input:{}", row.id);
            audited(c, &actor, &target, |c| {
                match q::find_for_update(c, row.id)? {
                    Some(old) => {
                        let problem = PullInputDef::from_row(&old).err().map(|e| e.to_string());
                        check_writable("pull input", old.id, problem, &old.node_id, &node)?;
                        let new = q::save(c, &row)?;
                        let change = Change::new(
                            "pull_input.replace",
                            Some(audit_value(&old)),
                            Some(audit_value(&new)),
                        );
                        Ok::<_, StoreError>(((new, false), change))
                    }
                    None => {
                        let new = q::insert(c, &row)?;
                        let change =
                            Change::new("pull_input.create", None, Some(audit_value(&new)));
                        Ok(((new, true), change))
                    }
                }
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "pull input"))?;
    let def = PullInputDef::from_row(&row).map_err(|_| ApiError::internal())?;
    state.relays.start_pull(def).await;
    tracing::info!(pull_input = %row.id, stream = %row.stream, created, "pull input saved and started");
    let view = show_one(&state, &row).await;
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

async fn show_one(state: &AppState, row: &PullInputRow) -> PullInput {
    let status = state
        .relays
        .pulls
        .status(Some(vec![row.id]))
        .await
        .remove(&row.id)
        .map(|r| r.view());
    PullInput::from_row(row, status)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PullInputsQuery {
    /// Only the pull inputs of this stream.
    pub stream: Option<String>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page (default 50).
    pub per_page: Option<u32>,
}

/// Pull inputs of every node, oldest first, with their live state on this
/// node; unusable rows are listed with their `problem`.
#[utoipa::path(get, path = "/api/v1/pull-inputs", tag = "pull-inputs",
    params(PullInputsQuery),
    responses(
        (status = 200, description = "One page of pull inputs", body = Page<PullInput>),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid page size", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<PullInputsQuery>,
) -> Result<web::Json<Page<PullInput>>, ApiError> {
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    let stream = query.stream.clone();
    let offset = i64::from(page - 1) * i64::from(per_page);
    let (rows, total) = state
        .db
        .run(move |c| q::list(c, stream.as_deref(), offset, i64::from(per_page)))
        .await?;
    let mut statuses = state
        .relays
        .pulls
        .status(Some(rows.iter().map(|r| r.id).collect()))
        .await;
    let items = rows
        .iter()
        .map(|r| PullInput::from_row(r, statuses.remove(&r.id).map(|s| s.view())))
        .collect();
    Ok(web::Json(Page {
        items,
        page,
        per_page,
        total,
    }))
}

/// One pull input.
#[utoipa::path(get, path = "/api/v1/pull-inputs/{id}", tag = "pull-inputs",
    params(("id" = Uuid, Path, description = "Pull input id")),
    responses(
        (status = 200, description = "The pull input", body = PullInput),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such pull input", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn show(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    id: web::Path<Uuid>,
) -> Result<web::Json<PullInput>, ApiError> {
    let id = id.into_inner();
    let row = state
        .db
        .run(move |c| q::find(c, id))
        .await
        .map_err(|e| ApiError::from_store(e, "pull input"))?;
    Ok(web::Json(show_one(&state, &row).await))
}

/// Delete a pull input: its feed leaves the election and its row is removed.
#[utoipa::path(delete, path = "/api/v1/pull-inputs/{id}", tag = "pull-inputs",
    params(("id" = Uuid, Path, description = "Pull input id")),
    responses(
        (status = 204, description = "Stopped and deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such pull input", body = ErrorBody),
        (status = 409, description = "The stored row cannot be used (left untouched), or belongs to another node", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn delete(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let actor = auth.actor();
    let node = state.config.node_id.clone();
    state
        .db
        .run(move |c| {
            audited(c, &actor, &format!("pull_input:{id}"), |c| {
                let row = q::find_for_update(c, id)?.ok_or(StoreError::NotFound)?;
                let problem = PullInputDef::from_row(&row).err().map(|e| e.to_string());
                check_writable("pull input", id, problem, &row.node_id, &node)?;
                q::delete(c, id)?;
                let change = Change::new("pull_input.delete", Some(audit_value(&row)), None);
                Ok::<_, StoreError>(((), change))
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "pull input"))?;
    state.relays.pulls.stop(id, STOP_WAIT).await;
    state.metrics.forget_pull(&id.to_string());
    tracing::info!(pull_input = %id, "pull input deleted");
    Ok(HttpResponse::NoContent().finish())
}

//! `/api/v1/outputs`: push outputs (restream) with failover targets.
//! Handlers validate with the function that checks rows at start-up
//! (`OutputDef::from_row`), write the row and an audit record in one
//! transaction, then (re)start or stop the worker. Unusable stored rows
//! are shown with their `problem` and never overwritten through the API.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Auth, Read, Write};
use super::error::{ApiError, ErrorBody, WriteError};
use super::pull_inputs::check_writable;
use super::{AppState, Page};
use crate::relay::push::{audit_value, redacted_targets, OutputDef, OutputStatus};
use crate::store::audit::{audited, Change};
use crate::store::push_outputs::{self as q, PushOutputRow};
use crate::store::StoreError;

const STOP_WAIT: Duration = Duration::from_secs(3);

/// A push output as operators see it. Target URLs have their secrets masked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Output {
    pub id: Uuid,
    /// The node that runs it (and restores it at start-up).
    pub node_id: String,
    #[schema(example = "match1")]
    pub stream: String,
    pub source_id: String,
    /// A balance group of ordered groups: `[[url, ...], ...]`.
    #[schema(value_type = Vec<Vec<String>>, example = json!([["rtmp://a.example/live/***", "rtmp://b.example/live/***?key=***"], ["srt://c.example:9000?streamid=***"]]))]
    pub targets: serde_json::Value,
    pub enabled: bool,
    pub reconnect_delay_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the stored row cannot be used. Such a row is skipped at
    /// start-up, left untouched, and writes over it are refused.
    pub problem: Option<String>,
    /// Live state, on the node that runs it.
    pub status: Option<OutputStatus>,
}

impl Output {
    pub fn from_row(row: &PushOutputRow, status: Option<OutputStatus>) -> Self {
        Self {
            id: row.id,
            node_id: row.node_id.clone(),
            stream: row.stream.clone(),
            source_id: row.source_id.clone(),
            targets: redacted_targets(&row.targets),
            enabled: row.enabled,
            reconnect_delay_ms: row.reconnect_delay_ms,
            created_at: row.created_at,
            updated_at: row.updated_at,
            problem: OutputDef::from_row(row).err().map(|e| e.to_string()),
            status,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_reconnect() -> i64 {
    2_000
}

/// Create a push output, or replace one (same `id`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    /// Replace the output with this id (created if absent); a new id is
    /// generated when omitted.
    pub id: Option<Uuid>,
    #[schema(example = "match1")]
    pub stream: String,
    /// Empty = the default source.
    #[serde(default)]
    pub source_id: String,
    /// A balance group of ordered groups of `rtmp://` / `srt://` URLs: a
    /// random group first, its targets in order, then the other groups,
    /// then `reconnect_delay_ms` and again; a dropped connection retries
    /// the same target once first. 1–16 groups, at most 64 targets.
    #[schema(example = json!([["rtmp://a.example/live/x?key=K", "rtmp://b.example/live/x?key=K"], ["srt://c.example:9000?streamid=x"]]))]
    pub targets: Vec<Vec<String>>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Wait after every target failed (100–3600000, default 2000).
    #[serde(default = "default_reconnect")]
    pub reconnect_delay_ms: i64,
}

/// Change some fields of a push output; the others stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputPatch {
    pub stream: Option<String>,
    pub source_id: Option<String>,
    pub targets: Option<Vec<Vec<String>>>,
    pub enabled: Option<bool>,
    pub reconnect_delay_ms: Option<i64>,
}

fn targets_json(t: Vec<Vec<String>>) -> serde_json::Value {
    serde_json::json!(t)
}

async fn show_one(state: &AppState, row: &PushOutputRow) -> Output {
    let status = state
        .relays
        .outputs
        .status(Some(vec![row.id]))
        .await
        .remove(&row.id)
        .map(|r| r.view());
    Output::from_row(row, status)
}

/// Lock `id`, refuse if unusable or foreign, let `change` build the new
/// row, validate it, save it with an audit record; returns the saved row.
async fn update(
    state: &AppState,
    actor: String,
    id: Uuid,
    change: impl FnOnce(&mut PushOutputRow) + Send + 'static,
) -> Result<PushOutputRow, ApiError> {
    let node = state.config.node_id.clone();
    let row = state
        .db
        .run(move |c| {
            Ok(audited(c, &actor, &format!("output:{id}"), |c| {
                let old = q::find_for_update(c, id)?.ok_or(StoreError::NotFound)?;
                let problem = OutputDef::from_row(&old).err().map(|e| e.to_string());
                check_writable("push output", id, problem, &old.node_id, &node)?;
                let mut new = old.clone();
                change(&mut new);
                if let Err(e) = OutputDef::from_row(&new) {
                    return Err(WriteError::Refused(ApiError::unprocessable(e.to_string())));
                }
                let new = q::save(c, &new)?;
                let change = Change::new(
                    "output.update",
                    Some(audit_value(&old)),
                    Some(audit_value(&new)),
                );
                Ok((new, change))
            }))
        })
        .await
        .map_err(|e| ApiError::from_store(e, "push output"))?
        .map_err(|e| e.into_api("push output"))?;
    Ok(row)
}

async fn restart(state: &AppState, row: &PushOutputRow) -> Result<(), ApiError> {
    let def = OutputDef::from_row(row).map_err(|_| ApiError::internal())?;
    state.relays.start_output(def).await;
    Ok(())
}

/// Create a push output, or replace the one with the given `id`.
#[utoipa::path(post, path = "/api/v1/outputs", tag = "outputs",
    request_body = OutputRequest,
    responses(
        (status = 201, description = "Created and started", body = Output),
        (status = 200, description = "Replaced and restarted", body = Output),
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
    body: web::Json<OutputRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let now = Utc::now();
    let node = state.config.node_id.clone();
    let row = PushOutputRow {
        id: body.id.unwrap_or_else(Uuid::new_v4),
        node_id: node.clone(),
        stream: body.stream,
        source_id: body.source_id,
        targets: targets_json(body.targets),
        enabled: body.enabled,
        reconnect_delay_ms: body.reconnect_delay_ms,
        created_at: now,
        updated_at: now,
    };
    OutputDef::from_row(&row).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let actor = auth.actor();
    let (row, created) = state
        .db
        .run(move |c| {
            let target = format!("output:{}", row.id);
            audited(c, &actor, &target, |c| {
                match q::find_for_update(c, row.id)? {
                    Some(old) => {
                        let problem = OutputDef::from_row(&old).err().map(|e| e.to_string());
                        check_writable("push output", old.id, problem, &old.node_id, &node)?;
                        let new = q::save(c, &row)?;
                        let change = Change::new(
                            "output.replace",
                            Some(audit_value(&old)),
                            Some(audit_value(&new)),
                        );
                        Ok::<_, StoreError>(((new, false), change))
                    }
                    None => {
                        let new = q::insert(c, &row)?;
                        let change = Change::new("output.create", None, Some(audit_value(&new)));
                        Ok(((new, true), change))
                    }
                }
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "push output"))?;
    restart(&state, &row).await?;
    tracing::info!(output = %row.id, stream = %row.stream, created, "push output saved and started");
    let view = show_one(&state, &row).await;
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutputsQuery {
    /// Only the outputs of this stream.
    pub stream: Option<String>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page (default 50).
    pub per_page: Option<u32>,
}

/// Push outputs of every node, oldest first, with their live state on this
/// node; unusable rows are listed with their `problem`.
#[utoipa::path(get, path = "/api/v1/outputs", tag = "outputs",
    params(OutputsQuery),
    responses(
        (status = 200, description = "One page of push outputs", body = Page<Output>),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid page size", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<OutputsQuery>,
) -> Result<web::Json<Page<Output>>, ApiError> {
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    let stream = query.stream.clone();
    let offset = i64::from(page - 1) * i64::from(per_page);
    let (rows, total) = state
        .db
        .run(move |c| q::list(c, stream.as_deref(), offset, i64::from(per_page)))
        .await?;
    let mut statuses = state
        .relays
        .outputs
        .status(Some(rows.iter().map(|r| r.id).collect()))
        .await;
    let items = rows
        .iter()
        .map(|r| Output::from_row(r, statuses.remove(&r.id).map(|s| s.view())))
        .collect();
    Ok(web::Json(Page {
        items,
        page,
        per_page,
        total,
    }))
}

/// One push output.
#[utoipa::path(get, path = "/api/v1/outputs/{id}", tag = "outputs",
    params(("id" = Uuid, Path, description = "Output id")),
    responses(
        (status = 200, description = "The push output", body = Output),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such push output", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn show(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    id: web::Path<Uuid>,
) -> Result<web::Json<Output>, ApiError> {
    let id = id.into_inner();
    let row = state
        .db
        .run(move |c| q::find(c, id))
        .await
        .map_err(|e| ApiError::from_store(e, "push output"))?;
    Ok(web::Json(show_one(&state, &row).await))
}

/// Change a push output (targets, enabled, delay, source); it restarts
/// with the new definition.
#[utoipa::path(patch, path = "/api/v1/outputs/{id}", tag = "outputs",
    params(("id" = Uuid, Path, description = "Output id")),
    request_body = OutputPatch,
    responses(
        (status = 200, description = "Updated and restarted", body = Output),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such push output", body = ErrorBody),
        (status = 409, description = "The stored row cannot be used (left untouched), or belongs to another node", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn patch(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
    body: web::Json<OutputPatch>,
) -> Result<web::Json<Output>, ApiError> {
    let p = body.into_inner();
    let row = update(&state, auth.actor(), id.into_inner(), move |r| {
        if let Some(s) = p.stream {
            r.stream = s;
        }
        if let Some(s) = p.source_id {
            r.source_id = s;
        }
        if let Some(t) = p.targets {
            r.targets = targets_json(t);
        }
        if let Some(e) = p.enabled {
            r.enabled = e;
        }
        if let Some(d) = p.reconnect_delay_ms {
            r.reconnect_delay_ms = d;
        }
    })
    .await?;
    restart(&state, &row).await?;
    tracing::info!(output = %row.id, enabled = row.enabled, "push output updated");
    Ok(web::Json(show_one(&state, &row).await))
}

/// Delete a push output: it disconnects from its target and its row is
/// removed.
#[utoipa::path(delete, path = "/api/v1/outputs/{id}", tag = "outputs",
    params(("id" = Uuid, Path, description = "Output id")),
    responses(
        (status = 204, description = "Stopped and deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such push output", body = ErrorBody),
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
            audited(c, &actor, &format!("output:{id}"), |c| {
                let row = q::find_for_update(c, id)?.ok_or(StoreError::NotFound)?;
                let problem = OutputDef::from_row(&row).err().map(|e| e.to_string());
                check_writable("push output", id, problem, &row.node_id, &node)?;
                q::delete(c, id)?;
                let change = Change::new("output.delete", Some(audit_value(&row)), None);
                Ok::<_, StoreError>(((), change))
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "push output"))?;
    state.relays.outputs.stop(id, STOP_WAIT).await;
    state.metrics.forget_output(&id.to_string());
    tracing::info!(output = %id, "push output deleted");
    Ok(HttpResponse::NoContent().finish())
}

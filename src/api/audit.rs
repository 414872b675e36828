//! `/api/v1/audit`: the record of every write, newest first.

use actix_web::web;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Auth, Read};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::store::audit::{self as q, AuditFilter};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `api-key:<id>` or `cli`.
    pub actor: String,
    #[schema(example = "token.reprioritize")]
    pub action: String,
    #[schema(example = "token:5f0c8a7e-3a57-4c61-9a55-0d6f0b1f7a10")]
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact target, e.g. `token:<id>`.
    pub target: Option<String>,
    /// Exact action, e.g. `token.update`.
    pub action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Entries per page (default 50).
    pub limit: Option<u32>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
}

/// List audit records, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of audit records", body = Page<AuditEntry>),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid page size", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<AuditQuery>,
) -> Result<web::Json<Page<AuditEntry>>, ApiError> {
    let query = query.into_inner();
    let (page, per_page) = super::paging(query.page, query.limit, &state)?;
    let filter = AuditFilter {
        target: query.target,
        action: query.action,
        since: query.since,
        offset: i64::from(page - 1) * i64::from(per_page),
        limit: i64::from(per_page),
    };
    let (rows, total) = state.db.run(move |c| q::list(c, &filter)).await?;
    Ok(web::Json(Page {
        items: rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                before: r.before,
                after: r.after,
            })
            .collect(),
        page,
        per_page,
        total,
    }))
}

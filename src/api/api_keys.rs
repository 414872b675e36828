//! `/api/v1/api-keys` (admin scope): create, list and revoke operator keys.
//! The secret is returned once, by create; only its hash is stored.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Admin, Auth};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::auth::api_keys::{self, Scope};
use crate::store::api_keys::{self as q, ApiKeyRow};
use crate::store::audit::NewAudit;
use crate::store::{self, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    #[schema(example = "ops laptop")]
    pub name: String,
    /// The visible start of the secret, to tell keys apart.
    #[schema(example = "pmy_1a2b3c4d")]
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn from_row(row: &ApiKeyRow) -> Self {
        Self {
            id: row.id,
            name: row.name.clone(),
            prefix: row.prefix.clone(),
            scopes: row
                .scopes
                .iter()
                .flatten()
                .filter_map(|s| s.parse().ok())
                .collect(),
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyWithSecret {
    pub key: ApiKey,
    /// Send as `Authorization: Bearer <secret>`. Shown only now.
    #[schema(example = "pmy_1a2b3c4d_Xk3...")]
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// 1–128 characters.
    pub name: String,
    /// At least one of `read`, `write`, `admin` (each includes the ones before it).
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page (default 50).
    pub per_page: Option<u32>,
}

/// Validate, insert and audit a new key; returns the row and its secret.
/// Shared by the API and the CLI's bootstrap command.
pub fn create_key(
    conn: &mut diesel::PgConnection,
    name: &str,
    scopes: &[Scope],
    actor: &str,
) -> Result<(ApiKeyRow, api_keys::ApiSecret), CreateKeyError> {
    let n = name.chars().count();
    if n == 0 || n > 128 || name.chars().any(char::is_control) {
        return Err(CreateKeyError::Invalid(
            "name: must be 1–128 characters without control characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(CreateKeyError::Invalid(
            "scopes: at least one of read, write, admin".into(),
        ));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let generated = api_keys::generate();
    let row = ApiKeyRow {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        prefix: generated.prefix.clone(),
        secret_hash: generated.hash.to_vec(),
        scopes: scopes.iter().map(|s| Some(s.as_str().to_owned())).collect(),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
    };
    use diesel::Connection;
    let row = conn.transaction(|c| {
        let row = q::insert(c, &row)?;
        store::audit::record(
            c,
            NewAudit {
                actor,
                action: "api_key.create",
                target: &format!("api_key:{}", row.id),
                before: None,
                after: serde_json::to_value(ApiKey::from_row(&row)).ok(),
            },
        )?;
        Ok::<_, StoreError>(row)
    })?;
    Ok((row, generated.secret))
}

/// Revoke a key and audit it. Shared by the API and the CLI.
pub fn revoke_key(
    conn: &mut diesel::PgConnection,
    id: Uuid,
    actor: &str,
) -> Result<ApiKeyRow, StoreError> {
    use diesel::Connection;
    conn.transaction(|c| {
        let before = q::find(c, id)?;
        let row = q::revoke(c, id)?;
        store::audit::record(
            c,
            NewAudit {
                actor,
                action: "api_key.revoke",
                target: &format!("api_key:{id}"),
                before: serde_json::to_value(ApiKey::from_row(&before)).ok(),
                after: serde_json::to_value(ApiKey::from_row(&row)).ok(),
            },
        )?;
        Ok(row)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create an API key.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = ApiKeyWithSecret),
        (status = 400, description = "Malformed JSON, unknown field or unknown scope", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    state: web::Data<AppState>,
    auth: Auth<Admin>,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let actor = auth.actor();
    let result = state
        .db
        .run(move |c| Ok(create_key(c, &body.name, &body.scopes, &actor)))
        .await?;
    let (row, secret) = match result {
        Ok(v) => v,
        Err(CreateKeyError::Invalid(m)) => return Err(ApiError::unprocessable(m)),
        Err(CreateKeyError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(api_key_id = %row.id, prefix = %row.prefix, "API key created");
    Ok(HttpResponse::Created().json(ApiKeyWithSecret {
        key: ApiKey::from_row(&row),
        secret: secret.expose().to_owned(),
    }))
}

/// List API keys, newest first (secrets are never shown).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of keys", body = Page<ApiKey>),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Admin>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<Page<ApiKey>>, ApiError> {
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    let (rows, total) = state
        .db
        .run(move |c| {
            q::list(
                c,
                i64::from(page - 1) * i64::from(per_page),
                i64::from(per_page),
            )
        })
        .await?;
    Ok(web::Json(Page {
        items: rows.iter().map(ApiKey::from_row).collect(),
        page,
        per_page,
        total,
    }))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = Uuid, Path, description = "API key id")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "Already revoked", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn revoke(
    state: web::Data<AppState>,
    auth: Auth<Admin>,
    id: web::Path<Uuid>,
) -> Result<web::Json<ApiKey>, ApiError> {
    let id = id.into_inner();
    let actor = auth.actor();
    let row = state
        .db
        .run(move |c| revoke_key(c, id, &actor))
        .await
        .map_err(|e| ApiError::from_store(e, "API key"))?;
    tracing::info!(api_key_id = %id, "API key revoked");
    Ok(web::Json(ApiKey::from_row(&row)))
}

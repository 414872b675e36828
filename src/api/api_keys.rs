//! `/api/v1/api-keys` (admin scope): create, list and revoke operator keys.
//! The secret is returned once, by create; only its hash is stored. Keys
//! are created and revoked by [`crate::auth::api_keys`] (the CLI uses the
//! same functions).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Admin, Auth};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::auth::api_keys::Scope;
pub use crate::auth::api_keys::{create_key, revoke_key, ApiKey, CreateKeyError};
use crate::store::api_keys as q;

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

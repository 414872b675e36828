//! Bearer API-key extractors. A handler states the scope it needs in its
//! signature (`Auth<Write>`); the extractor answers 401 for a missing or
//! bad key, 403 for a key without the scope, 503 when the database is down.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::api_keys::{self, Scope};
use crate::store::{self, StoreError};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// How the caller is named in the audit log.
    pub fn actor(&self) -> String {
        format!("api-key:{}", self.key_id)
    }
}

pub trait NeededScope {
    const SCOPE: Scope;
}

pub struct Read;
pub struct Write;
pub struct Admin;

impl NeededScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl NeededScope for Write {
    const SCOPE: Scope = Scope::Write;
}
impl NeededScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// A caller holding scope `S` (or a higher one).
pub struct Auth<S: NeededScope> {
    pub caller: Caller,
    _scope: PhantomData<S>,
}

impl<S: NeededScope> std::ops::Deref for Auth<S> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<S: NeededScope + 'static> FromRequest for Auth<S> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|h| h.to_str().map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(ApiError::internal)?;
            let header = match header {
                None => {
                    return Err(ApiError::unauthorized(
                        "missing API key: send Authorization: Bearer <key>",
                    ))
                }
                Some(Err(_)) => {
                    return Err(ApiError::unauthorized("malformed Authorization header"))
                }
                Some(Ok(h)) => h,
            };
            let secret = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| ApiError::unauthorized("Authorization must use the Bearer scheme"))?
                .to_owned();
            let caller = authenticate(&state, secret).await?;
            if !api_keys::allows(&caller.scopes, S::SCOPE) {
                return Err(ApiError::forbidden(format!(
                    "this API key lacks the {} scope",
                    S::SCOPE
                )));
            }
            Ok(Auth {
                caller,
                _scope: PhantomData,
            })
        })
    }
}

async fn authenticate(state: &AppState, secret: String) -> Result<Caller, ApiError> {
    let bad = || ApiError::unauthorized("invalid API key");
    let prefix = api_keys::prefix_of(&secret).ok_or_else(bad)?.to_owned();
    let row = state
        .db
        .run(move |c| match store::api_keys::find_by_prefix(c, &prefix) {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
        .await?;
    let row = row.ok_or_else(bad)?;
    if row.revoked_at.is_some() || !api_keys::matches(&secret, &row.secret_hash) {
        return Err(bad());
    }
    let id = row.id;
    // Best effort: a failure to record use must not refuse the request.
    if let Err(e) = state
        .db
        .run(move |c| store::api_keys::touch_last_used(c, id))
        .await
    {
        tracing::warn!(error = %e, "could not record API key use");
    }
    Ok(Caller {
        key_id: row.id,
        name: row.name,
        scopes: row
            .scopes
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect(),
    })
}

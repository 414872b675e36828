//! `/api/v1/tokens`: publish tokens. Handlers validate, run one store
//! transaction (row + audit record), invalidate the admission cache and map
//! the result. A secret is returned only by create and refresh.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Auth, Read, Write};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Page};
use crate::auth::tokens::{check_label, invalid, normalize_ips, StreamRule, TokenRules};
use crate::cluster::Command;
use crate::domain::{StreamName, TokenId};
use crate::store::audit::NewAudit;
use crate::store::tokens::{self as q, TokenRow};
use crate::store::{self, StoreError};

/// A publish token as operators see it (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    #[schema(example = "venue-a primary")]
    pub label: String,
    /// Higher wins; `null` is the lowest priority.
    #[schema(example = 100)]
    pub priority: Option<i32>,
    pub streams: Vec<StreamRule>,
    /// CIDRs the encoder may publish from; empty means any address.
    #[schema(example = json!(["203.0.113.0/24"]))]
    pub allowed_ips: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Token {
    pub fn from_row(row: &TokenRow) -> Self {
        Self {
            id: row.id,
            label: row.label.clone(),
            priority: row.priority,
            streams: serde_json::from_value(row.streams.clone()).unwrap_or_default(),
            allowed_ips: row.allowed_ips.iter().flatten().cloned().collect(),
            expires_at: row.expires_at,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn audit_value(row: &TokenRow) -> serde_json::Value {
        serde_json::to_value(Self::from_row(row)).unwrap_or(serde_json::Value::Null)
    }
}

/// A token with its publish secret: returned once, by create and refresh.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenWithSecret {
    pub token: Token,
    /// The secret encoders put in `?token=` (RTMP) or `s=` (SRT). Shown only
    /// now; refresh issues a new one and invalidates this one.
    #[schema(
        example = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiIuLi4ifQ.c2ln"
    )]
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1–128 characters.
    #[schema(example = "venue-a primary")]
    pub label: String,
    #[serde(default)]
    #[schema(example = 100)]
    pub priority: Option<i32>,
    /// 1–64 entries.
    pub streams: Vec<StreamRule>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Absolute expiry. Exclusive with `expires_in_seconds`.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Expiry relative to now. Exclusive with `expires_at`.
    #[serde(default)]
    #[schema(example = 86400)]
    pub expires_in_seconds: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Distinguish an absent field (`None`) from an explicit `null`
/// (`Some(None)`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Every field is optional; absent fields are left as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    pub label: Option<String>,
    /// A new priority, or `null` for the lowest. Applies at each feed's next
    /// connection; use reprioritize to apply it now.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub priority: Option<Option<i32>>,
    pub add_streams: Option<Vec<StreamRule>>,
    pub remove_streams: Option<Vec<StreamRule>>,
    /// Replaces the allow-list; `[]` allows any address.
    pub allowed_ips: Option<Vec<String>>,
    /// A new expiry, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub enabled: Option<bool>,
}

impl UpdateToken {
    fn is_empty(&self) -> bool {
        self.label.is_none()
            && self.priority.is_none()
            && self.add_streams.is_none()
            && self.remove_streams.is_none()
            && self.allowed_ips.is_none()
            && self.expires_at.is_none()
            && self.enabled.is_none()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reprioritize {
    /// The new priority (`null` for the lowest). Required.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 50)]
    pub priority: Option<Option<i32>>,
    /// `true` (default): disconnect the token's non-pinned feeds so they
    /// reconnect with the new priority (planned switch first when on air).
    /// `false`: re-elect in place without reconnecting.
    #[serde(default = "yes")]
    pub disconnect: bool,
}

/// A live feed touched by a reprioritize.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AffectedFeed {
    pub feed_id: Uuid,
    pub stream: String,
    pub source_id: String,
    pub node: String,
    pub region: String,
    /// `rtmp`, `srt` or `pull`.
    pub protocol: String,
    /// Whether the feed was on air when the call arrived.
    pub was_primary: bool,
}

impl AffectedFeed {
    pub fn from_view(v: &crate::engine::FeedView) -> Self {
        Self {
            feed_id: v.feed_id,
            stream: v.stream.clone(),
            source_id: v.source_id.clone(),
            node: v.node.clone(),
            region: v.region.clone(),
            protocol: v.protocol.clone(),
            was_primary: v.primary,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReprioritizeResult {
    pub token: Token,
    pub previous_priority: Option<i32>,
    pub disconnect: bool,
    /// Feeds switched and disconnected (or re-elected in place).
    pub affected: Vec<AffectedFeed>,
    /// Feeds of this token with a `priority=` publish parameter: untouched.
    pub pinned: Vec<AffectedFeed>,
    /// Live nodes of the cluster that did not answer within
    /// `cluster.ack_timeout_ms` (their feeds are not in the lists).
    pub unanswered: Vec<crate::cluster::NodeRef>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenListQuery {
    /// Case-insensitive substring of the label.
    pub label: Option<String>,
    /// Only tokens allowed to publish this stream name (exact or regex entry).
    pub stream: Option<String>,
    pub enabled: Option<bool>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page (default 50, at most the server's `api.max_per_page`).
    pub per_page: Option<u32>,
}

/// Drop the cached row here and on every other node.
fn invalidate(state: &AppState, id: Uuid) {
    state.admission.invalidate(TokenId(id));
    if let Some(c) = state.cluster() {
        c.send(Command::TokenChanged { token: TokenId(id) });
    }
}

/// Disconnect a token's live feeds at once (disabled or deleted). The row
/// is already changed, so their reconnects are refused.
async fn disconnect_feeds(state: &AppState, actor: &str, id: Uuid, reason: &str) {
    match state.engine.token_revoked(TokenId(id), reason).await {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(token_id = %id, feeds = gone.len(), reason, "disconnected the token's feeds")
        }
        Ok(_) => {}
        Err(_) => tracing::warn!(token_id = %id, "engine stopped; feeds not disconnected"),
    }
    if let Some(c) = state.cluster() {
        let g = c
            .broadcast_as(
                Some(actor.to_owned()),
                Command::DisconnectToken {
                    token: TokenId(id),
                    reason: reason.to_owned(),
                },
            )
            .await;
        let remote: usize = g.acks.iter().map(|a| a.outcome.affected.len()).sum();
        if remote > 0 {
            tracing::info!(token_id = %id, feeds = remote, reason, "other nodes disconnected the token's feeds");
        }
    }
}

/// Validate a stream list and IP list together, as admission will compile them.
fn check_rules(streams: &[StreamRule], ips: &[String]) -> Result<(), ApiError> {
    TokenRules::compile(streams, ips)
        .map(|_| ())
        .map_err(ApiError::from)
}

/// Create a publish token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = TokenWithSecret),
        (status = 400, description = "Malformed JSON or unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    body: web::Json<CreateToken>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    check_label(&body.label)?;
    let ips = normalize_ips(&body.allowed_ips)?;
    check_rules(&body.streams, &ips)?;
    let now = Utc::now();
    let expires_at = match (body.expires_at, body.expires_in_seconds) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "expires_at",
                "give expires_at or expires_in_seconds, not both",
            )
            .into())
        }
        (Some(at), None) => Some(at),
        (None, Some(0)) => return Err(invalid("expires_in_seconds", "must be at least 1").into()),
        (None, Some(s)) => Some(now + chrono::Duration::seconds(i64::from(s))),
        (None, None) => None,
    };
    if expires_at.is_some_and(|e| e <= now) {
        return Err(invalid("expires_at", "is in the past").into());
    }
    if !state.admission.keys().can_sign() {
        return Err(ApiError::unavailable(
            "no_signing_key",
            "this node has no signing key to issue secrets",
        ));
    }
    let row = TokenRow {
        id: Uuid::new_v4(),
        label: body.label,
        priority: body.priority,
        streams: serde_json::to_value(&body.streams).map_err(|_| ApiError::internal())?,
        allowed_ips: ips.into_iter().map(Some).collect(),
        expires_at,
        enabled: body.enabled,
        secret_id: Uuid::new_v4(),
        created_at: now,
        updated_at: now,
    };
    let actor = auth.actor();
    let row = state
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                let row = q::insert(c, &row)?;
                store::audit::record(
                    c,
                    NewAudit {
                        actor: &actor,
                        action: "token.create",
                        target: &format!("token:{}", row.id),
                        before: None,
                        after: Some(Token::audit_value(&row)),
                    },
                )?;
                Ok::<_, StoreError>(row)
            })
        })
        .await?;
    let secret = sign(&state, &row)?;
    tracing::info!(token_id = %row.id, label = %row.label, "publish token created");
    Ok(HttpResponse::Created().json(TokenWithSecret {
        token: Token::from_row(&row),
        secret,
    }))
}

fn sign(state: &AppState, row: &TokenRow) -> Result<String, ApiError> {
    state
        .admission
        .keys()
        .sign(row.id, row.secret_id, Utc::now().timestamp())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a publish token");
            ApiError::internal()
        })
}

/// List publish tokens, filtered and paginated.
///
/// `stream=X` lists the tokens allowed to publish stream `X` through an
/// exact or a regex entry: the way a runbook finds the token to reprioritize.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    params(TokenListQuery),
    responses(
        (status = 200, description = "One page of tokens", body = Page<Token>),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid stream name or page size", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<TokenListQuery>,
) -> Result<web::Json<Page<Token>>, ApiError> {
    let query = query.into_inner();
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    let stream = match &query.stream {
        Some(s) => Some(
            s.parse::<StreamName>()
                .map_err(|e| ApiError::unprocessable(format!("stream: {e}")))?,
        ),
        None => None,
    };
    let filter_label = query.label.clone();
    let enabled = query.enabled;
    let (rows, total) = state
        .db
        .run(move |c| {
            let ids = match &stream {
                Some(s) => Some(token_ids_for_stream(c, s)?),
                None => None,
            };
            q::list(
                c,
                &q::ListFilter {
                    label: filter_label,
                    enabled,
                    ids,
                    offset: i64::from(page - 1) * i64::from(per_page),
                    limit: i64::from(per_page),
                },
            )
        })
        .await?;
    Ok(web::Json(Page {
        items: rows.iter().map(Token::from_row).collect(),
        page,
        per_page,
        total,
    }))
}

/// Exact entries are found by the database; regex entries are matched here
/// with the same engine admission uses, so the listing never disagrees with
/// who may actually publish.
fn token_ids_for_stream(
    c: &mut diesel::PgConnection,
    stream: &StreamName,
) -> Result<Vec<Uuid>, StoreError> {
    let mut ids = q::ids_with_exact_stream(c, stream.as_str())?;
    for (id, streams) in q::with_regex_streams(c)? {
        let Ok(rules) = serde_json::from_value::<Vec<StreamRule>>(streams) else {
            continue;
        };
        let regexes: Vec<StreamRule> = rules.into_iter().filter(|r| r.is_regex).collect();
        if let Ok(compiled) = TokenRules::compile(&regexes, &[]) {
            if compiled.allows_stream(stream) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Show one publish token.
#[utoipa::path(get, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 200, description = "The token", body = Token),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn show(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    id: web::Path<Uuid>,
) -> Result<web::Json<Token>, ApiError> {
    let id = id.into_inner();
    let row = state
        .db
        .run(move |c| q::find(c, id))
        .await
        .map_err(|e| ApiError::from_store(e, "token"))?;
    Ok(web::Json(Token::from_row(&row)))
}

/// Apply a patch to a row in memory, validating the result.
fn apply_patch(
    row: &mut TokenRow,
    patch: &UpdateToken,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if let Some(label) = &patch.label {
        check_label(label)?;
        row.label = label.clone();
    }
    if let Some(p) = patch.priority {
        row.priority = p;
    }
    if patch.add_streams.is_some() || patch.remove_streams.is_some() {
        let mut streams: Vec<StreamRule> =
            serde_json::from_value(row.streams.clone()).map_err(|_| {
                ApiError::conflict("the stored stream list is malformed; replace the token")
            })?;
        for (i, r) in patch.remove_streams.iter().flatten().enumerate() {
            let before = streams.len();
            streams.retain(|s| s != r);
            if streams.len() == before {
                return Err(invalid(
                    format!("remove_streams[{i}]"),
                    format!("{:?} is not on this token", r.name),
                )
                .into());
            }
        }
        for r in patch.add_streams.iter().flatten() {
            if !streams.contains(r) {
                streams.push(r.clone());
            }
        }
        check_rules(&streams, &[])?;
        row.streams = serde_json::to_value(&streams).map_err(|_| ApiError::internal())?;
    }
    if let Some(ips) = &patch.allowed_ips {
        row.allowed_ips = normalize_ips(ips)?.into_iter().map(Some).collect();
    }
    if let Some(e) = patch.expires_at {
        if e.is_some_and(|e| e <= now) {
            return Err(invalid("expires_at", "is in the past").into());
        }
        row.expires_at = e;
    }
    if let Some(en) = patch.enabled {
        row.enabled = en;
    }
    Ok(())
}

/// Change a publish token.
///
/// A priority changed here applies at each feed's next connection (no
/// disconnect); reprioritize applies it now.
#[utoipa::path(patch, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    request_body = UpdateToken,
    responses(
        (status = 200, description = "The updated token", body = Token),
        (status = 400, description = "Malformed JSON or unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn update(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
    body: web::Json<UpdateToken>,
) -> Result<web::Json<Token>, ApiError> {
    let id = id.into_inner();
    let patch = body.into_inner();
    if patch.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing to change: give at least one of label, priority, add_streams, remove_streams, allowed_ips, expires_at, enabled",
        ));
    }
    let actor = auth.actor();
    let (before, row) = write_token(&state, id, actor, "token.update", move |row| {
        apply_patch(row, &patch, Utc::now())
    })
    .await?;
    if before.enabled && !row.enabled {
        disconnect_feeds(&state, &auth.actor(), id, "token disabled").await;
    }
    Ok(web::Json(Token::from_row(&row)))
}

/// Lock the row, let `change` edit it, save it and audit before/after, in
/// one transaction; then drop the cached row.
async fn write_token<F>(
    state: &AppState,
    id: Uuid,
    actor: String,
    action: &'static str,
    change: F,
) -> Result<(TokenRow, TokenRow), ApiError>
where
    F: FnOnce(&mut TokenRow) -> Result<(), ApiError> + Send + 'static,
{
    enum Failure {
        Api(ApiError),
        Store(StoreError),
    }
    impl From<StoreError> for Failure {
        fn from(e: StoreError) -> Self {
            Failure::Store(e)
        }
    }
    impl From<diesel::result::Error> for Failure {
        fn from(e: diesel::result::Error) -> Self {
            Failure::Store(e.into())
        }
    }
    let result = state
        .db
        .run(move |c| {
            use diesel::Connection;
            Ok(c.transaction::<_, Failure, _>(|c| {
                let before = q::find_for_update(c, id)?;
                let mut row = before.clone();
                change(&mut row).map_err(Failure::Api)?;
                let after = q::save(c, &row)?;
                store::audit::record(
                    c,
                    NewAudit {
                        actor: &actor,
                        action,
                        target: &format!("token:{id}"),
                        before: Some(Token::audit_value(&before)),
                        after: Some(Token::audit_value(&after)),
                    },
                )?;
                Ok((before, after))
            }))
        })
        .await
        .map_err(|e| ApiError::from_store(e, "token"))?;
    match result {
        Ok((before, after)) => {
            invalidate(state, id);
            tracing::info!(token_id = %id, action, "publish token changed");
            Ok((before, after))
        }
        Err(Failure::Api(e)) => Err(e),
        Err(Failure::Store(e)) => Err(ApiError::from_store(e, "token")),
    }
}

/// Issue a new secret; the old one stops verifying at once.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/refresh", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 200, description = "The token and its new secret", body = TokenWithSecret),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn refresh(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
) -> Result<web::Json<TokenWithSecret>, ApiError> {
    if !state.admission.keys().can_sign() {
        return Err(ApiError::unavailable(
            "no_signing_key",
            "this node has no signing key to issue secrets",
        ));
    }
    let (_, row) = write_token(
        &state,
        id.into_inner(),
        auth.actor(),
        "token.refresh",
        |row| {
            row.secret_id = Uuid::new_v4();
            Ok(())
        },
    )
    .await?;
    let secret = sign(&state, &row)?;
    Ok(web::Json(TokenWithSecret {
        token: Token::from_row(&row),
        secret,
    }))
}

/// Change the priority now.
///
/// Updates the row and the audit log in one transaction. With
/// `disconnect: true` the token's non-pinned live feeds are switched away
/// (planned) and disconnected so they reconnect with the new priority; with
/// `false` they are re-elected in place. Feeds with a `priority=` publish
/// parameter are pinned: untouched and listed under `pinned`.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/reprioritize", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    request_body = Reprioritize,
    responses(
        (status = 200, description = "New token state and the feeds affected", body = ReprioritizeResult),
        (status = 400, description = "Malformed JSON or unknown field", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 422, description = "priority missing", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn reprioritize(
    state: web::Data<AppState>,
    auth: Auth<Write>,
    id: web::Path<Uuid>,
    body: web::Json<Reprioritize>,
) -> Result<web::Json<ReprioritizeResult>, ApiError> {
    let body = body.into_inner();
    let priority = body.priority.ok_or_else(|| {
        ApiError::from(invalid("priority", "is required (null means the lowest)"))
    })?;
    let id = id.into_inner();
    let (before, row) = write_token(&state, id, auth.actor(), "token.reprioritize", move |row| {
        row.priority = priority;
        Ok(())
    })
    .await?;
    let previous_priority = before.priority;
    let mut report = state
        .engine
        .reprioritize(TokenId(id), row.priority, body.disconnect)
        .await
        .map_err(|_| ApiError::unavailable("engine_stopped", "the gateway is shutting down"))?;
    // Applied here first; then every other node, answering within a bound.
    let mut unanswered = Vec::new();
    if let Some(c) = state.cluster() {
        let g = c
            .broadcast_as(
                Some(auth.actor()),
                Command::Reprioritize {
                    token: TokenId(id),
                    priority: row.priority,
                    disconnect: body.disconnect,
                },
            )
            .await;
        for ack in g.acks {
            report.affected.extend(ack.outcome.affected);
            report.pinned.extend(ack.outcome.pinned);
        }
        unanswered = g.missing;
    }
    tracing::info!(token_id = %id, ?previous_priority, priority = ?row.priority, disconnect = body.disconnect,
        affected = report.affected.len(), pinned = report.pinned.len(), "token reprioritized");
    Ok(web::Json(ReprioritizeResult {
        token: Token::from_row(&row),
        previous_priority,
        disconnect: body.disconnect,
        affected: report
            .affected
            .iter()
            .map(AffectedFeed::from_view)
            .collect(),
        pinned: report.pinned.iter().map(AffectedFeed::from_view).collect(),
        unanswered,
    }))
}

/// Delete a publish token; its secret stops verifying at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key lacks the write scope", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
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
    state
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                let row = q::delete(c, id)?;
                store::audit::record(
                    c,
                    NewAudit {
                        actor: &actor,
                        action: "token.delete",
                        target: &format!("token:{id}"),
                        before: Some(Token::audit_value(&row)),
                        after: None,
                    },
                )?;
                Ok::<_, StoreError>(())
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "token"))?;
    invalidate(&state, id);
    disconnect_feeds(&state, &auth.actor(), id, "token deleted").await;
    tracing::info!(token_id = %id, "publish token deleted");
    Ok(HttpResponse::NoContent().finish())
}

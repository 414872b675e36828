//! `/api/v1/tokens`: publish tokens. Handlers validate, run one audited
//! store write (row + audit record in one transaction,
//! [`crate::store::audit::audited`]), then hand the change of the token's
//! live feeds, here and on every other node, to the command service
//! ([`crate::cluster::commands`]), and map the result. A secret is returned only by create and refresh. No
//! handler holds a database connection while matching regex rules.

mod model;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use model::{
    AffectedFeed, CreateToken, Reprioritize, ReprioritizeResult, Token, TokenListQuery,
    TokenWithSecret, UpdateToken,
};

use super::auth::{Auth, Read, Write};
use super::error::{ApiError, ErrorBody, WriteError};
use super::{AppState, Page};
use crate::auth::tokens::{
    check_label, check_no_control, check_rule, invalid, normalize_ips, StreamRule, TokenRules,
    LABEL_MAX,
};
use crate::cluster::commands;
use crate::domain::{StreamName, TokenId};
use crate::store::audit::{audited, Change};
use crate::store::tokens::{self as q, TokenRow};
use crate::store::StoreError;

/// Apply a change of the token's row to its live feeds, here and on every
/// other node ([`commands::token_changed`]).
async fn apply_change(state: &AppState, actor: &str, id: Uuid) {
    // A stopped engine has no live feeds left to judge.
    let _ = commands::token_changed(&state.node(), actor, TokenId(id)).await;
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
        allow_priority_override: body.allow_priority_override,
        revision: 1,
        streams: serde_json::to_value(&body.streams).map_err(|_| ApiError::internal())?,
        allowed_ips: ips.into_iter().map(Some).collect(),
        expires_at,
        enabled: body.enabled,
        secret_id: Uuid::new_v4(),
        created_at: now,
        updated_at: now,
    };
    let actor = auth.actor();
    let target = format!("token:{}", row.id);
    let row = state
        .db
        .run(move |c| {
            audited(c, &actor, &target, |c| {
                let row = q::insert(c, &row)?;
                let after = Some(Token::audit_value(&row));
                Ok::<_, StoreError>((row, Change::new("token.create", None, after)))
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
        (status = 400, description = "Malformed query (a bool or number that does not parse)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 422, description = "Invalid stream name, label filter (control characters, over 128 characters) or page size", body = ErrorBody),
        (status = 503, description = "Database unavailable, or (`busy`, with `Retry-After`) more stream-filtered listings at once than `api.stream_filter_concurrency`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait (`busy` only)"))),
    ),
    security(("api_key" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
    query: web::Query<TokenListQuery>,
) -> Result<web::Json<Page<Token>>, ApiError> {
    let query = query.into_inner();
    let (page, per_page) = super::paging(query.page, query.per_page, &state)?;
    if let Some(label) = &query.label {
        check_no_control("label", label)?;
        if label.chars().count() > LABEL_MAX {
            return Err(invalid("label", format!("at most {LABEL_MAX} characters")).into());
        }
    }
    let ids = match &query.stream {
        Some(s) => {
            check_no_control("stream", s)?;
            let stream = s
                .parse::<StreamName>()
                .map_err(|e| ApiError::unprocessable(format!("stream: {e}")))?;
            Some(token_ids_for_stream(&state, stream).await?)
        }
        None => None,
    };
    let filter_label = query.label.clone();
    let enabled = query.enabled;
    let (rows, total) = state
        .db
        .run(move |c| {
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
/// with the same engine (and the same compiled-rule cache) admission uses,
/// so the listing never disagrees with who may actually publish. The rows
/// are read first and the connection returned before any regex work, which
/// runs on the blocking pool under one of `api.stream_filter_concurrency`
/// permits; without a free permit the answer is 503 `busy`.
async fn token_ids_for_stream(state: &AppState, stream: StreamName) -> Result<Vec<Uuid>, ApiError> {
    let _permit = state
        .stream_filter
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::busy(
                "too many stream-filtered token listings at once; retry shortly",
                1,
            )
        })?;
    let name = stream.as_str().to_owned();
    let (mut ids, regex_rows) = state
        .db
        .run(move |c| {
            Ok((
                q::ids_with_exact_stream(c, &name)?,
                q::with_regex_streams(c)?,
            ))
        })
        .await?;
    let rules = state.admission.rules().clone();
    let matched = tokio::task::spawn_blocking(move || {
        regex_rows
            .into_iter()
            .filter_map(|(id, streams)| {
                let entries: Vec<StreamRule> = serde_json::from_value(streams).ok()?;
                rules.regex_rules_allow(&entries, &stream).then_some(id)
            })
            .collect::<Vec<Uuid>>()
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "stream filter task failed");
        ApiError::internal()
    })?;
    ids.extend(matched);
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
    if let Some(o) = patch.allow_priority_override {
        row.allow_priority_override = o;
    }
    for (i, r) in patch.remove_streams.iter().flatten().enumerate() {
        check_no_control(format!("remove_streams[{i}].name"), &r.name)?;
    }
    for (i, r) in patch.add_streams.iter().flatten().enumerate() {
        check_rule(format!("add_streams[{i}].name"), r)?;
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
            "nothing to change: give at least one of label, priority, allow_priority_override, add_streams, remove_streams, allowed_ips, expires_at, enabled",
        ));
    }
    let actor = auth.actor();
    let (_, row) = write_token(&state, id, actor, "token.update", move |row| {
        apply_patch(row, &patch, Utc::now())
    })
    .await?;
    apply_change(&state, &auth.actor(), id).await;
    Ok(web::Json(Token::from_row(&row)))
}

/// Lock the row, let `change` edit it, save it and audit before/after, in
/// one transaction; then drop this node's cached row (the caller applies
/// the change to live feeds and other nodes).
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
    let result = state
        .db
        .run(move |c| {
            Ok(audited::<_, WriteError>(
                c,
                &actor,
                &format!("token:{id}"),
                |c| {
                    let before = q::find_for_update(c, id)?;
                    let mut row = before.clone();
                    change(&mut row).map_err(WriteError::Refused)?;
                    let after = q::save(c, &row)?;
                    let change = Change::new(
                        action,
                        Some(Token::audit_value(&before)),
                        Some(Token::audit_value(&after)),
                    );
                    Ok(((before, after), change))
                },
            ))
        })
        .await
        .map_err(|e| ApiError::from_store(e, "token"))?;
    match result {
        Ok((before, after)) => {
            state.admission.invalidate(TokenId(id));
            tracing::info!(token_id = %id, action, "publish token changed");
            Ok((before, after))
        }
        Err(e) => Err(e.into_api("token")),
    }
}

/// Issue a new secret; the old one stops verifying at once, and the live
/// feeds publishing with it are disconnected on every node.
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
    // The old secret's live feeds go now, here and on every node.
    apply_change(&state, &auth.actor(), row.id).await;
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
/// parameter are pinned: never disconnected, listed under `pinned`, and
/// re-elected in place at min(their `priority=`, the new priority) unless
/// the token allows raising, so lowering a token takes the air from all of
/// its feeds.
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
    let report = commands::reprioritize(
        &state.node(),
        &auth.actor(),
        TokenId(id),
        row.priority,
        body.disconnect,
    )
    .await
    .map_err(|_| ApiError::unavailable("engine_stopped", "the gateway is shutting down"))?;
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
        unanswered: report.unanswered,
    }))
}

/// Delete a publish token; its secret stops verifying at once and its live
/// feeds are disconnected on every node.
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
            audited(c, &actor, &format!("token:{id}"), |c| {
                let row = q::delete(c, id)?;
                let before = Some(Token::audit_value(&row));
                Ok::<_, StoreError>(((), Change::new("token.delete", before, None)))
            })
        })
        .await
        .map_err(|e| ApiError::from_store(e, "token"))?;
    state.admission.invalidate(TokenId(id));
    apply_change(&state, &auth.actor(), id).await;
    tracing::info!(token_id = %id, "publish token deleted");
    Ok(HttpResponse::NoContent().finish())
}

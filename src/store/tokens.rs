//! Queries on `publish_tokens`. Rows are validated before they get here
//! (see `auth::tokens`); this module only reads and writes them.
//!
//! Every update bumps the row's `revision` (a trigger, so changes made
//! outside the gateway count too); nodes compare revisions to find the
//! tokens whose live feeds must be judged again.

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::publish_tokens::{self, dsl};
use super::StoreError;

/// One publish-token row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = publish_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TokenRow {
    pub id: Uuid,
    pub label: String,
    pub priority: Option<i32>,
    /// `[{"name": .., "is_regex": ..}]`
    pub streams: serde_json::Value,
    pub allowed_ips: Vec<Option<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub secret_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `priority=` may raise a feed above `priority` (default: only lower).
    pub allow_priority_override: bool,
    /// Bumped by every update (a trigger); new rows start at 1.
    pub revision: i64,
}

pub fn insert(conn: &mut PgConnection, row: &TokenRow) -> Result<TokenRow, StoreError> {
    Ok(diesel::insert_into(publish_tokens::table)
        .values(row)
        .returning(TokenRow::as_returning())
        .get_result(conn)?)
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> Result<TokenRow, StoreError> {
    Ok(dsl::publish_tokens
        .find(id)
        .select(TokenRow::as_select())
        .first(conn)?)
}

/// Lock the row for the rest of the transaction.
pub fn find_for_update(conn: &mut PgConnection, id: Uuid) -> Result<TokenRow, StoreError> {
    Ok(dsl::publish_tokens
        .find(id)
        .select(TokenRow::as_select())
        .for_update()
        .first(conn)?)
}

/// Write every mutable field of `row`; `updated_at` becomes now.
pub fn save(conn: &mut PgConnection, row: &TokenRow) -> Result<TokenRow, StoreError> {
    Ok(diesel::update(dsl::publish_tokens.find(row.id))
        .set((
            dsl::label.eq(&row.label),
            dsl::priority.eq(row.priority),
            dsl::streams.eq(&row.streams),
            dsl::allowed_ips.eq(&row.allowed_ips),
            dsl::expires_at.eq(row.expires_at),
            dsl::enabled.eq(row.enabled),
            dsl::secret_id.eq(row.secret_id),
            dsl::allow_priority_override.eq(row.allow_priority_override),
            dsl::updated_at.eq(diesel::dsl::now),
        ))
        .returning(TokenRow::as_returning())
        .get_result(conn)?)
}

pub fn delete(conn: &mut PgConnection, id: Uuid) -> Result<TokenRow, StoreError> {
    Ok(diesel::delete(dsl::publish_tokens.find(id))
        .returning(TokenRow::as_returning())
        .get_result(conn)?)
}

/// Filters of the token listing. `ids`, when set, restricts to those rows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub label: Option<String>,
    pub enabled: Option<bool>,
    pub ids: Option<Vec<Uuid>>,
    pub offset: i64,
    pub limit: i64,
}

/// One page of tokens, oldest first, and the total matching the filter.
pub fn list(conn: &mut PgConnection, f: &ListFilter) -> Result<(Vec<TokenRow>, i64), StoreError> {
    let build = || {
        let mut q = dsl::publish_tokens.into_boxed();
        if let Some(label) = &f.label {
            q = q.filter(dsl::label.ilike(format!("%{}%", escape_like(label))));
        }
        if let Some(enabled) = f.enabled {
            q = q.filter(dsl::enabled.eq(enabled));
        }
        if let Some(ids) = &f.ids {
            q = q.filter(dsl::id.eq_any(ids.clone()));
        }
        q
    };
    let total: i64 = build().select(count_star()).first(conn)?;
    let rows = build()
        .order((dsl::created_at.asc(), dsl::id.asc()))
        .offset(f.offset)
        .limit(f.limit)
        .select(TokenRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

/// Ids of tokens with an exact (non-regex) entry for `stream`.
pub fn ids_with_exact_stream(
    conn: &mut PgConnection,
    stream: &str,
) -> Result<Vec<Uuid>, StoreError> {
    let probe = serde_json::json!([{ "name": stream, "is_regex": false }]);
    Ok(dsl::publish_tokens
        .filter(dsl::streams.contains(probe))
        .select(dsl::id)
        .load(conn)?)
}

/// The current revision of each of `ids` that still exists.
pub fn revisions(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
    Ok(dsl::publish_tokens
        .filter(dsl::id.eq_any(ids))
        .select((dsl::id, dsl::revision))
        .load(conn)?)
}

/// Tokens that have at least one regex entry, with their stream lists.
pub fn with_regex_streams(
    conn: &mut PgConnection,
) -> Result<Vec<(Uuid, serde_json::Value)>, StoreError> {
    let probe = serde_json::json!([{ "is_regex": true }]);
    Ok(dsl::publish_tokens
        .filter(dsl::streams.contains(probe))
        .select((dsl::id, dsl::streams))
        .load(conn)?)
}

/// Escape `%`, `_` and `\` for a LIKE pattern.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

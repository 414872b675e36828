//! Queries on `api_keys`. Only SHA-256 hashes of secrets are stored.

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::api_keys::{self, dsl};
use super::StoreError;

#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ApiKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("secret_hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

pub fn insert(conn: &mut PgConnection, row: &ApiKeyRow) -> Result<ApiKeyRow, StoreError> {
    Ok(diesel::insert_into(api_keys::table)
        .values(row)
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)?)
}

pub fn find_by_prefix(conn: &mut PgConnection, prefix: &str) -> Result<ApiKeyRow, StoreError> {
    Ok(dsl::api_keys
        .filter(dsl::prefix.eq(prefix))
        .select(ApiKeyRow::as_select())
        .first(conn)?)
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> Result<ApiKeyRow, StoreError> {
    Ok(dsl::api_keys
        .find(id)
        .select(ApiKeyRow::as_select())
        .first(conn)?)
}

/// Newest first, and the total.
pub fn list(
    conn: &mut PgConnection,
    offset: i64,
    limit: i64,
) -> Result<(Vec<ApiKeyRow>, i64), StoreError> {
    let total: i64 = dsl::api_keys.select(count_star()).first(conn)?;
    let rows = dsl::api_keys
        .order((dsl::created_at.desc(), dsl::id.asc()))
        .offset(offset)
        .limit(limit)
        .select(ApiKeyRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

/// Mark revoked (kept for the audit trail). Revoking twice is a conflict.
pub fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<ApiKeyRow, StoreError> {
    let row = find(conn, id)?;
    if row.revoked_at.is_some() {
        return Err(StoreError::Conflict("API key is already revoked".into()));
    }
    Ok(diesel::update(dsl::api_keys.find(id))
        .set(dsl::revoked_at.eq(diesel::dsl::now))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)?)
}

/// Record use, at most once a minute per key (keeps writes off the hot path).
pub fn touch_last_used(conn: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
    diesel::update(
        dsl::api_keys.filter(dsl::id.eq(id)).filter(
            dsl::last_used_at
                .is_null()
                .or(dsl::last_used_at.lt(Utc::now() - chrono::Duration::minutes(1))),
        ),
    )
    .set(dsl::last_used_at.eq(diesel::dsl::now))
    .execute(conn)?;
    Ok(())
}

/// How many usable (not revoked) keys exist.
pub fn count_active(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(dsl::api_keys
        .filter(dsl::revoked_at.is_null())
        .select(count_star())
        .first(conn)?)
}

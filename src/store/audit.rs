//! Queries on `audit_log`: append-only records of every write, with the
//! actor and the state before and after. Callers pass values that hold no
//! secret.

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::schema::audit_log::{self, dsl};
use super::StoreError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_log)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_log)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub fn record(conn: &mut PgConnection, entry: NewAudit<'_>) -> Result<(), StoreError> {
    diesel::insert_into(audit_log::table)
        .values(&entry)
        .execute(conn)?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub target: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub offset: i64,
    pub limit: i64,
}

/// Newest first, and the total matching the filter.
pub fn list(conn: &mut PgConnection, f: &AuditFilter) -> Result<(Vec<AuditRow>, i64), StoreError> {
    let build = || {
        let mut q = dsl::audit_log.into_boxed();
        if let Some(t) = &f.target {
            q = q.filter(dsl::target.eq(t.clone()));
        }
        if let Some(a) = &f.action {
            q = q.filter(dsl::action.eq(a.clone()));
        }
        if let Some(s) = f.since {
            q = q.filter(dsl::at.ge(s));
        }
        q
    };
    let total: i64 = build().select(count_star()).first(conn)?;
    let rows = build()
        .order(dsl::id.desc())
        .offset(f.offset)
        .limit(f.limit)
        .select(AuditRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

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

/// What an audited write did, for its record: the action and the target's
/// state before and after (values that hold no secret).
#[derive(Debug, Clone)]
pub struct Change {
    pub action: &'static str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl Change {
    pub fn new(
        action: &'static str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Self {
        Self {
            action,
            before,
            after,
        }
    }
}

/// The one way a write is audited: `write` changes the rows and says what
/// it did; its record (by `actor`, on `target`) is written in the same
/// transaction, so a change is never kept without its record nor a record
/// without its change. `write` may fail with its own error `E` (a
/// validation refused inside the transaction): everything is rolled back.
/// A write that changes no row (a decision put on record before it is
/// carried out, e.g. a kick) returns `((), change)`.
pub fn audited<T, E>(
    conn: &mut PgConnection,
    actor: &str,
    target: &str,
    write: impl FnOnce(&mut PgConnection) -> Result<(T, Change), E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error> + From<StoreError>,
{
    use diesel::Connection;
    conn.transaction(|c| {
        let (value, change) = write(c)?;
        record(
            c,
            NewAudit {
                actor,
                action: change.action,
                target,
                before: change.before,
                after: change.after,
            },
        )?;
        Ok(value)
    })
}

/// Put a decision on record on its own (no row changes with it).
pub fn decision(
    conn: &mut PgConnection,
    actor: &str,
    target: &str,
    change: Change,
) -> Result<(), StoreError> {
    audited(conn, actor, target, |_| Ok::<_, StoreError>(((), change)))
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

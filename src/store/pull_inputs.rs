//! Queries on `pull_inputs`. Rows are stored as the API wrote them and
//! validated when read (`relay::pull::PullInputDef::from_row`), so a row
//! edited by hand into something unusable loads fine here and is refused
//! there, without being changed.

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::pull_inputs::{self, dsl};
use super::StoreError;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Insertable)]
#[diesel(table_name = pull_inputs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct PullInputRow {
    pub id: Uuid,
    pub node_id: String,
    pub stream: String,
    pub source_id: String,
    pub urls: Vec<Option<String>>,
    pub priority: Option<i32>,
    pub persistent: bool,
    pub retry_count: Option<i32>,
    pub no_input_timeout_ms: i64,
    pub reconnect_delay_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub fn insert(conn: &mut PgConnection, row: &PullInputRow) -> Result<PullInputRow, StoreError> {
    Ok(diesel::insert_into(pull_inputs::table)
        .values(row)
        .returning(PullInputRow::as_returning())
        .get_result(conn)?)
}

/// Lock the row for the rest of the transaction; `None` if absent.
pub fn find_for_update(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<PullInputRow>, StoreError> {
    Ok(dsl::pull_inputs
        .find(id)
        .select(PullInputRow::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> Result<PullInputRow, StoreError> {
    Ok(dsl::pull_inputs
        .find(id)
        .select(PullInputRow::as_select())
        .first(conn)?)
}

/// Write every definition field of `row`; `updated_at` becomes now.
pub fn save(conn: &mut PgConnection, row: &PullInputRow) -> Result<PullInputRow, StoreError> {
    Ok(diesel::update(dsl::pull_inputs.find(row.id))
        .set((
            dsl::node_id.eq(&row.node_id),
            dsl::stream.eq(&row.stream),
            dsl::source_id.eq(&row.source_id),
            dsl::urls.eq(&row.urls),
            dsl::priority.eq(row.priority),
            dsl::persistent.eq(row.persistent),
            dsl::retry_count.eq(row.retry_count),
            dsl::no_input_timeout_ms.eq(row.no_input_timeout_ms),
            dsl::reconnect_delay_ms.eq(row.reconnect_delay_ms),
            dsl::updated_at.eq(diesel::dsl::now),
        ))
        .returning(PullInputRow::as_returning())
        .get_result(conn)?)
}

pub fn delete(conn: &mut PgConnection, id: Uuid) -> Result<usize, StoreError> {
    Ok(diesel::delete(dsl::pull_inputs.find(id)).execute(conn)?)
}

/// Delete the row only if nobody rewrote it since `updated_at`.
pub fn delete_unchanged(
    conn: &mut PgConnection,
    id: Uuid,
    updated_at: DateTime<Utc>,
) -> Result<Option<PullInputRow>, StoreError> {
    Ok(diesel::delete(
        dsl::pull_inputs
            .find(id)
            .filter(dsl::updated_at.eq(updated_at)),
    )
    .returning(PullInputRow::as_returning())
    .get_result(conn)
    .optional()?)
}

/// Every row a node owns, oldest first (start-up restore).
pub fn for_node(conn: &mut PgConnection, node: &str) -> Result<Vec<PullInputRow>, StoreError> {
    Ok(dsl::pull_inputs
        .filter(dsl::node_id.eq(node))
        .order((dsl::created_at, dsl::id))
        .select(PullInputRow::as_select())
        .load(conn)?)
}

/// One page, oldest first, optionally for one stream; and the total.
pub fn list(
    conn: &mut PgConnection,
    stream: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<PullInputRow>, i64), StoreError> {
    let build = || {
        let mut q = dsl::pull_inputs.into_boxed();
        if let Some(s) = stream {
            q = q.filter(dsl::stream.eq(s.to_owned()));
        }
        q
    };
    let total: i64 = build().select(count_star()).first(conn)?;
    let rows = build()
        .order((dsl::created_at, dsl::id))
        .offset(offset)
        .limit(limit)
        .select(PullInputRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

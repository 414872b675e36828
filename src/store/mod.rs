//! PostgreSQL: the record of every definition (DESIGN section 7).
//!
//! Owns the r2d2 pool, the embedded migrations and the one helper,
//! [`Db::run`], through which async code reaches the database: it takes a
//! pooled connection **and** runs the query on the blocking pool, so no
//! async task ever blocks on diesel. Queries are plain functions taking
//! `&mut PgConnection`, one module per table.

pub mod api_keys;
pub mod audit;
pub mod pull_inputs;
pub mod push_outputs;
pub mod schema;
pub mod tokens;

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub type PgPool = Pool<ConnectionManager<PgConnection>>;
pub type PgPooled = PooledConnection<ConnectionManager<PgConnection>>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had in time: the database is down or saturated.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("not found")]
    NotFound,
    /// A uniqueness or state conflict, with a message safe for clients.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Query(#[source] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    /// The blocking task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => StoreError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(format!("already exists: {}", info.message()))
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            other => StoreError::Query(other),
        }
    }
}

/// The pool plus the blocking-pool helper. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Build a pool without connecting (start-up waits separately, with backoff).
    pub fn new(url: &str, size: u32, connect_timeout: Duration) -> Self {
        let manager = ConnectionManager::<PgConnection>::new(url);
        let pool = Pool::builder()
            .max_size(size)
            .min_idle(Some(1.min(size)))
            .connection_timeout(connect_timeout)
            .test_on_check_out(false)
            // r2d2 logs connection errors through `log`; we report them ourselves.
            .error_handler(Box::new(diesel::r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Take a connection synchronously (CLI and start-up paths only).
    pub fn get(&self) -> Result<PgPooled, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Run `f` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Whether a trivial query succeeds now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| {
            diesel::sql_query("SELECT 1").execute(c)?;
            Ok(())
        })
        .await
    }

    /// Wait for the database with exponential backoff (250 ms doubling to
    /// 5 s), logging each failure, until it answers or `cancel` fires.
    pub async fn wait_until_up(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1u32;
        loop {
            match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "database not reachable yet");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(StoreError::Unavailable("cancelled while waiting for the database".into())),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }
}

/// Apply every pending migration, logging each one. Returns their versions.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    let versions: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
    for v in &versions {
        tracing::info!(migration = %v, "applied migration");
    }
    if versions.is_empty() {
        tracing::info!("database schema is up to date");
    }
    Ok(versions)
}

/// Revert every applied migration (tests and `migrate --revert-all`).
pub fn revert_all_migrations(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let reverted = conn
        .revert_all_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    let versions: Vec<String> = reverted.iter().map(|v| v.to_string()).collect();
    for v in &versions {
        tracing::info!(migration = %v, "reverted migration");
    }
    Ok(versions)
}

/// Revert the most recent migration.
pub fn revert_last_migration(conn: &mut PgConnection) -> Result<String, StoreError> {
    let v = conn
        .revert_last_migration(MIGRATIONS)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    tracing::info!(migration = %v, "reverted migration");
    Ok(v.to_string())
}

/// Open one direct connection (CLI bootstrap commands).
pub fn connect(url: &str) -> Result<PgConnection, StoreError> {
    PgConnection::establish(url).map_err(|e| StoreError::Unavailable(e.to_string()))
}

//! Postgres implementations of the core's storage traits: channel history (offsets and
//! epochs per channel, size and TTL trimming), presence with expiry, the revocation list and
//! idempotent publish results.
//! State survives restarts and is shared by every node on the same database.
//!
//! Publications are written by one batching task per node (group commit): whatever queued up
//! while the previous batch was being written goes out in one transaction, so throughput does
//! not collapse to one round trip per message. Offsets come from a per-channel row that the
//! write locks, so publishers on several nodes get gap-free, duplicate-free offsets.
//!
//! This crate must not know about sessions, transports or HTTP. Database failures surface as
//! `CoreError::Unavailable` (error 100 to clients, who retry); nothing is acknowledged before
//! its transaction commits.

mod history;
mod idempotency;
mod presence;
mod retention;
mod revocations;

use std::sync::Arc;
use std::time::Duration;

use rotor_core::storage::Storage;
use rotor_core::CoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Executor;
pub use sqlx::PgPool;

pub use history::PgHistory;
pub use idempotency::PgIdempotency;
pub use presence::PgPresence;
pub use retention::{purge, spawn_retention, Purged};
pub use revocations::PgRevocations;

/// Errors setting up Postgres storage.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    // The cause is in the message too, so that a log line with the error alone says why;
    // `rotor_server::report` does not repeat it.
    #[error("storage.postgres.dsn is not a usable connection string: {0}")]
    Dsn(#[source] sqlx::Error),
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// How to reach and use the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub dsn: String,
    /// Schema holding rotor's tables (created if missing).
    pub schema: String,
    pub pool_size: u32,
    /// How long an operation waits for a connection before failing as unavailable.
    pub acquire_timeout: Duration,
    /// Most publications written in one transaction.
    pub batch_max_size: usize,
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens a pool whose connections use `schema` (creating it if needed).
pub async fn connect(opts: &PgOptions) -> Result<PgPool, PgError> {
    let connect: PgConnectOptions = opts.dsn.parse().map_err(PgError::Dsn)?;
    let schema = quote_ident(&opts.schema);
    let set_path = format!("SET search_path TO {schema}");
    let pool = PgPoolOptions::new()
        .max_connections(opts.pool_size.max(1))
        .acquire_timeout(opts.acquire_timeout)
        .after_connect(move |conn, _meta| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(set_path.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(connect);
    pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
        .await
        .map_err(PgError::Connect)?;
    Ok(pool)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), PgError> {
    MIGRATOR.run(pool).await.map_err(PgError::Migrate)
}

/// Drops a schema and everything in it (test teardown, decommissioning).
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), PgError> {
    pool.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)).as_str())
        .await
        .map_err(PgError::Connect)?;
    Ok(())
}

/// The three stores on one pool, with the history batcher running.
pub fn storage(pool: PgPool, opts: &PgOptions) -> Storage {
    Storage {
        history: Arc::new(PgHistory::new(pool.clone(), opts.batch_max_size)),
        presence: Arc::new(PgPresence::new(pool.clone())),
        revocations: Arc::new(PgRevocations::new(pool.clone())),
        idempotency: Arc::new(PgIdempotency::new(pool)),
    }
}

/// A database error as the core sees it: the operation can be retried later.
pub(crate) fn unavailable(e: sqlx::Error) -> CoreError {
    tracing::warn!(error = %e, "postgres operation failed");
    CoreError::Unavailable(format!("postgres: {e}"))
}

pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests;

//! Deletes expired rows in bounded batches, so a large backlog never becomes one huge
//! transaction that blocks publishers.

use std::time::Duration;

use sqlx::PgPool;

/// Rows deleted by one [`purge`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub publications: u64,
    pub presence: u64,
    pub streams: u64,
    pub revocations: u64,
    pub idempotency: u64,
}

async fn delete_in_batches(
    pool: &PgPool,
    table: &str,
    condition: &str,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!("DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT $1))");
    let mut total = 0;
    loop {
        let n = sqlx::query(&sql)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// Deletes expired publications, presence entries, forgotten streams, revocations of
/// tokens that have expired themselves and idempotent publish results past their window,
/// `batch` rows per statement.
pub async fn purge(pool: &PgPool, batch: i64) -> Result<Purged, sqlx::Error> {
    Ok(Purged {
        publications: delete_in_batches(pool, "rotor_publications", "expires_at <= now()", batch)
            .await?,
        presence: delete_in_batches(pool, "rotor_presence", "expires_at <= now()", batch).await?,
        streams: delete_in_batches(pool, "rotor_streams", "meta_expires_at <= now()", batch)
            .await?,
        revocations: delete_in_batches(
            pool,
            "rotor_revocations",
            "expire_at <> 0 AND expire_at <= extract(epoch from now())::bigint",
            batch,
        )
        .await?
            + delete_in_batches(
                pool,
                "rotor_user_invalidations",
                "expire_at <> 0 AND expire_at <= extract(epoch from now())::bigint",
                batch,
            )
            .await?,
        idempotency: delete_in_batches(pool, "rotor_idempotency", "expires_at <= now()", batch)
            .await?,
    })
}

/// Runs [`purge`] every `interval` until `stop` completes.
pub fn spawn_retention(
    pool: PgPool,
    interval: Duration,
    batch: i64,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => match purge(&pool, batch).await {
                    Ok(p) => tracing::debug!(?p, "retention purge"),
                    Err(e) => tracing::warn!(error = %e, "retention purge failed; retrying next interval"),
                },
            }
        }
    })
}

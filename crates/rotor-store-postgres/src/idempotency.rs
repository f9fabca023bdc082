//! Idempotent publish results in Postgres: one row per (channel, key), claimed with an
//! insert that only one caller wins, settled with the result, dropped by the retention job
//! once expired. Shared by every node on the database.

use std::time::Duration;

use rotor_core::storage::{Claim, IdempotencyStore};
use rotor_core::CoreError;
use rotor_protocol::StreamPosition;
use sqlx::{PgPool, Row};

use crate::{ms, unavailable};

pub struct PgIdempotency {
    pool: PgPool,
}

impl PgIdempotency {
    pub fn new(pool: PgPool) -> PgIdempotency {
        PgIdempotency { pool }
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for PgIdempotency {
    async fn claim(&self, channel: &str, key: &str, pending: Duration) -> Result<Claim, CoreError> {
        // A new row, or an expired one taken over, is this caller's claim; a live row is
        // left as it is and read back. One statement: concurrent callers serialize on the
        // row, and exactly one of them inserts or takes it over.
        let row = sqlx::query(
            r#"WITH claimed AS (
                   INSERT INTO rotor_idempotency
                       (channel, idempotency_key, pending, result_offset, result_epoch, expires_at)
                   VALUES ($1, $2, true, 0, '', now() + $3 * interval '1 millisecond')
                   ON CONFLICT (channel, idempotency_key) DO UPDATE SET
                       pending = true, result_offset = 0, result_epoch = '',
                       expires_at = EXCLUDED.expires_at
                   WHERE rotor_idempotency.expires_at <= now()
                   RETURNING true AS ours
               )
               SELECT (SELECT ours FROM claimed) AS ours, i.pending, i.result_offset,
                      i.result_epoch
               FROM (SELECT 1) one
               LEFT JOIN rotor_idempotency i
                   ON i.channel = $1 AND i.idempotency_key = $2 AND i.expires_at > now()"#,
        )
        .bind(channel)
        .bind(key)
        .bind(ms(pending))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        if row.get::<Option<bool>, _>("ours").unwrap_or(false) {
            return Ok(Claim::First);
        }
        match row.get::<Option<bool>, _>("pending") {
            Some(false) => Ok(Claim::Done(StreamPosition {
                offset: row.get::<i64, _>("result_offset") as u64,
                epoch: row.get("result_epoch"),
            })),
            // On its way, or expired between the two reads (the caller asks again).
            _ => Ok(Claim::InProgress),
        }
    }

    async fn settle(
        &self,
        channel: &str,
        key: &str,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<(), CoreError> {
        sqlx::query(
            r#"INSERT INTO rotor_idempotency
                   (channel, idempotency_key, pending, result_offset, result_epoch, expires_at)
               VALUES ($1, $2, false, $3, $4, now() + $5 * interval '1 millisecond')
               ON CONFLICT (channel, idempotency_key) DO UPDATE SET
                   pending = false, result_offset = EXCLUDED.result_offset,
                   result_epoch = EXCLUDED.result_epoch, expires_at = EXCLUDED.expires_at"#,
        )
        .bind(channel)
        .bind(key)
        .bind(position.offset as i64)
        .bind(&position.epoch)
        .bind(ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, channel: &str, key: &str) -> Result<(), CoreError> {
        sqlx::query(
            "DELETE FROM rotor_idempotency WHERE channel = $1 AND idempotency_key = $2 AND pending",
        )
        .bind(channel)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

//! The revocation list in Postgres: revoked jtis and user invalidations with their audit
//! fields, listed newest first, purged once the tokens they name have expired.

use rotor_core::storage::{RevocationFilter, RevocationStore, RevokedToken, UserInvalidation};
use rotor_core::CoreError;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::unavailable;

/// The revocation list in Postgres.
pub struct PgRevocations {
    pool: PgPool,
}

impl PgRevocations {
    pub fn new(pool: PgPool) -> PgRevocations {
        PgRevocations { pool }
    }
}

const COLUMNS: &str = "jti, user_id, expire_at, revoked_at, reason, actor, kicked";

fn entry(r: &PgRow) -> RevokedToken {
    RevokedToken {
        jti: r.get(0),
        user: r.get(1),
        expire_at: r.get::<i64, _>(2) as u64,
        revoked_at: r.get::<i64, _>(3) as u64,
        reason: r.get(4),
        actor: r.get(5),
        kicked: r.get::<i32, _>(6) as u32,
    }
}

#[async_trait::async_trait]
impl RevocationStore for PgRevocations {
    async fn revoke(&self, e: RevokedToken) -> Result<(), CoreError> {
        sqlx::query(
            r#"INSERT INTO rotor_revocations (jti, user_id, expire_at, revoked_at, reason, actor, kicked)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (jti) DO UPDATE SET user_id = EXCLUDED.user_id, expire_at = EXCLUDED.expire_at,
                   revoked_at = EXCLUDED.revoked_at, reason = EXCLUDED.reason, actor = EXCLUDED.actor,
                   kicked = EXCLUDED.kicked"#,
        )
        .bind(&e.jti)
        .bind(&e.user)
        .bind(e.expire_at as i64)
        .bind(e.revoked_at as i64)
        .bind(&e.reason)
        .bind(&e.actor)
        .bind(e.kicked as i32)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn active(&self, now: u64) -> Result<Vec<RevokedToken>, CoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rotor_revocations WHERE expire_at = 0 OR expire_at > $1"
        ))
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.iter().map(entry).collect())
    }

    async fn list(&self, f: &RevocationFilter) -> Result<Vec<RevokedToken>, CoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rotor_revocations
             WHERE ($1::text IS NULL OR user_id = $1) AND ($2::bigint IS NULL OR revoked_at >= $2)
               AND ($3::bigint IS NULL OR revoked_at <= $3) AND ($6::text IS NULL OR jti = $6)
             ORDER BY revoked_at DESC, jti ASC LIMIT $4 OFFSET $5"
        ))
        .bind(f.user.as_deref())
        .bind(f.since.map(|v| v as i64))
        .bind(f.until.map(|v| v as i64))
        .bind(f.limit as i64)
        .bind(f.offset as i64)
        .bind(f.jti.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.iter().map(entry).collect())
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, CoreError> {
        let mut n = 0;
        for table in ["rotor_revocations", "rotor_user_invalidations"] {
            let r = sqlx::query(&format!(
                "DELETE FROM {table} WHERE expire_at <> 0 AND expire_at <= $1"
            ))
            .bind(now as i64)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            n += r.rows_affected();
        }
        Ok(n)
    }

    async fn invalidate_user(&self, e: UserInvalidation) -> Result<(), CoreError> {
        sqlx::query(
            r#"INSERT INTO rotor_user_invalidations
                   (user_id, channel, issued_before, expire_at, invalidated_at, reason, actor, kicked)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (user_id, channel) DO UPDATE SET issued_before = EXCLUDED.issued_before,
                   expire_at = EXCLUDED.expire_at, invalidated_at = EXCLUDED.invalidated_at,
                   reason = EXCLUDED.reason, actor = EXCLUDED.actor, kicked = EXCLUDED.kicked"#,
        )
        .bind(&e.user)
        .bind(&e.channel)
        .bind(e.issued_before as i64)
        .bind(e.expire_at as i64)
        .bind(e.invalidated_at as i64)
        .bind(&e.reason)
        .bind(&e.actor)
        .bind(e.kicked as i32)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn active_invalidations(&self, now: u64) -> Result<Vec<UserInvalidation>, CoreError> {
        let rows = sqlx::query(
            "SELECT user_id, channel, issued_before, expire_at, invalidated_at, reason, actor, kicked
             FROM rotor_user_invalidations WHERE expire_at = 0 OR expire_at > $1",
        )
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| UserInvalidation {
                user: r.get(0),
                channel: r.get(1),
                issued_before: r.get::<i64, _>(2) as u64,
                expire_at: r.get::<i64, _>(3) as u64,
                invalidated_at: r.get::<i64, _>(4) as u64,
                reason: r.get(5),
                actor: r.get(6),
                kicked: r.get::<i32, _>(7) as u32,
            })
            .collect())
    }
}

//! Presence in Postgres: one row per client in a channel, refreshed by its node and gone
//! after its TTL, so a crashed node's entries disappear.

use std::collections::BTreeMap;
use std::time::Duration;

use rotor_core::storage::PresenceStore;
use rotor_core::CoreError;
use rotor_protocol::ClientInfo;
use sqlx::{PgPool, Row};

use crate::{ms, unavailable};

/// Channel presence in Postgres; entries expire unless refreshed.
pub struct PgPresence {
    pool: PgPool,
}

impl PgPresence {
    pub fn new(pool: PgPool) -> PgPresence {
        PgPresence { pool }
    }
}

#[async_trait::async_trait]
impl PresenceStore for PgPresence {
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration) -> Result<(), CoreError> {
        sqlx::query(
            r#"INSERT INTO rotor_presence (channel, client_id, user_id, info, expires_at)
               VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
               ON CONFLICT (channel, client_id) DO UPDATE SET
                   user_id = EXCLUDED.user_id, info = EXCLUDED.info, expires_at = EXCLUDED.expires_at"#,
        )
        .bind(channel)
        .bind(&info.client)
        .bind(&info.user)
        .bind(rotor_core::stored::info_to_json(info))
        .bind(ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), CoreError> {
        sqlx::query("DELETE FROM rotor_presence WHERE channel = $1 AND client_id = $2")
            .bind(channel)
            .bind(client_id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        let rows = sqlx::query(
            "SELECT client_id, info FROM rotor_presence WHERE channel = $1 AND expires_at > now()",
        )
        .bind(channel)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|r| {
                let info: String = r.get(1);
                let info = rotor_core::stored::info_from_json(&info)
                    .map_err(|_| CoreError::Internal("stored presence info is invalid".into()))?;
                Ok((r.get(0), info))
            })
            .collect()
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        let row = sqlx::query("SELECT count(*), count(DISTINCT user_id) FROM rotor_presence WHERE channel = $1 AND expires_at > now()")
            .bind(channel)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok((row.get::<i64, _>(0) as u32, row.get::<i64, _>(1) as u32))
    }
}

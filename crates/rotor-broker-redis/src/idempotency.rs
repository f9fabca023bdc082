//! Idempotent publish results on Redis: one string key per (channel, key) next to the
//! channel's other keys (`<prefix>.result.{<channel>}.<key>`, so one slot on a Cluster):
//! `p` while the first publish is on its way, `d:<offset>:<epoch>` once it is done, both
//! with a TTL. The claim is one Lua script, so exactly one caller wins it.

use std::time::Duration;

use async_trait::async_trait;
use rotor_core::storage::{Claim, IdempotencyStore};
use rotor_core::CoreError;
use rotor_protocol::StreamPosition;

use crate::shard::Shards;

/// Returns the key's value, or sets it to `p` (pending) and returns "" (claimed).
const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'p', 'PX', ARGV[1])
return ''
"#;

/// Deletes the key if it is still pending.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == 'p' then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// Results shared by every node on the same Redis.
pub struct RedisIdempotency {
    shards: Shards,
    claim: redis::Script,
    release: redis::Script,
}

impl RedisIdempotency {
    pub fn new(shards: Shards) -> RedisIdempotency {
        RedisIdempotency {
            shards,
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
        }
    }

    fn key(&self, channel: &str, key: &str) -> String {
        format!("{}.{key}", self.shards.key("result", channel))
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(&self, channel: &str, key: &str, pending: Duration) -> Result<Claim, CoreError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.key(channel, key)).arg(millis(pending));
        let value: String = self.shards.script(channel, inv).await?;
        if value.is_empty() {
            return Ok(Claim::First);
        }
        if value == "p" {
            return Ok(Claim::InProgress);
        }
        let parsed = value.strip_prefix("d:").and_then(|rest| {
            let (offset, epoch) = rest.split_once(':')?;
            Some(StreamPosition {
                offset: offset.parse().ok()?,
                epoch: epoch.to_owned(),
            })
        });
        parsed.map(Claim::Done).ok_or_else(|| {
            CoreError::Internal(format!("unreadable idempotent result in Redis: {value:?}"))
        })
    }

    async fn settle(
        &self,
        channel: &str,
        key: &str,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<(), CoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(channel, key))
            .arg(format!("d:{}:{}", position.offset, position.epoch))
            .arg("PX")
            .arg(millis(ttl));
        let shard = self.shards.for_channel(channel);
        Ok(self.shards.run::<()>(shard, &cmd).await?)
    }

    async fn release(&self, channel: &str, key: &str) -> Result<(), CoreError> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.key(channel, key));
        self.shards.script::<i64>(channel, inv).await?;
        Ok(())
    }
}

//! Presence on Redis: per channel a hash (client id -> client info JSON) and a sorted set
//! (client id -> expiry in ms). Entries not refreshed in time are dropped on read.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use rotor_core::storage::PresenceStore;
use rotor_core::CoreError;
use rotor_protocol::ClientInfo;

use crate::shard::Shards;

const ADD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"#;

const GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, c in ipairs(gone) do redis.call('HDEL', KEYS[1], c) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
return redis.call('HGETALL', KEYS[1])
"#;

/// Presence shared by every node on the same Redis.
pub struct RedisPresence {
    shards: Shards,
    add: redis::Script,
    get: redis::Script,
}

impl RedisPresence {
    pub fn new(shards: Shards) -> RedisPresence {
        RedisPresence {
            shards,
            add: redis::Script::new(ADD),
            get: redis::Script::new(GET),
        }
    }

    fn keys(&self, channel: &str) -> (String, String) {
        (
            self.shards.key("p", channel),
            self.shards.key("pz", channel),
        )
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration) -> Result<(), CoreError> {
        let (h, z) = self.keys(channel);
        let json = rotor_core::stored::info_to_json(info);
        let mut inv = self.add.prepare_invoke();
        inv.key(h)
            .key(z)
            .arg(&info.client)
            .arg(json)
            .arg(ttl.as_millis().max(1) as u64);
        self.shards.script::<i64>(channel, inv).await?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), CoreError> {
        let (h, z) = self.keys(channel);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(h)
            .arg(client_id)
            .ignore()
            .cmd("ZREM")
            .arg(z)
            .arg(client_id)
            .ignore();
        let shard = self.shards.for_channel(channel);
        Ok(self.shards.pipeline::<()>(shard, &pipe).await?)
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        let (h, z) = self.keys(channel);
        let mut inv = self.get.prepare_invoke();
        inv.key(h).key(z);
        let pairs: Vec<(String, String)> = self.shards.script(channel, inv).await?;
        let mut out = BTreeMap::new();
        for (client, json) in pairs {
            match rotor_core::stored::info_from_json(&json) {
                Ok(info) => {
                    out.insert(client, info);
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "bad presence entry in Redis; skipped")
                }
            }
        }
        Ok(out)
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        let all = self.get(channel).await?;
        let users: HashSet<&str> = all.values().map(|i| i.user.as_str()).collect();
        Ok((all.len() as u32, users.len() as u32))
    }
}

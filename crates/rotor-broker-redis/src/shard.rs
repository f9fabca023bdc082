//! Connections to the Redis instances and which instance owns which channel.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use crate::RedisError;

/// Where Redis is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `host:port` or `redis://…` URLs; several shard channels by consistent hashing.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel, so several rotor clusters can share a Redis.
    pub prefix: String,
    /// Connect and reply timeout; a slower Redis counts as unavailable.
    pub timeout: Duration,
    /// `addresses` are seed nodes of one Redis Cluster (keys are spread by the cluster's
    /// hash slots, not by rotor).
    pub cluster: bool,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            addresses: vec!["127.0.0.1:6379".into()],
            prefix: "rotor".into(),
            timeout: Duration::from_secs(1),
            cluster: false,
        }
    }
}

pub(crate) fn url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

/// A command connection that reconnects by itself: to one instance, or to a Redis Cluster
/// (which routes each command to the node owning its key's slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One Redis instance (or one whole Redis Cluster): clients for pub/sub connections (tried
/// in turn; a cluster's pub/sub reaches every node from any of them) and a multiplexed
/// command connection.
#[derive(Clone)]
pub struct Shard {
    pub(crate) clients: Vec<redis::Client>,
    pub(crate) conn: Conn,
    pub(crate) address: String,
}

/// Every configured instance.
#[derive(Clone)]
pub struct Shards {
    pub(crate) shards: Vec<Shard>,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    /// One Redis Cluster: pipelines must stay within one channel (one hash slot).
    pub(crate) cluster: bool,
}

impl Shards {
    /// Connects to every instance. Fails when one cannot be reached now (a node should not
    /// start half-connected); later outages are survived.
    pub async fn connect(opts: &RedisOptions) -> Result<Shards, RedisError> {
        if opts.addresses.is_empty() {
            return Err(RedisError::Config("no Redis address".into()));
        }
        let wait = opts.timeout * 3;
        if opts.cluster {
            let urls: Vec<String> = opts.addresses.iter().map(|a| url(a)).collect();
            let client = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(opts.timeout)
                .response_timeout(opts.timeout)
                .retries(2)
                .build()?;
            let conn = tokio::time::timeout(wait, client.get_async_connection())
                .await
                .map_err(|_| RedisError::Timeout(wait))??;
            let clients = urls
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Shards {
                shards: vec![Shard {
                    clients,
                    conn: Conn::Cluster(conn),
                    address: opts.addresses.join(","),
                }],
                prefix: opts.prefix.clone(),
                timeout: opts.timeout,
                cluster: true,
            });
        }
        let mut shards = Vec::new();
        for address in &opts.addresses {
            let client = redis::Client::open(url(address))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(opts.timeout)
                .set_response_timeout(opts.timeout)
                .set_number_of_retries(1)
                .set_max_delay(1000);
            let conn =
                tokio::time::timeout(wait, client.get_connection_manager_with_config(config))
                    .await
                    .map_err(|_| RedisError::Timeout(wait))??;
            shards.push(Shard {
                clients: vec![client],
                conn: Conn::Single(conn),
                address: address.clone(),
            });
        }
        Ok(Shards {
            shards,
            prefix: opts.prefix.clone(),
            timeout: opts.timeout,
            cluster: false,
        })
    }

    /// Which instance owns `channel` (an index into the configured addresses).
    pub(crate) fn index_for(&self, channel: &str) -> usize {
        jump_hash(fnv1a(channel.as_bytes()), self.shards.len())
    }

    /// The instance that owns `channel`.
    pub(crate) fn for_channel(&self, channel: &str) -> &Shard {
        &self.shards[self.index_for(channel)]
    }

    /// The instance for node-wide data (control, registry).
    pub(crate) fn first(&self) -> &Shard {
        &self.shards[0]
    }

    /// The key of a channel's data. The channel is a Redis Cluster hash tag (`{…}`), so all
    /// keys of one channel share a slot and one Lua script may touch them together.
    pub(crate) fn key(&self, kind: &str, channel: &str) -> String {
        format!("{}.{kind}.{{{channel}}}", self.prefix)
    }

    /// Runs a command with the reply timeout.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        shard: &Shard,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        let mut conn = shard.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))?
            .map_err(RedisError::from)
    }
}

impl Shards {
    /// Runs a Lua script on the instance that owns `channel`, with the reply timeout.
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        channel: &str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.for_channel(channel).conn.clone();
        tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))?
            .map_err(RedisError::from)
    }

    /// Runs a pipeline with the reply timeout.
    pub(crate) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        shard: &Shard,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = shard.conn.clone();
        tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))?
            .map_err(RedisError::from)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lamping and Veach's jump consistent hash: adding an instance moves only 1/n of the keys.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_spreads_and_moves_little() {
        let keys: Vec<u64> = (0..10_000)
            .map(|i| fnv1a(format!("ch{i}").as_bytes()))
            .collect();
        let mut counts = [0usize; 3];
        for k in &keys {
            counts[jump_hash(*k, 3)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 3000), "{counts:?}");
        let moved = keys
            .iter()
            .filter(|k| jump_hash(**k, 3) != jump_hash(**k, 4))
            .count();
        // Going from 3 to 4 instances moves about a quarter of the channels, all to the new one.
        assert!((2000..3000).contains(&moved), "{moved}");
        assert!(keys
            .iter()
            .filter(|k| jump_hash(**k, 3) != jump_hash(**k, 4))
            .all(|k| jump_hash(*k, 4) == 3));
        assert_eq!(jump_hash(42, 1), 0);
    }

    #[test]
    fn addresses_become_urls() {
        assert_eq!(url("127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(url("redis://h:1/2"), "redis://h:1/2");
    }
}

//! Connections to the Redis instances and which instance owns which channel: plain
//! instances (sharded by rotor), one Redis Cluster, or one master found through Redis
//! Sentinel (asked again whenever the master stops answering as a master).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
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
    /// Find the master through these Sentinels instead (`addresses` is not used).
    pub sentinel: Option<SentinelOptions>,
    /// With `cluster`: channels' publications go through sharded pub/sub (`SPUBLISH` /
    /// `SSUBSCRIBE`, Redis 7) spread over this many hash-slot partitions, so each one
    /// crosses only the Redis node owning its partition. 0: classic pub/sub.
    pub sharded_partitions: u32,
    /// Credentials and database for every Redis connection (not the Sentinels'); a URL's
    /// own win over these.
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

impl RedisOptions {
    /// `address` as connection info, with the configured credentials and database where
    /// the address names none.
    fn info(&self, address: &str) -> Result<redis::ConnectionInfo, RedisError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(url(address).as_str())?;
        self.fill(&mut info.redis);
        Ok(info)
    }

    fn fill(&self, redis: &mut redis::RedisConnectionInfo) {
        if redis.username.is_none() {
            redis.username = self.user.clone();
        }
        if redis.password.is_none() {
            redis.password = self.password.clone();
        }
        if redis.db == 0 {
            redis.db = self.db;
        }
    }
}

/// Redis Sentinel: where the Sentinels are and which master to ask them for.
#[derive(Debug, Clone, Default)]
pub struct SentinelOptions {
    /// `host:port` or `redis://…` of each Sentinel.
    pub addresses: Vec<String>,
    /// The master's name in the Sentinels' configuration.
    pub master_name: String,
    /// Credentials for the Sentinels themselves (not the master).
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            addresses: vec!["127.0.0.1:6379".into()],
            prefix: "rotor".into(),
            timeout: Duration::from_secs(1),
            cluster: false,
            sentinel: None,
            sharded_partitions: 0,
            user: None,
            password: None,
            db: 0,
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
    Sentinel(Arc<SentinelConn>),
}

/// Asks the Sentinels for the master (in turn, until one answers; the master's own `ROLE`
/// must say master).
pub(crate) struct Discovery {
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    master_name: String,
    /// How to log in to the master the Sentinels name.
    master_login: redis::sentinel::SentinelNodeConnectionInfo,
    timeout: Duration,
}

impl Discovery {
    /// A client for the master as the Sentinels name it now.
    pub(crate) async fn master(&self) -> Result<redis::Client, RedisError> {
        let wait = self.timeout * 3;
        let mut sentinel = tokio::time::timeout(wait, self.sentinel.lock())
            .await
            .map_err(|_| RedisError::Timeout(wait))?;
        let client = tokio::time::timeout(
            wait,
            sentinel.async_master_for(&self.master_name, Some(&self.master_login)),
        )
        .await
        .map_err(|_| RedisError::Timeout(wait))??;
        Ok(client)
    }
}

/// The command connection to a Sentinel-managed master: made on first use, forgotten when
/// the master fails (connection lost or refused, no answer in time, or `READONLY` from a
/// master that was demoted), so that the next command asks the Sentinels again.
pub(crate) struct SentinelConn {
    discovery: Arc<Discovery>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl SentinelConn {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().unwrap().clone() {
            return Ok(c);
        }
        let client = self.discovery.master().await.map_err(to_redis)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        tracing::info!(master = %client.get_connection_info().addr, "Redis master found through Sentinel");
        *self.current.lock().unwrap() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a request; a failure that says the master is gone or demoted forgets it.
    async fn request<T>(
        &self,
        run: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut conn = self.connection().await?;
        let result = run(&mut conn).await;
        if let Err(e) = &result {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.kind() == redis::ErrorKind::ReadOnly
            {
                tracing::warn!(error = %e, "Redis master failed; asking the Sentinels again");
                *self.current.lock().unwrap() = None;
            }
        }
        result
    }
}

fn to_redis(e: RedisError) -> redis::RedisError {
    match e {
        RedisError::Redis(e) => e,
        other => {
            redis::RedisError::from((redis::ErrorKind::IoError, "Sentinel", other.to_string()))
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    s.request(async |c: &mut MultiplexedConnection| c.req_packed_command(cmd).await)
                        .await
                })
            }
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
            Conn::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    s.request(async |c: &mut MultiplexedConnection| {
                        c.req_packed_commands(cmd, offset, count).await
                    })
                    .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
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
    /// Behind Sentinels: pub/sub connections go to the master they name at the time.
    pub(crate) discovery: Option<Arc<Discovery>>,
}

impl Shard {
    /// A client for a pub/sub connection, attempt number `attempt`: the master the
    /// Sentinels name now, else the configured clients in turn.
    pub(crate) async fn pubsub_client(&self, attempt: usize) -> Result<redis::Client, RedisError> {
        match &self.discovery {
            Some(d) => d.master().await,
            None => Ok(self.clients[attempt % self.clients.len()].clone()),
        }
    }
}

/// Sharded pub/sub on a Redis Cluster: how a broker opens its RESP3 cluster connection,
/// whose subscriptions redis-rs routes to the node owning each channel's slot (one
/// connection per Redis node, not per partition) and restores after it reconnects.
pub(crate) struct ShardedPubSub {
    pub(crate) partitions: u32,
    urls: Vec<String>,
    user: Option<String>,
    password: Option<String>,
    timeout: Duration,
}

impl ShardedPubSub {
    /// A connection whose messages (and disconnections) arrive on `pushes`.
    pub(crate) async fn connect(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<ClusterConnection, RedisError> {
        let mut builder = redis::cluster::ClusterClient::builder(self.urls.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(2);
        if let Some(user) = &self.user {
            builder = builder.username(user.clone());
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.clone());
        }
        let wait = self.timeout * 3;
        Ok(
            tokio::time::timeout(wait, builder.build()?.get_async_connection())
                .await
                .map_err(|_| RedisError::Timeout(wait))??,
        )
    }
}

/// Every configured instance.
#[derive(Clone)]
pub struct Shards {
    pub(crate) shards: Vec<Shard>,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    /// One Redis Cluster: pipelines must stay within one channel (one hash slot).
    pub(crate) cluster: bool,
    /// Sharded pub/sub (a cluster with `sharded_partitions`).
    pub(crate) sharded: Option<Arc<ShardedPubSub>>,
}

impl Shards {
    /// Connects to every instance. Fails when one cannot be reached now (a node should not
    /// start half-connected); later outages are survived.
    pub async fn connect(opts: &RedisOptions) -> Result<Shards, RedisError> {
        if opts.addresses.is_empty() {
            return Err(RedisError::Config("no Redis address".into()));
        }
        let wait = opts.timeout * 3;
        if let Some(sentinel) = &opts.sentinel {
            return Shards::connect_sentinel(opts, sentinel).await;
        }
        if opts.sharded_partitions > 0 && !opts.cluster {
            return Err(RedisError::Config(
                "sharded pub/sub needs a Redis Cluster (cluster_address)".into(),
            ));
        }
        if opts.cluster {
            let urls: Vec<String> = opts.addresses.iter().map(|a| url(a)).collect();
            let mut builder = redis::cluster::ClusterClient::builder(urls.clone());
            if let Some(user) = &opts.user {
                builder = builder.username(user.clone());
            }
            if let Some(password) = &opts.password {
                builder = builder.password(password.clone());
            }
            let client = builder
                .connection_timeout(opts.timeout)
                .response_timeout(opts.timeout)
                .retries(2)
                .build()?;
            let conn = tokio::time::timeout(wait, client.get_async_connection())
                .await
                .map_err(|_| RedisError::Timeout(wait))??;
            let sharded = (opts.sharded_partitions > 0).then(|| {
                Arc::new(ShardedPubSub {
                    partitions: opts.sharded_partitions,
                    urls: urls.clone(),
                    user: opts.user.clone(),
                    password: opts.password.clone(),
                    timeout: opts.timeout,
                })
            });
            let clients = opts
                .addresses
                .iter()
                .map(|a| opts.info(a).and_then(|i| Ok(redis::Client::open(i)?)))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Shards {
                shards: vec![Shard {
                    clients,
                    conn: Conn::Cluster(conn),
                    address: opts.addresses.join(","),
                    discovery: None,
                }],
                prefix: opts.prefix.clone(),
                timeout: opts.timeout,
                cluster: true,
                sharded,
            });
        }
        let mut shards = Vec::new();
        for address in &opts.addresses {
            let client = redis::Client::open(opts.info(address)?)?;
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
                discovery: None,
            });
        }
        Ok(Shards {
            shards,
            prefix: opts.prefix.clone(),
            timeout: opts.timeout,
            cluster: false,
            sharded: None,
        })
    }

    /// One master behind Sentinels. Fails when no Sentinel names a master that answers now.
    async fn connect_sentinel(
        opts: &RedisOptions,
        sentinel: &SentinelOptions,
    ) -> Result<Shards, RedisError> {
        if sentinel.addresses.is_empty() || sentinel.master_name.is_empty() {
            return Err(RedisError::Config(
                "Sentinel needs at least one address and the master's name".into(),
            ));
        }
        let mut infos = Vec::new();
        for a in &sentinel.addresses {
            let mut info = redis::IntoConnectionInfo::into_connection_info(url(a).as_str())?;
            if sentinel.user.is_some() {
                info.redis.username = sentinel.user.clone();
            }
            if sentinel.password.is_some() {
                info.redis.password = sentinel.password.clone();
            }
            infos.push(info);
        }
        let mut login = redis::RedisConnectionInfo::default();
        opts.fill(&mut login);
        let discovery = Arc::new(Discovery {
            sentinel: tokio::sync::Mutex::new(redis::sentinel::Sentinel::build(infos)?),
            master_name: sentinel.master_name.clone(),
            master_login: redis::sentinel::SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: Some(login),
            },
            timeout: opts.timeout,
        });
        let conn = Arc::new(SentinelConn {
            discovery: discovery.clone(),
            current: Mutex::new(None),
            timeout: opts.timeout,
        });
        conn.connection().await?;
        Ok(Shards {
            shards: vec![Shard {
                clients: Vec::new(),
                conn: Conn::Sentinel(conn),
                address: format!(
                    "{} via Sentinel {}",
                    sentinel.master_name,
                    sentinel.addresses.join(",")
                ),
                discovery: Some(discovery),
            }],
            prefix: opts.prefix.clone(),
            timeout: opts.timeout,
            cluster: false,
            sharded: None,
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

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
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

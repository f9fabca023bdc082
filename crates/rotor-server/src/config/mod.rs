//! Configuration: every key with its type and default, in Centrifugo v6's names. How a
//! configuration is read (file, environment, `--set`) and checked is `load`'s business;
//! what a file says in Centrifugo's older names (or misspelt) is `migrate`'s.

pub mod doc;
mod load;
mod migrate;

pub use load::default_json;

use std::time::Duration;

use rotor_core::config::{ChannelConfig, ClientConfig, CoreConfig, NamedProxyConfig, RpcConfig};
use serde::{Deserialize, Serialize};

/// `http_server.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Interface to listen on.
    pub address: String,
    /// Port to listen on (0 picks a free one; the chosen address is logged).
    pub port: u16,
    /// A connection must complete its TLS handshake and send each request's headers within
    /// this time, or it is closed (a slow client cannot hold a connection open forever).
    #[serde(with = "rotor_core::duration")]
    pub header_read_timeout: Duration,
    /// A request body (API calls, http_stream connects, emulation POSTs) must arrive in
    /// full within this time, or the request is answered 408.
    #[serde(with = "rotor_core::duration")]
    pub body_read_timeout: Duration,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` headers are believed (IP addresses or
    /// CIDR ranges of your proxies). For anyone else the socket's peer address is the
    /// client's address.
    pub trusted_proxies: Vec<String>,
    pub tls: TlsConfig,
    /// A second port for internal endpoints (metrics, health, the admin UI unless
    /// `admin.external`); 0: they share the main port (or `prometheus.internal_port`).
    /// Centrifugo v6 writes it as a string ("9000", "" for none): both are read.
    #[serde(deserialize_with = "port_or_text")]
    pub internal_port: u16,
    /// Interface of the internal port; "" is `address`.
    pub internal_address: String,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            address: "0.0.0.0".into(),
            port: 8000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            tls: TlsConfig::default(),
            internal_port: 0,
            internal_address: String::new(),
        }
    }
}

/// `http_server.tls.*`: TLS on the server port.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    /// The certificate chain (leaf first): a PEM file's path, or, as in Centrifugo v6, the
    /// PEM itself or the PEM in base64.
    #[serde(alias = "cert_pem_file")]
    pub cert_pem: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1), in the same three forms.
    #[serde(alias = "key_pem_file")]
    pub key_pem: String,
    /// How often the two files are checked for changes (they are also reloaded on SIGHUP);
    /// "0s" checks only on SIGHUP.
    #[serde(with = "rotor_core::duration")]
    pub watch_interval: Duration,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key may be given inline (a secret): never shown.
        let key = if self.key_pem.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("TlsConfig")
            .field("enabled", &self.enabled)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &key)
            .field("watch_interval", &self.watch_interval)
            .finish()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            cert_pem: String::new(),
            key_pem: String::new(),
            watch_interval: Duration::from_secs(10),
        }
    }
}

/// `http_api.*`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Key for `POST /api/<method>` (header `X-API-Key` or `Authorization: apikey <key>`,
    /// or the query parameter `api_key` while `key_in_query` allows it).
    pub key: String,
    /// Accept API requests without a key. Only for trusted networks.
    pub insecure: bool,
    /// Path prefix of the API.
    pub handler_prefix: String,
    /// Accept the key as the query parameter `api_key`, as Centrifugo does. URLs end up in
    /// proxy and access logs, so a key sent this way leaks there; turn this off when every
    /// client sends the header (rotor-specific).
    pub key_in_query: bool,
    /// Most request body bytes the server API holds at once across all its requests
    /// (rotor-specific): a request waits for room (up to `http_server.body_read_timeout`,
    /// then 503) before its body is read, so big batches cannot add up past it.
    pub max_body_bytes_in_flight: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            key: String::new(),
            insecure: false,
            handler_prefix: "/api".into(),
            key_in_query: true,
            max_body_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for HttpApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApiConfig")
            .field(
                "key",
                &if self.key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("insecure", &self.insecure)
            .field("handler_prefix", &self.handler_prefix)
            .field("key_in_query", &self.key_in_query)
            .field("max_body_bytes_in_flight", &self.max_body_bytes_in_flight)
            .finish()
    }
}

/// `websocket.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    pub disabled: bool,
    /// Path of the bidirectional WebSocket endpoint.
    pub handler_prefix: String,
    /// Bytes read from a socket at a time, into a buffer of the worker thread: connections
    /// hold no read buffer of their own (only the bytes of a frame that has not all
    /// arrived), so this costs no memory per connection.
    pub read_buffer_size: usize,
    /// No effect: rotor writes each batch of frames straight to the socket and keeps only
    /// what the socket did not take. Accepted so Centrifugo configurations load.
    pub write_buffer_size: usize,
    /// Largest message accepted from a client; larger ones close the connection with 1009.
    pub message_size_limit: usize,
    /// How long one write may take before the connection is closed.
    #[serde(with = "rotor_core::duration")]
    pub write_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            disabled: false,
            handler_prefix: "/connection/websocket".into(),
            read_buffer_size: 4096,
            write_buffer_size: 4096,
            message_size_limit: 65536,
            write_timeout: Duration::from_secs(1),
        }
    }
}

macro_rules! transport_config {
    ($(#[$outer:meta])* $name:ident, $path:literal { $($(#[$m:meta])* $field:ident: $ty:ty = $default:expr,)* }) => {
        $(#[$outer])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Serve this transport (off by default, as in Centrifugo).
            pub enabled: bool,
            /// Path of the endpoint.
            pub handler_prefix: String,
            /// How long one write may take before the connection is closed.
            #[serde(with = "rotor_core::duration")]
            pub write_timeout: Duration,
            $($(#[$m])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    enabled: false,
                    handler_prefix: $path.into(),
                    write_timeout: Duration::from_secs(1),
                    $($field: $default,)*
                }
            }
        }
    };
}

transport_config!(
    /// `http_stream.*`: bidirectional emulation over a streamed HTTP response.
    HttpStreamConfig, "/connection/http_stream" {}
);
transport_config!(
    /// `sse.*`: bidirectional emulation over Server-Sent Events.
    SseConfig, "/connection/sse" {}
);
transport_config!(
    /// `uni_websocket.*`: server-to-client pushes over WebSocket, no commands.
    UniWebSocketConfig, "/connection/uni_websocket" {}
);
transport_config!(
    /// `uni_sse.*`: server-to-client pushes over Server-Sent Events.
    UniSseConfig, "/connection/uni_sse" {
        /// Name of a cookie that carries the connection token (EventSource cannot set
        /// headers, and tokens in URLs end up in logs). Empty: no cookie is read.
        token_cookie: String = String::new(),
    }
);
transport_config!(
    /// `uni_http_stream.*`: server-to-client pushes over a streamed HTTP response.
    UniHttpStreamConfig, "/connection/uni_http_stream" {}
);

/// `emulation.*`: where http_stream and sse clients POST their commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulationConfig {
    pub handler_prefix: String,
    /// Largest request body accepted on emulation and HTTP connect endpoints (413 beyond).
    pub max_request_body_size: usize,
}

impl Default for EmulationConfig {
    fn default() -> Self {
        EmulationConfig {
            handler_prefix: "/emulation".into(),
            max_request_body_size: 65536,
        }
    }
}

/// `revocation.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationConfig {
    /// How often the in-memory revocation list is reloaded from storage. Revocations made on
    /// another node sharing the storage take effect here within this delay (at once through
    /// a shared broker).
    #[serde(with = "rotor_core::duration")]
    pub sync_interval: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            sync_interval: Duration::from_secs(5),
        }
    }
}

/// `prometheus.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Serve metrics in the Prometheus text format (off by default, as in Centrifugo).
    pub enabled: bool,
    pub handler_prefix: String,
    /// Also export node gauges under Centrifugo's names (`centrifugo_node_num_clients`, …).
    pub centrifugo_aliases: bool,
    /// Serve metrics (and `/health`) on this separate port instead of the main one; 0 = off.
    /// `http_server.internal_port`, Centrifugo's name, wins when both are set.
    pub internal_port: u16,
    /// Interface of the internal port.
    pub internal_address: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: false,
            handler_prefix: "/metrics".into(),
            centrifugo_aliases: true,
            internal_port: 0,
            internal_address: "127.0.0.1".into(),
        }
    }
}

/// `admin.*`: the admin web UI (Centrifugo's names and defaults; docs/admin.md).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub enabled: bool,
    /// What an operator signs in with.
    pub password: String,
    /// Signs admin sessions (a sign-in lasts `session_ttl`); changing it signs everyone out.
    pub secret: String,
    /// No sign-in at all: anyone who reaches the port is an admin. Only behind a trusted
    /// gateway that authenticates on its own.
    pub insecure: bool,
    /// Path the UI is served under ("" is the root: `/`, `/admin/...`).
    pub handler_prefix: String,
    /// Serve the UI on the main port even when an internal port is set.
    pub external: bool,
    /// How long a sign-in lasts (rotor-specific).
    #[serde(with = "rotor_core::duration")]
    pub session_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            password: String::new(),
            secret: String::new(),
            insecure: false,
            handler_prefix: String::new(),
            external: false,
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &str| if v.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("password", &redacted(&self.password))
            .field("secret", &redacted(&self.secret))
            .field("insecure", &self.insecure)
            .field("handler_prefix", &self.handler_prefix)
            .field("external", &self.external)
            .field("session_ttl", &self.session_ttl)
            .finish()
    }
}

/// `log.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `rotor=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `storage.type`: where history, presence and revocations live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// This process only.
    #[default]
    Memory,
    /// PostgreSQL: survives restarts, shared by the nodes on the database.
    Postgres,
}

/// `engine.type`, `broker.type`, `presence_manager.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One node.
    #[default]
    Memory,
    /// Nodes share fan-out, presence and history through Redis.
    Redis,
}

/// `node.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name shown in the `info` API; defaults to the host name.
    pub name: String,
}

/// `shutdown.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a graceful shutdown waits for connections to close after sending 3001.
    #[serde(with = "rotor_core::duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
        }
    }
}

/// `engine.*`: Centrifugo v6's name for what carries messages between nodes and keeps
/// presence (and history, unless `storage.type` is postgres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(rename = "type")]
    pub kind: EngineKind,
    pub redis: RedisConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Memory,
            redis: RedisConfig::default(),
        }
    }
}

/// `broker.*` and `presence_manager.*`: when enabled, override `engine` for that part only
/// (for example Redis fan-out while history and revocations stay on Postgres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnginePartConfig {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: EngineKind,
    pub redis: RedisConfig,
}

impl Default for EnginePartConfig {
    fn default() -> Self {
        EnginePartConfig {
            enabled: false,
            kind: EngineKind::Memory,
            redis: RedisConfig::default(),
        }
    }
}

/// Where Redis is (`*.redis.*`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port` or `redis://…`, or a list of them: channels are sharded over the list by
    /// consistent hashing.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// Seed nodes of a Redis Cluster (one or a list). When set, `address` is not used: the
    /// cluster spreads channels over its nodes by hash slot.
    #[serde(deserialize_with = "one_or_many")]
    pub cluster_address: Vec<String>,
    /// Prefix of every Redis key and pub/sub channel.
    pub prefix: String,
    /// Connect and reply timeout; past it operations fail with the temporary error 100.
    #[serde(with = "rotor_core::duration")]
    pub timeout: Duration,
    /// With `cluster_address`: publications go through Redis 7's sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`), channels spread over this many partitions (hash tags), so
    /// each publication crosses only the Redis node that owns its partition instead of
    /// every node. 0 (the default): classic pub/sub. Centrifugo PRO's name.
    pub sharded_pub_sub_partitions: u32,
    /// Credentials and database for Redis itself (a URL's own win): `user` for Redis 6
    /// ACLs, `password` for `requirepass` or the ACL user.
    pub user: String,
    pub password: String,
    pub db: i64,
    /// Redis Sentinels (one or a list) that name the master: when set, `address` and
    /// `cluster_address` are not used, and after a failover the new master is found here.
    #[serde(deserialize_with = "one_or_many")]
    pub sentinel_address: Vec<String>,
    /// The master's name in the Sentinels' configuration (required with
    /// `sentinel_address`).
    pub sentinel_master_name: String,
    /// Credentials the Sentinels themselves ask for (not the master's).
    pub sentinel_user: String,
    pub sentinel_password: String,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |list: &[String]| list.iter().map(|a| redact_url(a)).collect::<Vec<_>>();
        f.debug_struct("RedisConfig")
            .field("address", &redact(&self.address))
            .field("cluster_address", &redact(&self.cluster_address))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field(
                "sharded_pub_sub_partitions",
                &self.sharded_pub_sub_partitions,
            )
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("db", &self.db)
            .field("sentinel_address", &redact(&self.sentinel_address))
            .field("sentinel_master_name", &self.sentinel_master_name)
            .field("sentinel_user", &self.sentinel_user)
            .field(
                "sentinel_password",
                &if self.sentinel_password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// A URL with any password in it replaced by `<redacted>` (`redis://:pw@host` and
/// `postgres://user:pw@host/db`), for logs, errors and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:<redacted>"),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{user}@{host}{path}")
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            address: vec!["127.0.0.1:6379".into()],
            cluster_address: Vec::new(),
            prefix: "rotor".into(),
            timeout: Duration::from_secs(1),
            sharded_pub_sub_partitions: 0,
            user: String::new(),
            password: String::new(),
            db: 0,
            sentinel_address: Vec::new(),
            sentinel_master_name: String::new(),
            sentinel_user: String::new(),
            sentinel_password: String::new(),
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Config {
    /// The Redis the broker uses, if any.
    pub fn broker_redis(&self) -> Option<&RedisConfig> {
        Self::part(&self.broker, &self.engine)
    }

    /// The Redis presence lives on, if any.
    pub fn presence_redis(&self) -> Option<&RedisConfig> {
        Self::part(&self.presence_manager, &self.engine)
    }

    /// The Redis history lives on: the engine's, unless storage is Postgres.
    pub fn history_redis(&self) -> Option<&RedisConfig> {
        (self.storage.kind != StorageKind::Postgres && self.engine.kind == EngineKind::Redis)
            .then_some(&self.engine.redis)
    }

    fn part<'a>(part: &'a EnginePartConfig, engine: &'a EngineConfig) -> Option<&'a RedisConfig> {
        if part.enabled {
            (part.kind == EngineKind::Redis).then_some(&part.redis)
        } else {
            (engine.kind == EngineKind::Redis).then_some(&engine.redis)
        }
    }
}

/// `storage.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(rename = "type")]
    pub kind: StorageKind,
    pub postgres: PostgresConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Memory,
            postgres: PostgresConfig::default(),
        }
    }
}

/// `storage.postgres.*`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string, e.g. `postgres://rotor:secret@db:5432/rotor`.
    pub dsn: String,
    /// Schema for rotor's tables (created if missing).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long an operation waits for a connection; past it, clients get error 100.
    #[serde(with = "rotor_core::duration")]
    pub acquire_timeout: Duration,
    /// Most publications written in one transaction (group commit).
    pub batch_max_size: usize,
    /// Apply pending migrations at startup (otherwise run `rotor migrate`).
    pub migrate_on_start: bool,
    /// How often expired history, presence and revocation rows are deleted.
    #[serde(with = "rotor_core::duration")]
    pub retention_interval: Duration,
    /// Rows deleted per statement by the retention job.
    pub retention_batch_size: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            dsn: String::new(),
            schema: "public".into(),
            pool_size: 16,
            acquire_timeout: Duration::from_secs(2),
            batch_max_size: 512,
            migrate_on_start: true,
            retention_interval: Duration::from_secs(60),
            retention_batch_size: 5000,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dsn = redact_url(&self.dsn);
        f.debug_struct("PostgresConfig")
            .field("dsn", &dsn)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("batch_max_size", &self.batch_max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// The store's options.
    pub fn options(&self) -> rotor_store_postgres::PgOptions {
        rotor_store_postgres::PgOptions {
            dsn: self.dsn.clone(),
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            acquire_timeout: self.acquire_timeout,
            batch_max_size: self.batch_max_size,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_server: HttpServerConfig,
    pub client: ClientConfig,
    pub channel: ChannelConfig,
    /// What clients' `rpc` commands do (proxies to the backend).
    pub rpc: RpcConfig,
    /// Named proxies to the application backend (`*_proxy_name`).
    pub proxies: Vec<NamedProxyConfig>,
    pub http_api: HttpApiConfig,
    pub websocket: WebSocketConfig,
    pub http_stream: HttpStreamConfig,
    pub sse: SseConfig,
    pub emulation: EmulationConfig,
    pub uni_websocket: UniWebSocketConfig,
    pub uni_sse: UniSseConfig,
    pub uni_http_stream: UniHttpStreamConfig,
    pub storage: StorageConfig,
    pub engine: EngineConfig,
    pub broker: EnginePartConfig,
    pub presence_manager: EnginePartConfig,
    pub revocation: RevocationConfig,
    pub prometheus: PrometheusConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub node: NodeConfig,
    pub shutdown: ShutdownConfig,
}

impl Config {
    /// The internal port's address, when one is set: `http_server.internal_port`, else
    /// `prometheus.internal_port` (rotor's older key).
    pub fn internal_addr(&self) -> Option<String> {
        let h = &self.http_server;
        if h.internal_port > 0 {
            let host = if h.internal_address.is_empty() {
                &h.address
            } else {
                &h.internal_address
            };
            return Some(format!("{host}:{}", h.internal_port));
        }
        let p = &self.prometheus;
        (p.internal_port > 0).then(|| format!("{}:{}", p.internal_address, p.internal_port))
    }

    /// Whether the admin UI is served on the main port (else on the internal one).
    pub fn admin_on_main_port(&self) -> bool {
        self.admin.enabled && (self.admin.external || self.internal_addr().is_none())
    }

    /// The part the core needs.
    pub fn core(&self) -> CoreConfig {
        let name = if self.node.name.is_empty() {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "rotor".into())
        } else {
            self.node.name.clone()
        };
        CoreConfig {
            client: self.client.clone(),
            channel: self.channel.clone(),
            rpc: self.rpc.clone(),
            proxies: self.proxies.clone(),
            node_name: name,
            version: format!("{} rotor", env!("CARGO_PKG_VERSION")),
            node_uid: String::new(),
        }
    }
}

/// A port written as a number or as text ("" is 0), as Centrifugo v6 writes ports.
fn port_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    match Port::deserialize(d)? {
        Port::Number(n) => Ok(n),
        Port::Text(t) if t.trim().is_empty() => Ok(0),
        Port::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a port number"))),
    }
}

//! Configuration: a file (JSON, TOML or YAML, by extension) with Centrifugo v6 key names,
//! overridden by `ROTOR_`-prefixed environment variables and then by command-line `--set`
//! flags. Unknown keys are errors that name the key.

use std::path::Path;
use std::time::Duration;

use rotor_core::config::{ChannelConfig, ClientConfig, CoreConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ServerError;

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
        }
    }
}

/// `http_server.tls.*`: TLS on the server port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM file with the certificate chain (leaf first).
    pub cert_pem_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem_file: String,
    /// How often the two files are checked for changes (they are also reloaded on SIGHUP);
    /// "0s" checks only on SIGHUP.
    #[serde(with = "rotor_core::duration")]
    pub watch_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            cert_pem_file: String::new(),
            key_pem_file: String::new(),
            watch_interval: Duration::from_secs(10),
        }
    }
}

/// `http_api.*`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Key for `POST /api/<method>` (header `X-API-Key` or `Authorization: apikey <key>`).
    pub key: String,
    /// Accept API requests without a key. Only for trusted networks.
    pub insecure: bool,
    /// Path prefix of the API.
    pub handler_prefix: String,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            key: String::new(),
            insecure: false,
            handler_prefix: "/api".into(),
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
    /// Bytes read from the socket at a time (the buffer every connection holds once it has
    /// read anything). Client commands are small; a larger message is simply read in more
    /// than one call. 1 KiB keeps an idle connection at ~7 KiB of server memory.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write is flushed.
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
            read_buffer_size: 1024,
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
            timeout: Duration::from_secs(5),
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
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |list: &[String]| list.iter().map(|a| redact_url(a)).collect::<Vec<_>>();
        f.debug_struct("RedisConfig")
            .field("address", &redact(&self.address))
            .field("cluster_address", &redact(&self.cluster_address))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
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
    pub log: LogConfig,
    pub node: NodeConfig,
    pub shutdown: ShutdownConfig,
}

impl Config {
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
            node_name: name,
            version: format!("{} rotor", env!("CARGO_PKG_VERSION")),
            node_uid: String::new(),
        }
    }

    /// Loads a file (or the defaults when `path` is `None`), then applies environment
    /// variables and `--set key=value` overrides.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ServerError> {
        let mut value = match path {
            Some(p) => read_file(p)?,
            None => Value::Object(Default::default()),
        };
        let leaves =
            leaf_paths(&serde_json::to_value(Config::default()).expect("config serializes"));
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("ROTOR_") else {
                continue;
            };
            let Some((path, default)) = leaves
                .iter()
                .find(|(p, _)| p.join("_").to_uppercase() == rest)
            else {
                return Err(ServerError::Config(format!(
                    "environment variable {name} does not name a configuration key"
                )));
            };
            set_path(
                &mut value,
                path,
                parse_like(default, &raw)
                    .map_err(|e| ServerError::Config(format!("{name}: {e}")))?,
            );
        }
        for set in sets {
            let (key, raw) = set
                .split_once('=')
                .ok_or_else(|| ServerError::Config(format!("--set {set:?}: expected key=value")))?;
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            let default = leaves
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, d)| d.clone())
                .unwrap_or(Value::Null);
            set_path(
                &mut value,
                &path,
                parse_like(&default, raw)
                    .map_err(|e| ServerError::Config(format!("--set {key}: {e}")))?,
            );
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ServerError::Config(if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            })
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), ServerError> {
        for (key, value) in [
            (
                "http_server.header_read_timeout",
                self.http_server.header_read_timeout,
            ),
            (
                "http_server.body_read_timeout",
                self.http_server.body_read_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ServerError::Config(format!(
                    "{key}: must be above zero (it bounds how long a client may take; 0 would refuse every request)"
                )));
            }
        }
        if self.storage.kind == StorageKind::Postgres && self.storage.postgres.dsn.is_empty() {
            return Err(ServerError::Config(
                "storage.postgres.dsn: required when storage.type is postgres".into(),
            ));
        }
        for redis in [
            self.broker_redis(),
            self.presence_redis(),
            self.history_redis(),
        ]
        .into_iter()
        .flatten()
        {
            if redis.address.is_empty() && redis.cluster_address.is_empty() {
                return Err(ServerError::Config(
                    "redis address: at least one address (or cluster_address) is required".into(),
                ));
            }
        }
        if !self.http_api.insecure && self.http_api.key.is_empty() {
            tracing::warn!("http_api.key is empty: the server API refuses every request (set a key or http_api.insecure)");
        }
        rotor_core::channels::ChannelRules::new(&self.channel).map_err(ServerError::Config)?;
        rotor_auth::TokenVerifier::new(&self.client.token)
            .map_err(|e| ServerError::Config(format!("client.token: {e}")))?;
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Value, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = path.display();
    match ext.as_str() {
        "json" => {
            serde_json::from_str(&text).map_err(|e| ServerError::Config(format!("{name}: {e}")))
        }
        "toml" => {
            toml::from_str::<Value>(&text).map_err(|e| ServerError::Config(format!("{name}: {e}")))
        }
        "yaml" | "yml" => serde_yaml_ng::from_str::<Value>(&text)
            .map_err(|e| ServerError::Config(format!("{name}: {e}"))),
        _ => Err(ServerError::Config(format!(
            "{name}: unknown config format (use .json, .toml, .yaml or .yml)"
        ))),
    }
}

/// Every leaf of the default configuration with its default value (arrays count as leaves).
fn leaf_paths(value: &Value) -> Vec<(Vec<String>, Value)> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            other => out.push((prefix.clone(), other.clone())),
        }
    }
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Reads a text value as the same type as the default: strings stay strings, numbers,
/// booleans, lists and objects are parsed as JSON.
fn parse_like(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean")),
        },
        Value::Number(_) => {
            serde_json::from_str(raw).map_err(|_| format!("{raw:?} is not a number"))
        }
        _ => Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))),
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for key in &path[..path.len() - 1] {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        cur = cur
            .as_object_mut()
            .expect("made an object")
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Default::default());
    }
    cur.as_object_mut()
        .expect("made an object")
        .insert(path[path.len() - 1].clone(), value);
}

/// The default configuration as pretty JSON (for `rotor genconfig`).
pub fn default_json() -> String {
    serde_json::to_string_pretty(&Config::default()).expect("config serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sets: &[&str]) -> Result<Config, String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, Vec::new(), &sets).map_err(|e| e.to_string())
    }

    #[test]
    fn kinds_are_checked_by_their_types_and_named_in_errors() {
        let err = load(&["storage.type=mongo"]).unwrap_err();
        assert!(
            err.contains("storage.type") && err.contains("memory") && err.contains("postgres"),
            "{err}"
        );
        let err = load(&["engine.type=etcd"]).unwrap_err();
        assert!(
            err.contains("engine.type") && err.contains("redis"),
            "{err}"
        );
        let err = load(&["broker.type=nats"]).unwrap_err();
        assert!(err.contains("broker.type"), "{err}");
        let err = load(&["log.format=xml"]).unwrap_err();
        assert!(err.contains("log.format") && err.contains("json"), "{err}");
        let err = load(&["storage.type=postgres"]).unwrap_err();
        assert!(err.contains("storage.postgres.dsn"), "{err}");
    }

    #[test]
    fn kinds_read_from_files_env_and_sets() {
        let c = load(&[
            "storage.type=postgres",
            "storage.postgres.dsn=postgres://db/x",
        ])
        .unwrap();
        assert_eq!(c.storage.kind, StorageKind::Postgres);
        let env = vec![
            ("ROTOR_ENGINE_TYPE".to_string(), "redis".to_string()),
            ("ROTOR_LOG_FORMAT".to_string(), "json".to_string()),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.engine.kind, EngineKind::Redis);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.history_redis().is_some() && c.broker_redis().is_some());
        let defaults: Value = serde_json::from_str(&default_json()).unwrap();
        assert_eq!(defaults["storage"]["type"], "memory");
        assert_eq!(defaults["log"]["format"], "text");
    }
}

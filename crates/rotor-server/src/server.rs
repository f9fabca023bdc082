//! Assembles the node from the configuration (storage, broker, metrics), listens, and shuts
//! down in a bounded time. Routes are `routes`' business and background tasks
//! `background`'s; this module puts them together and takes them apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rotor_core::broker::{Broker, LocalBroker};
use rotor_core::events::{Fanout, NoObserver, Observer};
use rotor_core::proxy::Proxies;
use rotor_core::storage::Storage;
use rotor_core::Node;
use tokio_util::sync::CancellationToken;

use crate::background::{Background, Housekeeping};
use crate::config::{Config, StorageKind};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::{AppState, Sessions};
use crate::stream::ForwardedEmulation;

/// A configured server, not yet listening.
pub struct Server {
    config: Arc<Config>,
    node: Node,
    housekeeping: Housekeeping,
    metrics: Option<Arc<Metrics>>,
    /// Set when `admin.enabled`.
    timeline: Option<Arc<crate::lifecycle::Timeline>>,
    /// This node's emulation sessions: other nodes' requests for them arrive from the moment
    /// the node is in the cluster.
    sessions: Arc<Sessions>,
}

/// A listening server.
pub struct RunningServer {
    addr: SocketAddr,
    node: Node,
    config: Arc<Config>,
    stop_accepting: CancellationToken,
    /// The accept loop and the connections it serves.
    task: tokio::task::JoinHandle<()>,
    background: Background,
}

impl Server {
    /// Builds the node from the configuration (connecting to and migrating the database when
    /// storage is Postgres).
    pub async fn new(config: Config) -> Result<Server, ServerError> {
        Server::with_observer(config, Arc::new(NoObserver)).await
    }

    /// Builds the node with an observer of core events (metrics).
    pub async fn with_observer(
        config: Config,
        observer: Arc<dyn Observer>,
    ) -> Result<Server, ServerError> {
        let (mut storage, housekeeping) = storage(&config).await?;
        let mut redis = RedisConnections::default();
        if let Some(r) = config.history_redis() {
            let shards = redis.get(r).await?;
            storage.history = rotor_broker_redis::RedisHistory::new(shards.clone());
            // Results of idempotent publishes live where history does: shared by the nodes.
            storage.idempotency = Arc::new(rotor_broker_redis::RedisIdempotency::new(shards));
        }
        if let Some(r) = config.presence_redis() {
            storage.presence =
                Arc::new(rotor_broker_redis::RedisPresence::new(redis.get(r).await?));
        }
        let node_uid = uuid::Uuid::new_v4().to_string();
        let broker: Arc<dyn Broker> = match config.broker_redis() {
            Some(r) => rotor_broker_redis::RedisBroker::start(redis.get(r).await?, &node_uid),
            None => Arc::new(LocalBroker::default()),
        };
        let metrics = config
            .prometheus
            .enabled
            .then(|| Arc::new(Metrics::new(config.prometheus.centrifugo_aliases)));
        // The admin UI's token lifecycle charts: an observer of their events alone.
        let timeline = config
            .admin
            .enabled
            .then(|| Arc::new(crate::lifecycle::Timeline::default()));
        let observer: Arc<dyn Observer> = match &timeline {
            Some(t) => Arc::new(Fanout(vec![t.clone(), observer])),
            None => observer,
        };
        let (storage, observer) = match &metrics {
            Some(m) => {
                let backend = if config.storage.kind == StorageKind::Postgres {
                    "postgres"
                } else if config.history_redis().is_some() {
                    "redis"
                } else {
                    "memory"
                };
                let observer: Arc<dyn Observer> = Arc::new(Fanout(vec![m.clone(), observer]));
                (m.instrument(storage, backend), observer)
            }
            None => (storage, observer),
        };
        let mut core = config.core();
        core.node_uid = node_uid;
        let proxies = proxies(&core)?;
        let node = Node::with_proxies(core, storage, broker, observer, proxies)?;
        let sessions = Arc::new(Sessions::default());
        node.set_node_message_handler(Arc::new(ForwardedEmulation(sessions.clone())));
        Ok(Server {
            config: Arc::new(config),
            node,
            housekeeping,
            metrics,
            timeline,
            sessions,
        })
    }

    /// Checks everything the node checks (namespaces, token keys) without touching storage.
    pub fn check(config: &Config) -> Result<(), ServerError> {
        let core = config.core();
        let proxies = proxies(&core)?;
        Node::with_proxies(
            core,
            rotor_store_memory::storage(),
            Arc::new(LocalBroker::default()),
            Arc::new(NoObserver),
            proxies,
        )?;
        Ok(())
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Binds the configured addresses and starts serving.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let cfg = &self.config;
        let addr = format!("{}:{}", cfg.http_server.address, cfg.http_server.port);
        let listener = listen(&addr).await.map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState {
            node: self.node.clone(),
            config: cfg.clone(),
            sessions: self.sessions.clone(),
            metrics: self.metrics.clone(),
            timeline: self.timeline.clone(),
            api_budget: crate::state::api_budget(cfg),
        };
        let internal = match (routes::internal(&state), cfg.internal_addr()) {
            (Some(routes), Some(addr)) => {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                Some((addr, listener, routes))
            }
            _ => None,
        };
        let stop_accepting = CancellationToken::new();
        let serving = crate::listener::Serving::new(&cfg.http_server, &stop_accepting)?;
        let tls = serving.tls.is_some();

        // Everything is bound: from here on nothing fails.
        // Revocations from storage are in force before the first client connects.
        if let Err(e) = self.node.sync_revocations().await {
            tracing::warn!(error = %e, "could not load the revocation list; retrying every sync interval");
        }
        let mut background =
            Background::start(&self.node, cfg.revocation.sync_interval, self.housekeeping);
        if let Some((addr, listener, routes)) = internal {
            let stop = stop_accepting.clone();
            background.add(
                "internal port",
                tokio::spawn(async move {
                    warp::serve(routes)
                        .incoming(listener)
                        .graceful(async move { stop.cancelled().await })
                        .run()
                        .await;
                }),
            );
            tracing::info!(address = %addr, metrics = cfg.prometheus.enabled, admin = cfg.admin.enabled && !cfg.admin_on_main_port(), "internal port listening");
        }
        let task = tokio::spawn(crate::listener::serve(
            listener,
            routes::routes(state),
            serving,
            stop_accepting.clone(),
        ));
        tracing::info!(address = %local, tls, version = env!("CARGO_PKG_VERSION"), "rotor listening");
        Ok(RunningServer {
            addr: local,
            node: self.node,
            config: self.config,
            stop_accepting,
            task,
            background,
        })
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops accepting, closes every connection with 3001 (shutdown), leaves the cluster, and
    /// waits for the connections, the HTTP requests in flight and the background tasks, all
    /// within `shutdown.timeout`; past it, the requests and the tasks get a second each
    /// before they are abandoned.
    pub async fn shutdown(self) {
        let timeout = self.config.shutdown.timeout;
        let started = tokio::time::Instant::now();
        let rest = || {
            timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1))
        };
        // New connections are refused; requests in flight (an API publish waiting for its
        // history commit, say) are finished and answered.
        self.stop_accepting.cancel();
        let left = self.node.shutdown(timeout).await;
        if left > 0 {
            tracing::warn!(
                left,
                "connections still open at the end of the shutdown timeout"
            );
        }
        if tokio::time::timeout(rest(), self.task).await.is_err() {
            tracing::warn!("HTTP requests still running after shutdown; abandoning them");
        }
        self.background.join(rest()).await;
        tracing::info!("rotor stopped");
    }
}

/// The configured storage, and the housekeeping it needs.
async fn storage(config: &Config) -> Result<(Storage, Housekeeping), ServerError> {
    if config.storage.kind == StorageKind::Postgres {
        let pg = &config.storage.postgres;
        let opts = pg.options();
        let pool = rotor_store_postgres::connect(&opts).await?;
        if pg.migrate_on_start {
            rotor_store_postgres::migrate(&pool).await?;
        }
        let housekeeping = Housekeeping::Postgres {
            pool: pool.clone(),
            interval: pg.retention_interval,
            batch: i64::from(pg.retention_batch_size.max(1)),
        };
        return Ok((rotor_store_postgres::storage(pool, &opts), housekeeping));
    }
    let history = rotor_store_memory::MemoryHistory::new();
    let storage = Storage {
        history: history.clone(),
        presence: rotor_store_memory::MemoryPresence::new(),
        revocations: rotor_store_memory::MemoryRevocations::new(),
        idempotency: rotor_store_memory::MemoryIdempotency::new(),
    };
    Ok((storage, Housekeeping::Memory(history)))
}

/// Binds a listening socket with `TCP_NODELAY` set, which Linux passes on to every accepted
/// socket. Without it, Nagle's
/// algorithm holds a small push back until the client's delayed ACK: ~40 ms at p99 under
/// fan-out (rotor-bench fanout, 100 subscribers).
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        match socket.bind(a) {
            // A deep backlog so bursts of connects wait in the kernel, not in RST.
            Ok(()) => return socket.listen(4096),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to bind")
    }))
}

/// Connections to each distinct Redis the configuration names, made once.
#[derive(Default)]
struct RedisConnections(Vec<(crate::config::RedisConfig, rotor_broker_redis::Shards)>);

impl RedisConnections {
    async fn get(
        &mut self,
        cfg: &crate::config::RedisConfig,
    ) -> Result<rotor_broker_redis::Shards, ServerError> {
        if let Some((_, s)) = self.0.iter().find(|(c, _)| c == cfg) {
            return Ok(s.clone());
        }
        let cluster = !cfg.cluster_address.is_empty();
        let opts = rotor_broker_redis::RedisOptions {
            addresses: if cluster {
                cfg.cluster_address.clone()
            } else {
                cfg.address.clone()
            },
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            cluster,
            sharded_partitions: cfg.sharded_pub_sub_partitions,
            user: (!cfg.user.is_empty()).then(|| cfg.user.clone()),
            password: (!cfg.password.is_empty()).then(|| cfg.password.clone()),
            db: cfg.db,
            sentinel: (!cfg.sentinel_address.is_empty()).then(|| {
                let set = |s: &String| (!s.is_empty()).then(|| s.clone());
                rotor_broker_redis::SentinelOptions {
                    addresses: cfg.sentinel_address.clone(),
                    master_name: cfg.sentinel_master_name.clone(),
                    user: set(&cfg.sentinel_user),
                    password: set(&cfg.sentinel_password),
                }
            }),
        };
        let shards = rotor_broker_redis::Shards::connect(&opts)
            .await
            .map_err(|source| {
                let addresses: Vec<String> = opts
                    .sentinel
                    .as_ref()
                    .map_or(&opts.addresses, |s| &s.addresses)
                    .iter()
                    .map(|a| crate::config::redact_url(a))
                    .collect();
                ServerError::Redis {
                    addresses: format!("{addresses:?}"),
                    source,
                }
            })?;
        self.0.push((cfg.clone(), shards.clone()));
        Ok(shards)
    }
}

/// The proxies to the application backend the configuration asks for, over HTTP.
fn proxies(core: &rotor_core::config::CoreConfig) -> Result<Proxies, ServerError> {
    Proxies::from_config(core, &mut rotor_proxy::factory).map_err(ServerError::Config)
}

#[cfg(test)]
mod tests {
    /// Every accepted connection has Nagle's algorithm off (inherited from the listener).
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = super::listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on accepted sockets"
        );
        assert!(
            !client.nodelay().unwrap(),
            "the client's own socket is untouched"
        );
    }
}

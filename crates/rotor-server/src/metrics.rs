//! Prometheus metrics: the core's events (connections, token lifecycle, revocation) as
//! counters, gauges and histograms named `rotor_…`, node gauges read at scrape time, and —
//! with `prometheus.centrifugo_aliases` — the same gauges under Centrifugo's names so its
//! public dashboard finds them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rotor_core::events::{Observer, RefreshOutcome, Stage, TokenKind};
use rotor_core::revocation::Refusal;
use rotor_core::Node;

/// A gauge set from node statistics at scrape time.
type NodeGauge = (IntGauge, fn(&rotor_core::NodeInfo) -> usize);

/// The transports rotor serves, by the names the session reports.
const TRANSPORTS: [&str; 6] = [
    "websocket",
    "http_stream",
    "sse",
    "uni_websocket",
    "uni_http_stream",
    "uni_sse",
];

struct TransportIo {
    sent: IntCounter,
    sent_bytes: IntCounter,
    received: IntCounter,
    received_bytes: IntCounter,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    connects: IntCounterVec,
    connect_refusals: IntCounterVec,
    disconnects: IntCounterVec,
    expires_in: Histogram,
    connections_expired: IntCounterVec,
    subscriptions_expired: IntCounter,
    refreshes: IntCounterVec,
    refresh_lag: HistogramVec,
    revocations: IntCounterVec,
    revocation_rejections: IntCounterVec,
    kicked: IntCounter,
    limit_hits: IntCounterVec,
    commands: IntCounterVec,
    command_errors: IntCounterVec,
    command_duration: HistogramVec,
    /// Calls to the application backend, by proxy type and name.
    proxy_calls: IntCounterVec,
    proxy_errors: IntCounterVec,
    proxy_duration: HistogramVec,
    messages_sent: IntCounterVec,
    bytes_sent: IntCounterVec,
    messages_received: IntCounterVec,
    bytes_received: IntCounterVec,
    /// The four transport counters of each built-in transport, resolved once: `sent` runs
    /// once per write to a client (under fan-out, per delivery), and a labelled lookup
    /// hashes the label and takes a lock every time.
    io: Vec<(&'static str, TransportIo)>,
    publications: IntCounterVec,
    broker_publish: Histogram,
    broker_lag: Histogram,
    with_expiry: IntGauge,
    expiring: IntGaugeVec,
    node_gauges: Vec<NodeGauge>,
}

/// Windows for `rotor_connections_expiring{within}`.
const EXPIRY_WINDOWS: [(u64, &str); 4] = [(60, "1m"), (300, "5m"), (900, "15m"), (3600, "1h")];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    /// `centrifugo_aliases` adds Centrifugo's metric names for the node gauges.
    pub fn new(centrifugo_aliases: bool) -> Metrics {
        let mut metrics = Metrics::unresolved(centrifugo_aliases);
        metrics.io = TRANSPORTS
            .iter()
            .map(|t| {
                let io = TransportIo {
                    sent: metrics.messages_sent.with_label_values(&[t]),
                    sent_bytes: metrics.bytes_sent.with_label_values(&[t]),
                    received: metrics.messages_received.with_label_values(&[t]),
                    received_bytes: metrics.bytes_received.with_label_values(&[t]),
                };
                (*t, io)
            })
            .collect();
        metrics
    }

    fn transport_io(&self, transport: &str) -> Option<&TransportIo> {
        self.io
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, io)| io)
    }

    fn unresolved(centrifugo_aliases: bool) -> Metrics {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("rotor_connections", "Open client connections by transport."),
            &["transport"],
        )
        .expect("valid");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique");
        let expires_in = Histogram::with_opts(
            HistogramOpts::new(
                "rotor_connection_expires_in_seconds",
                "Seconds until expiry of connections at connect.",
            )
            .buckets(vec![
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
        )
        .expect("valid");
        registry
            .register(Box::new(expires_in.clone()))
            .expect("unique");
        let refresh_lag = HistogramVec::new(
            HistogramOpts::new(
                "rotor_refresh_lag_seconds",
                "Seconds from a token's expiry to its refresh (negative: refreshed ahead of expiry).",
            )
            .buckets(vec![-60.0, -10.0, -5.0, -1.0, 0.0, 1.0, 5.0, 10.0, 25.0, 60.0]),
            &["kind"],
        )
        .expect("valid");
        registry
            .register(Box::new(refresh_lag.clone()))
            .expect("unique");
        let subscriptions_expired = IntCounter::new(
            "rotor_subscription_expirations_total",
            "Subscriptions ended because their token expired (2501/3006).",
        )
        .expect("valid");
        registry
            .register(Box::new(subscriptions_expired.clone()))
            .expect("unique");
        let kicked = IntCounter::new(
            "rotor_revocation_kicked_connections_total",
            "Live connections closed because their token was revoked.",
        )
        .expect("valid");
        registry.register(Box::new(kicked.clone())).expect("unique");

        let command_duration = HistogramVec::new(
            HistogramOpts::new(
                "rotor_command_duration_seconds",
                "Time to handle a client command, by method.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["method"],
        )
        .expect("valid");
        registry
            .register(Box::new(command_duration.clone()))
            .expect("unique");

        let proxy_duration = HistogramVec::new(
            HistogramOpts::new(
                "rotor_proxy_duration_seconds",
                "Time of calls to the application backend, by proxy type and name.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["type", "name"],
        )
        .expect("valid");
        registry
            .register(Box::new(proxy_duration.clone()))
            .expect("unique");

        let latency = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
                0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]))
            .expect("valid");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let broker_publish = latency(
            "rotor_broker_publish_duration_seconds",
            "Time to hand a publication to the broker.",
        );
        let broker_lag = latency(
            "rotor_broker_delivery_lag_seconds",
            "Time from accepting a publication to the broker delivering it to this node (includes history writes).",
        );
        let with_expiry = IntGauge::new(
            "rotor_connections_with_expiry",
            "Connections whose token expires.",
        )
        .expect("valid");
        registry
            .register(Box::new(with_expiry.clone()))
            .expect("unique");
        let expiring = IntGaugeVec::new(
            Opts::new(
                "rotor_connections_expiring",
                "Connections whose expiry falls within the window from now.",
            ),
            &["within"],
        )
        .expect("valid");
        registry
            .register(Box::new(expiring.clone()))
            .expect("unique");

        let mut node_gauges: Vec<NodeGauge> = Vec::new();
        let mut gauge = |name: &str, help: &str, read: fn(&rotor_core::NodeInfo) -> usize| {
            let g = IntGauge::new(name, help).expect("valid");
            registry.register(Box::new(g.clone())).expect("unique");
            node_gauges.push((g, read));
        };
        gauge(
            "rotor_node_clients",
            "Connected clients on this node.",
            |i| i.num_clients,
        );
        gauge(
            "rotor_node_users",
            "Distinct users connected to this node.",
            |i| i.num_users,
        );
        gauge(
            "rotor_node_channels",
            "Channels with subscribers on this node.",
            |i| i.num_channels,
        );
        gauge(
            "rotor_node_subscriptions",
            "Subscriptions on this node.",
            |i| i.num_subs,
        );
        if centrifugo_aliases {
            gauge(
                "centrifugo_node_num_clients",
                "Alias of rotor_node_clients.",
                |i| i.num_clients,
            );
            gauge(
                "centrifugo_node_num_users",
                "Alias of rotor_node_users.",
                |i| i.num_users,
            );
            gauge(
                "centrifugo_node_num_channels",
                "Alias of rotor_node_channels.",
                |i| i.num_channels,
            );
            gauge(
                "centrifugo_node_num_subscriptions",
                "Alias of rotor_node_subscriptions.",
                |i| i.num_subs,
            );
        }

        Metrics {
            connects: counter_vec(
                &registry,
                "rotor_connects_total",
                "Successful connects by transport.",
                &["transport"],
            ),
            connect_refusals: counter_vec(
                &registry,
                "rotor_connect_refusals_total",
                "Refused connects by transport and reason.",
                &["transport", "reason"],
            ),
            disconnects: counter_vec(
                &registry,
                "rotor_disconnects_total",
                "Ended connections by transport and code (0: the client left).",
                &["transport", "code"],
            ),
            connections_expired: counter_vec(
                &registry,
                "rotor_connection_expirations_total",
                "Connections closed with 3005 after expiry plus grace.",
                &["transport"],
            ),
            refreshes: counter_vec(
                &registry,
                "rotor_refreshes_total",
                "Token refreshes by kind (connection, subscription) and result.",
                &["kind", "result"],
            ),
            revocations: counter_vec(
                &registry,
                "rotor_revocations_total",
                "Revocations made on this node: kind token (by jti) or user.",
                &["kind"],
            ),
            revocation_rejections: counter_vec(
                &registry,
                "rotor_revocation_rejections_total",
                "Revoked or invalidated tokens refused, by stage and reason.",
                &["stage", "reason"],
            ),
            limit_hits: {
                let c = counter_vec(
                    &registry,
                    "rotor_limit_hits_total",
                    "Clients that ran into a limit (refused or disconnected), by limit.",
                    &["limit"],
                );
                for l in rotor_core::limits::Limit::ALL {
                    c.with_label_values(&[l.as_str()]);
                }
                c
            },
            commands: counter_vec(
                &registry,
                "rotor_commands_total",
                "Client commands handled, by method.",
                &["method"],
            ),
            command_errors: counter_vec(
                &registry,
                "rotor_command_errors_total",
                "Client commands answered with an error, by method and code.",
                &["method", "code"],
            ),
            messages_sent: counter_vec(
                &registry,
                "rotor_transport_messages_sent_total",
                "Messages written to clients, by transport.",
                &["transport"],
            ),
            bytes_sent: counter_vec(
                &registry,
                "rotor_transport_bytes_sent_total",
                "Bytes of messages written to clients, by transport.",
                &["transport"],
            ),
            messages_received: counter_vec(
                &registry,
                "rotor_transport_frames_received_total",
                "Frames read from clients, by transport.",
                &["transport"],
            ),
            bytes_received: counter_vec(
                &registry,
                "rotor_transport_bytes_received_total",
                "Bytes read from clients, by transport.",
                &["transport"],
            ),
            publications: counter_vec(
                &registry,
                "rotor_publications_total",
                "Publications sent out, by whether they were kept in history.",
                &["history"],
            ),
            command_duration,
            proxy_calls: counter_vec(
                &registry,
                "rotor_proxy_calls_total",
                "Calls to the application backend, by proxy type and name.",
                &["type", "name"],
            ),
            proxy_errors: counter_vec(
                &registry,
                "rotor_proxy_errors_total",
                "Calls to the application backend that failed (unreachable, timeout, a status other than 200, a bad answer), by proxy type and name.",
                &["type", "name"],
            ),
            proxy_duration,
            broker_publish,
            broker_lag,
            with_expiry,
            expiring,
            registry,
            connections,
            expires_in,
            subscriptions_expired,
            refresh_lag,
            kicked,
            node_gauges,
            io: Vec::new(),
        }
    }

    /// The text exposition, with node gauges read now.
    pub fn render(&self, node: &Node) -> String {
        let info = node.info();
        for (g, read) in &self.node_gauges {
            g.set(read(&info) as i64);
        }
        let now = node.clock().unix();
        let deadlines: Vec<u64> = EXPIRY_WINDOWS.iter().map(|(s, _)| now + s).collect();
        let (with_expiry, within) = node.hub().expiry_counts(&deadlines);
        self.with_expiry.set(with_expiry as i64);
        for ((_, label), n) in EXPIRY_WINDOWS.iter().zip(within) {
            self.expiring.with_label_values(&[label]).set(n as i64);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Observer for Metrics {
    fn connected(&self, transport: &'static str, expires_in: Option<u64>) {
        self.connections.with_label_values(&[transport]).inc();
        self.connects.with_label_values(&[transport]).inc();
        if let Some(s) = expires_in {
            self.expires_in.observe(s as f64);
        }
    }

    fn connect_refused(&self, transport: &'static str, reason: &'static str) {
        self.connect_refusals
            .with_label_values(&[transport, reason])
            .inc();
    }

    fn disconnected(&self, transport: &'static str, code: Option<u16>) {
        self.connections.with_label_values(&[transport]).dec();
        self.disconnects
            .with_label_values(&[transport, &code.unwrap_or(0).to_string()])
            .inc();
    }

    fn connection_expired(&self, transport: &'static str) {
        self.connections_expired
            .with_label_values(&[transport])
            .inc();
    }

    fn subscription_expired(&self) {
        self.subscriptions_expired.inc();
    }

    fn refresh(&self, kind: TokenKind, outcome: RefreshOutcome, lag: Option<f64>) {
        self.refreshes
            .with_label_values(&[kind.as_str(), outcome.as_str()])
            .inc();
        if let (RefreshOutcome::Ok, Some(lag)) = (outcome, lag) {
            self.refresh_lag
                .with_label_values(&[kind.as_str()])
                .observe(lag);
        }
    }

    fn revoked(&self, kind: &'static str) {
        self.revocations.with_label_values(&[kind]).inc();
    }

    fn rejected(&self, stage: Stage, reason: Refusal) {
        self.revocation_rejections
            .with_label_values(&[stage.as_str(), reason.as_str()])
            .inc();
    }

    fn kicked(&self, n: usize) {
        self.kicked.inc_by(n as u64);
    }

    fn limit_hit(&self, limit: rotor_core::limits::Limit) {
        self.limit_hits.with_label_values(&[limit.as_str()]).inc();
    }

    fn command(&self, method: &'static str, duration: std::time::Duration, error: Option<u32>) {
        self.commands.with_label_values(&[method]).inc();
        self.command_duration
            .with_label_values(&[method])
            .observe(duration.as_secs_f64());
        if let Some(code) = error {
            self.command_errors
                .with_label_values(&[method, &code.to_string()])
                .inc();
        }
    }

    fn proxy_call(
        &self,
        kind: rotor_core::proxy::ProxyKind,
        name: &str,
        took: std::time::Duration,
        failed: bool,
    ) {
        let labels = [kind.as_str(), name];
        self.proxy_calls.with_label_values(&labels).inc();
        self.proxy_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.proxy_errors.with_label_values(&labels).inc();
        }
    }

    fn sent(&self, transport: &'static str, messages: usize, bytes: usize) {
        if let Some(io) = self.transport_io(transport) {
            io.sent.inc_by(messages as u64);
            io.sent_bytes.inc_by(bytes as u64);
            return;
        }
        self.messages_sent
            .with_label_values(&[transport])
            .inc_by(messages as u64);
        self.bytes_sent
            .with_label_values(&[transport])
            .inc_by(bytes as u64);
    }

    fn received(&self, transport: &'static str, bytes: usize) {
        if let Some(io) = self.transport_io(transport) {
            io.received.inc();
            io.received_bytes.inc_by(bytes as u64);
            return;
        }
        self.messages_received.with_label_values(&[transport]).inc();
        self.bytes_received
            .with_label_values(&[transport])
            .inc_by(bytes as u64);
    }

    fn published(&self, history: bool, took: std::time::Duration) {
        self.publications
            .with_label_values(&[if history { "yes" } else { "no" }])
            .inc();
        self.broker_publish.observe(took.as_secs_f64());
    }

    fn delivered(&self, lag: std::time::Duration) {
        self.broker_lag.observe(lag.as_secs_f64());
    }
}

/// Storage latency and errors, recorded around every storage call.
pub struct StorageMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl Metrics {
    /// Wraps the node's storage so every call is timed (`rotor_storage_operation_duration_seconds`)
    /// and failures counted (`rotor_storage_errors_total`), by backend and operation.
    pub fn instrument(
        &self,
        storage: rotor_core::storage::Storage,
        backend: &'static str,
    ) -> rotor_core::storage::Storage {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rotor_storage_operation_duration_seconds",
                "Storage call latency by backend and operation.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["backend", "op"],
        )
        .expect("valid");
        self.registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        let errors = counter_vec(
            &self.registry,
            "rotor_storage_errors_total",
            "Failed storage calls by backend and operation.",
            &["backend", "op"],
        );
        // Every operation's error series exists from the start (at 0), so dashboards and
        // alerts see zero rather than no data.
        for op in [
            "history_add",
            "history_read",
            "history_remove",
            "presence_add",
            "presence_remove",
            "presence_get",
            "presence_stats",
            "revoke",
            "revocations_active",
            "revocations_list",
            "revocations_purge",
            "invalidate_user",
            "invalidations_active",
            "idempotency_claim",
            "idempotency_settle",
            "idempotency_release",
        ] {
            errors.with_label_values(&[backend, op]);
        }
        let m = Arc::new(StorageMetrics { duration, errors });
        rotor_core::storage::Storage {
            history: Arc::new(Timed {
                inner: storage.history,
                backend,
                m: m.clone(),
            }),
            presence: Arc::new(Timed {
                inner: storage.presence,
                backend,
                m: m.clone(),
            }),
            revocations: Arc::new(Timed {
                inner: storage.revocations,
                backend,
                m: m.clone(),
            }),
            idempotency: Arc::new(Timed {
                inner: storage.idempotency,
                backend,
                m,
            }),
        }
    }
}

use std::sync::Arc;

use rotor_core::storage::{
    BoxFuture, Claim, HistoryFilter, HistoryOptions, HistoryPage, HistoryStore, IdempotencyStore,
    PresenceStore, RevocationFilter, RevocationStore, RevokedToken, UserInvalidation,
};
use rotor_core::CoreError;
use rotor_protocol::{ClientInfo, Publication, StreamPosition};

struct Timed<T: ?Sized> {
    inner: Arc<T>,
    backend: &'static str,
    m: Arc<StorageMetrics>,
}

impl<T: ?Sized> Timed<T> {
    async fn time<R>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<R, CoreError>>,
    ) -> Result<R, CoreError> {
        record(&self.m, self.backend, op, f).await
    }
}

async fn record<R>(
    m: &StorageMetrics,
    backend: &'static str,
    op: &'static str,
    f: impl std::future::Future<Output = Result<R, CoreError>>,
) -> Result<R, CoreError> {
    let start = std::time::Instant::now();
    let r = f.await;
    m.duration
        .with_label_values(&[backend, op])
        .observe(start.elapsed().as_secs_f64());
    if r.is_err() {
        m.errors.with_label_values(&[backend, op]).inc();
    }
    r
}

#[async_trait::async_trait]
impl HistoryStore for Timed<dyn HistoryStore> {
    fn add(
        &self,
        channel: &str,
        publication: Publication,
        opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>> {
        let fut = self.inner.add(channel, publication, opts);
        let (m, backend) = (self.m.clone(), self.backend);
        Box::pin(async move { record(&m, backend, "history_add", fut).await })
    }
    async fn read(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryPage, CoreError> {
        self.time("history_read", self.inner.read(channel, filter, opts))
            .await
    }
    async fn remove(&self, channel: &str) -> Result<(), CoreError> {
        self.time("history_remove", self.inner.remove(channel))
            .await
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for Timed<dyn IdempotencyStore> {
    async fn claim(
        &self,
        channel: &str,
        key: &str,
        pending: std::time::Duration,
    ) -> Result<Claim, CoreError> {
        self.time("idempotency_claim", self.inner.claim(channel, key, pending))
            .await
    }
    async fn settle(
        &self,
        channel: &str,
        key: &str,
        position: &StreamPosition,
        ttl: std::time::Duration,
    ) -> Result<(), CoreError> {
        let settled = self.inner.settle(channel, key, position, ttl);
        self.time("idempotency_settle", settled).await
    }
    async fn release(&self, channel: &str, key: &str) -> Result<(), CoreError> {
        self.time("idempotency_release", self.inner.release(channel, key))
            .await
    }
}

#[async_trait::async_trait]
impl PresenceStore for Timed<dyn PresenceStore> {
    async fn add(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: std::time::Duration,
    ) -> Result<(), CoreError> {
        self.time("presence_add", self.inner.add(channel, info, ttl))
            .await
    }
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), CoreError> {
        self.time("presence_remove", self.inner.remove(channel, client_id))
            .await
    }
    async fn get(
        &self,
        channel: &str,
    ) -> Result<std::collections::BTreeMap<String, ClientInfo>, CoreError> {
        self.time("presence_get", self.inner.get(channel)).await
    }
    async fn stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        self.time("presence_stats", self.inner.stats(channel)).await
    }
}

#[async_trait::async_trait]
impl RevocationStore for Timed<dyn RevocationStore> {
    async fn revoke(&self, entry: RevokedToken) -> Result<(), CoreError> {
        self.time("revoke", self.inner.revoke(entry)).await
    }
    async fn active(&self, now: u64) -> Result<Vec<RevokedToken>, CoreError> {
        self.time("revocations_active", self.inner.active(now))
            .await
    }
    async fn list(&self, filter: &RevocationFilter) -> Result<Vec<RevokedToken>, CoreError> {
        self.time("revocations_list", self.inner.list(filter)).await
    }
    async fn purge_expired(&self, now: u64) -> Result<u64, CoreError> {
        self.time("revocations_purge", self.inner.purge_expired(now))
            .await
    }
    async fn invalidate_user(&self, entry: UserInvalidation) -> Result<(), CoreError> {
        self.time("invalidate_user", self.inner.invalidate_user(entry))
            .await
    }
    async fn active_invalidations(&self, now: u64) -> Result<Vec<UserInvalidation>, CoreError> {
        self.time("invalidations_active", self.inner.active_invalidations(now))
            .await
    }
}

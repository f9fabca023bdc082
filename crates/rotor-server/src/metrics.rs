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
    node_gauges: Vec<NodeGauge>,
}

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
            registry,
            connections,
            expires_in,
            subscriptions_expired,
            refresh_lag,
            kicked,
            node_gauges,
        }
    }

    /// The text exposition, with node gauges read now.
    pub fn render(&self, node: &Node) -> String {
        let info = node.info();
        for (g, read) in &self.node_gauges {
            g.set(read(&info) as i64);
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
}

//! The session core without sockets: connect, refresh, expiry, subscribe errors and the
//! unidirectional connect, driven through the in-memory transport on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use rotor_protocol::Disconnect;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ConnectFrom, SessionParams, TransportInfo, TransportKind};
use crate::broker::{Broker, BrokerHandler, Control, LocalBroker, NodeInfo, Sent};
use crate::config::{ChannelOptions, CoreConfig, NamespaceConfig};
use crate::events::NoObserver;
use crate::testing::{self, Out};
use crate::Node;

const SECRET: &str = "session-test-secret";

/// A node whose storage is down, with namespaces:
/// `open` (anyone connected may subscribe), `locked` (nothing allowed), `positioned` (open,
/// with history, every subscription positioned: it needs storage).
fn node(tune: impl FnOnce(&mut CoreConfig)) -> Node {
    node_on(Arc::new(LocalBroker::default()), tune)
}

/// [`node`] on the given broker.
fn node_on(broker: Arc<dyn Broker>, tune: impl FnOnce(&mut CoreConfig)) -> Node {
    node_with(testing::storage_down(), broker, tune)
}

/// [`node`] on the given storage and broker.
fn node_with(
    storage: crate::storage::Storage,
    broker: Arc<dyn Broker>,
    tune: impl FnOnce(&mut CoreConfig),
) -> Node {
    let mut config = CoreConfig::default();
    config.client.token.hmac_secret_key = SECRET.into();
    config.channel.namespaces = vec![
        NamespaceConfig {
            name: "open".into(),
            allow_subscribe_for_client: true,
            ..NamespaceConfig::default()
        },
        NamespaceConfig {
            name: "locked".into(),
            ..NamespaceConfig::default()
        },
        NamespaceConfig {
            name: "positioned".into(),
            allow_subscribe_for_client: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            force_positioning: true,
            ..NamespaceConfig::default()
        },
    ];
    config.channel.without_namespace = ChannelOptions::default();
    tune(&mut config);
    Node::new(config, storage, broker, Arc::new(NoObserver)).expect("valid config")
}

fn token(claims: Value) -> String {
    rotor_auth::sign_hmac(&claims, SECRET).unwrap()
}

/// A client of an in-memory session.
struct Client {
    tx: Option<mpsc::UnboundedSender<String>>,
    rx: mpsc::UnboundedReceiver<Out>,
    started: Instant,
}

impl Client {
    fn start(node: &Node) -> Client {
        Client::with(node, testing::params())
    }

    fn with(node: &Node, params: SessionParams) -> Client {
        let (tx, rx) = testing::session_with(node, params);
        Client {
            tx: Some(tx),
            rx,
            started: Instant::now(),
        }
    }

    fn send(&self, command: Value) {
        self.tx
            .as_ref()
            .expect("still sending")
            .send(command.to_string())
            .unwrap();
    }

    /// The next message the session wrote (the paused clock runs on while nothing happens).
    async fn message(&mut self) -> Value {
        match self.rx.recv().await {
            Some(Out::Messages(m)) => {
                let mut m = m.into_iter();
                let first = m.next().expect("a write holds a message");
                assert!(m.next().is_none(), "one message per turn here");
                serde_json::from_str(&first).unwrap()
            }
            Some(Out::Closed(d, _)) => panic!("closed with {d:?} while a message was due"),
            None => panic!("the session ended"),
        }
    }

    /// The next reply (a message with an id), skipping pings.
    async fn reply(&mut self) -> Value {
        loop {
            let m = self.message().await;
            if m.get("id").is_some() {
                return m;
            }
        }
    }

    /// How the session closed, and how long after it started; messages before are skipped
    /// (and returned).
    async fn closed(&mut self) -> (Disconnect, Duration, Vec<String>) {
        let mut before = Vec::new();
        loop {
            match self.rx.recv().await {
                Some(Out::Messages(m)) => before.extend(m),
                Some(Out::Closed(d, at)) => return (d, at - self.started, before),
                None => panic!("the session ended without closing"),
            }
        }
    }

    async fn connect(&mut self, claims: Value) -> Value {
        self.send(json!({"id": 1, "connect": {"token": token(claims)}}));
        self.reply().await
    }
}

fn now(node: &Node) -> u64 {
    node.clock().unix()
}

#[tokio::test(start_paused = true)]
async fn connect_answers_with_the_client_id_ping_and_expiry() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    let r = c
        .connect(json!({"sub": "alice", "exp": now(&node) + 60}))
        .await;
    let result = &r["connect"];
    assert!(
        result["client"].as_str().is_some_and(|id| id.len() == 36),
        "{r}"
    );
    assert_eq!(result["expires"], true, "{r}");
    assert_eq!(result["ttl"], 60, "{r}");
    assert_eq!(result["ping"], 25, "{r}");
    assert_eq!(result["pong"], true, "{r}");
    assert_eq!(node.info().num_clients, 1);
}

#[tokio::test(start_paused = true)]
async fn a_command_before_connect_closes_with_3501() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    c.send(json!({"id": 1, "subscribe": {"channel": "open:x"}}));
    assert_eq!(c.closed().await.0, Disconnect::BAD_REQUEST);
    assert_eq!(node.info().num_clients, 0);
}

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_stale_delay_closes_with_3502() {
    let node = node(|c| c.client.stale_close_delay = Duration::from_secs(3));
    let mut c = Client::start(&node);
    let (d, after, _) = c.closed().await;
    assert_eq!(d, Disconnect::STALE);
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(4),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_error_109_and_a_forged_one_3500() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    let r = c
        .connect(json!({"sub": "alice", "exp": now(&node) - 10}))
        .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert_eq!(r["error"]["temporary"], Value::Null, "not temporary: {r}");
    // The connection stays: the SDK fetches a new token and connects again.
    let r = c
        .connect(json!({"sub": "alice", "exp": now(&node) + 60}))
        .await;
    assert!(r["connect"]["client"].is_string(), "{r}");

    let mut forged = Client::start(&node);
    let t = rotor_auth::sign_hmac(&json!({"sub": "mallory"}), "not-the-secret").unwrap();
    forged.send(json!({"id": 1, "connect": {"token": t}}));
    assert_eq!(forged.closed().await.0, Disconnect::INVALID_TOKEN);
}

#[tokio::test(start_paused = true)]
async fn refresh_extends_the_connection_in_place() {
    let node = node(|c| {
        c.client.expired_close_delay = Duration::from_secs(2);
        c.client.ping_interval = Duration::ZERO;
    });
    let mut c = Client::start(&node);
    let start = now(&node);
    let r = c.connect(json!({"sub": "alice", "exp": start + 10})).await;
    let client_id = r["connect"]["client"].clone();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let fresh = token(json!({"sub": "alice", "exp": now(&node) + 100}));
    c.send(json!({"id": 2, "refresh": {"token": fresh}}));
    let r = c.reply().await;
    assert_eq!(r["refresh"]["client"], client_id, "same connection: {r}");
    assert_eq!(r["refresh"]["ttl"], 100, "{r}");
    // Past the first token's expiry and grace: still open.
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.send(json!({"id": 3, "ping": {}}));
    assert!(c.reply().await.get("ping").is_some());

    // A token for someone else never refreshes this connection.
    let other = token(json!({"sub": "bob", "exp": now(&node) + 100}));
    c.send(json!({"id": 4, "refresh": {"token": other}}));
    assert_eq!(c.closed().await.0, Disconnect::INVALID_TOKEN);
}

#[tokio::test(start_paused = true)]
async fn a_connection_nobody_refreshes_closes_with_3005_after_the_grace() {
    let node = node(|c| {
        c.client.expired_close_delay = Duration::from_secs(3);
        c.client.ping_interval = Duration::ZERO;
    });
    let mut c = Client::start(&node);
    let exp = now(&node) + 5;
    c.connect(json!({"sub": "alice", "exp": exp})).await;
    let (d, _, _) = c.closed().await;
    assert_eq!(d, Disconnect::EXPIRED);
    let closed_at = node.clock().unix_ms();
    assert!(
        closed_at >= (exp + 3) * 1000 && closed_at < (exp + 4) * 1000,
        "closed at {closed_at} ms, token expired at {exp} s, grace 3 s"
    );
    assert_eq!(node.info().num_clients, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_with_an_expired_token_closes_with_3005() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice", "exp": now(&node) + 60}))
        .await;
    let stale = token(json!({"sub": "alice", "exp": now(&node) - 1}));
    c.send(json!({"id": 2, "refresh": {"token": stale}}));
    assert_eq!(c.closed().await.0, Disconnect::EXPIRED);
}

#[tokio::test(start_paused = true)]
async fn subscribe_errors_are_replies_with_their_codes() {
    let node = node(|c| c.client.channel_limit = 1);
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    let mut id = 1;
    let mut subscribe = |c: &mut Client, body: Value| {
        id += 1;
        c.send(json!({"id": id, "subscribe": body}));
    };
    subscribe(&mut c, json!({"channel": "nowhere:x"}));
    assert_eq!(c.reply().await["error"]["code"], 102, "unknown namespace");
    subscribe(&mut c, json!({"channel": "locked:x"}));
    assert_eq!(c.reply().await["error"]["code"], 103, "not allowed");
    // A subscription token that expired: 109, the SDK fetches another.
    let expired = token(json!({"sub": "alice", "channel": "locked:x", "exp": now(&node) - 5}));
    subscribe(&mut c, json!({"channel": "locked:x", "token": expired}));
    assert_eq!(c.reply().await["error"]["code"], 109);
    subscribe(&mut c, json!({"channel": "open:x"}));
    assert!(c.reply().await.get("subscribe").is_some());
    subscribe(&mut c, json!({"channel": "open:x"}));
    assert_eq!(c.reply().await["error"]["code"], 105, "already subscribed");
    subscribe(&mut c, json!({"channel": "open:y"}));
    assert_eq!(
        c.reply().await["error"]["code"],
        106,
        "over client.channel_limit"
    );
    c.send(json!({"id": 98, "unsubscribe": {"channel": "open:x"}}));
    assert!(c.reply().await.get("unsubscribe").is_some());
    // Still connected after all of them.
    c.send(json!({"id": 99, "ping": {}}));
    assert!(c.reply().await.get("ping").is_some());
    // A subscription token of another user ends the connection.
    let bobs = token(json!({"sub": "bob", "channel": "locked:x"}));
    subscribe(&mut c, json!({"channel": "locked:x", "token": bobs}));
    assert_eq!(c.closed().await.0, Disconnect::INVALID_TOKEN);
}

#[tokio::test(start_paused = true)]
async fn a_positioned_subscribe_with_storage_down_is_a_temporary_error_and_no_subscription() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    for id in [2, 3] {
        c.send(json!({"id": id, "subscribe": {"channel": "positioned:x"}}));
        let r = c.reply().await;
        assert_eq!(r["error"]["code"], 100, "{r}");
        assert_eq!(r["error"]["temporary"], true, "{r}");
    }
    assert_eq!(node.hub().num_channels(), 0, "nothing left in the hub");
}

fn uni(text: Option<&str>, fallback_token: Option<String>) -> SessionParams {
    SessionParams {
        transport: TransportInfo {
            name: "uni_memory",
            kind: TransportKind::Unidirectional,
        },
        protocol: rotor_protocol::Protocol::Json,
        session_id: None,
        connect: ConnectFrom::Text {
            text: text.map(str::to_string),
            fallback_token,
        },
        remote: None,
        headers: None,
    }
}

#[tokio::test(start_paused = true)]
async fn unidirectional_connects_from_the_first_frame_or_the_given_text() {
    let node = node(|_| {});
    // The first frame is the connect request; the answer is a bare connect push.
    let mut c = Client::with(&node, uni(None, None));
    c.send(json!({"token": token(json!({"sub": "alice"}))}));
    let m = c.message().await;
    assert!(m["connect"]["client"].is_string(), "{m}");
    // Frames after it are ignored.
    c.send(json!({"anything": true}));
    c.tx = None;
    assert!(
        c.rx.recv().await.is_none(),
        "no answer, no close: the client left"
    );

    // The token of the HTTP request fills in for a request without one.
    let bearer = token(json!({"sub": "bob"}));
    let mut c = Client::with(&node, uni(Some(""), Some(bearer)));
    let m = c.message().await;
    assert!(m["connect"]["client"].is_string(), "{m}");
}

#[tokio::test(start_paused = true)]
async fn unidirectional_connect_refusals_close_with_their_codes() {
    let node = node(|c| c.client.stale_close_delay = Duration::from_secs(2));
    // Not a connect request: 3501, with no disconnect push before the close.
    let mut c = Client::with(&node, uni(None, None));
    c.tx.as_ref().unwrap().send("{not json".into()).unwrap();
    let (d, _, before) = c.closed().await;
    assert_eq!(d, Disconnect::BAD_REQUEST);
    assert!(before.is_empty(), "{before:?}");
    let mut c = Client::with(&node, uni(Some("{bad"), None));
    assert_eq!(c.closed().await.0, Disconnect::BAD_REQUEST);
    // No request in time: 3502 after the stale delay.
    let mut c = Client::with(&node, uni(None, None));
    let (d, after, before) = c.closed().await;
    assert_eq!((d, before.len()), (Disconnect::STALE, 0));
    assert!(after >= Duration::from_secs(2), "{after:?}");
    // A refused token: the disconnect is announced with a bare push, then the close.
    let expired = token(json!({"sub": "alice", "exp": now(&node) - 5}));
    let mut c = Client::with(&node, uni(None, None));
    c.send(json!({ "token": expired }));
    let (d, _, before) = c.closed().await;
    assert_eq!(d, Disconnect::EXPIRED);
    let push: Value = serde_json::from_str(&before[0]).unwrap();
    assert_eq!(push["disconnect"]["code"], 3005, "{push}");
}

#[test]
fn uni_connect_requests_parse_with_a_token_fallback() {
    use super::uni_connect_request as parse;
    assert_eq!(parse("", Some("t".into())).unwrap().token, "t");
    assert_eq!(parse("  ", None).unwrap().token, "");
    assert_eq!(
        parse(r#"{"token":"own"}"#, Some("t".into())).unwrap().token,
        "own"
    );
    assert!(parse("{bad", None).is_err());
}

#[tokio::test(start_paused = true)]
async fn meta_is_kept_on_the_connection_and_never_sent_to_the_client() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    let r = c
        .connect(json!({"sub": "alice", "meta": {"plan": "gold", "secret": "s3"}, "exp": now(&node) + 60}))
        .await;
    assert!(
        !r.to_string().contains("gold"),
        "meta is not in the reply: {r}"
    );
    let conns = node.hub().all_connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns[0].meta().and_then(|m| m.json().map(str::to_string)),
        Some(r#"{"plan":"gold","secret":"s3"}"#.to_string())
    );
    // A refresh with new meta replaces it; one without keeps it.
    c.send(json!({"id": 2, "refresh": {"token": token(json!({"sub": "alice", "meta": {"plan": "free"}, "exp": now(&node) + 60}))}}));
    let r = c.reply().await;
    assert!(r["refresh"].is_object(), "{r}");
    assert_eq!(
        conns[0].meta().and_then(|m| m.json().map(str::to_string)),
        Some(r#"{"plan":"free"}"#.to_string())
    );
    c.send(json!({"id": 3, "refresh": {"token": token(json!({"sub": "alice", "exp": now(&node) + 60}))}}));
    assert!(c.reply().await["refresh"].is_object());
    assert!(conns[0].meta().is_some(), "kept");
}

#[tokio::test(start_paused = true)]
async fn subs_overrides_take_the_seed_names_and_ignore_unknown_keys() {
    let node = node(|_| {});
    let mut c = Client::start(&node);
    let over = json!({
        "presence": {"value": false},
        "join_leave": {"value": true},
        "position": {"value": true},
        "recover": {"value": false},
        "some_future_option": {"value": true}
    });
    let r = c
        .connect(json!({"sub": "alice", "subs": {"open:mine": {"override": over}}, "exp": now(&node) + 60}))
        .await;
    // Accepted (it was 3500 when the names were refused), with its server-side
    // subscription; rotor-auth's tests check what each name overrides.
    assert!(r["connect"]["subs"]["open:mine"].is_object(), "{r}");
    assert_eq!(node.hub().num_subscriptions(), 1);
}

/// A broker that records each publication when it is handed over and confirms none until
/// the test says so (as Redis answers a round trip later).
#[derive(Default)]
struct HeldBroker {
    handed: std::sync::Mutex<Vec<String>>,
    held: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), crate::CoreError>>>>,
}

impl HeldBroker {
    fn handed(&self) -> Vec<String> {
        self.handed.lock().unwrap().clone()
    }

    fn confirm_all(&self) {
        for answer in self.held.lock().unwrap().drain(..) {
            let _ = answer.send(Ok(()));
        }
    }
}

#[async_trait::async_trait]
impl Broker for HeldBroker {
    fn set_handler(&self, _handler: Arc<dyn BrokerHandler>) {}
    fn publish(&self, _channel: &str, p: &rotor_protocol::Publication) -> Sent {
        self.handed
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(p.data.as_bytes()).into_owned());
        let (answer, confirmed) = tokio::sync::oneshot::channel();
        self.held.lock().unwrap().push(answer);
        Sent::waiting(confirmed)
    }
    async fn publish_join(
        &self,
        _: &str,
        _: &rotor_protocol::ClientInfo,
    ) -> Result<(), crate::CoreError> {
        Ok(())
    }
    async fn publish_leave(
        &self,
        _: &str,
        _: &rotor_protocol::ClientInfo,
    ) -> Result<(), crate::CoreError> {
        Ok(())
    }
    async fn publish_control(&self, _: &Control) -> Result<(), crate::CoreError> {
        Ok(())
    }
    async fn subscribe(&self, _: &str) -> Result<(), crate::CoreError> {
        Ok(())
    }
    async fn unsubscribe(&self, _: &str) -> Result<(), crate::CoreError> {
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, crate::CoreError> {
        Ok(Vec::new())
    }
    async fn send_to_node(&self, _: &str, _: &str) -> Result<bool, crate::CoreError> {
        Ok(false)
    }
    async fn shutdown(&self) {}
}

fn publishing_node(broker: &Arc<HeldBroker>) -> Node {
    node_on(broker.clone(), |c| {
        c.channel.namespaces[0].allow_publish_for_client = true;
    })
}

impl Client {
    /// The ids of the next `n` replies, however the session grouped them into writes.
    async fn reply_ids(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match self.rx.recv().await {
                Some(Out::Messages(m)) => ids.extend(m.iter().filter_map(|text| {
                    let v: Value = serde_json::from_str(text).unwrap();
                    assert!(v.get("error").is_none(), "{v}");
                    v["id"].as_u64()
                })),
                other => panic!("expected replies, got {other:?}"),
            }
        }
        ids
    }

    fn publish(&self, id: u64, n: u64) {
        self.send(json!({"id": id, "publish": {"channel": "open:x", "data": n}}));
    }
}

#[tokio::test(start_paused = true)]
async fn publishes_of_one_connection_are_handed_over_in_order_without_waiting_for_each() {
    let broker = Arc::new(HeldBroker::default());
    let node = publishing_node(&broker);
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    for n in 0..10 {
        c.publish(n + 2, n);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // All ten reached the broker, in the order sent, though none was confirmed yet: a
    // broker a round trip away gets them together, not one per round trip.
    let want: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(broker.handed(), want);
    assert!(
        c.rx.try_recv().is_err(),
        "no reply before the broker confirms"
    );
    broker.confirm_all();
    let mut ids = c.reply_ids(10).await;
    ids.sort();
    assert_eq!(ids, (2..12).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_command_after_publishes_waits_until_they_are_done() {
    let broker = Arc::new(HeldBroker::default());
    let node = publishing_node(&broker);
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    c.publish(2, 0);
    c.publish(3, 1);
    c.send(json!({"id": 4, "ping": {}}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.rx.try_recv().is_err(), "the ping waits for the publishes");
    broker.confirm_all();
    let ids = c.reply_ids(3).await;
    assert_eq!(ids.last(), Some(&4), "{ids:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_has_a_bounded_number_of_publishes_on_their_way() {
    let broker = Arc::new(HeldBroker::default());
    let node = publishing_node(&broker);
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    for n in 0..100 {
        c.publish(n + 2, n);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.handed().len(), 64, "the rest wait for the oldest");
    let mut answered = 0;
    while answered < 100 {
        broker.confirm_all();
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok(Out::Messages(m)) = c.rx.try_recv() {
            answered += m.len();
        }
    }
    let want: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(broker.handed(), want, "in order across the waits");
}

#[tokio::test(start_paused = true)]
async fn a_positioned_subscriber_gets_a_publication_once_though_it_also_came_live_late() {
    let broker = Arc::new(LocalBroker::default());
    let mut storage = testing::storage_down();
    storage.history = Arc::new(AtOffset3);
    let node = node_with(storage, broker.clone(), |_| {});
    let mut c = Client::start(&node);
    c.connect(json!({"sub": "alice"})).await;
    c.send(json!({"id": 2, "subscribe": {"channel": "positioned:x"}}));
    let r = c.reply().await;
    assert_eq!(r["subscribe"]["offset"], 3, "{r}");
    // Publication 3 arrives live only now (from another node, after this node's join read
    // the position), then publication 4.
    let late = |offset: u64| rotor_protocol::Publication {
        data: rotor_protocol::Raw::from_value(&json!(offset)),
        offset,
        ..Default::default()
    };
    broker
        .publish("positioned:x", &late(3))
        .confirmed()
        .await
        .unwrap();
    broker
        .publish("positioned:x", &late(4))
        .confirmed()
        .await
        .unwrap();
    let push = c.message().await;
    assert_eq!(
        push["push"]["pub"]["offset"], 4,
        "3 was already had: {push}"
    );
    // From then on nothing is dropped, whatever its offset says.
    broker
        .publish("positioned:x", &late(2))
        .confirmed()
        .await
        .unwrap();
    let push = c.message().await;
    assert_eq!(push["push"]["pub"]["offset"], 2, "{push}");

    // Only just after the subscribe: a stream that started over long after (offsets from 1
    // again) is not taken for old publications.
    c.send(json!({"id": 3, "unsubscribe": {"channel": "positioned:x"}}));
    c.reply().await;
    c.send(json!({"id": 4, "subscribe": {"channel": "positioned:x"}}));
    assert_eq!(c.reply().await["subscribe"]["offset"], 3);
    tokio::time::sleep(Duration::from_secs(11)).await;
    broker
        .publish("positioned:x", &late(1))
        .confirmed()
        .await
        .unwrap();
    let push = c.message().await;
    assert_eq!(push["push"]["pub"]["offset"], 1, "{push}");
}

/// History whose stream stands at offset 3 (epoch "e"), with nothing to recover.
struct AtOffset3;

#[async_trait::async_trait]
impl crate::storage::HistoryStore for AtOffset3 {
    fn add(
        &self,
        _: &str,
        _: rotor_protocol::Publication,
        _: &crate::storage::HistoryOptions,
    ) -> crate::storage::BoxFuture<Result<rotor_protocol::StreamPosition, crate::CoreError>> {
        Box::pin(async { Err(crate::CoreError::Unavailable("read only (test)".into())) })
    }
    async fn read(
        &self,
        _: &str,
        _: &crate::storage::HistoryFilter,
        _: &crate::storage::HistoryOptions,
    ) -> Result<crate::storage::HistoryPage, crate::CoreError> {
        Ok(crate::storage::HistoryPage {
            publications: Vec::new(),
            position: rotor_protocol::StreamPosition {
                offset: 3,
                epoch: "e".into(),
            },
        })
    }
    async fn remove(&self, _: &str) -> Result<(), crate::CoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn reload_swaps_the_keys_and_refuses_a_proxy_that_was_not_built() {
    let node = node(|_| {});
    let verify = |node: &Node, secret: &str| {
        let t = rotor_auth::sign_hmac(&json!({"sub": "u", "exp": now(node) + 60}), secret).unwrap();
        let verifier = node.verifier();
        let at = now(node);
        async move { verifier.verify_connect(&t, at).await.is_ok() }
    };
    assert!(verify(&node, SECRET).await);
    let mut next = node.config().clone();
    next.client.token.hmac_secret_key = "rotated".into();
    node.reload(&next).unwrap();
    assert!(verify(&node, "rotated").await, "the new key");
    assert!(!verify(&node, SECRET).await, "the old key is refused");
    // A namespace that turns on a subscribe proxy this node never built: refused, and
    // nothing changed (the rotated key still holds).
    let mut with_proxy = next.clone();
    with_proxy.client.token.hmac_secret_key = "third".into();
    with_proxy.channel.without_namespace.subscribe_proxy_enabled = true;
    let err = node.reload(&with_proxy).unwrap_err().to_string();
    assert!(
        err.contains("subscribe proxy was not in use at start"),
        "{err}"
    );
    assert!(verify(&node, "rotated").await);
}

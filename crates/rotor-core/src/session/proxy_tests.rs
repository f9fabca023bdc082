//! The session with proxies to the backend, on tokio's paused clock: when the core asks,
//! and what each answer (or a backend that cannot be asked) means for the client. The
//! backend here is scripted; the HTTP proxy is tested against a real one in rotor-proxy and
//! the e2e tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rotor_protocol::{Disconnect, Error, Raw};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::LocalBroker;
use crate::config::{ChannelOptions, CoreConfig, NamespaceConfig, ProxyConfig, RpcOptions};
use crate::events::NoObserver;
use crate::proxy::{
    Answer, Caller, ConnectCall, ConnectGrant, Proxies, Proxy, ProxyError, ProxyResult,
    PublishGrant, RefreshGrant, SubscribeCall, SubscribeGrant,
};
use crate::testing::{self, Out};
use crate::Node;

/// One scripted answer.
#[derive(Clone)]
enum Script {
    Grant(Value),
    Empty,
    Error(u32),
    Disconnect(u16),
    Down,
    /// Fails after taking this long (a backend that times out).
    SlowDown(Duration),
}

/// A backend that answers each call with the next scripted answer for its kind (the last
/// one repeats) and records the calls.
#[derive(Default)]
struct Backend {
    scripts: Mutex<std::collections::HashMap<&'static str, VecDeque<Script>>>,
    calls: Mutex<Vec<(&'static str, Instant, Value)>>,
}

impl Backend {
    fn script(&self, kind: &'static str, answers: Vec<Script>) {
        self.scripts.lock().unwrap().insert(kind, answers.into());
    }

    fn calls(&self, kind: &str) -> Vec<(Instant, Value)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, at, v)| (*at, v.clone()))
            .collect()
    }

    /// When each call of `kind` came, in whole seconds after Unix second `t0`.
    fn call_times(&self, kind: &str, node: &Node, t0: u64) -> Vec<f64> {
        self.calls(kind)
            .iter()
            .map(|(i, _)| since(node, t0, *i).round())
            .collect()
    }

    async fn answer<T>(
        &self,
        kind: &'static str,
        seen: Value,
        grant: impl FnOnce(&Value) -> T,
    ) -> ProxyResult<T> {
        self.calls
            .lock()
            .unwrap()
            .push((kind, Instant::now(), seen));
        let script = {
            let mut s = self.scripts.lock().unwrap();
            let q = s.entry(kind).or_default();
            if q.len() > 1 {
                q.pop_front()
            } else {
                q.front().cloned()
            }
        };
        if let Some(Script::SlowDown(took)) = &script {
            tokio::time::sleep(*took).await;
        }
        match script.unwrap_or(Script::Empty) {
            Script::Grant(v) => Ok(Answer::Granted(grant(&v))),
            Script::Empty => Ok(Answer::Empty),
            Script::Error(code) => Ok(Answer::Error(Error {
                code,
                message: "backend says no".into(),
                temporary: false,
            })),
            Script::Disconnect(code) => Ok(Answer::Disconnect(Disconnect {
                code,
                reason: "backend says bye".into(),
            })),
            Script::Down => Err(ProxyError("connection refused".into())),
            Script::SlowDown(_) => Err(ProxyError("no answer in time".into())),
        }
    }
}

fn raw(v: &Value) -> Option<Raw> {
    (!v.is_null()).then(|| Raw::from_value(v))
}

fn refresh_grant(v: &Value) -> RefreshGrant {
    RefreshGrant {
        expired: v["expired"].as_bool().unwrap_or(false),
        expire_at: v["expire_at"].as_u64().unwrap_or(0),
        info: raw(&v["info"]),
        meta: None,
    }
}

#[async_trait]
impl Proxy for Backend {
    async fn connect(&self, caller: &Caller, call: &ConnectCall) -> ProxyResult<ConnectGrant> {
        let seen = json!({"client": &*caller.client, "name": call.name,
                          "headers": caller.headers.as_ref().map(|h| h.emulated.clone())});
        self.answer("connect", seen, |v| ConnectGrant {
            user: v["user"].as_str().unwrap_or("").into(),
            expire_at: v["expire_at"].as_u64(),
            info: raw(&v["info"]),
            data: raw(&v["data"]),
            channels: serde_json::from_value(v["channels"].clone()).unwrap_or_default(),
            ..ConnectGrant::default()
        })
        .await
    }

    async fn refresh(&self, caller: &Caller) -> ProxyResult<RefreshGrant> {
        self.answer("refresh", json!({"user": &*caller.user}), refresh_grant)
            .await
    }

    async fn subscribe(
        &self,
        caller: &Caller,
        call: &SubscribeCall,
    ) -> ProxyResult<SubscribeGrant> {
        let seen = json!({"user": &*caller.user, "channel": call.channel});
        self.answer("subscribe", seen, |v| SubscribeGrant {
            info: raw(&v["info"]),
            data: raw(&v["data"]),
            expire_at: v["expire_at"].as_u64().unwrap_or(0),
            ..SubscribeGrant::default()
        })
        .await
    }

    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &Raw,
    ) -> ProxyResult<PublishGrant> {
        let seen = json!({"user": &*caller.user, "channel": channel, "data": data.get()});
        self.answer("publish", seen, |v| PublishGrant {
            data: raw(&v["data"]),
            skip_history: false,
            idempotency_key: v["idempotency_key"].as_str().map(String::from),
            delta: false,
        })
        .await
    }

    async fn sub_refresh(&self, caller: &Caller, channel: &str) -> ProxyResult<RefreshGrant> {
        let seen = json!({"user": &*caller.user, "channel": channel});
        self.answer("sub_refresh", seen, refresh_grant).await
    }

    async fn rpc(
        &self,
        caller: &Caller,
        method: &str,
        data: Option<&Raw>,
    ) -> ProxyResult<Option<Raw>> {
        let seen = json!({"user": &*caller.user, "method": method,
                          "data": data.map(|d| d.get().into_owned())});
        self.answer("rpc", seen, |v| raw(&v["data"])).await
    }
}

/// A node whose every proxy is `backend`: connect, refresh (when `refresh`), and in
/// namespace `px` subscribe, publish and sub_refresh; RPC without namespace and in `rpc`
/// (namespace `off` has its proxy disabled).
fn node(backend: &Arc<Backend>, refresh: bool, tune: impl FnOnce(&mut CoreConfig)) -> Node {
    let mut config = CoreConfig::default();
    config.client.ping_interval = Duration::ZERO;
    config.client.expired_close_delay = Duration::from_secs(10);
    config.client.expired_sub_close_delay = Duration::from_secs(10);
    let endpoint = ProxyConfig {
        endpoint: "scripted".into(),
        ..ProxyConfig::default()
    };
    config.client.proxy.connect.enabled = true;
    config.client.proxy.connect.endpoint = "scripted".into();
    config.client.proxy.refresh.enabled = refresh;
    config.client.proxy.refresh.endpoint = "scripted".into();
    config.channel.proxy.subscribe = endpoint.clone();
    config.channel.proxy.publish = endpoint.clone();
    config.channel.proxy.sub_refresh = endpoint.clone();
    config.rpc.proxy = endpoint;
    config.rpc.without_namespace.proxy_enabled = true;
    config.rpc.namespaces = vec![
        RpcOptions {
            name: "rpc".into(),
            proxy_enabled: true,
            ..RpcOptions::default()
        },
        RpcOptions {
            name: "off".into(),
            ..RpcOptions::default()
        },
    ];
    config.channel.without_namespace = ChannelOptions::default();
    config.channel.namespaces = vec![NamespaceConfig {
        name: "px".into(),
        presence: true,
        subscribe_proxy_enabled: true,
        publish_proxy_enabled: true,
        sub_refresh_proxy_enabled: true,
        ..NamespaceConfig::default()
    }];
    tune(&mut config);
    let b = backend.clone();
    let proxies = Proxies::from_config(&config, &mut |_, _| Ok(b.clone() as Arc<dyn Proxy>))
        .expect("valid proxies");
    Node::with_proxies(
        config,
        testing::storage_down(),
        Arc::new(LocalBroker::default()),
        Arc::new(NoObserver),
        proxies,
    )
    .expect("valid config")
}

struct Client {
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<Out>,
}

impl Client {
    fn start(node: &Node) -> Client {
        let (tx, rx) = testing::session_with(node, testing::params());
        Client { tx, rx }
    }

    fn send(&self, v: Value) {
        self.tx.send(v.to_string()).unwrap();
    }

    async fn message(&mut self) -> Value {
        match self.rx.recv().await {
            Some(Out::Messages(m)) => serde_json::from_str(&m[0]).unwrap(),
            Some(Out::Closed(d, _)) => panic!("closed with {d:?} while a message was due"),
            None => panic!("the session ended"),
        }
    }

    async fn closed(&mut self) -> (Disconnect, Instant) {
        loop {
            match self.rx.recv().await {
                Some(Out::Messages(_)) => continue,
                Some(Out::Closed(d, at)) => return (d, at),
                None => panic!("the session ended without closing"),
            }
        }
    }

    async fn connect(&mut self) -> Value {
        self.send(json!({"id": 1, "connect": {"name": "js"}}));
        self.message().await
    }
}

fn now(node: &Node) -> u64 {
    node.clock().unix()
}

/// Seconds from Unix second `t0` to `at` on the node's clock (the paused clock starts
/// between two whole seconds; expiries fall on whole seconds).
fn since(node: &Node, t0: u64, at: Instant) -> f64 {
    let now_ms = node.clock().unix_ms() as f64;
    let ago = Instant::now().saturating_duration_since(at).as_secs_f64() * 1000.0;
    (now_ms - ago) / 1000.0 - t0 as f64
}

#[tokio::test(start_paused = true)]
async fn the_connect_proxy_decides_connects_without_a_token() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    let exp = now(&node) + 60;
    backend.script(
        "connect",
        vec![
            Script::Grant(json!({"user": "alice", "expire_at": exp, "data": {"hi": 1}})),
            Script::Empty,
            Script::Error(1001),
            Script::Down,
            Script::Disconnect(4501),
        ],
    );
    let mut c = Client::start(&node);
    let r = c.connect().await;
    assert_eq!(r["connect"]["data"], json!({"hi": 1}), "{r}");
    // Without the refresh proxy the client refreshes: it is told when.
    assert_eq!(r["connect"]["expires"], true, "{r}");
    assert_eq!(r["connect"]["ttl"], 60, "{r}");
    assert_eq!(backend.calls("connect")[0].1["name"], "js");

    // No result and no anonymous connects: 3501.
    let mut c = Client::start(&node);
    c.send(json!({"id": 1, "connect": {}}));
    assert_eq!(c.closed().await.0.code, 3501);
    // The backend's error, as it gave it.
    let mut c = Client::start(&node);
    let r = c.connect().await;
    assert_eq!(r["error"]["code"], 1001, "{r}");
    assert_eq!(r["error"]["message"], "backend says no", "{r}");
    // A backend that cannot be asked: a temporary error, the SDK tries again.
    let r = {
        c.send(json!({"id": 2, "connect": {}}));
        c.message().await
    };
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // The backend's disconnect, with its code.
    c.send(json!({"id": 3, "connect": {}}));
    let (d, _) = c.closed().await;
    assert_eq!((d.code, &*d.reason), (4501, "backend says bye"));
    assert_eq!(
        node.info().num_clients,
        1,
        "only the granted connection is in"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_goes_to_the_verifier_and_never_to_the_connect_proxy() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |c| {
        c.client.token.hmac_secret_key = "k".into()
    });
    let mut c = Client::start(&node);
    c.send(json!({"id": 1, "connect": {"token": "not-a-jwt"}}));
    assert_eq!(c.closed().await.0, Disconnect::INVALID_TOKEN);
    assert!(backend.calls("connect").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_refresh_proxy_extends_in_place_then_expired_closes_with_3005() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, true, |_| {});
    let t0 = now(&node);
    backend.script(
        "connect",
        vec![Script::Grant(
            json!({"user": "alice", "expire_at": t0 + 10}),
        )],
    );
    backend.script(
        "refresh",
        vec![
            Script::Grant(json!({"expire_at": t0 + 30})),
            Script::Grant(json!({"expired": true})),
        ],
    );
    let mut c = Client::start(&node);
    let r = c.connect().await;
    // The server refreshes: the client is not told to.
    assert!(r["connect"].get("expires").is_none(), "{r}");
    assert!(r["connect"].get("ttl").is_none(), "{r}");
    let (d, at) = c.closed().await;
    assert_eq!(d, Disconnect::EXPIRED);
    let calls = backend.calls("refresh");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1["user"], "alice");
    // Asked at each expiry, with no grace added; closed at the second answer.
    let secs = |i: Instant| since(&node, t0, i);
    assert!(
        (secs(calls[0].0) - 10.0).abs() < 0.1,
        "{}",
        secs(calls[0].0)
    );
    assert!(
        (secs(calls[1].0) - 30.0).abs() < 0.1,
        "{}",
        secs(calls[1].0)
    );
    assert!((secs(at) - 30.0).abs() < 0.1, "{}", secs(at));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_command_is_refused_when_the_server_refreshes() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, true, |_| {});
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "refresh": {"token": "x"}}));
    assert_eq!(c.closed().await.0.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn a_backend_down_at_refresh_is_asked_again_until_the_grace_ends() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, true, |_| {});
    let t0 = now(&node);
    backend.script(
        "connect",
        vec![Script::Grant(json!({"user": "alice", "expire_at": t0 + 5}))],
    );
    backend.script("refresh", vec![Script::Down]);
    let mut c = Client::start(&node);
    c.connect().await;
    let (d, at) = c.closed().await;
    assert_eq!(d, Disconnect::EXPIRED);
    let closed = since(&node, t0, at);
    assert!(
        (15.0..15.5).contains(&closed),
        "closed {closed} s in: expiry 5 + grace 10"
    );
    // At 5, then 1, 2, 4 s later, then every 8 s: 5, 6, 8, 12 (and none after the close).
    let calls = backend.call_times("refresh", &node, t0);
    assert_eq!(calls, vec![5.0, 6.0, 8.0, 12.0], "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_backend_back_within_the_grace_keeps_the_connection() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, true, |_| {});
    let t0 = now(&node);
    backend.script(
        "connect",
        vec![Script::Grant(json!({"user": "alice", "expire_at": t0 + 5}))],
    );
    backend.script(
        "refresh",
        vec![
            Script::Down,
            Script::Down,
            Script::Grant(json!({"expire_at": t0 + 3600})),
        ],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    c.send(json!({"id": 2, "ping": {}}));
    assert!(c.message().await.get("ping").is_some(), "still connected");
    assert_eq!(backend.calls("refresh").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn subscribe_and_publish_proxies_replace_the_namespace_permissions() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    backend.script(
        "subscribe",
        vec![
            Script::Grant(json!({"info": {"role": "admin"}, "data": {"welcome": true}})),
            Script::Error(403),
        ],
    );
    backend.script(
        "publish",
        vec![
            Script::Grant(json!({"data": {"text": "rewritten"}})),
            Script::Error(1002),
            Script::Down,
        ],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    // `px` allows nothing by its options: the backend decides.
    c.send(json!({"id": 2, "subscribe": {"channel": "px:room"}}));
    let r = c.message().await;
    assert_eq!(r["subscribe"]["data"], json!({"welcome": true}), "{r}");
    c.send(json!({"id": 3, "subscribe": {"channel": "px:secret"}}));
    let r = c.message().await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    // Private channels still need a token: the backend is not asked.
    c.send(json!({"id": 4, "subscribe": {"channel": "$px:private"}}));
    assert_eq!(c.message().await["error"]["code"], 103);
    assert_eq!(backend.calls("subscribe").len(), 2);

    c.send(json!({"id": 5, "publish": {"channel": "px:room", "data": {"text": "hi"}}}));
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(c.message().await);
    }
    let push = got
        .iter()
        .find(|m| m.get("push").is_some())
        .expect("the publication");
    assert_eq!(push["push"]["pub"]["data"], json!({"text": "rewritten"}));
    assert_eq!(
        push["push"]["pub"]["info"]["chan_info"],
        json!({"role": "admin"})
    );
    c.send(json!({"id": 6, "publish": {"channel": "px:room", "data": {"text": "no"}}}));
    assert_eq!(c.message().await["error"]["code"], 1002);
    c.send(json!({"id": 7, "publish": {"channel": "px:room", "data": {"text": "down"}}}));
    let r = c.message().await;
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["temporary"].clone()),
        (json!(100), json!(true))
    );
    assert_eq!(backend.calls("publish")[0].1["data"], r#"{"text":"hi"}"#);
}

#[tokio::test(start_paused = true)]
async fn the_sub_refresh_proxy_extends_then_ends_a_subscription_with_2501() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    let t0 = now(&node);
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    backend.script(
        "subscribe",
        vec![Script::Grant(json!({"expire_at": t0 + 10}))],
    );
    backend.script(
        "sub_refresh",
        vec![
            Script::Down,
            Script::Grant(json!({"expire_at": t0 + 40})),
            Script::Grant(json!({"expired": true})),
        ],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "subscribe": {"channel": "px:room"}}));
    let r = c.message().await;
    assert!(
        r["subscribe"].get("expires").is_none(),
        "the server refreshes: {r}"
    );
    let m = c.message().await;
    assert_eq!(m["push"]["unsubscribe"]["code"], 2501, "{m}");
    assert_eq!(m["push"]["channel"], "px:room");
    let calls = backend.call_times("sub_refresh", &node, t0);
    assert_eq!(calls, vec![10.0, 11.0, 40.0], "{calls:?}");
    assert_eq!(node.hub().num_channels(), 0);
}

#[tokio::test(start_paused = true)]
async fn rpc_goes_to_the_namespace_proxy_and_send_closes_with_3508() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    backend.script(
        "rpc",
        vec![
            Script::Grant(json!({"data": {"sum": 3}})),
            Script::Error(1500),
        ],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "rpc": {"method": "add", "data": {"a": 1, "b": 2}}}));
    assert_eq!(c.message().await["rpc"]["data"], json!({"sum": 3}));
    c.send(json!({"id": 3, "rpc": {"method": "rpc:fail"}}));
    assert_eq!(c.message().await["error"]["code"], 1500);
    c.send(json!({"id": 4, "rpc": {"method": "nowhere:x"}}));
    assert_eq!(c.message().await["error"]["code"], 104, "unknown namespace");
    c.send(json!({"id": 5, "rpc": {"method": "off:x"}}));
    assert_eq!(c.message().await["error"]["code"], 108, "proxy not enabled");
    let calls = backend.calls("rpc");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1["method"], "add");
    assert_eq!(calls[0].1["data"], r#"{"a":1,"b":2}"#);
    c.send(json!({"send": {"data": {}}}));
    assert_eq!(c.closed().await.0, Disconnect::NOT_AVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn without_rpc_proxies_rpc_is_108() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |c| {
        c.rpc = Default::default();
    });
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "rpc": {"method": "add"}}));
    assert_eq!(c.message().await["error"]["code"], 108);
}

#[tokio::test(start_paused = true)]
async fn invalidating_a_users_tokens_cuts_off_proxied_connections_too() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    let mut c = Client::start(&node);
    c.connect().await;
    // Until an hour from now: the backend's yes is not enough.
    let until = now(&node) + 3600;
    // The storage here is down: the invalidation holds on this node all the same (its
    // error only says the audit entry was not stored).
    let _ = node
        .invalidate_user_tokens("alice", until, "", until, "leaked session", "test")
        .await;
    assert_eq!(c.closed().await.0.code, 3500);
    let mut again = Client::start(&node);
    again.send(json!({"id": 1, "connect": {}}));
    assert_eq!(again.closed().await.0.code, 3500);
    assert_eq!(
        backend.calls("connect").len(),
        2,
        "asked, then refused anyway"
    );
}

#[tokio::test(start_paused = true)]
async fn emulated_headers_reach_the_backend_only_when_listed() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |c| {
        c.client.proxy.connect.emulated_headers = vec!["X-Session".into()];
    });
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    let mut c = Client::start(&node);
    c.send(json!({"id": 1, "connect": {"headers": {"x-session": "s1", "x-other": "o"}}}));
    c.message().await;
    assert_eq!(
        backend.calls("connect")[0].1["headers"],
        json!([["x-session", "s1"]])
    );
}

#[test]
fn proxy_configuration_errors_name_the_key() {
    let backend = Arc::new(Backend::default());
    let build = |tune: &dyn Fn(&mut CoreConfig)| {
        let mut config = CoreConfig::default();
        tune(&mut config);
        let b = backend.clone();
        Proxies::from_config(&config, &mut |_, _| Ok(b.clone() as Arc<dyn Proxy>)).map(|_| ())
    };
    let err = build(&|c| c.client.proxy.connect.enabled = true).unwrap_err();
    assert_eq!(err, "client.proxy.connect.endpoint is not set");
    let err = build(&|c| c.channel.without_namespace.subscribe_proxy_enabled = true).unwrap_err();
    assert_eq!(err, "channel.proxy.subscribe.endpoint is not set");
    let err = build(&|c| {
        c.channel.without_namespace.publish_proxy_name = crate::config::ProxyName("nope".into())
    })
    .unwrap_err();
    assert!(
        err.contains("publish_proxy_name") && err.contains("nope"),
        "{err}"
    );
    let named = |name: &str| crate::config::NamedProxyConfig {
        name: name.into(),
        endpoint: "x".into(),
        ..Default::default()
    };
    let err = build(&|c| c.proxies = vec![named("default")]).unwrap_err();
    assert!(err.contains("reserved"), "{err}");
    let err = build(&|c| c.proxies = vec![named("a1"), named("a1")]).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    // A named proxy serves what names it.
    build(&|c| {
        c.proxies = vec![named("auth")];
        c.rpc.without_namespace.proxy_enabled = true;
        c.rpc.without_namespace.proxy_name = crate::config::ProxyName("auth".into());
    })
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_backend_down_at_sub_refresh_ends_the_subscription_when_the_grace_ends() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    let t0 = now(&node);
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    backend.script(
        "subscribe",
        vec![Script::Grant(json!({"expire_at": t0 + 10}))],
    );
    backend.script("sub_refresh", vec![Script::Down]);
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "subscribe": {"channel": "px:room"}}));
    c.message().await;
    let m = c.message().await;
    assert_eq!(m["push"]["unsubscribe"]["code"], 2501, "{m}");
    // Ended when the grace (10 s) ran out, not at the next retry after it.
    let ended = since(&node, t0, Instant::now());
    assert!((20.0..20.5).contains(&ended), "ended {ended} s after t0");
    let calls = backend.call_times("sub_refresh", &node, t0);
    assert_eq!(calls, vec![10.0, 11.0, 13.0, 17.0], "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_count_from_the_end_of_a_slow_failed_call() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, true, |_| {});
    let t0 = now(&node);
    backend.script(
        "connect",
        vec![Script::Grant(json!({"user": "alice", "expire_at": t0 + 5}))],
    );
    backend.script("refresh", vec![Script::SlowDown(Duration::from_secs(3))]);
    let mut c = Client::start(&node);
    c.connect().await;
    let (d, at) = c.closed().await;
    assert_eq!(d, Disconnect::EXPIRED);
    // Calls at 5 (fails at 8), 8 + 1 = 9 (fails at 12), 12 + 2 = 14 (fails at 17, past the
    // grace's end at 15: closed then).
    let calls = backend.call_times("refresh", &node, t0);
    assert_eq!(calls, vec![5.0, 9.0, 14.0], "{calls:?}");
    let closed = since(&node, t0, at);
    assert!((17.0..17.5).contains(&closed), "{closed}");
}

#[tokio::test(start_paused = true)]
async fn a_sub_refresh_command_is_refused_when_the_server_refreshes_the_subscription() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    let t0 = now(&node);
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    backend.script(
        "subscribe",
        vec![Script::Grant(json!({"expire_at": t0 + 60}))],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    c.send(json!({"id": 2, "subscribe": {"channel": "px:room"}}));
    c.message().await;
    c.send(json!({"id": 3, "sub_refresh": {"channel": "px:room", "token": "x"}}));
    assert_eq!(c.closed().await.0.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn each_subscription_keeps_its_own_retry() {
    let backend = Arc::new(Backend::default());
    let node = node(&backend, false, |_| {});
    let t0 = now(&node);
    backend.script("connect", vec![Script::Grant(json!({"user": "alice"}))]);
    // Both expire at 10; the backend fails the first call, then extends whatever it is
    // asked to 100.
    backend.script(
        "subscribe",
        vec![Script::Grant(json!({"expire_at": t0 + 10}))],
    );
    backend.script(
        "sub_refresh",
        vec![Script::Down, Script::Grant(json!({"expire_at": t0 + 100}))],
    );
    let mut c = Client::start(&node);
    c.connect().await;
    for (id, ch) in [(2, "px:a"), (3, "px:b")] {
        c.send(json!({"id": id, "subscribe": {"channel": ch}}));
        c.message().await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    c.send(json!({"id": 4, "ping": {}}));
    let m = c.message().await;
    assert!(
        m.get("ping").is_some(),
        "both kept, no 2501 before the ping: {m}"
    );
    let calls: Vec<(f64, String)> = backend
        .calls("sub_refresh")
        .iter()
        .map(|(i, v)| {
            let ch = v["channel"].as_str().unwrap().to_string();
            (since(&node, t0, *i).round(), ch)
        })
        .collect();
    // At 10 the first call fails and the other is not asked in the same turn; both are
    // asked again at 11 and extended.
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0].0, 10.0, "{calls:?}");
    assert!(calls[1..].iter().all(|(at, _)| *at == 11.0), "{calls:?}");
    let mut asked: Vec<&str> = calls[1..].iter().map(|(_, ch)| ch.as_str()).collect();
    asked.sort();
    assert_eq!(asked, vec!["px:a", "px:b"]);
}

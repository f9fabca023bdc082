//! Channel features the SDKs speak, driven by centrifuge-js and centrifuge-python with
//! publications from `cent`: the publication tags filter (`allow_tags_filter`), cache
//! recovery (`force_recovery_mode = "cache"`, `auto_cache_recover`) and idempotent publish
//! (`idempotency_key`), on the in-memory node, on Postgres storage and on the Redis engine.

use std::time::Duration;

use rotor_core::config::{DeltaType, NamespaceConfig, RecoveryMode};
use rotor_server::config::{Config, EngineKind};
use rotor_tests::*;
use serde_json::{json, Value};

use super::sdk::{client_env, cmd};

const T: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Postgres,
    Redis,
}

/// One test per backend for a flow `async fn(test: &str, Backend)`, each named as given
/// (the name also names its Postgres schema or Redis prefix).
macro_rules! per_backend {
    ($flow:ident: $($name:ident => $backend:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $flow(stringify!($name), Backend::$backend).await;
            }
        )+
    };
}

/// A server on one backend, and what to clean up after it.
struct Setup {
    server: TestServer,
    pg: Option<PgSchema>,
    config: Config,
}

impl Setup {
    /// Starts a server with `namespaces` added to the test config, on `backend`; `None`
    /// (skipped loudly, a failure under CI) when the SDKs or the backend are not there.
    async fn start(
        test: &str,
        backend: Backend,
        namespaces: Vec<NamespaceConfig>,
    ) -> Option<Setup> {
        Setup::start_with(test, backend, namespaces, |_| {}).await
    }

    /// [`Setup::start`] with more changes to the config.
    async fn start_with(
        test: &str,
        backend: Backend,
        namespaces: Vec<NamespaceConfig>,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<Setup> {
        if !sdks_available(test) {
            return None;
        }
        let mut config: Config = test_config();
        config.channel.namespaces.extend(namespaces);
        tweak(&mut config);
        let mut pg = None;
        match backend {
            Backend::Memory => {}
            Backend::Postgres => {
                let schema = PgSchema::create(test).await?;
                schema.configure(&mut config);
                pg = Some(schema);
            }
            Backend::Redis => {
                if !redis_available(test, "127.0.0.1:6379").await {
                    return None;
                }
                config.engine.kind = EngineKind::Redis;
                config.engine.redis.address = vec!["127.0.0.1:6379".into()];
                config.engine.redis.prefix = format!("rotor-e2e-{test}-{}", std::process::id());
            }
        }
        Some(Setup {
            server: TestServer::start(config.clone()).await,
            pg,
            config,
        })
    }

    /// Another node on the same storage and broker.
    async fn another_node(&self) -> TestServer {
        TestServer::start(self.config.clone()).await
    }

    async fn stop(self) {
        self.server.shutdown().await;
        if let Some(pg) = self.pg {
            pg.drop_now().await;
        }
    }
}

/// A namespace anyone connected may subscribe to, with history and forced recovery.
fn namespace(name: &str) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        allow_subscribe_for_client: true,
        allow_history_for_subscriber: true,
        ..NamespaceConfig::default()
    }
}

/// A started SDK client (`node` or `python`) of `user`, connected.
async fn connected(server: &TestServer, sdk: &str, user: &str) -> Script {
    connected_with(sdk, &client_env(server, user_token(user))).await
}

/// A started SDK client (`node` or `python`) with this environment, connected.
async fn connected_with(sdk: &str, env: &[(&str, String)]) -> Script {
    let mut s = if sdk == "node" {
        Script::node("client.js", env)
    } else {
        Script::python("client.py", env)
    };
    s.expect("ready", T).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    s.expect("connected", T).await;
    s
}

/// Ends SDK clients and waits for them to exit cleanly.
async fn quit(scripts: impl IntoIterator<Item = Script>) {
    for mut s in scripts {
        s.send(&json!({"op": "quit"}).to_string()).await;
        s.finish(T).await;
    }
}

async fn subscribe(s: &mut Script, channel: &str, options: Value) -> Value {
    s.send(&json!({"op": "subscribe", "channel": channel, "options": options}).to_string())
        .await;
    s.expect_any(&["subscribed", "unsubscribed", "sub_error"], T)
        .await
}

async fn publish(server: &TestServer, channel: &str, data: Value, tags: Value) -> Value {
    let r = cent(
        server,
        "publish",
        json!({"channel": channel, "data": data, "tags": tags}),
    )
    .await;
    assert!(r.get("error").is_none(), "publish failed: {r}");
    r
}

/// The `n` of the publications the client reports, in order, up to and including `last`
/// (publications arrive in order, so anything filtered out would have come before it).
async fn received_until(s: &mut Script, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let p = s.expect("publication", T).await;
        got.push(p["data"]["n"].as_u64().expect("data has n"));
    }
    got
}

/// BTC publications priced over 100.
fn btc_over_100() -> Value {
    json!({"op": "and", "nodes": [
        {"key": "ticker", "cmp": "eq", "val": "BTC"},
        {"key": "price", "cmp": "gt", "val": "100"},
    ]})
}

/// Publishes n = first.. with these (ticker, price) tags.
async fn publish_ticks(server: &TestServer, channel: &str, first: u64, ticks: &[(&str, &str)]) {
    for (i, (ticker, price)) in ticks.iter().enumerate() {
        let n = first + i as u64;
        publish(
            server,
            channel,
            json!({"n": n}),
            json!({"ticker": ticker, "price": price}),
        )
        .await;
    }
}

/// One SDK through the tags filter: only matching publications arrive, live and recovered;
/// a filter where the namespace does not allow one, or a filter that makes no sense, is
/// refused with 107.
async fn tags_filter_flow(test: &str, backend: Backend, sdk: &str) {
    let ns = NamespaceConfig {
        allow_tags_filter: true,
        ..namespace("ticks")
    };
    let Some(setup) = Setup::start(test, backend, vec![ns, namespace("plain")]).await else {
        return;
    };
    let server = &setup.server;
    let mut s = connected(server, sdk, "filterer").await;
    let sub = subscribe(&mut s, "ticks:x", json!({"tagsFilter": btc_over_100()})).await;
    assert_eq!(sub["event"], "subscribed", "{sub}");

    publish_ticks(
        server,
        "ticks:x",
        1,
        &[
            ("BTC", "150"),
            ("ETH", "150"),
            ("BTC", "50"),
            ("BTC", "100.01"),
        ],
    )
    .await;
    assert_eq!(received_until(&mut s, 4).await, [1, 4]);

    // What it missed while away is recovered through the same filter.
    s.send(&json!({"op": "disconnect"}).to_string()).await;
    s.expect("disconnected", T).await;
    publish_ticks(server, "ticks:x", 5, &[("ETH", "900"), ("BTC", "900")]).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    publish_ticks(server, "ticks:x", 7, &[("BTC", "1"), ("BTC", "101")]).await;
    assert_eq!(received_until(&mut s, 8).await, [6, 8]);

    // The namespace decides whether filters are allowed at all.
    let refused = subscribe(&mut s, "plain:x", json!({"tagsFilter": btc_over_100()})).await;
    assert_refused_107(&mut s, refused).await;
    let nonsense = json!({"key": "price", "cmp": "gt", "val": "a lot"});
    let refused = subscribe(&mut s, "ticks:y", json!({"tagsFilter": nonsense})).await;
    assert_refused_107(&mut s, refused).await;
    quit([s]).await;
    setup.stop().await;
}

/// The SDK ends a subscription the server refused with 107 (centrifuge-js reports the
/// error and then the unsubscribe, centrifuge-python the unsubscribe).
async fn assert_refused_107(s: &mut Script, first: Value) {
    let unsubscribed = if first["event"] == "unsubscribed" {
        first
    } else {
        s.expect("unsubscribed", T).await
    };
    assert_eq!(unsubscribed["code"], 107, "{unsubscribed}");
}

#[tokio::test]
async fn js_tags_filter_on_memory() {
    tags_filter_flow("tf_js_mem", Backend::Memory, "node").await;
}

#[tokio::test]
async fn js_tags_filter_on_redis() {
    tags_filter_flow("tf_js_redis", Backend::Redis, "node").await;
}

#[tokio::test]
async fn python_tags_filter_on_postgres() {
    tags_filter_flow("tf_py_pg", Backend::Postgres, "python").await;
}

/// Unfiltered subscribers of the same channel get everything, filtered ones their share,
/// from one publication stream.
#[tokio::test]
async fn filtered_and_unfiltered_subscribers_share_a_channel() {
    let ns = NamespaceConfig {
        allow_tags_filter: true,
        ..namespace("ticks")
    };
    let Some(setup) = Setup::start("tf_mixed", Backend::Memory, vec![ns]).await else {
        return;
    };
    let server = &setup.server;
    let mut all = connected(server, "node", "all").await;
    let mut eth = connected(server, "python", "eth").await;
    subscribe(&mut all, "ticks:m", json!({})).await;
    let only_eth = json!({"key": "ticker", "cmp": "in", "vals": ["ETH", "SOL"]});
    subscribe(&mut eth, "ticks:m", json!({"tagsFilter": only_eth})).await;
    publish_ticks(
        server,
        "ticks:m",
        1,
        &[("BTC", "1"), ("ETH", "2"), ("SOL", "3"), ("DOGE", "4")],
    )
    .await;
    assert_eq!(received_until(&mut all, 4).await, [1, 2, 3, 4]);
    assert_eq!(received_until(&mut eth, 3).await, [2, 3]);
    quit([all, eth]).await;
    setup.stop().await;
}

/// A namespace in cache recovery mode: its channels hold a state, the latest publication.
fn cache_namespace(name: &str, auto: bool) -> NamespaceConfig {
    NamespaceConfig {
        force_recovery_mode: RecoveryMode::Cache,
        auto_cache_recover: auto,
        ..namespace(name)
    }
}

async fn publish_n(server: &TestServer, channel: &str, ns: std::ops::RangeInclusive<u64>) {
    for n in ns {
        publish(server, channel, json!({"n": n}), json!({})).await;
    }
}

/// centrifuge-js asks to recover from nothing (`since: {}`) and gets the latest state, then
/// after a reconnect the latest state again (not what came between), and nothing when it
/// already has the latest.
async fn cache_recovery_flow(test: &str, backend: Backend) {
    let Some(setup) = Setup::start(test, backend, vec![cache_namespace("state", false)]).await
    else {
        return;
    };
    let server = &setup.server;
    publish_n(server, "state:doc", 1..=3).await;
    let mut s = connected(server, "node", "reader").await;
    let sub = subscribe(&mut s, "state:doc", json!({"since": {}})).await;
    assert_eq!(
        (&sub["event"], &sub["wasRecovering"], &sub["recovered"]),
        (&json!("subscribed"), &json!(true), &json!(true)),
        "{sub}"
    );
    assert_eq!(
        received_until(&mut s, 3).await,
        [3],
        "only the latest state"
    );
    publish_n(server, "state:doc", 4..=4).await;
    assert_eq!(received_until(&mut s, 4).await, [4]);

    s.send(&json!({"op": "disconnect"}).to_string()).await;
    s.expect("disconnected", T).await;
    publish_n(server, "state:doc", 5..=6).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(received_until(&mut s, 6).await, [6], "5 was replaced by 6");

    // Back with the latest state: recovered, and nothing sent again.
    s.send(&json!({"op": "disconnect"}).to_string()).await;
    s.expect("disconnected", T).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    publish_n(server, "state:doc", 7..=7).await;
    assert_eq!(received_until(&mut s, 7).await, [7], "6 was not sent twice");
    quit([s]).await;
    setup.stop().await;
}

per_backend!(cache_recovery_flow:
    js_cache_recovery_on_memory => Memory,
    js_cache_recovery_on_postgres => Postgres,
    js_cache_recovery_on_redis => Redis,
);

/// With `auto_cache_recover` every subscriber gets the latest state without asking:
/// centrifuge-python (which has no way to ask on a first subscribe), and a server-side
/// subscription from the token's `channels`, in the connect reply.
async fn auto_cache_recover_flow(test: &str, backend: Backend) {
    let Some(setup) = Setup::start(test, backend, vec![cache_namespace("auto", true)]).await else {
        return;
    };
    let server = &setup.server;
    publish_n(server, "auto:doc", 1..=2).await;
    let mut py = connected(server, "python", "py").await;
    let sub = subscribe(&mut py, "auto:doc", json!({})).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(received_until(&mut py, 2).await, [2]);

    publish_n(server, "auto:srv", 1..=3).await;
    let claims = json!({"sub": "js", "exp": now() + 3600, "channels": ["auto:srv"]});
    let mut js = connected_with("node", &client_env(server, token(claims))).await;
    let p = js.expect("server_publication", T).await;
    assert_eq!(
        (&p["channel"], &p["data"]["n"]),
        (&json!("auto:srv"), &json!(3)),
        "{p}"
    );
    quit([py, js]).await;
    setup.stop().await;
}

per_backend!(auto_cache_recover_flow:
    auto_cache_recover_on_memory => Memory,
    auto_cache_recover_on_postgres => Postgres,
    auto_cache_recover_on_redis => Redis,
);

/// The server API's `publish` and `broadcast` with an `idempotency_key` (through `cent`):
/// the repeat returns the first result and publishes nothing, also when it reaches another
/// node on the same Postgres or Redis; the subscriber gets one publication and history
/// holds one.
async fn idempotency_flow(test: &str, backend: Backend) {
    let Some(setup) = Setup::start(test, backend, vec![namespace("orders")]).await else {
        return;
    };
    let server = &setup.server;
    let other = match backend {
        Backend::Memory => None,
        _ => Some(setup.another_node().await),
    };
    let repeat_at = other.as_ref().unwrap_or(server);
    let sdk = match backend {
        Backend::Memory => "node",
        _ => "python",
    };
    let mut s = connected(server, sdk, "watcher").await;
    subscribe(&mut s, "orders:1", json!({})).await;

    let first = cent(
        server,
        "publish",
        json!({"channel": "orders:1", "data": {"n": 1}, "idempotency_key": "order-1"}),
    )
    .await;
    assert_eq!(first["offset"], 1, "{first}");
    let again = cent(
        repeat_at,
        "publish",
        json!({"channel": "orders:1", "data": {"n": 99}, "idempotency_key": "order-1"}),
    )
    .await;
    assert_eq!(again, first, "the repeat gets the first result");
    // A broadcast deduplicates each channel on its own; a new key publishes.
    let b = json!({"channels": ["orders:1", "orders:2"], "data": {"n": 2}, "idempotency_key": "order-2"});
    let first_b = cent(server, "broadcast", b.clone()).await;
    let again_b = cent(repeat_at, "broadcast", b).await;
    assert_eq!(again_b, first_b, "{first_b}");
    assert_eq!(first_b["responses"][0]["result"]["offset"], 2, "{first_b}");
    publish_n(server, "orders:1", 3..=3).await;

    assert_eq!(received_until(&mut s, 3).await, [1, 2, 3], "each once");
    let h = cent(
        server,
        "history",
        json!({"channel": "orders:1", "limit": -1}),
    )
    .await;
    let offsets: Vec<&Value> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["offset"])
        .collect();
    assert_eq!(offsets, [1, 2, 3], "history holds each once: {h}");
    quit([s]).await;
    if let Some(o) = other {
        o.shutdown().await;
    }
    setup.stop().await;
}

per_backend!(idempotency_flow:
    idempotent_publish_on_memory => Memory,
    idempotent_publish_across_nodes_on_postgres => Postgres,
    idempotent_publish_across_nodes_on_redis => Redis,
);

/// A namespace whose subscribers may ask for fossil deltas (`delta_publish`: every
/// publication asks for them).
fn delta_namespace(name: &str, delta_publish: bool) -> NamespaceConfig {
    NamespaceConfig {
        allowed_delta_types: vec![DeltaType::Fossil],
        delta_publish,
        ..namespace(name)
    }
}

/// A slowly changing document: ~1 KB, of which version `n` changes a few bytes.
fn document(n: u64) -> Value {
    let rows: Vec<Value> = (0..12)
        .map(|r| json!({"region": format!("region-{r}"), "sales": 1000 + r * 7, "target": 1500}))
        .collect();
    json!({"n": n, "title": "Quarterly sales, live", "rows": rows, "updated": format!("2026-12-05T10:00:{:02}Z", n % 60)})
}

async fn publish_documents(
    server: &TestServer,
    channel: &str,
    ns: std::ops::RangeInclusive<u64>,
    delta: bool,
) {
    for n in ns {
        let r = cent(
            server,
            "publish",
            json!({"channel": channel, "data": document(n), "delta": delta}),
        )
        .await;
        assert!(r.get("error").is_none(), "publish failed: {r}");
    }
}

/// Documents `first..=last` arrive whole and in order.
async fn documents_arrive(s: &mut Script, ns: std::ops::RangeInclusive<u64>) {
    for n in ns {
        let p = s.expect("publication", T).await;
        assert_eq!(
            p["data"],
            document(n),
            "document {n} rebuilt from what came"
        );
    }
}

/// One SDK with `delta: "fossil"`: the documents arrive whole, live and recovered after a
/// reconnect; centrifuge-js' statistics show the first full and the rest as deltas.
async fn delta_flow(test: &str, backend: Backend, sdk: &str, protobuf: bool, delta_publish: bool) {
    let Some(setup) =
        Setup::start(test, backend, vec![delta_namespace("docs", delta_publish)]).await
    else {
        return;
    };
    let server = &setup.server;
    let mut env = client_env(server, user_token("reader"));
    if protobuf {
        env.push(("PROTOBUF", "1".into()));
    }
    let mut s = connected_with(sdk, &env).await;
    let sub = subscribe(&mut s, "docs:q4", json!({"delta": "fossil"})).await;
    assert_eq!(sub["event"], "subscribed", "{sub}");
    let ask = !delta_publish;
    publish_documents(server, "docs:q4", 1..=5, ask).await;
    documents_arrive(&mut s, 1..=5).await;

    s.send(&json!({"op": "disconnect"}).to_string()).await;
    s.expect("disconnected", T).await;
    publish_documents(server, "docs:q4", 6..=8, ask).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    documents_arrive(&mut s, 6..=8).await;
    publish_documents(server, "docs:q4", 9..=9, ask).await;
    documents_arrive(&mut s, 9..=9).await;

    if sdk == "node" {
        let stats = cmd(&mut s, json!({"op": "delta_stats", "channel": "docs:q4"})).await;
        assert_eq!(stats["numPublications"], 9, "{stats}");
        // Full: the first live one, and the first recovered one.
        assert_eq!(stats["numFullPayloads"], 2, "{stats}");
        assert_eq!(stats["numDeltaPayloads"], 7, "{stats}");
        let ratio = stats["compressionRatio"].as_f64().unwrap();
        assert!(ratio > 0.5, "deltas save most of the bytes: {stats}");
    }
    quit([s]).await;
    setup.stop().await;
}

#[tokio::test]
async fn js_delta_on_memory() {
    delta_flow("delta_js_mem", Backend::Memory, "node", false, false).await;
}

#[tokio::test]
async fn js_protobuf_delta_on_redis() {
    delta_flow("delta_jspb_redis", Backend::Redis, "node", true, false).await;
}

#[tokio::test]
async fn python_delta_publish_on_postgres() {
    delta_flow("delta_py_pg", Backend::Postgres, "python", false, true).await;
}

/// The server API's `channels` counts the subscribers of every node: two nodes on Redis,
/// a subscriber of `chat:a` on each and one of `chat:b` on the second; either node answers
/// the same, and the pattern narrows the list.
#[tokio::test]
async fn channels_lists_the_channels_of_every_node() {
    let Some(setup) = Setup::start("channels_nodes", Backend::Redis, vec![]).await else {
        return;
    };
    let (a, b) = (&setup.server, setup.another_node().await);
    let mut js = connected(a, "node", "ann").await;
    let mut py = connected(&b, "python", "bob").await;
    subscribe(&mut js, "chat:a", json!({})).await;
    subscribe(&mut py, "chat:a", json!({})).await;
    subscribe(&mut py, "chat:b", json!({})).await;
    let want = json!({"chat:a": {"num_clients": 2}, "chat:b": {"num_clients": 1}});
    for node in [a, &b] {
        // Each node lists the other once its first heartbeat is in (every 2 s).
        let mut seen = Value::Null;
        for _ in 0..50 {
            seen = cent(node, "channels", json!({})).await["channels"].clone();
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(seen, want);
    }
    let only_b = cent(a, "channels", json!({"pattern": "chat:b*"})).await;
    assert_eq!(
        only_b["channels"],
        json!({"chat:b": {"num_clients": 1}}),
        "{only_b}"
    );
    quit([js, py]).await;
    b.shutdown().await;
    setup.stop().await;
}

/// Publishes `n` = first..=last through the API in this process (fast, for long streams).
async fn publish_many(
    server: &TestServer,
    channel: &str,
    ns: std::ops::RangeInclusive<u64>,
) -> String {
    let mut epoch = String::new();
    for n in ns {
        let (status, r) = server
            .api("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{r}");
        epoch = r["result"]["epoch"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    epoch
}

fn offsets_of(history: &Value) -> Vec<u64> {
    history["publications"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

/// centrifuge's history and recovery rules, one by one, with centrifuge-js, `cent` and a
/// raw client for the subscribe flag the SDK sets only with `getState`.
#[tokio::test]
async fn history_and_recovery_follow_centrifuge() {
    let log = NamespaceConfig {
        history_size: 400,
        ..namespace("log")
    };
    let small_recovery = |c: &mut Config| c.client.recovery_max_publication_limit = 5;
    let Some(setup) =
        Setup::start_with("history_rules", Backend::Memory, vec![log], small_recovery).await
    else {
        return;
    };
    let server = &setup.server;
    let epoch = publish_many(server, "log:a", 1..=310).await;

    // The API: limit 0 (its default) reads only the position; -1 reads all, uncapped.
    let h = cent(server, "history", json!({"channel": "log:a"})).await;
    assert_eq!(
        (offsets_of(&h).len(), &h["offset"]),
        (0, &json!(310)),
        "{h}"
    );
    let h = cent(server, "history", json!({"channel": "log:a", "limit": -1})).await;
    assert_eq!(offsets_of(&h).len(), 310);
    // Newest first from offset 0 is a bad request.
    let (_, r) = server
        .api("history", json!({"channel": "log:a", "reverse": true, "since": {"offset": 0, "epoch": ""}, "limit": 1}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");

    let mut js = connected(server, "node", "reader").await;
    subscribe(&mut js, "log:a", json!({})).await;
    // A client's history is capped at 300.
    let h = cmd(
        &mut js,
        json!({"op": "history", "channel": "log:a", "options": {"limit": -1}}),
    )
    .await;
    assert_eq!(offsets_of(&h).len(), 300, "{h}");
    let h = cmd(&mut js, json!({"op": "history", "channel": "log:a", "options": {"limit": 2, "reverse": true, "since": {"offset": 300, "epoch": epoch}}})).await;
    assert_eq!(offsets_of(&h), [299, 298]);
    let e = cmd_error(&mut js, json!({"op": "history", "channel": "log:a", "options": {"limit": 2, "reverse": true, "since": {"offset": 0}}})).await;
    assert_eq!(e["code"], 107, "{e}");

    // Recovery from an offset without an epoch: the empty epoch matches.
    let sub = subscribe(&mut js, "log:b", json!({"since": {"offset": 0}})).await;
    assert_eq!(
        (&sub["wasRecovering"], &sub["recovered"]),
        (&json!(true), &json!(true)),
        "{sub}"
    );
    publish_many(server, "log:b", 1..=3).await;
    assert_eq!(received_until(&mut js, 3).await, [1, 2, 3]);
    // From a wrong epoch: not recovered, told the current position, no error.
    publish_many(server, "log:c", 1..=2).await;
    let sub = subscribe(
        &mut js,
        "log:c",
        json!({"since": {"offset": 1, "epoch": "wrong"}}),
    )
    .await;
    assert_eq!(
        (&sub["wasRecovering"], &sub["recovered"]),
        (&json!(true), &json!(false)),
        "{sub}"
    );
    assert_eq!(sub["streamPosition"]["offset"], 2, "{sub}");
    // More missed than client.recovery_max_publication_limit (5): not recovered.
    let c_epoch = publish_many(server, "log:d", 1..=8).await;
    let sub = subscribe(
        &mut js,
        "log:d",
        json!({"since": {"offset": 2, "epoch": c_epoch}}),
    )
    .await;
    assert_eq!(sub["recovered"], false, "6 missed: {sub}");
    let sub = subscribe(
        &mut js,
        "log:e",
        json!({"since": {"offset": 0, "epoch": "x"}}),
    )
    .await;
    assert_eq!(sub["recovered"], false, "{sub}");
    // Asking to recover where recovery is off: was recovering, not recovered.
    let sub = subscribe(
        &mut js,
        "open:x",
        json!({"since": {"offset": 1, "epoch": "x"}}),
    )
    .await;
    assert_eq!(
        (&sub["wasRecovering"], &sub["recovered"]),
        (&json!(true), &json!(false)),
        "{sub}"
    );

    // The subscribe flag 2 (centrifuge-js sets it with getState): 112 instead.
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("raw")).await;
    ws.send(&json!({"id": 2, "subscribe": {"channel": "log:a", "recover": true, "offset": 1, "epoch": epoch, "flag": 2}}).to_string()).await;
    let r = ws.reply().await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    ws.send(&json!({"id": 3, "subscribe": {"channel": "log:a", "recover": true, "offset": 309, "epoch": epoch, "flag": 2}}).to_string()).await;
    let r = ws.reply().await;
    assert_eq!(
        r["subscribe"]["recovered"], true,
        "recoverable: no error: {r}"
    );
    quit([js]).await;
    setup.stop().await;
}

/// Sends a command that must fail; returns its error.
async fn cmd_error(s: &mut Script, c: Value) -> Value {
    s.send(&c.to_string()).await;
    let op = c["op"].clone();
    s.expect_where("op_error", |v| v["op"] == op, T).await
}

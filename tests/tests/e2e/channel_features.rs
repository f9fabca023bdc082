//! Channel features the SDKs speak, driven by centrifuge-js and centrifuge-python with
//! publications from `cent`: the publication tags filter (`allow_tags_filter`), cache
//! recovery (`force_recovery_mode = "cache"`, `auto_cache_recover`) and idempotent publish
//! (`idempotency_key`), on the in-memory node, on Postgres storage and on the Redis engine.

use std::time::Duration;

use rotor_core::config::{NamespaceConfig, RecoveryMode};
use rotor_server::config::{Config, EngineKind};
use rotor_tests::*;
use serde_json::{json, Value};

use super::sdk::client_env;

const T: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Postgres,
    Redis,
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
        if !sdks_available(test) {
            return None;
        }
        let mut config: Config = test_config();
        config.channel.namespaces.extend(namespaces);
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

/// A started SDK client (`node` or `python`), connected.
async fn connected(server: &TestServer, sdk: &str, user: &str) -> Script {
    let env = client_env(server, user_token(user));
    let mut s = if sdk == "node" {
        Script::node("client.js", &env)
    } else {
        Script::python("client.py", &env)
    };
    s.expect("ready", T).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    s.expect("connected", T).await;
    s
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
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
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
    for s in [all, eth] {
        let mut s = s;
        s.send(&json!({"op": "quit"}).to_string()).await;
        s.finish(T).await;
    }
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
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
    setup.stop().await;
}

#[tokio::test]
async fn js_cache_recovery_on_memory() {
    cache_recovery_flow("cache_js_mem", Backend::Memory).await;
}

#[tokio::test]
async fn js_cache_recovery_on_postgres() {
    cache_recovery_flow("cache_js_pg", Backend::Postgres).await;
}

#[tokio::test]
async fn js_cache_recovery_on_redis() {
    cache_recovery_flow("cache_js_redis", Backend::Redis).await;
}

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
    let mut js = Script::node("client.js", &client_env(server, token(claims)));
    js.expect("ready", T).await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("connected", T).await;
    let p = js.expect("server_publication", T).await;
    assert_eq!(
        (&p["channel"], &p["data"]["n"]),
        (&json!("auto:srv"), &json!(3)),
        "{p}"
    );
    for mut s in [py, js] {
        s.send(&json!({"op": "quit"}).to_string()).await;
        s.finish(T).await;
    }
    setup.stop().await;
}

#[tokio::test]
async fn auto_cache_recover_on_memory() {
    auto_cache_recover_flow("autocache_mem", Backend::Memory).await;
}

#[tokio::test]
async fn auto_cache_recover_on_postgres() {
    auto_cache_recover_flow("autocache_pg", Backend::Postgres).await;
}

#[tokio::test]
async fn auto_cache_recover_on_redis() {
    auto_cache_recover_flow("autocache_redis", Backend::Redis).await;
}

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
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
    if let Some(o) = other {
        o.shutdown().await;
    }
    setup.stop().await;
}

#[tokio::test]
async fn idempotent_publish_on_memory() {
    idempotency_flow("idem_mem", Backend::Memory).await;
}

#[tokio::test]
async fn idempotent_publish_across_nodes_on_postgres() {
    idempotency_flow("idem_pg", Backend::Postgres).await;
}

#[tokio::test]
async fn idempotent_publish_across_nodes_on_redis() {
    idempotency_flow("idem_redis", Backend::Redis).await;
}

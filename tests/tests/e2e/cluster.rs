//! Several rotor processes on one Redis: publications, presence, revocations and emulation
//! requests cross nodes; a Redis restart is survived without client action.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rotor_client::{Client, Event, SubscriptionOptions, Transport};
use rotor_tests::*;
use serde_json::json;
use tokio::process::{Child, Command};

use super::client::{client_config, is_connected, Recorder};

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");
const T: Duration = Duration::from_secs(10);

fn config_file(name: &str, port: u16, redis: &str, prefix: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[http_server]
address = "127.0.0.1"
port = {port}
[node]
name = "{name}"
[client.token]
hmac_secret_key = "{SECRET}"
[http_api]
key = "{API_KEY}"
[http_stream]
enabled = true
[sse]
enabled = true
[engine]
type = "redis"
[engine.redis]
address = "{redis}"
prefix = "{prefix}"
[[channel.namespaces]]
name = "chat"
presence = true
join_leave = true
history_size = 100
history_ttl = "5m"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
"#
    );
    let path = std::env::temp_dir().join(format!("rotor-cluster-{prefix}-{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

struct Cluster {
    nodes: Vec<(Child, SocketAddr)>,
}

impl Cluster {
    async fn start(names: &[&str], redis: &str, prefix: &str) -> Cluster {
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(spawn_rotor(BIN, &config_file(name, 0, redis, prefix)).await);
        }
        Cluster { nodes }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].1
    }
}

fn prefix(test: &str) -> String {
    format!("rotor-e2e-{test}-{}", std::process::id())
}

#[tokio::test]
async fn three_nodes_share_publications_presence_info_and_revocations() {
    let test = "three_nodes";
    if !sdks_available(test) || !redis_available(test, "127.0.0.1:6379").await {
        return;
    }
    let cluster = Cluster::start(&["a", "b", "c"], "127.0.0.1:6379", &prefix(test)).await;
    let (a, b, c) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));

    // centrifuge-js on node A, rotor-client on node B, both in chat:room.
    let jti_token = token(json!({"sub": "ana", "jti": "cluster-ana", "exp": now() + 3600}));
    let mut js = Script::node(
        "client.js",
        &[("BASE", format!("http://{a}")), ("TOKEN", jti_token)],
    );
    js.expect("ready", T).await;
    js.send(
        &json!({"op": "subscribe", "channel": "chat:room", "options": {"joinLeave": true}})
            .to_string(),
    )
    .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("subscribed", T).await;
    let mut cfg = client_config(b, Transport::WebSocket);
    cfg.token = Some(user_token("bob"));
    let (bob, events) = Client::new(cfg);
    let mut rec = Recorder::new(events);
    let sub = bob.subscribe(
        "chat:room",
        SubscriptionOptions {
            join_leave: true,
            ..SubscriptionOptions::default()
        },
    );
    bob.connect();
    sub.ready().await.unwrap();

    // A publication through node C's API reaches clients on A and B.
    api_at(
        c,
        "publish",
        json!({"channel": "chat:room", "data": {"from": "c"}}),
    )
    .await;
    assert_eq!(js.expect("publication", T).await["data"]["from"], "c");
    assert_eq!(rec.publication("chat:room").await["from"], "c");

    // Presence asked on C shows clients from A and B.
    let p = api_at(c, "presence", json!({"channel": "chat:room"})).await;
    let mut users: Vec<&str> = p["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, vec!["ana", "bob"], "{p}");
    // Joins cross nodes too: ana (on A) saw bob join from B.
    js.expect_where("join", |e| e["info"]["user"] == "bob", T)
        .await;

    // Every node is in the registry.
    let deadline = Instant::now() + T;
    loop {
        let info = api_at(b, "info", json!({})).await;
        let names: Vec<&str> = info["result"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        if names == ["a", "b", "c"] {
            let total: u64 = info["result"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["num_clients"].as_u64().unwrap())
                .sum();
            if total == 2 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "nodes never all listed: {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `info` inside a batch lists the same nodes.
    let batched = api_at(c, "batch", json!({"commands": [{"info": {}}]})).await;
    let names: Vec<&str> = batched["replies"][0]["info"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{batched}"))
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{batched}");

    // Revoking ana's token on B kicks her connection on A within a second.
    let start = Instant::now();
    api_at(
        b,
        "revoke_token",
        json!({"uid": "cluster-ana", "reason": "leaked"}),
    )
    .await;
    let d = js.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "{d}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "kicked in {:?}",
        start.elapsed()
    );
    // bob sees ana leave, through Redis.
    rec.until(
        "leave",
        |e| matches!(e, Event::Leave { info, .. } if info.user == "ana"),
    )
    .await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    bob.disconnect();
}

#[tokio::test]
async fn http_stream_client_whose_emulation_posts_hit_another_node_keeps_working() {
    let test = "emulation_routing";
    if !sdks_available(test) || !redis_available(test, "127.0.0.1:6379").await {
        return;
    }
    let cluster = Cluster::start(&["a", "b"], "127.0.0.1:6379", &prefix(test)).await;
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    // The stream is held by node A; every command POST goes to node B.
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", format!("http://{a}")),
            ("EMULATION_BASE", format!("http://{b}")),
            ("TRANSPORT", "http_stream".to_string()),
            ("TOKEN", user_token("eve")),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "subscribe", "channel": "chat:emu"}).to_string())
        .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("connected", T).await;
    js.expect("subscribed", T).await;
    js.send(&json!({"op": "publish", "channel": "chat:emu", "data": {"n": 1}}).to_string())
        .await;
    assert_eq!(js.expect("publication", T).await["data"]["n"], 1);
    let r = js.expect_where("result", |e| e["op"] == "publish", T).await;
    assert_eq!(r["op"], "publish");
    // And the Rust client on sse the same way.
    let mut cfg =
        client_config(a, Transport::Sse).with_emulation_endpoint(format!("http://{b}/emulation"));
    cfg.token = Some(user_token("sam"));
    let (sam, events) = Client::new(cfg);
    let mut rec = Recorder::new(events);
    let sub = sam.subscribe("chat:emu", SubscriptionOptions::default());
    sam.connect();
    sub.ready().await.unwrap();
    sub.publish(json!({"n": 2})).await.unwrap();
    assert_eq!(rec.publication("chat:emu").await["n"], 2);
    assert_eq!(js.expect("publication", T).await["data"]["n"], 2);
    assert_eq!(rec.count(is_connected), 1, "no reconnects: {:#?}", rec.seen);
    assert!(
        !js.seen
            .iter()
            .any(|e| e["event"] == "connecting" && e["code"] != 0),
        "no reconnects: {:#?}",
        js.seen
    );
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    sam.disconnect();
}

/// A private Redis (so the shared one is not disturbed) killed and started again on its port.
async fn start_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");
    let deadline = Instant::now() + T;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

#[tokio::test]
async fn after_a_redis_restart_publications_flow_again_without_client_action() {
    let test = "redis_restart";
    if which("redis-server").is_none() {
        skip(
            test,
            "redis-server binary",
            &"install the Debian package redis-server",
        );
        return;
    }
    let port = free_port();
    let mut redis = start_redis(port).await;
    let redis_addr = format!("127.0.0.1:{port}");
    let cluster = Cluster::start(&["a", "b"], &redis_addr, &prefix(test)).await;
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    let mut cfg = client_config(a, Transport::WebSocket);
    cfg.token = Some(user_token("rae"));
    let (client, events) = Client::new(cfg);
    let mut rec = Recorder::new(events);
    let sub = client.subscribe("chat:restart", SubscriptionOptions::default());
    client.connect();
    sub.ready().await.unwrap();
    let id = client.client_id();
    api_at(
        b,
        "publish",
        json!({"channel": "chat:restart", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(rec.publication("chat:restart").await["n"], 1);

    redis.kill().await.unwrap();
    // While Redis is down, publishing fails with the temporary error and clients stay.
    let (status, v) = http_post(
        b,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        &json!({"channel": "chat:restart", "data": {"n": 0}}).to_string(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (200, Some(100)),
        "{v}"
    );
    let down_at = Instant::now();
    let _redis = start_redis(port).await;
    // Once Redis is back, node B's publish works and node A delivers: A's subscription was
    // restored by itself.
    let deadline = Instant::now() + T;
    let mut n = 2;
    loop {
        let (_, v) = http_post(
            b,
            "/api/publish",
            &[("X-API-Key", API_KEY)],
            &json!({"channel": "chat:restart", "data": {"n": n}}).to_string(),
        )
        .await;
        if v.get("result").is_some() {
            let got =
                tokio::time::timeout(Duration::from_millis(500), rec.publication("chat:restart"))
                    .await;
            if let Ok(p) = got {
                assert!(p["n"].as_u64() <= Some(n), "{p}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "publications never flowed again: {v}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "publications flowed again {:?} after Redis came back",
        down_at.elapsed()
    );
    assert_eq!(client.client_id(), id, "the client kept its connection");
    assert_eq!(rec.count(is_connected), 1, "{:#?}", rec.seen);
    client.disconnect();
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

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
    config_file_with(name, port, &format!("address = \"{redis}\""), prefix, "")
}

/// [`config_file`] with the `[engine.redis]` lines that say where Redis is, and more lines
/// for the `chat` namespace.
fn config_file_with(
    name: &str,
    port: u16,
    where_redis: &str,
    prefix: &str,
    chat: &str,
) -> std::path::PathBuf {
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
{where_redis}
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
{chat}
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
    // `connections` asked on C lists both, each with the node that holds it.
    let conns = api_at(c, "connections", json!({})).await;
    let mut held: Vec<(String, String, String)> = conns["result"]["connections"]
        .as_object()
        .unwrap_or_else(|| panic!("{conns}"))
        .values()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("user"), s("node"), s("transport"))
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            ("ana".into(), "a".into(), "websocket".into()),
            ("bob".into(), "b".into(), "websocket".into())
        ],
        "{conns}"
    );
    let ana = api_at(c, "connections", json!({"user": "ana"})).await;
    assert_eq!(ana["result"]["total"], 1, "{ana}");
    assert_eq!(
        ana["result"]["connections"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["state"]["connection_token"]["uid"],
        "cluster-ana",
        "{ana}"
    );
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
    start_redis_with(port, &[]).await
}

/// [`start_redis`] with more arguments (a config file first, when there is one).
async fn start_redis_with(port: u16, extra: &[&str]) -> Child {
    // Its files (a replica's full sync writes one even without `save`) go to the temp dir.
    let dir = std::env::temp_dir();
    let child = Command::new("redis-server")
        .args(extra)
        .args(["--dir", dir.to_str().expect("a UTF-8 temp dir")])
        .args(["--dbfilename", &format!("rotor-e2e-{port}.rdb")])
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

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `check` says yes, or fails after `within` naming `what`.
async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A master, its replica and three Sentinels watching them, on free ports.
struct Sentinels {
    master: u16,
    replica: u16,
    sentinels: Vec<u16>,
    master_process: Child,
    _others: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MASTER_NAME: &str = "rotormaster";
const REDIS_PASSWORD: &str = "rotor-e2e-secret";

/// `redis-cli` against a data node of [`start_sentinels`] (they ask for a password).
fn data_cli(port: u16, args: &[&str]) -> String {
    let mut all = vec!["--no-auth-warning", "-a", REDIS_PASSWORD];
    all.extend(args);
    redis_cli(port, &all)
}

async fn start_sentinels(test: &str) -> Sentinels {
    let dir = std::env::temp_dir().join(format!("rotor-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (master, replica) = (free_port(), free_port());
    // The data nodes ask for a password (rotor's `password`), the Sentinels for none.
    let auth = [
        "--requirepass",
        REDIS_PASSWORD,
        "--masterauth",
        REDIS_PASSWORD,
    ];
    let master_process = start_redis_with(master, &auth).await;
    let master_port = master.to_string();
    let mut replica_args = vec!["--replicaof", "127.0.0.1", &master_port];
    replica_args.extend(auth);
    let mut children = vec![start_redis_with(replica, &replica_args).await];
    until("the replica is in sync", T, || {
        data_cli(replica, &["info", "replication"]).contains("master_link_status:up")
    })
    .await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n"
            ),
        )
        .unwrap();
        children.push(start_redis_with(port, &[conf.to_str().unwrap(), "--sentinel"]).await);
        sentinels.push(port);
    }
    for &s in &sentinels {
        until(
            "every Sentinel knows the replica and the other Sentinels",
            T,
            || {
                let info = redis_cli(s, &["sentinel", "master", MASTER_NAME]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            },
        )
        .await;
    }
    Sentinels {
        master,
        replica,
        sentinels,
        master_process,
        _others: children,
        dir,
    }
}

/// How the master goes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Failover {
    /// `SENTINEL FAILOVER`: the Sentinels promote the replica and demote the master.
    Coordinated,
    /// The master process is killed; the Sentinels notice and promote the replica.
    Crash,
}

#[tokio::test]
async fn a_sentinel_failover_keeps_subscribers_receiving_and_loses_nothing_acknowledged() {
    sentinel_failover("sentinel_failover", Failover::Coordinated).await;
}

#[tokio::test]
async fn after_the_master_crashes_the_sentinels_promote_the_replica_and_nothing_acknowledged_is_lost(
) {
    sentinel_failover("sentinel_crash", Failover::Crash).await;
}

/// Two rotor nodes on a Sentinel-managed Redis; a centrifuge-js subscriber on one, an API
/// publisher on the other; the master goes (`how`) in the middle of the publishing.
async fn sentinel_failover(test: &str, how: Failover) {
    if which("redis-server").is_none() || which("redis-cli").is_none() {
        skip(
            test,
            "redis-server and redis-cli binaries",
            &"install the Debian package redis-server",
        );
        return;
    }
    if !sdks_available(test) {
        return;
    }
    let mut s = start_sentinels(test).await;
    let where_redis = format!(
        "sentinel_address = [{}]\nsentinel_master_name = \"{MASTER_NAME}\"\npassword = \"{REDIS_PASSWORD}\"",
        s.sentinels
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let recovering = "force_recovery = true";
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let cfg = config_file_with(name, 0, &where_redis, &prefix(test), recovering);
        nodes.push(spawn_rotor(BIN, &cfg).await);
    }
    let (a, b) = (nodes[0].1, nodes[1].1);
    // A centrifuge-js subscriber on node A; publications go in through node B's API.
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", format!("http://{a}")),
            ("TRANSPORT", "websocket".to_string()),
            ("TOKEN", user_token("fay")),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "subscribe", "channel": "chat:failover"}).to_string())
        .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("connected", T).await;
    js.expect("subscribed", T).await;

    // Publish 1, 2, 3, ... until 30 were acknowledged after the failover; some fail (error
    // 100) while the master changes, and only acknowledged ones must arrive.
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut n = 0u64;
    let mut failover_at: Option<usize> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        n += 1;
        let (_, v) = http_post(
            b,
            "/api/publish",
            &[("X-API-Key", API_KEY)],
            &json!({"channel": "chat:failover", "data": {"n": n}}).to_string(),
        )
        .await;
        if v.get("result").is_some() {
            acked.push(n);
        } else {
            assert_eq!(v["error"]["code"], 100, "only temporary errors: {v}");
            failed += 1;
        }
        if acked.len() == 20 && failover_at.is_none() {
            match how {
                Failover::Coordinated => {
                    let answer = redis_cli(s.sentinels[0], &["sentinel", "failover", MASTER_NAME]);
                    assert!(answer.contains("OK"), "SENTINEL FAILOVER: {answer}");
                }
                Failover::Crash => s.master_process.kill().await.unwrap(),
            }
            failover_at = Some(acked.len());
        }
        let switched = failover_at.is_some()
            && redis_cli(
                s.sentinels[0],
                &["sentinel", "get-master-addr-by-name", MASTER_NAME],
            )
            .contains(&s.replica.to_string());
        if switched && acked.len() >= failover_at.unwrap() + 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failover did not complete with publications flowing: {} acknowledged, {failed} failed",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        data_cli(s.replica, &["role"]).starts_with("master"),
        "the replica was promoted"
    );
    // Node A listens for the channel on the new master now.
    let redis_channel = format!("{}.c.chat:failover", prefix(test));
    until("node A subscribed on the new master", T, || {
        data_cli(s.replica, &["pubsub", "numsub", &redis_channel]).ends_with("1\n")
    })
    .await;
    // Every acknowledged publication reaches the subscriber, once, in order (live, or
    // recovered from history after its node's pub/sub moved to the new master).
    let mut got = Vec::new();
    while !acked.iter().all(|n| got.contains(n)) {
        let p = js.expect("publication", T).await;
        got.push(p["data"]["n"].as_u64().expect("n"));
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {got:?}"
    );
    let missing: Vec<&u64> = acked.iter().filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    eprintln!(
        "{how:?} failover: {} publications acknowledged, {failed} refused with 100 while the master changed (master {} -> {})",
        acked.len(),
        s.master,
        s.replica
    );
    let resubscribed = js
        .seen
        .iter()
        .filter(|e| e["event"] == "subscribing" && e["code"] == 2500)
        .count();
    eprintln!("{how:?}: the subscriber was told to recover {resubscribed} time(s)");
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

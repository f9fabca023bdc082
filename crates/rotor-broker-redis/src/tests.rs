//! The storage and broker conformance suites on a real Redis (127.0.0.1:6379, or
//! `TEST_REDIS_ADDR`), each test under its own key prefix, and on a throwaway Redis Cluster;
//! plus the registry's expiry. Without Redis the tests skip loudly, except under `CI=true`,
//! where they fail.

use std::sync::Arc;
use std::time::Duration;

use rotor_core::broker::Broker;
use rotor_core::conformance::{self as suite, Subject};
use rotor_core::storage::{HistoryStore, IdempotencyStore, PresenceStore};
use rotor_protocol::{Publication, Raw};

use crate::*;

async fn shards(test: &str) -> Option<Shards> {
    let addr = std::env::var("TEST_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let opts = RedisOptions {
        addresses: vec![addr.clone()],
        prefix: format!("rotor-test-{test}-{}", uuid::Uuid::new_v4().simple()),
        timeout: Duration::from_secs(1),
        cluster: false,
        ..RedisOptions::default()
    };
    match Shards::connect(&opts).await {
        Ok(s) => Some(s),
        Err(e) => {
            suite::skip(test, &format!("Redis at {addr}"), &e);
            None
        }
    }
}

async fn history_store(test: &'static str) -> Option<Subject<dyn HistoryStore>> {
    Some(Subject::new(RedisHistory::new(shards(test).await?)))
}

async fn presence_store(test: &'static str) -> Option<Subject<dyn PresenceStore>> {
    Some(Subject::new(Arc::new(RedisPresence::new(
        shards(test).await?,
    ))))
}

async fn idempotency_store(test: &'static str) -> Option<Subject<dyn IdempotencyStore>> {
    Some(Subject::new(Arc::new(RedisIdempotency::new(
        shards(test).await?,
    ))))
}

rotor_core::history_suite!(history_store);
rotor_core::presence_suite!(presence_store);
rotor_core::idempotency_suite!(idempotency_store);

/// Brokers on one Redis (one key prefix), one per node, with their pub/sub connections up.
async fn brokers(test: &'static str, uids: &[&str]) -> Option<Vec<Arc<dyn Broker>>> {
    Some(started(shards(test).await?, uids).await)
}

async fn started(shards: Shards, uids: &[&str]) -> Vec<Arc<dyn Broker>> {
    let brokers: Vec<Arc<RedisBroker>> = uids
        .iter()
        .map(|uid| RedisBroker::start(shards.clone(), uid))
        .collect();
    for _ in 0..250 {
        if brokers.iter().all(|b| b.connected()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        brokers.iter().all(|b| b.connected()),
        "pub/sub connections up"
    );
    brokers.into_iter().map(|b| b as Arc<dyn Broker>).collect()
}

rotor_core::broker_suite!(brokers, cluster);

#[tokio::test]
async fn registry_lists_live_nodes() {
    let Some(s) = shards("registry").await else {
        return;
    };
    let a = RedisBroker::start(s, "node-a");
    let info = |uid: &str, name: &str| rotor_core::NodeInfo {
        uid: uid.into(),
        name: name.into(),
        version: "v".into(),
        num_clients: 2,
        num_users: 1,
        num_channels: 1,
        num_subs: 2,
        uptime: 3,
    };
    a.heartbeat(&info("node-a", "a")).await.unwrap();
    a.heartbeat(&info("node-b", "b")).await.unwrap();
    let nodes = a.nodes_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        a.nodes_within(Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty(),
        "stale entries go"
    );
}

/// A throwaway Redis Cluster of three masters on free loopback ports (`redis-server` and
/// `redis-cli --cluster create`), stopped and deleted on drop.
struct TestCluster {
    children: Vec<std::process::Child>,
    dir: std::path::PathBuf,
    addrs: Vec<String>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

fn redis_cli(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("redis-cli")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_cluster(test: &str) -> Option<TestCluster> {
    let have = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        suite::skip(
            test,
            "redis-server binary to build a cluster",
            &"install the Debian package redis-server",
        );
        return None;
    }
    let dir = std::env::temp_dir().join(format!("rotor-cluster-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = TestCluster {
        children: Vec::new(),
        dir: dir.clone(),
        addrs: Vec::new(),
    };
    for _ in 0..3 {
        let port = cluster_port().to_string();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        cluster.children.push(child);
        cluster.addrs.push(format!("127.0.0.1:{port}"));
    }
    for a in &cluster.addrs {
        let port = a.rsplit(':').next().unwrap();
        for _ in 0..100 {
            if redis_cli(&["-p", port, "ping"]).is_some_and(|o| o.contains("PONG")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut create = vec!["--cluster", "create"];
    create.extend(cluster.addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    assert!(
        redis_cli(&create).is_some(),
        "redis-cli --cluster create failed"
    );
    // Every node must agree that all slots are served before the test starts.
    for a in &cluster.addrs {
        let port = a.rsplit(':').next().unwrap();
        let mut ok = false;
        for _ in 0..200 {
            if redis_cli(&["-p", port, "cluster", "info"])
                .is_some_and(|o| o.contains("cluster_state:ok"))
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "cluster node {a} never reached cluster_state:ok");
    }
    Some(cluster)
}

async fn cluster_shards(cluster: &TestCluster, test: &str) -> Shards {
    cluster_shards_with(cluster, test, 0).await
}

/// [`cluster_shards`] with sharded pub/sub over `partitions` partitions (0: classic).
async fn cluster_shards_with(cluster: &TestCluster, test: &str, partitions: u32) -> Shards {
    Shards::connect(&RedisOptions {
        addresses: cluster.addrs.clone(),
        prefix: format!("rotor-test-{test}"),
        timeout: Duration::from_secs(2),
        cluster: true,
        sharded_partitions: partitions,
        ..RedisOptions::default()
    })
    .await
    .expect("connect to the cluster")
}

/// The whole storage conformance suite, fan-out and controls on a real three-node Redis
/// Cluster; channel data lands on more than one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_runs_the_suite_and_fans_out() {
    let Some(cluster) = start_cluster("redis_cluster").await else {
        return;
    };
    suite::history_offsets_and_epoch(RedisHistory::new(cluster_shards(&cluster, "h1").await)).await;
    suite::history_since_reverse_limit(RedisHistory::new(cluster_shards(&cluster, "h2").await))
        .await;
    suite::history_trims_by_size_and_ttl(RedisHistory::new(cluster_shards(&cluster, "h3").await))
        .await;
    suite::history_remove_keeps_position(RedisHistory::new(cluster_shards(&cluster, "h4").await))
        .await;
    suite::history_concurrent_adds_are_gap_free(RedisHistory::new(
        cluster_shards(&cluster, "h5").await,
    ))
    .await;
    suite::presence_basics(Arc::new(RedisPresence::new(
        cluster_shards(&cluster, "p1").await,
    )))
    .await;
    suite::presence_expires(Arc::new(RedisPresence::new(
        cluster_shards(&cluster, "p2").await,
    )))
    .await;

    // Many channels in one writer batch: each channel's pipeline goes to its own slot.
    let s = cluster_shards(&cluster, "spread").await;
    let h = RedisHistory::new(s.clone());
    let opts = rotor_core::storage::HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(60),
    };
    let p = Publication {
        delta: false,
        data: Raw::from_json("1").unwrap(),
        info: None,
        offset: 0,
        tags: Default::default(),
        time: 0,
    };
    let adds: Vec<_> = (0..60)
        .map(|i| h.add(&format!("ch{i}"), p.clone(), &opts))
        .collect();
    for (i, r) in futures_util::future::join_all(adds)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap().offset, 1, "channel ch{i}");
    }
    let holding = cluster
        .addrs
        .iter()
        .filter(|a| {
            let port = a.rsplit(':').next().unwrap();
            redis_cli(&["-p", port, "dbsize"]).is_some_and(|o| o.trim() != "0")
        })
        .count();
    assert!(
        holding >= 2,
        "60 channels should spread over the cluster's nodes"
    );

    // The broker suite's cluster tests, on the cluster.
    suite::brokers_deliver_publications_only_where_subscribed(
        started(cluster_shards(&cluster, "b1").await, &suite::NODES).await,
    )
    .await;
    suite::brokers_deliver_controls_to_every_node(
        started(cluster_shards(&cluster, "b2").await, &suite::NODES).await,
    )
    .await;
    suite::node_messages_reach_their_node_only(
        started(cluster_shards(&cluster, "b3").await, &suite::NODES).await,
    )
    .await;
    suite::nodes_are_listed_until_they_shut_down(
        started(cluster_shards(&cluster, "b4").await, &suite::NODES).await,
    )
    .await;
    // A writer batch with several channels: one pipeline per channel (slot).
    suite::broker_keeps_the_order_of_calls_not_of_confirmations(
        started(cluster_shards(&cluster, "b5").await, &suite::NODES[..1]).await,
    )
    .await;

    // The same with sharded pub/sub, which must carry each channel through one Redis node.
    suite::broker_delivers_publications_in_order_and_intact(
        started(
            cluster_shards_with(&cluster, "s0", 16).await,
            &suite::NODES[..1],
        )
        .await,
    )
    .await;
    suite::broker_keeps_the_order_of_calls_not_of_confirmations(
        started(
            cluster_shards_with(&cluster, "s1", 16).await,
            &suite::NODES[..1],
        )
        .await,
    )
    .await;
    suite::brokers_deliver_publications_only_where_subscribed(
        started(cluster_shards_with(&cluster, "s2", 16).await, &suite::NODES).await,
    )
    .await;
    suite::broker_delivers_join_and_leave(
        started(
            cluster_shards_with(&cluster, "s3", 16).await,
            &suite::NODES[..1],
        )
        .await,
    )
    .await;
    sharded_channels_live_on_one_node(&cluster).await;
}

/// With sharded pub/sub, a subscribed channel is a shard channel of exactly one Redis node
/// (the owner of its partition's slot) and no classic channel anywhere; its publications
/// reach the subscriber.
async fn sharded_channels_live_on_one_node(cluster: &TestCluster) {
    let shards = cluster_shards_with(cluster, "s4", 16).await;
    let brokers = started(shards, &suite::NODES[..1]).await;
    let rec = suite::broker::Recorder::new("node-a");
    brokers[0].set_handler(rec.clone());
    let mut channels = Vec::new();
    for i in 0..12 {
        let ch = format!("room{i}");
        brokers[0].subscribe(&ch).await.unwrap();
        channels.push(ch);
    }
    let mut nodes_used = std::collections::BTreeSet::new();
    for ch in &channels {
        let partition = shard::fnv1a(ch.as_bytes()) % 16;
        let name = format!("rotor-test-s4.c.{{{partition}}}.{ch}");
        let mut holders = Vec::new();
        for a in &cluster.addrs {
            let port = a.rsplit(':').next().unwrap();
            let shard = redis_cli(&["-p", port, "pubsub", "shardnumsub", &name]).unwrap();
            let classic = redis_cli(&["-p", port, "pubsub", "numsub", &name]).unwrap();
            assert!(
                classic.trim_end().ends_with('0'),
                "{name} classic on {a}: {classic}"
            );
            if shard.trim_end().ends_with('1') {
                holders.push(a.clone());
            }
        }
        assert_eq!(
            holders.len(),
            1,
            "{name} is a shard channel of one node: {holders:?}"
        );
        nodes_used.extend(holders);
    }
    assert!(
        nodes_used.len() >= 2,
        "12 channels spread over the nodes: {nodes_used:?}"
    );
    let mut want = Vec::new();
    for (n, ch) in channels.iter().enumerate() {
        let p = Publication {
            data: Raw::from_value(&serde_json::json!({ "n": n })),
            ..Publication::default()
        };
        brokers[0].publish(ch, &p).confirmed().await.unwrap();
        want.push((ch.clone(), p));
    }
    for (ch, p) in want {
        rec.expect_channel(
            &ch,
            &[suite::broker::Received::Publication(ch.clone(), p)],
            "a sharded publication arrives",
        )
        .await;
    }
}

/// A lost pub/sub connection is restored by itself, and what it may have missed is said:
/// every channel it listens for is reported to the node (which has its subscribers recover
/// from history), and publications flow again.
#[tokio::test]
async fn a_lost_pubsub_connection_reports_its_channels_as_missed_once_back() {
    let have = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        suite::skip(
            "pubsub_missed",
            "redis-server binary for a private Redis",
            &"install the Debian package redis-server",
        );
        return;
    }
    // A private Redis: killing pub/sub clients must not disturb other tests.
    let port = cluster_port();
    let mut private = TestCluster {
        children: Vec::new(),
        dir: std::env::temp_dir().join(format!("rotor-missed-{port}")),
        addrs: vec![format!("127.0.0.1:{port}")],
    };
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    private.children.push(child);
    let shards = async {
        loop {
            let opts = RedisOptions {
                addresses: private.addrs.clone(),
                prefix: "rotor-test-missed".into(),
                ..RedisOptions::default()
            };
            if let Ok(s) = Shards::connect(&opts).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let shards = tokio::time::timeout(Duration::from_secs(10), shards)
        .await
        .expect("the private Redis answers");
    let broker = RedisBroker::start(shards, "node-a");
    let rec = suite::broker::Recorder::new("node-a");
    broker.set_handler(rec.clone());
    while !broker.connected() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.subscribe("room").await.unwrap();
    assert!(rec.received().is_empty());
    let killed = redis_cli(&["-p", &port.to_string(), "client", "kill", "type", "pubsub"]);
    assert!(killed.is_some(), "CLIENT KILL TYPE pubsub ran");
    let missed = suite::broker::Received::Missed("room".into());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rec.received().contains(&missed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the channel was never reported as missed: {:?}",
            rec.received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = Publication {
        data: Raw::from_value(&serde_json::json!({"after": "reconnect"})),
        ..Publication::default()
    };
    broker.publish("room", &p).confirmed().await.unwrap();
    rec.expect_channel(
        "room",
        &[suite::broker::Received::Publication("room".into(), p)],
        "publications flow again",
    )
    .await;
}

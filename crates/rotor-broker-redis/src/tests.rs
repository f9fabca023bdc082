//! The storage conformance suite and broker behaviour on a real Redis (127.0.0.1:6379, or
//! `TEST_REDIS_ADDR`), each test under its own key prefix. Without Redis the tests skip
//! loudly, except under `CI=true`, where they fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rotor_core::broker::{Broker, BrokerHandler, Control};
use rotor_core::conformance as suite;
use rotor_core::storage::HistoryStore;
use rotor_protocol::{ClientInfo, Publication, Raw};

use crate::*;

async fn shards(test: &str) -> Option<Shards> {
    let addr = std::env::var("TEST_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let opts = RedisOptions {
        addresses: vec![addr.clone()],
        prefix: format!("rotor-test-{test}-{}", uuid::Uuid::new_v4().simple()),
        timeout: Duration::from_secs(1),
        cluster: false,
    };
    match Shards::connect(&opts).await {
        Ok(s) => Some(s),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: Redis is required under CI: {e}");
            }
            eprintln!("\n!!!!! SKIPPED {test}: no Redis at {addr} ({e}) !!!!!\n");
            None
        }
    }
}

macro_rules! conformance {
    ($($name:ident: $make:expr,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(shards) = shards(stringify!($name)).await else { return };
            suite::$name($make(shards)).await;
        }
    )*};
}

fn history(s: Shards) -> Arc<dyn HistoryStore> {
    RedisHistory::new(s)
}

fn presence(s: Shards) -> Arc<dyn rotor_core::storage::PresenceStore> {
    Arc::new(RedisPresence::new(s))
}

conformance! {
    history_offsets_and_epoch: history,
    history_since_reverse_limit: history,
    history_trims_by_size_and_ttl: history,
    history_remove_keeps_position: history,
    history_concurrent_adds_are_gap_free: history,
    presence_basics: presence,
    presence_expires: presence,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl BrokerHandler for Recorder {
    fn on_publication(&self, channel: &str, p: &Publication) {
        self.0
            .lock()
            .unwrap()
            .push(format!("pub {channel} {}", p.data.get()));
    }
    fn on_join(&self, channel: &str, info: &ClientInfo) {
        self.0
            .lock()
            .unwrap()
            .push(format!("join {channel} {}", info.client));
    }
    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        self.0
            .lock()
            .unwrap()
            .push(format!("leave {channel} {}", info.client));
    }
    fn on_control(&self, c: &Control) {
        self.0.lock().unwrap().push(format!("control {c:?}"));
    }
    fn on_node_message(&self, payload: &str) {
        self.0.lock().unwrap().push(format!("node {payload}"));
    }
    fn node_info(&self) -> Option<rotor_core::NodeInfo> {
        None
    }
}

async fn eventually(rec: &Recorder, want: &[&str]) {
    for _ in 0..100 {
        if *rec.0.lock().unwrap() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*rec.0.lock().unwrap(), want);
}

#[tokio::test]
async fn two_brokers_share_publications_only_where_subscribed_and_all_controls() {
    let Some(s) = shards("broker").await else {
        return;
    };
    let a = RedisBroker::start(s.clone(), "node-a");
    let b = RedisBroker::start(s, "node-b");
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    a.set_handler(ra.clone());
    b.set_handler(rb.clone());
    for _ in 0..50 {
        if a.connected() && b.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.subscribe("room").await.unwrap();
    let p = Publication {
        data: Raw::from_json(r#"{"x":1}"#).unwrap(),
        info: None,
        offset: 7,
        tags: Default::default(),
        time: 0,
    };
    a.publish("room", &p).await.unwrap();
    a.publish("elsewhere", &p).await.unwrap();
    let info = ClientInfo {
        user: "u".into(),
        client: "c1".into(),
        conn_info: None,
        chan_info: None,
    };
    a.publish_join("room", &info).await.unwrap();
    a.publish_control(&Control::Revoke {
        jti: "j1".into(),
        expire_at: 5,
    })
    .await
    .unwrap();
    let control = r#"control Revoke { jti: "j1", expire_at: 5 }"#;
    eventually(&rb, &[r#"pub room {"x":1}"#, "join room c1", control]).await;
    eventually(&ra, &[control]).await;

    // Node-addressed messages reach only that node; an unknown node has no listener.
    assert!(a.send_to_node("node-b", "hello").await.unwrap());
    assert!(!a.send_to_node("node-zzz", "hello").await.unwrap());
    eventually(
        &rb,
        &[r#"pub room {"x":1}"#, "join room c1", control, "node hello"],
    )
    .await;

    b.unsubscribe("room").await.unwrap();
    a.publish("room", &p).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rb.0.lock().unwrap().len(), 4, "nothing after unsubscribe");
    assert_eq!(
        ra.0.lock().unwrap().len(),
        1,
        "node messages reach their node only"
    );
}

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
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: redis-server is required under CI (Debian package redis-server)");
        }
        eprintln!("\n!!!!! SKIPPED {test}: no redis-server binary to build a cluster !!!!!\n");
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
    Shards::connect(&RedisOptions {
        addresses: cluster.addrs.clone(),
        prefix: format!("rotor-test-{test}"),
        timeout: Duration::from_secs(2),
        cluster: true,
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
    suite::history_offsets_and_epoch(history(cluster_shards(&cluster, "h1").await)).await;
    suite::history_since_reverse_limit(history(cluster_shards(&cluster, "h2").await)).await;
    suite::history_trims_by_size_and_ttl(history(cluster_shards(&cluster, "h3").await)).await;
    suite::history_remove_keeps_position(history(cluster_shards(&cluster, "h4").await)).await;
    suite::history_concurrent_adds_are_gap_free(history(cluster_shards(&cluster, "h5").await))
        .await;
    suite::presence_basics(presence(cluster_shards(&cluster, "p1").await)).await;
    suite::presence_expires(presence(cluster_shards(&cluster, "p2").await)).await;

    // Many channels in one writer batch: each channel's pipeline goes to its own slot.
    let s = cluster_shards(&cluster, "spread").await;
    let h = RedisHistory::new(s.clone());
    let opts = rotor_core::storage::HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(60),
    };
    let p = Publication {
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

    let a = RedisBroker::start(s.clone(), "node-a");
    let b = RedisBroker::start(s, "node-b");
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    a.set_handler(ra.clone());
    b.set_handler(rb.clone());
    for _ in 0..100 {
        if a.connected() && b.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.subscribe("room").await.unwrap();
    a.publish("room", &p).await.unwrap();
    a.publish_control(&Control::Revoke {
        jti: "j2".into(),
        expire_at: 9,
    })
    .await
    .unwrap();
    let control = r#"control Revoke { jti: "j2", expire_at: 9 }"#;
    eventually(&rb, &["pub room 1", control]).await;
    eventually(&ra, &[control]).await;
}

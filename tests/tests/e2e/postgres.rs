//! Postgres storage end to end: recovery across a killed and restarted server, gap-free
//! offsets from two server processes, and behaviour while the database is unreachable.

use std::time::Duration;

use rotor_tests::*;
use serde_json::json;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");
const T: Duration = Duration::from_secs(15);

pub(crate) fn config_file(pg: &PgSchema, port: u16, name: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[http_server]
address = "127.0.0.1"
port = {port}
[client.token]
hmac_secret_key = "{SECRET}"
[client]
history_max_publication_limit = 2000
[http_api]
key = "{API_KEY}"
[storage]
type = "postgres"
[storage.postgres]
dsn = "{dsn}"
schema = "{schema}"
[[channel.namespaces]]
name = "chat"
history_size = 2000
history_ttl = "10m"
force_recovery = true
allow_subscribe_for_client = true
"#,
        dsn = pg.dsn,
        schema = pg.schema
    );
    let path = std::env::temp_dir().join(format!("rotor-pg-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the rotor binary and waits until it listens.
async fn spawn(config: &std::path::Path) -> (tokio::process::Child, std::net::SocketAddr) {
    spawn_rotor(BIN, config).await
}

#[tokio::test]
async fn js_client_recovers_across_a_killed_and_restarted_server() {
    if !sdks_available("js_client_recovers_across_a_killed_and_restarted_server") {
        return;
    }
    let Some(pg) = PgSchema::create("restart").await else {
        return;
    };
    let port = free_port();
    let main_cfg = config_file(&pg, port, "main");
    let (mut a, addr) = spawn(&main_cfg).await;
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", format!("http://{addr}")),
            ("TOKEN", user_token("rita")),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "subscribe", "channel": "chat:durable"}).to_string())
        .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    let sub = js.expect("subscribed", T).await;
    let epoch = sub["streamPosition"]["epoch"].as_str().unwrap().to_string();
    api_at(
        addr,
        "publish",
        json!({"channel": "chat:durable", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(js.expect("publication", T).await["offset"], 1);

    // SIGKILL: no goodbye to anyone.
    a.kill().await.unwrap();
    js.expect_where("connecting", |e| e["code"] != 0, T).await;
    // Meanwhile another node on the same database takes publications.
    let (mut other, other_addr) = spawn(&config_file(&pg, 0, "other")).await;
    for n in 2..=3 {
        let r = api_at(
            other_addr,
            "publish",
            json!({"channel": "chat:durable", "data": {"n": n}}),
        )
        .await;
        assert_eq!(
            r["result"]["epoch"],
            epoch.as_str(),
            "same stream, same epoch: {r}"
        );
    }
    // The server comes back on its port; the client reconnects and recovers from Postgres.
    let (mut b, _) = spawn(&main_cfg).await;
    let sub = js
        .expect_where("subscribed", |e| e["wasRecovering"] == true, T)
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["streamPosition"]["epoch"], epoch.as_str(), "{sub}");
    for n in 2..=3u64 {
        let p = js.expect("publication", T).await;
        assert_eq!(
            (p["data"]["n"].as_u64(), p["offset"].as_u64()),
            (Some(n), Some(n)),
            "{p}"
        );
    }
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    let _ = b.kill().await;
    let _ = other.kill().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn two_server_processes_publish_gap_free_offsets() {
    let Some(pg) = PgSchema::create("twonodes").await else {
        return;
    };
    let (mut a, addr_a) = spawn(&config_file(&pg, 0, "a")).await;
    let (mut b, addr_b) = spawn(&config_file(&pg, 0, "b")).await;
    const PER_TASK: usize = 50;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = if t % 2 == 0 { addr_a } else { addr_b };
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..PER_TASK {
                let r = api_at(
                    addr,
                    "publish",
                    json!({"channel": "chat:gap", "data": {"t": t, "i": i}}),
                )
                .await;
                offsets.push(r["result"]["offset"].as_u64().expect("an offset"));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = (8 * PER_TASK) as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every offset once, no gaps"
    );
    let h = api_at(
        addr_a,
        "history",
        json!({"channel": "chat:gap", "limit": -1}),
    )
    .await;
    let stored: Vec<u64> = h["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stored,
        (1..=n).collect::<Vec<_>>(),
        "history holds the same sequence"
    );
    let _ = a.kill().await;
    let _ = b.kill().await;
    pg.drop_now().await;
}

/// A TCP proxy to Postgres that the test can cut and restore.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let (up2, cut2, target) = (up.clone(), cut.clone(), target.to_string());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused-like
                }
                let mut cut_rx = cut2.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            let _ = self.cut.send(());
        }
    }
}

#[tokio::test]
async fn while_postgres_is_unreachable_publish_fails_temporarily_and_clients_stay() {
    let Some(pg) = PgSchema::create("outage").await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut config = test_config();
    pg.configure(&mut config);
    config.storage.postgres.dsn = format!("postgres://postgres@{}/test", proxy.addr);
    config.storage.postgres.acquire_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("otto")).await;
    ws.send(r#"{"id":2,"subscribe":{"channel":"chat:out"}}"#)
        .await;
    assert!(ws.reply().await["subscribe"].is_object());
    let (_, r) = server
        .api("publish", json!({"channel": "chat:out", "data": 1}))
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert_eq!(ws.message().await["push"]["pub"]["offset"], 1);

    proxy.set_up(false);
    let (status, r) = server
        .api("publish", json!({"channel": "chat:out", "data": 2}))
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (200, Some(100)),
        "temporary error while the database is away: {r}"
    );
    // The client is still connected and gets a temporary error for a history read.
    ws.send(r#"{"id":3,"history":{"channel":"chat:out","limit":10}}"#)
        .await;
    let reply = ws.reply().await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");

    proxy.set_up(true);
    let mut recovered = None;
    for _ in 0..40 {
        let (_, r) = server
            .api("publish", json!({"channel": "chat:out", "data": 3}))
            .await;
        if r["result"].is_object() {
            recovered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = recovered.expect("publishing works again once the database is back");
    assert_eq!(
        r["result"]["offset"], 2,
        "nothing was half-written during the outage: {r}"
    );
    assert_eq!(
        ws.message().await["push"]["pub"]["offset"],
        2,
        "the client never left"
    );
    server.shutdown().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn rotor_migrate_applies_the_migrations() {
    let Some(pg) = PgSchema::create("migrate").await else {
        return;
    };
    let schema = format!("{}_fresh", pg.schema);
    let path = std::env::temp_dir().join(format!("rotor-pg-{}-migrate.toml", std::process::id()));
    std::fs::write(&path, format!("[storage]\ntype = \"postgres\"\n[storage.postgres]\ndsn = \"{}\"\nschema = \"{schema}\"\n", pg.dsn)).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("migrate")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    // Running it again is a no-op.
    let again = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("migrate")
        .output()
        .await
        .unwrap();
    assert!(again.status.success());
    // A server with migrate_on_start = false starts on the migrated schema and keeps history.
    std::fs::write(
        &path,
        format!(
            "[http_server]\naddress = \"127.0.0.1\"\nport = 0\n[http_api]\nkey = \"{API_KEY}\"\n[storage]\ntype = \"postgres\"\n[storage.postgres]\ndsn = \"{}\"\nschema = \"{schema}\"\nmigrate_on_start = false\n[channel.without_namespace]\nhistory_size = 10\nhistory_ttl = \"1m\"\n",
            pg.dsn
        ),
    )
    .unwrap();
    let (mut server, addr) = spawn(&path).await;
    let r = api_at(addr, "publish", json!({"channel": "plain", "data": 1})).await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    let _ = server.kill().await;
    let out = Command::new("psql")
        .args([
            pg.dsn.as_str(),
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output()
        .await;
    let _ = out;
    pg.drop_now().await;
    // postgres without a dsn is a configuration error.
    let bad = std::env::temp_dir().join(format!("rotor-pg-{}-nodsn.toml", std::process::id()));
    std::fs::write(&bad, "[storage]\ntype = \"postgres\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("checkconfig")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.postgres.dsn"));
}

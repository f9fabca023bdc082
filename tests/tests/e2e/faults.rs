//! Faults during traffic, bounded in time and on loopback: a Postgres server stopped and
//! started, the rotor process killed with SIGKILL and restarted under its clients, and a
//! flood of malformed frames and half-open connections beside well-behaved clients. Each
//! test prints a `FAULT` line with what it measured (docs/reliability.md records them).
//! The Redis restart is in cluster.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor_client::{Client, Event, SubscriptionOptions, Transport};
use rotor_tests::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::client::{client_config, Recorder};
use super::postgres::config_file;

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");

/// What a publisher got back: acknowledged numbers with their offsets, and failures.
#[derive(Default)]
struct Tally {
    acked: BTreeMap<u64, u64>,
    failed: Vec<(u64, Instant, String)>,
    /// (time, success) of every attempt, for the outage window.
    attempts: Vec<(Instant, bool)>,
}

/// Publishes `{"n": i}` to `channel` every `every` until `stop`, at whichever address
/// `target` returns for attempt i.
/// Publishes every `every` to the node `target` names (`None`: skip this tick) until
/// `stop`; one publication at a time, each awaited.
fn spawn_publisher(
    target: impl Fn() -> Option<SocketAddr> + Send + 'static,
    channel: &'static str,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Tally>>, tokio::task::JoinHandle<()>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t = tally.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut n = 0u64;
        while !stop.is_cancelled() {
            tick.tick().await;
            let Some(addr) = target() else { continue };
            n += 1;
            let body = json!({"channel": channel, "data": {"n": n, "t": micros()}}).to_string();
            let result = tokio::time::timeout(Duration::from_secs(5), try_post(addr, &body)).await;
            let now = Instant::now();
            let mut t = t.lock().unwrap();
            match result {
                Ok(Ok(v)) if v["result"].is_object() => {
                    // Channels without history answer without an offset.
                    t.acked
                        .insert(n, v["result"]["offset"].as_u64().unwrap_or(0));
                    t.attempts.push((now, true));
                }
                Ok(Ok(v)) => {
                    t.failed.push((n, now, v.to_string()));
                    t.attempts.push((now, false));
                }
                Ok(Err(e)) => {
                    t.failed.push((n, now, e));
                    t.attempts.push((now, false));
                }
                Err(_) => {
                    t.failed.push((n, now, "no answer in 5 s".into()));
                    t.attempts.push((now, false));
                }
            }
        }
    });
    (tally, task)
}

fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// An API publish that reports connection errors instead of panicking (the server may be
/// down).
async fn try_post(addr: SocketAddr, body: &str) -> Result<Value, String> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let json = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(json).map_err(|_| format!("not JSON: {out:?}"))
}

/// The longest run of failed attempts, from the first failure to the next success.
fn outage(t: &Tally) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since = None;
    for (at, ok) in &t.attempts {
        match (ok, since) {
            (false, None) => since = Some(*at),
            (true, Some(s)) => {
                longest = longest.max(at.duration_since(s));
                since = None;
            }
            _ => {}
        }
    }
    longest
}

// ----- a private Postgres server that the test may stop -----

struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    fn start(test: &str) -> Option<PrivatePg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .find(|b| b.join("initdb").is_file())
        });
        let Some(bin) = bin else {
            skip(
                test,
                "PostgreSQL server binaries",
                &"no /usr/lib/postgresql/*/bin/initdb",
            );
            return None;
        };
        // The server refuses to run as root; run it as the postgres user then.
        let uid = StdCommand::new("id").arg("-u").output().expect("id runs");
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = std::env::temp_dir().join(format!("rotor-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PrivatePg {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            let ok = StdCommand::new("chown")
                .args(["postgres:postgres", pg.dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.start_server();
        Some(pg)
    }

    /// A command for one of the server's tools, run as the postgres user when we are root.
    fn command(&self, tool: &str) -> StdCommand {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = StdCommand::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            StdCommand::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_server(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "start",
            ],
        );
    }

    fn stop_server(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-w", "-m", "fast", "stop"],
        );
    }

    fn dsn(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` -> offset of every publication in a channel's history (data `{"n": …}`).
async fn stored_history(server: &TestServer, channel: &str) -> BTreeMap<u64, u64> {
    let (_, h) = server
        .api("history", json!({"channel": channel, "limit": 10_000}))
        .await;
    h["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("history of {channel}: {h}"))
        .iter()
        .map(|p| {
            (
                p["data"]["n"].as_u64().unwrap(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn durable_namespace() -> rotor_core::config::NamespaceConfig {
    rotor_core::config::NamespaceConfig {
        name: "durable".into(),
        history_size: 10_000,
        history_ttl: Duration::from_secs(600),
        force_recovery: true,
        allow_subscribe_for_client: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn postgres_stopped_and_started_during_traffic() {
    let test = "pg_stop_start";
    let Some(pg) = tokio::task::spawn_blocking(move || PrivatePg::start(test))
        .await
        .unwrap()
    else {
        return;
    };
    let mut config = test_config();
    config.channel.namespaces.push(durable_namespace());
    config.client.history_max_publication_limit = 10_000;
    config.storage.kind = rotor_server::config::StorageKind::Postgres;
    config.storage.postgres.dsn = pg.dsn();
    config.storage.postgres.schema = "rotor_fault".into();
    config.storage.postgres.acquire_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let addr = server.addr;

    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("watcher")).await;
    ws.send(r#"{"id":2,"subscribe":{"channel":"durable:pg"}}"#)
        .await;
    assert!(ws.reply().await["subscribe"].is_object());

    let stop = tokio_util::sync::CancellationToken::new();
    let (tally, publisher) = spawn_publisher(
        move || Some(addr),
        "durable:pg",
        Duration::from_millis(20),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pg = Arc::new(pg);
    let p = pg.clone();
    let stopped_at = Instant::now();
    tokio::task::spawn_blocking(move || p.stop_server())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_server())
        .await
        .unwrap();
    let started_at = Instant::now();
    // Wait for the first success after the restart, then a second more of traffic.
    let deadline = Instant::now() + Duration::from_secs(15);
    let back_at = loop {
        let first_ok = tally
            .lock()
            .unwrap()
            .attempts
            .iter()
            .find(|(at, ok)| *ok && *at > started_at)
            .map(|(at, _)| *at);
        if let Some(at) = first_ok {
            break at;
        }
        assert!(Instant::now() < deadline, "publishing never worked again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    publisher.await.unwrap();

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let during: Vec<_> = tally
        .failed
        .iter()
        .filter(|(_, at, _)| *at > stopped_at)
        .collect();
    assert!(
        !during.is_empty(),
        "no publish failed while Postgres was stopped"
    );
    for (_, _, why) in &during {
        assert!(
            why.contains("\"code\":100"),
            "failures while the database is away are the temporary error 100: {why}"
        );
    }
    // The subscriber never left and received every acknowledged publication.
    let mut received = BTreeSet::new();
    let want: BTreeSet<u64> = tally.acked.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.is_subset(&received) {
        assert!(
            Instant::now() < deadline,
            "missing deliveries: {:?}",
            want.difference(&received).take(10).collect::<Vec<_>>()
        );
        let m = ws.message().await;
        if let Some(n) = m["push"]["pub"]["data"]["n"].as_u64() {
            assert!(received.insert(n), "delivered twice: {n}");
        }
    }
    ws.send(r#"{"id":3,"ping":{}}"#).await;
    assert_eq!(ws.reply().await["id"], 3, "the client kept its connection");
    // History holds every acknowledged publication at the offset it was acknowledged with.
    let stored = stored_history(&server, "durable:pg").await;
    for (n, offset) in &tally.acked {
        assert_eq!(
            stored.get(n),
            Some(offset),
            "acknowledged publication {n} in history"
        );
    }
    let offsets: Vec<u64> = stored.values().copied().collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "history offsets have no gaps or repeats"
    );
    eprintln!(
        "FAULT pg_stop_start: acknowledged={} failed={} (all error 100) api_outage_ms={} \
         back_after_start_ms={} delivered={} lost=0 duplicates=0",
        tally.acked.len(),
        during.len(),
        outage(&tally).as_millis(),
        back_at.duration_since(started_at).as_millis(),
        received.len()
    );
    server.shutdown().await;
}

/// (offset, n) of every publication a client reported, in the order it reported them.
fn received(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Publication { publication, .. } => Some((
                publication.offset,
                publication.data.parse::<Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn killed_server_restarts_and_clients_recover_every_acknowledged_publication() {
    let Some(pg) = PgSchema::create("sigkill").await else {
        return;
    };
    const CLIENTS: usize = 20;
    let port = free_port();
    let main_cfg = config_file(&pg, port, "fault-main");
    let (mut a, a_addr) = spawn_rotor(BIN, &main_cfg).await;
    // A second node on the same database takes publications while the first is down.
    let (mut b, b_addr) = spawn_rotor(BIN, &config_file(&pg, 0, "fault-spare")).await;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut cfg = client_config(a_addr, Transport::WebSocket);
        cfg.token = Some(user_token(&format!("c{i}")));
        let (client, events) = Client::new(cfg);
        let sub = client.subscribe("chat:k", SubscriptionOptions::default());
        client.connect();
        sub.ready().await.unwrap();
        clients.push((client, Recorder::new(events)));
    }

    // The two nodes share the database but no broker: a publication the spare node takes
    // reaches the main node's clients only through history. So none may be in flight on the
    // spare while the restarted node recovers its first clients (they would recover before
    // it is stored and never see it live): the publisher pauses around the restart.
    let a_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (up, pause) = (a_up.clone(), paused.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let (tally, publisher) = spawn_publisher(
        move || {
            if pause.load(std::sync::atomic::Ordering::SeqCst) {
                None
            } else if up.load(std::sync::atomic::Ordering::SeqCst) {
                Some(a_addr)
            } else {
                Some(b_addr)
            }
        },
        "chat:k",
        Duration::from_millis(20),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill().await.unwrap();
    a_up.store(false, std::sync::atomic::Ordering::SeqCst);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    paused.store(true, std::sync::atomic::Ordering::SeqCst);
    // The publication in flight (if any) finishes before the next tick.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut a2, _) = spawn_rotor(BIN, &main_cfg).await;
    let restarted_at = Instant::now();
    a_up.store(true, std::sync::atomic::Ordering::SeqCst);
    paused.store(false, std::sync::atomic::Ordering::SeqCst);

    // Every client comes back and recovers.
    let mut reconnect = Vec::new();
    for (_, rec) in clients.iter_mut() {
        assert!(rec.resubscribed().await, "the stream was recovered");
        reconnect.push(restarted_at.elapsed());
    }
    let all_back = restarted_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    publisher.await.unwrap();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.acked.len() > 50,
        "traffic flowed: {}",
        tally.acked.len()
    );
    let published_while_down = tally
        .attempts
        .iter()
        .filter(|(at, ok)| *ok && *at > killed_at && *at < restarted_at)
        .count();

    // Each client got every acknowledged publication once, in offset order.
    let mut recovered_counts = Vec::new();
    for (i, (client, rec)) in clients.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let have: BTreeSet<u64> = received(&rec.seen).iter().map(|(_, n)| *n).collect();
            if tally.acked.keys().all(|n| have.contains(n)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "client {i} is missing {:?}",
                tally
                    .acked
                    .keys()
                    .filter(|n| !have.contains(n))
                    .take(10)
                    .collect::<Vec<_>>()
            );
            rec.drain_for(Duration::from_millis(200)).await;
        }
        let pubs = received(&rec.seen);
        assert!(
            pubs.windows(2).all(|w| w[1].0 > w[0].0),
            "client {i}: publications in offset order, none twice"
        );
        recovered_counts.push(
            pubs.iter()
                .filter(|(_, n)| {
                    tally
                        .attempts
                        .get(*n as usize - 1)
                        .is_some_and(|(at, _)| *at > killed_at && *at < restarted_at)
                })
                .count(),
        );
        client.disconnect();
    }
    reconnect.sort();
    eprintln!(
        "FAULT sigkill_restart: clients={CLIENTS} acknowledged={} failed_while_switching={} \
         published_while_down={published_while_down} recovered_per_client={}..{} \
         all_resubscribed_after_ready_ms={} median_ms={} lost=0 duplicates=0",
        tally.acked.len(),
        tally.failed.len(),
        recovered_counts.iter().min().unwrap(),
        recovered_counts.iter().max().unwrap(),
        all_back.as_millis(),
        reconnect[reconnect.len() / 2].as_millis(),
    );
    let _ = a2.kill().await;
    let _ = b.kill().await;
    pg.drop_now().await;
}

fn flood_config() -> PathBuf {
    let text = format!(
        r#"
[http_server]
address = "127.0.0.1"
port = 0
header_read_timeout = "1s"
[client]
stale_close_delay = "1s"
[client.token]
hmac_secret_key = "{SECRET}"
[http_api]
key = "{API_KEY}"
[[channel.namespaces]]
name = "open"
allow_subscribe_for_client = true
"#
    );
    let path = std::env::temp_dir().join(format!("rotor-flood-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::test]
async fn malformed_frames_and_half_open_connections_leave_good_clients_alone() {
    const GOOD: usize = 10;
    const HALF_OPEN: usize = 1000;
    const STALE_WS: usize = 200;
    let (mut server, addr) = spawn_rotor(BIN, &flood_config()).await;
    let pid = server.id().expect("running");
    let fds = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let url = format!("ws://{addr}/connection/websocket");

    // Well-behaved subscribers note (n, latency in µs, received at).
    let samples: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Default::default();
    let mut readers = Vec::new();
    for i in 0..GOOD {
        let (mut ws, _) = RawWs::connected(&url, &user_token(&format!("good{i}"))).await;
        ws.send(r#"{"id":2,"subscribe":{"channel":"open:lat"}}"#)
            .await;
        assert!(ws.reply().await["subscribe"].is_object());
        let samples = samples.clone();
        readers.push(tokio::spawn(async move {
            loop {
                match ws.recv(Duration::from_secs(60)).await {
                    Received::Messages(ms) => {
                        let now = micros();
                        let mut s = samples.lock().unwrap();
                        for m in ms {
                            let d = &m["push"]["pub"]["data"];
                            if let (Some(n), Some(t)) = (d["n"].as_u64(), d["t"].as_u64()) {
                                s.push((n, now.saturating_sub(t), Instant::now()));
                            }
                        }
                    }
                    other => return format!("good client {i} ended: {other:?}"),
                }
            }
        }));
    }
    let baseline_fds = fds();

    let stop = tokio_util::sync::CancellationToken::new();
    let (tally, publisher) = spawn_publisher(
        move || Some(addr),
        "open:lat",
        Duration::from_millis(20),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The flood.
    let flood_start = Instant::now();
    let flood_stop = tokio_util::sync::CancellationToken::new();
    let mut flooders = Vec::new();
    for kind in ["garbage", "garbage", "garbage", "oversized"] {
        let url = url.clone();
        let flood_stop = flood_stop.clone();
        flooders.push(tokio::spawn(async move {
            let mut codes = BTreeMap::new();
            while !flood_stop.is_cancelled() {
                let mut ws = RawWs::connect(&url).await;
                if kind == "garbage" {
                    ws.send("\u{1}{{{ not json").await;
                } else {
                    ws.send(&"x".repeat(100_000)).await;
                }
                *codes.entry(ws.closed().await.0).or_insert(0u32) += 1;
            }
            (kind, codes)
        }));
    }
    let mut half_open = Vec::new();
    for i in 0..HALF_OPEN {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        half_open.push(s);
    }
    let mut stale = Vec::new();
    for _ in 0..STALE_WS {
        stale.push(RawWs::connect(&url).await);
    }
    let peak_fds = fds();
    tokio::time::sleep(Duration::from_millis(
        3000u64.saturating_sub(flood_start.elapsed().as_millis() as u64),
    ))
    .await;
    flood_stop.cancel();
    let flood_end = Instant::now();
    let mut floods = Vec::new();
    for f in flooders {
        floods.push(f.await.unwrap());
    }
    for (kind, codes) in &floods {
        let want = if *kind == "garbage" { 3501 } else { 1009 };
        assert!(
            codes.keys().all(|c| *c == want) && !codes.is_empty(),
            "{kind} connections get {want}: {codes:?}"
        );
    }
    // Half-open sockets were closed by the server (header timeout), stale WebSockets with 3502.
    let mut closed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for mut s in half_open {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    assert_eq!(
        closed, HALF_OPEN,
        "half-open connections closed by the server"
    );
    for mut ws in stale {
        assert_eq!(ws.closed().await.0, 3502);
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    publisher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_fds = fds();
    for r in &readers {
        assert!(!r.is_finished(), "a good client lost its connection");
    }
    for r in readers {
        r.abort();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.failed.is_empty(),
        "API publishes failed during the flood: {:?}",
        tally
            .failed
            .iter()
            .take(3)
            .map(|f| &f.2)
            .collect::<Vec<_>>()
    );
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    for n in tally.acked.keys() {
        let got = samples.iter().filter(|(m, _, _)| m == n).count();
        assert_eq!(
            got, GOOD,
            "publication {n} reached {got} of {GOOD} good clients"
        );
    }
    let phase = |from: Instant, to: Instant| {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|(_, _, at)| *at >= from && *at < to)
            .map(|(_, l, _)| *l)
            .collect();
        v.sort();
        v
    };
    let base = phase(flood_start - Duration::from_secs(1), flood_start);
    let during = phase(flood_start, flood_end);
    let worst = during.last().copied().unwrap_or(0);
    assert!(
        worst < 2_000_000,
        "a good client waited {worst} µs for a publication during the flood"
    );
    assert!(
        after_fds <= baseline_fds + 20,
        "the server holds {after_fds} descriptors after the flood (baseline {baseline_fds})"
    );
    let count = |k: &str| -> u32 {
        floods
            .iter()
            .filter(|(kind, _)| *kind == k)
            .flat_map(|(_, c)| c.values())
            .sum()
    };
    eprintln!(
        "FAULT flood: malformed_closed_3501={} oversized_closed_1009={} half_open={HALF_OPEN} \
         (all closed) stale_ws={STALE_WS} (all 3502) server_fds baseline={baseline_fds} \
         peak={peak_fds} after={after_fds} good_clients={GOOD} deliveries={} lost=0 \
         latency_us baseline p50={} p99={} | flood p50={} p99={} max={}",
        count("garbage"),
        count("oversized"),
        samples.len(),
        percentile(&base, 0.5),
        percentile(&base, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        worst,
    );
    let _ = server.kill().await;
}

#[tokio::test]
async fn graceful_shutdown_under_publish_load_loses_no_acknowledged_publication() {
    let Some(pg) = PgSchema::create("shutdown_flush").await else {
        return;
    };
    let config = || {
        let mut c = test_config();
        c.channel.namespaces.push(durable_namespace());
        c.client.history_max_publication_limit = 10_000;
        c.shutdown.timeout = Duration::from_secs(3);
        pg.configure(&mut c);
        c
    };
    let server = TestServer::start(config()).await;
    let addr = server.addr;
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("stay")).await;
    // Eight publishers, each as fast as its answers come back.
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Default::default();
    let mut publishers = Vec::new();
    for p in 0..8u64 {
        let acked = acked.clone();
        publishers.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0.. {
                let n = p * 1_000_000 + i;
                let body = json!({"channel": "durable:bye", "data": {"n": n}}).to_string();
                match try_post(addr, &body).await {
                    Ok(v) if v["result"]["offset"].is_u64() => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(n, v["result"]["offset"].as_u64().unwrap());
                    }
                    // Once the listener is closed nothing more can be acknowledged.
                    Err(_) => {
                        refused += 1;
                        if refused > 3 {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acked.lock().unwrap().len();
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    assert_eq!(
        ws.closed().await.0,
        3001,
        "clients are told to reconnect elsewhere"
    );
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("publishers end once the server is gone")
            .unwrap();
    }
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(before > 20, "publishing was under way: {before}");

    // Whatever was acknowledged, up to the last answer, is in Postgres.
    let again = TestServer::start(config()).await;
    let stored = stored_history(&again, "durable:bye").await;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(n, o)| stored.get(n) != Some(o))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    eprintln!(
        "FAULT graceful_shutdown: acknowledged={} stored={} lost=0 shutdown_ms={}",
        acked.len(),
        stored.len(),
        took.as_millis()
    );
    again.shutdown().await;
    pg.drop_now().await;
}

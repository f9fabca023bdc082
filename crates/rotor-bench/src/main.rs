//! `rotor-bench`: the load tool. It starts the server under test (rotor, the minimal
//! broadcast ceiling, or nats-server), opens connections from worker processes (one process
//! may hold only ~20,000 open files here), publishes at a fixed open-loop rate and reports
//! what arrived. See `docs/benchmarks.md` and `scripts/bench.sh`.
//!
//! - `idle`: server memory per idle subscribed connection (slope of RSS over counts), CPU.
//! - `fanout`: one channel, N subscribers, rising publish rate until delivery falls behind
//!   or p99 exceeds the budget. `--channels each` gives every subscriber its own channel.
//! - `churn`: connects per second with HS256 or RS256 tokens, or refreshes of expiring
//!   tokens on long-lived connections.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rotor_bench::load::{self, Publisher, Shared, SubSpec, Target};
use rotor_bench::procfs::{cpu_seconds, rss_kib, slope};
use rotor_bench::tokens::{unix_now, Signer};
use rotor_bench::ServerProcess;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "rotor-bench",
    about = "Load and benchmark tool for rotor and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The server under test.
    #[arg(long, value_enum, default_value = "rotor-ws")]
    target: Target,
    /// Pin the server to these CPUs (`taskset -c` list); run rotor-bench itself under
    /// `taskset` on the others.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Connections per worker process.
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// rotor nodes sharing fan-out through Redis (subscribers spread over them round-robin,
    /// publishers on the first node). 1 = a single node with the in-memory engine.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Redis for `--nodes` > 1.
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Append one JSON object per result line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Channels {
    /// Every subscriber on one channel (fan-out).
    One,
    /// Every subscriber on its own channel.
    Each,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Alg {
    Hs256,
    Rs256,
}

#[derive(clap::Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10000])]
    subs: Vec<usize>,
    #[arg(long, value_enum, default_value = "one")]
    channels: Channels,
    /// Target deliveries per second for each step (publish rate = this / subscribers
    /// for one channel, = this for `--channels each`).
    #[arg(long, value_delimiter = ',', default_values_t = [50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000])]
    deliveries: Vec<u64>,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Stop the ramp when p99 exceeds this many milliseconds.
    #[arg(long, default_value_t = 100.0)]
    p99_budget_ms: f64,
    /// Publisher connections.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Server memory and CPU per idle subscribed connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 10000, 19000])]
        counts: Vec<usize>,
    },
    /// Publish at rising rates to subscribers; report deliveries, latency, losses.
    Fanout(FanoutArgs),
    /// Connection churn (connect, reply, close) or token refreshes on live connections.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "hs256")]
        alg: Alg,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Instead of churn: this many live connections whose tokens expire every `ttl`
        /// seconds and are refreshed in place.
        #[arg(long)]
        refresh: Option<usize>,
        #[arg(long, default_value_t = 5)]
        ttl: u64,
    },
    /// (internal) Holds subscriber connections for the coordinator; driven over stdin.
    #[command(hide = true)]
    Worker {
        #[arg(long, value_enum)]
        target: Target,
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<SocketAddr>,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        stride: u64,
    },
}

fn rotor_config(signer: &Signer, redis: Option<&str>) -> String {
    let engine = match redis {
        Some(addr) => format!(
            "[engine]\ntype = \"redis\"\n[engine.redis]\naddress = \"{addr}\"\nprefix = \"rotor-bench-{}\"\n",
            std::process::id()
        ),
        None => String::new(),
    };
    format!(
        r#"[http_server]
address = "127.0.0.1"
port = 0
[client]
ping_interval = "25s"
allowed_origins = ["*"]
[client.token]
{}[http_stream]
enabled = true
[sse]
enabled = true
[log]
level = "warn"
[channel.without_namespace]
allow_subscribe_for_client = true
allow_publish_for_client = true
{engine}"#,
        signer.rotor_config()
    )
}

/// The servers under test and the addresses subscribers connect to.
struct Servers {
    procs: Vec<ServerProcess>,
}

impl Servers {
    async fn start(common: &Common, signer: &Signer) -> Servers {
        let cpus = common.server_cpus.as_deref();
        let procs = match common.target {
            Target::Ceiling => vec![ServerProcess::ceiling(cpus).await],
            Target::Nats => vec![ServerProcess::nats(cpus).await],
            _ => {
                let redis = (common.nodes > 1).then_some(common.redis.as_str());
                let config = rotor_config(signer, redis);
                let mut v = Vec::new();
                for n in 0..common.nodes.max(1) {
                    v.push(ServerProcess::rotor(&format!("node{n}"), &config, cpus).await);
                }
                v
            }
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        Servers { procs }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    fn rss_kib(&self) -> u64 {
        self.procs.iter().map(|p| rss_kib(p.pid())).sum()
    }

    fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(|p| cpu_seconds(p.pid())).sum()
    }

    async fn stop(self) {
        for p in self.procs {
            p.stop().await;
        }
    }
}

/// A worker process holding subscriber connections.
struct Worker {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn spawn(
        target: Target,
        addrs: &[SocketAddr],
        from: u64,
        count: usize,
        stride: u64,
        token: &str,
    ) -> Worker {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["worker", "--target", target.name()])
            .args(["--addrs", &addrs.join(",")])
            .args(["--from", &from.to_string(), "--count", &count.to_string()])
            .args(["--stride", &stride.to_string()])
            .env("BENCH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start worker");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Worker {
            _child: child,
            stdin,
            lines,
        }
    }

    async fn read(&mut self) -> Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("worker output")
            .expect("worker exited");
        serde_json::from_str(&line).expect("worker JSON")
    }

    async fn ask(&mut self, cmd: &str) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("worker stdin");
        self.read().await
    }
}

async fn ask_all(workers: &mut [Worker], cmd: &str) -> Vec<Value> {
    futures_util::future::join_all(workers.iter_mut().map(|w| w.ask(cmd))).await
}

/// Opens `count` more subscribers (global indexes from `from`) in workers of at most
/// `per_worker` connections; returns the workers and the connect rate.
async fn add_workers(
    common: &Common,
    addrs: &[SocketAddr],
    from: u64,
    count: usize,
    stride: u64,
    token: &str,
) -> (Vec<Worker>, f64) {
    let start = Instant::now();
    let mut workers = Vec::new();
    let mut at = 0;
    while at < count {
        let n = common.per_worker.min(count - at);
        workers.push(Worker::spawn(common.target, addrs, from + at as u64, n, stride, token).await);
        at += n;
    }
    let hellos = futures_util::future::join_all(workers.iter_mut().map(|w| w.read())).await;
    let mut failed = 0;
    for h in &hellos {
        failed += h["failed"].as_u64().unwrap_or(0);
        if let Some(e) = h["error"].as_str() {
            eprintln!("worker: a connection failed: {e}");
        }
    }
    assert_eq!(failed, 0, "{failed} connections failed");
    (workers, count as f64 / start.elapsed().as_secs_f64())
}

fn emit(common: &Common, row: Value) {
    if let Some(path) = &common.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open --json file");
        writeln!(f, "{row}").expect("write --json");
    }
}

async fn idle(common: Common, counts: Vec<usize>) {
    let signer = Signer::hs256();
    let servers = Servers::start(&common, &signer).await;
    let token = signer.token("bench", None);
    let addrs = servers.addrs();
    let base = servers.rss_kib();
    println!(
        "# idle {} (server RSS by open subscribed connections)",
        common.target.name()
    );
    println!(
        "{:>11} {:>12} {:>14} {:>16}",
        "connections", "RSS KiB", "connects/s", "idle CPU %"
    );
    println!("{:>11} {:>12} {:>14} {:>16}", 0, base, "-", "-");
    let mut points = vec![(0.0, base as f64)];
    let mut workers = Vec::new();
    let mut open = 0usize;
    let mut cpu_pct = 0.0;
    for &target in &counts {
        let (mut more, rate) =
            add_workers(&common, &addrs, open as u64, target - open, 100, &token).await;
        workers.append(&mut more);
        open = target;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = servers.rss_kib();
        let (c0, t0) = (servers.cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        cpu_pct = 100.0 * (servers.cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
        println!("{open:>11} {rss:>12} {rate:>14.0} {cpu_pct:>16.2}");
        points.push((open as f64, rss as f64));
        emit(
            &common,
            json!({"scenario": "idle", "target": common.target.name(), "connections": open,
                   "rss_kib": rss, "connects_per_s": rate, "idle_cpu_pct": cpu_pct}),
        );
    }
    let per = slope(&points);
    println!("memory per idle connection (slope): {per:.1} KiB");
    emit(
        &common,
        json!({"scenario": "idle-slope", "target": common.target.name(),
               "kib_per_connection": per, "idle_cpu_pct_at_max": cpu_pct, "max": open}),
    );
    ask_all(&mut workers, "quit").await;
    servers.stop().await;
}

fn merge_histograms(reports: &[Value]) -> Histogram<u64> {
    let mut all = load::new_histogram();
    for r in reports {
        let bytes = hex_decode(r["hist"].as_str().expect("hist"));
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .expect("histogram");
        all.add(h).expect("merge");
    }
    all
}

fn sum(reports: &[Value], key: &str) -> u64 {
    reports.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum()
}

async fn fanout(args: FanoutArgs) {
    let FanoutArgs {
        common,
        subs: subs_list,
        channels,
        deliveries,
        duration,
        payload,
        p99_budget_ms: budget_ms,
        publishers,
    } = args;
    let signer = Signer::hs256();
    let token = signer.token("bench", None);
    for subs in subs_list {
        let servers = Servers::start(&common, &signer).await;
        let addrs = servers.addrs();
        let stride = if channels == Channels::Each {
            subs as u64
        } else {
            1
        };
        let (mut workers, connect_rate) =
            add_workers(&common, &addrs, 0, subs, stride, &token).await;
        let mut pubs = Vec::new();
        for _ in 0..publishers.max(1) {
            pubs.push(Publisher::connect(common.target, addrs[0], &token).await);
        }
        let rss_idle = servers.rss_kib();
        println!(
            "# {} {} subscribers{} ({} node{}), {payload}-byte payload, {connect_rate:.0} connects/s, idle RSS {rss_idle} KiB",
            common.target.name(),
            subs,
            if stride > 1 { " each on its own channel" } else { " on one channel" },
            addrs.len(),
            if addrs.len() > 1 { "s" } else { "" },
        );
        println!(
            "{:>9} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>6} {:>9}",
            "pub/s",
            "expected/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost",
            "dup",
            "CPU %",
            "RSS KiB"
        );
        let mut next_seq = 0u64;
        for &d in &deliveries {
            let rate = if stride > 1 {
                d as f64
            } else {
                (d as f64 / subs as f64).max(1.0)
            };
            let count = (rate * duration).round().max(1.0) as u64;
            let first = next_seq;
            let end = first + count;
            next_seq = end;
            ask_all(&mut workers, &format!("reset {first}")).await;
            let errors_before: u64 = pubs.iter().map(|p| p.errors.load(Ordering::Relaxed)).sum();
            let (cpu0, t0, t0_ns) = (
                servers.cpu_seconds(),
                Instant::now(),
                rotor_bench::payload::now_ns(),
            );
            load::publish_open_loop(&mut pubs, first, count, rate, stride, payload).await;
            // Wait until everything arrived, or nothing more arrives for a second.
            let expected = sum(
                &ask_all(&mut workers, &format!("count {end}")).await,
                "expected",
            );
            let (mut last, mut still) = (0, Instant::now());
            loop {
                let got = sum(
                    &ask_all(&mut workers, &format!("count {end}")).await,
                    "received",
                );
                if got >= expected || still.elapsed() > Duration::from_secs(1) {
                    break;
                }
                if got != last {
                    (last, still) = (got, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let cpu = 100.0 * (servers.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
            let reports = ask_all(&mut workers, &format!("report {end}")).await;
            let hist = merge_histograms(&reports);
            let received = sum(&reports, "received");
            let lost = sum(&reports, "lost");
            let dup = sum(&reports, "dup");
            let disconnected = sum(&reports, "disconnected");
            let last_ns = reports
                .iter()
                .map(|r| r["last_ns"].as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0);
            let window = (last_ns.saturating_sub(t0_ns) as f64 / 1e9).max(duration);
            let delivered_rate = received as f64 / window;
            let expected_rate = expected as f64 / duration;
            let errors: u64 = pubs
                .iter()
                .map(|p| p.errors.load(Ordering::Relaxed))
                .sum::<u64>()
                - errors_before;
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            let rss = servers.rss_kib();
            println!(
                "{rate:>9.0} {expected_rate:>12.0} {delivered_rate:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {lost:>7} {dup:>5} {cpu:>6.0} {rss:>9}",
                ms(0.5), ms(0.99), ms(0.999), hist.max() as f64 / 1000.0
            );
            if errors > 0 || disconnected > 0 {
                println!(
                    "          publish errors: {errors}, subscribers disconnected: {disconnected}"
                );
            }
            emit(
                &common,
                json!({"scenario": if stride > 1 { "channels" } else { "fanout" },
                       "target": common.target.name(), "nodes": addrs.len(), "subscribers": subs,
                       "payload": payload, "publish_rate": rate, "expected_per_s": expected_rate,
                       "delivered_per_s": delivered_rate, "expected": expected,
                       "received": received, "lost": lost, "dup": dup,
                       "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                       "max_ms": hist.max() as f64 / 1000.0, "server_cpu_pct": cpu,
                       "server_rss_kib": rss, "publish_errors": errors,
                       "disconnected": disconnected, "connects_per_s": connect_rate}),
            );
            let behind = received < expected || delivered_rate < 0.95 * expected_rate;
            if behind || ms(0.99) > budget_ms || disconnected > 0 || errors > 0 {
                println!("          saturated: stopping the ramp here");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ask_all(&mut workers, "quit").await;
        servers.stop().await;
    }
}

/// Opens one rotor WebSocket connection, connects with `token` and returns it with the
/// connect reply.
async fn rotor_connect(addr: SocketAddr, token: &str) -> Result<(load::Ws, Value), String> {
    let mut ws = load::ws_connect(addr, "/connection/websocket").await?;
    ws.send(Message::text(format!(
        "{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}"
    )))
    .await
    .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                return Ok((ws, v));
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

async fn churn(
    common: Common,
    alg: Alg,
    duration: f64,
    concurrency: usize,
    refresh: Option<usize>,
    ttl: u64,
) {
    assert!(
        common.target.is_rotor(),
        "churn measures rotor's token checks"
    );
    let signer = Arc::new(if alg == Alg::Rs256 {
        Signer::rs256()
    } else {
        Signer::hs256()
    });
    let alg_name = if alg == Alg::Rs256 { "RS256" } else { "HS256" };
    let servers = Servers::start(&common, &signer).await;
    let addr = servers.addrs()[0];
    // A pool of tokens (distinct users) for churn, signed before the clock starts.
    let tokens: Arc<Vec<String>> = Arc::new(if refresh.is_none() {
        (0..1000)
            .map(|i| signer.token(&format!("u{i}"), None))
            .collect()
    } else {
        Vec::new()
    });
    let (cpu0, t0) = (servers.cpu_seconds(), Instant::now());
    let deadline = t0 + Duration::from_secs_f64(duration);
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    match refresh {
        None => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (ok, failed, tokens) = (ok.clone(), failed.clone(), tokens.clone());
                    tokio::spawn(async move {
                        let mut k = t;
                        while Instant::now() < deadline {
                            k += concurrency;
                            match rotor_connect(addr, &tokens[k % tokens.len()]).await {
                                Ok((mut ws, _)) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    let _ = ws.close(None).await;
                                }
                                Err(e) => {
                                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                        eprintln!("connect failed: {e}");
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            futures_util::future::join_all(tasks).await;
        }
        Some(n) => {
            let disconnected = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (ok, failed, signer, disconnected) =
                        (ok.clone(), failed.clone(), signer.clone(), disconnected.clone());
                    tokio::spawn(async move {
                        let user = format!("u{i}");
                        // Spread expiries over the first period.
                        tokio::time::sleep(Duration::from_millis((i as u64 * 1000 * ttl) / n as u64)).await;
                        let token = signer.token(&user, Some(unix_now() + ttl));
                        let Ok((mut ws, reply)) = rotor_connect(addr, &token).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let mut ttl_s = reply["connect"]["ttl"].as_u64().unwrap_or(ttl);
                        let mut id = 1;
                        loop {
                            // Refresh a second before expiry, answering pings meanwhile.
                            let at = tokio::time::Instant::now()
                                + Duration::from_secs(ttl_s.saturating_sub(1).max(1));
                            if Instant::now() >= deadline {
                                return;
                            }
                            loop {
                                tokio::select! {
                                    _ = tokio::time::sleep_until(at) => break,
                                    m = ws.next() => match m {
                                        Some(Ok(Message::Text(t))) if t.as_str() == "{}" => {
                                            let _ = ws.send(Message::text("{}")).await;
                                        }
                                        Some(Ok(_)) => {}
                                        _ => { disconnected.fetch_add(1, Ordering::Relaxed); return; }
                                    },
                                }
                            }
                            id += 1;
                            let token = signer.token(&user, Some(unix_now() + ttl));
                            let cmd = format!("{{\"id\":{id},\"refresh\":{{\"token\":\"{token}\"}}}}");
                            if ws.send(Message::text(cmd)).await.is_err() {
                                disconnected.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            loop {
                                match ws.next().await {
                                    Some(Ok(Message::Text(t))) if t.contains("\"refresh\"") => {
                                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                                        ttl_s = v["refresh"]["ttl"].as_u64().unwrap_or(ttl);
                                        ok.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Some(Ok(_)) => {}
                                    _ => { disconnected.fetch_add(1, Ordering::Relaxed); return; }
                                }
                            }
                        }
                    })
                })
                .collect();
            futures_util::future::join_all(tasks).await;
            let d = disconnected.load(Ordering::Relaxed);
            if d > 0 {
                println!("connections lost during refresh churn: {d}");
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu_s = servers.cpu_seconds() - cpu0;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let what = if refresh.is_some() {
        "refreshes"
    } else {
        "connects"
    };
    println!(
        "# churn {} {alg_name}: {ok} {what} ({failed} failed) in {wall:.1} s = {:.0}/s; server CPU {:.0}% = {:.0} {what} per server CPU-second",
        common.target.name(),
        ok as f64 / wall,
        100.0 * cpu_s / wall,
        ok as f64 / cpu_s.max(1e-9)
    );
    emit(
        &common,
        json!({"scenario": if refresh.is_some() { "refresh" } else { "churn" },
               "target": common.target.name(), "alg": alg_name, "ok": ok, "failed": failed,
               "per_s": ok as f64 / wall, "server_cpu_pct": 100.0 * cpu_s / wall,
               "per_server_cpu_s": ok as f64 / cpu_s.max(1e-9), "connections": refresh}),
    );
    servers.stop().await;
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

async fn worker(target: Target, addrs: Vec<SocketAddr>, from: u64, count: usize, stride: u64) {
    let token = std::env::var("BENCH_TOKEN").unwrap_or_default();
    let shared = Arc::new(Shared::new(from, count, stride));
    let spec = Arc::new(SubSpec {
        target,
        addrs,
        token,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client"),
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let (mut spawned, mut done, mut failed, mut error) = (0usize, 0usize, 0u64, None);
    while done < count {
        while spawned < count && spawned - done < 200 {
            tokio::spawn(load::subscriber(
                spec.clone(),
                shared.clone(),
                spawned,
                tx.clone(),
            ));
            spawned += 1;
        }
        match rx.recv().await.expect("subscribers report") {
            Ok(()) => {}
            Err(e) => {
                failed += 1;
                error.get_or_insert(e);
            }
        }
        done += 1;
    }
    let mut out = std::io::stdout();
    let say = |out: &mut std::io::Stdout, v: Value| {
        writeln!(out, "{v}")
            .and_then(|_| out.flush())
            .expect("stdout");
    };
    say(
        &mut out,
        json!({"ready": count as u64 - failed, "failed": failed, "error": error,
               "secs": start.elapsed().as_secs_f64()}),
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg: u64 = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
        match cmd {
            "reset" => {
                shared.reset(arg);
                say(&mut out, json!({"ok": true}));
            }
            "count" => {
                let received = shared.received();
                say(
                    &mut out,
                    json!({"received": received, "expected": shared.expected(arg)}),
                );
            }
            "report" => {
                let tail = shared.tail_lost(arg);
                let st = shared.state.lock().expect("state");
                let t = &st.tally;
                let mut bytes = Vec::new();
                V2Serializer::new()
                    .serialize(&t.hist, &mut bytes)
                    .expect("serialize");
                say(
                    &mut out,
                    json!({"received": t.received, "lost": t.lost + tail, "dup": t.dup,
                           "last_ns": t.last_ns, "hist": hex_encode(&bytes),
                           "disconnected": shared.disconnected.load(Ordering::Relaxed)}),
                );
            }
            _ => {
                say(&mut out, json!({"bye": true}));
                break;
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let worker_mode = matches!(cli.command, Cmd::Worker { .. });
    let rt = if worker_mode {
        // A worker is one thread: several of them share the load's CPUs.
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    rt.block_on(async move {
        match cli.command {
            Cmd::Idle { common, counts } => idle(common, counts).await,
            Cmd::Fanout(args) => fanout(args).await,
            Cmd::Churn {
                common,
                alg,
                duration,
                concurrency,
                refresh,
                ttl,
            } => churn(common, alg, duration, concurrency, refresh, ttl).await,
            Cmd::Worker {
                target,
                addrs,
                from,
                count,
                stride,
            } => worker(target, addrs, from, count, stride).await,
        }
    });
}

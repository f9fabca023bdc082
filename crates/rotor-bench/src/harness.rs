//! What every scenario runs on: the servers under test (rotor, the ceiling or NATS, one
//! or several nodes), the worker processes holding the subscribers, and one JSON line per
//! result.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rotor_bench::load::Target;
use rotor_bench::procfs::{cpu_seconds, rss_kib};
use rotor_bench::tokens::Signer;
use rotor_bench::ServerProcess;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cli::Common;

/// rotor's configuration for a run; `extra` is appended (more sections).
/// rotor's configuration for a run: `channel` is more keys of `[channel.without_namespace]`
/// (where the bench's channels live), `extra` more TOML sections.
pub(crate) fn rotor_config(
    signer: &Signer,
    redis: Option<&str>,
    channel: &str,
    extra: &str,
) -> String {
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
{channel}{engine}{extra}"#,
        signer.rotor_config()
    )
}

/// The servers under test and the addresses subscribers connect to.
pub(crate) struct Servers {
    pub(crate) procs: Vec<ServerProcess>,
}

impl Servers {
    pub(crate) async fn start(common: &Common, signer: &Signer) -> Servers {
        Servers::start_with(common, signer, "", "").await
    }

    /// [`Servers::start`] with more rotor configuration (as [`rotor_config`] takes it).
    pub(crate) async fn start_with(
        common: &Common,
        signer: &Signer,
        channel: &str,
        extra: &str,
    ) -> Servers {
        let cpus = common.server_cpus.as_deref();
        let procs = match common.target {
            Target::Ceiling => vec![ServerProcess::ceiling(cpus).await],
            Target::Nats => vec![ServerProcess::nats(cpus).await],
            _ => {
                let redis = common.redis_engine();
                let config = rotor_config(signer, redis, channel, extra);
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

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        self.procs.iter().map(|p| rss_kib(p.pid())).sum()
    }

    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(|p| cpu_seconds(p.pid())).sum()
    }

    pub(crate) async fn stop(self) {
        for p in self.procs {
            p.stop().await;
        }
    }
}

/// A worker process holding subscriber connections.
pub(crate) struct Worker {
    pub(crate) _child: tokio::process::Child,
    pub(crate) stdin: tokio::process::ChildStdin,
    pub(crate) lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    pub(crate) async fn spawn(
        common: &Common,
        addrs: &[SocketAddr],
        from: u64,
        count: usize,
        stride: u64,
        token: &str,
        personal: bool,
    ) -> Worker {
        let target = common.target;
        let tags_filter = common
            .tags_filter
            .map(|k| rotor_bench::load::tags_filter(k.name()).0);
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["worker", "--target", target.name()])
            .args(["--addrs", &addrs.join(",")])
            .args(["--from", &from.to_string(), "--count", &count.to_string()])
            .args(["--stride", &stride.to_string()])
            .args(personal.then_some("--personal"))
            .env("BENCH_TOKEN", token)
            .envs(tags_filter.map(|f| ("BENCH_TAGS_FILTER", f)))
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

    pub(crate) async fn read(&mut self) -> Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("worker output")
            .expect("worker exited");
        serde_json::from_str(&line).expect("worker JSON")
    }

    pub(crate) async fn ask(&mut self, cmd: &str) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("worker stdin");
        self.read().await
    }
}

pub(crate) async fn ask_all(workers: &mut [Worker], cmd: &str) -> Vec<Value> {
    futures_util::future::join_all(workers.iter_mut().map(|w| w.ask(cmd))).await
}

/// Opens `count` more subscribers (global indexes from `from`; `personal`: each its own
/// user, see the worker's `--personal`) in workers of at most
/// `per_worker` connections; returns the workers and the connect rate.
pub(crate) async fn add_workers(
    common: &Common,
    addrs: &[SocketAddr],
    from: u64,
    count: usize,
    stride: u64,
    token: &str,
    personal: bool,
) -> (Vec<Worker>, f64) {
    let start = Instant::now();
    let mut workers = Vec::new();
    let mut at = 0;
    while at < count {
        let n = common.per_worker.min(count - at);
        workers
            .push(Worker::spawn(common, addrs, from + at as u64, n, stride, token, personal).await);
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

pub(crate) fn emit(common: &Common, row: Value) {
    if let Some(path) = &common.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open --json file");
        writeln!(f, "{row}").expect("write --json");
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

//! `worker`: the process side of the load, one thread holding subscriber connections and
//! answering the coordinator's commands (reset, count, report, quit) on stdin.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::serialization::{Serializer, V2Serializer};
use rotor_bench::load::{self, Shared, SubSpec, Target};
use rotor_bench::tokens::Signer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::hex_encode;

pub(crate) async fn worker(
    target: Target,
    addrs: Vec<SocketAddr>,
    from: u64,
    count: usize,
    stride: u64,
    personal: bool,
) {
    let token = std::env::var("BENCH_TOKEN").unwrap_or_default();
    let shared = Arc::new(Shared::new(from, count, stride));
    let spec = Arc::new(SubSpec {
        target,
        addrs,
        token,
        personal: personal.then(Signer::hs256),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client"),
        tags_filter: std::env::var("BENCH_TAGS_FILTER").ok(),
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

//! `rotor-bench`: load scenarios against a real rotor process.
//!
//! `rotor-bench idle [--counts 1000,5000,10000]` starts the release `rotor` binary, opens
//! that many WebSocket connections (each connects with a token and subscribes to one of 100
//! channels), and reports the server's resident memory at each count and the slope: memory
//! per idle connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rotor_bench::RotorProcess;
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = r#"
[http_server]
address = "127.0.0.1"
port = 0
[client.token]
hmac_secret_key = "bench-secret"
[client]
ping_interval = "25s"
[log]
level = "warn"
[channel.without_namespace]
allow_subscribe_for_client = true
"#;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, token: &str, i: usize) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let frame = format!("{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"room{}\"}}}}", i % 100);
    ws.send(Message::Text(frame.into())).await.expect("send");
    let mut replies = 0;
    while replies < 2 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                replies += t.split('\n').filter(|l| l.contains("\"id\"")).count()
            }
            other => panic!("connection {i}: unexpected {other:?}"),
        }
    }
    ws
}

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    num / den
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("idle") {
        eprintln!("usage: rotor-bench idle [--counts 1000,5000,10000]");
        std::process::exit(2);
    }
    let counts: Vec<usize> = match args.iter().position(|a| a == "--counts") {
        Some(i) => args[i + 1]
            .split(',')
            .map(|c| c.parse().expect("a number"))
            .collect(),
        None => vec![1000, 5000, 10000],
    };
    let server = RotorProcess::start("idle", CONFIG).await;
    let pid = server.pid();
    let token = std::process::Command::new(rotor_bench::rotor_binary())
        .args([
            "--set",
            "client.token.hmac_secret_key=bench-secret",
            "gentoken",
            "--user",
            "bench",
            "--ttl",
            "0",
        ])
        .output()
        .expect("gentoken");
    let token = String::from_utf8(token.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let url = format!("ws://{}/connection/websocket", server.addr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);
    println!("connections  server RSS (KiB)");
    println!("{:>11}  {:>16}", 0, base);
    let mut conns = Vec::new();
    let mut points = vec![(0.0, base as f64)];
    for &target in &counts {
        while conns.len() < target {
            let batch: Vec<_> = (conns.len()..target.min(conns.len() + 200))
                .map(|i| open(&url, &token, i))
                .collect();
            conns.extend(futures_util::future::join_all(batch).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid);
        println!("{:>11}  {:>16}", conns.len(), rss);
        points.push((conns.len() as f64, rss as f64));
    }
    println!(
        "memory per idle connection (slope): {:.1} KiB",
        slope(&points)
    );
    drop(conns);
    server.stop().await;
}

//! `delta`: what fossil delta compression saves on the wire for a slowly changing document.
//! For each document size, a subscriber without deltas and one with `delta: "fossil"` (JSON
//! protocol, WebSocket) receive the same publications, sent through the server API with
//! `delta: true`; each rebuilds every document (applying deltas) and checks it against what
//! was published; the bytes of the WebSocket frames each received are compared. The server
//! CPU per publication is read from /proc around each run.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rotor_bench::load::{ws_connect, Ws};
use rotor_bench::tokens::Signer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Common;
use crate::harness::{emit, Servers};

/// Version `n` of a document of about `size` bytes: rows of readings, of which version `n`
/// changes one value, plus its version number and time.
fn document(n: u64, size: usize) -> Value {
    let rows = (size / 64).max(1) as u64;
    let readings: Vec<Value> = (0..rows)
        .map(|r| {
            let value = if r == n % rows { 1000 + n } else { 1000 + r };
            json!({"sensor": format!("sensor-{r:04}"), "value": value, "unit": "kPa"})
        })
        .collect();
    json!({"version": n, "updated_ms": 1_764_900_000_000u64 + n * 250, "readings": readings})
}

/// A subscriber that rebuilds every publication and counts the bytes it was sent.
struct Reader {
    ws: Ws,
    delta: bool,
    base: Vec<u8>,
    bytes: u64,
    received: Vec<Value>,
}

impl Reader {
    async fn connect(addr: SocketAddr, token: &str, channel: &str, delta: bool) -> Reader {
        let mut ws = ws_connect(addr, "/connection/websocket")
            .await
            .expect("connects");
        let ask = if delta { r#","delta":"fossil""# } else { "" };
        let hello = format!(
            "{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"{ask}}}}}"
        );
        ws.send(Message::text(hello)).await.expect("send");
        let mut r = Reader {
            ws,
            delta,
            base: Vec::new(),
            bytes: 0,
            received: Vec::new(),
        };
        let mut replies = 0;
        while replies < 2 {
            for v in r.next_lines().await {
                if let Some(e) = v.get("error") {
                    panic!("subscribe failed: {e}");
                }
                if v.get("id").is_some() {
                    replies += 1;
                    if v["id"] == 2 {
                        assert_eq!(v["subscribe"]["delta"] == true, delta, "negotiation: {v}");
                    }
                }
            }
        }
        r
    }

    /// The next frame's lines (a ping is answered), counting the frame's bytes.
    async fn next_lines(&mut self) -> Vec<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("open")
                .expect("frame");
            let Message::Text(text) = msg else { continue };
            if text.as_str() == "{}" {
                self.ws.send(Message::text("{}")).await.expect("pong");
                continue;
            }
            self.bytes += text.len() as u64;
            return text
                .split('\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
        }
    }

    /// Reads until `count` publications arrived, rebuilding each.
    async fn read(&mut self, count: usize) {
        while self.received.len() < count {
            for v in self.next_lines().await {
                let p = &v["push"]["pub"];
                if p.is_null() {
                    continue;
                }
                let data = if !self.delta {
                    p["data"].clone()
                } else {
                    let text = p["data"]
                        .as_str()
                        .expect("a delta subscriber's data is a string");
                    self.base = if p["delta"] == true {
                        rotor_protocol::fossil::apply(&self.base, text.as_bytes())
                            .expect("the delta applies")
                    } else {
                        text.as_bytes().to_vec()
                    };
                    serde_json::from_slice(&self.base).expect("rebuilt JSON")
                };
                self.received.push(data);
            }
        }
    }
}

pub(crate) async fn delta(common: Common, sizes: Vec<usize>, publications: u64) {
    let signer = Signer::hs256();
    let token = signer.token("bench", None);
    let channel_keys = "history_size = 10\nhistory_ttl = \"300s\"\nforce_recovery = true\nallowed_delta_types = [\"fossil\"]\n";
    let servers = Servers::start_with(
        &common,
        &signer,
        channel_keys,
        "[http_api]\nkey = \"bench\"\n",
    )
    .await;
    let addr = servers.addrs()[0];
    let http = reqwest::Client::new();
    println!(
        "# {} publications per size, JSON over WebSocket, one changed reading per version",
        publications
    );
    println!(
        "{:>9} {:>14} {:>14} {:>8} {:>16} {:>16}",
        "doc bytes", "plain B/pub", "delta B/pub", "saved", "CPU us/pub plain", "CPU us/pub delta"
    );
    for size in sizes {
        let mut cpu_us = [0.0f64; 2];
        let mut per_pub = [0.0f64; 2];
        // One run without deltas asked, one with: the server's CPU for each.
        for (k, ask) in [false, true].into_iter().enumerate() {
            let channel = format!("doc{size}{}", if ask { "d" } else { "p" });
            let mut reader = Reader::connect(addr, &token, &channel, ask).await;
            let cpu0 = servers.cpu_seconds();
            // Read while publishing: a subscriber that does not read is closed as slow.
            let reading = tokio::spawn(async move {
                reader.read(publications as usize).await;
                reader
            });
            for n in 0..publications {
                let body = json!({"channel": channel, "data": document(n, size), "delta": ask});
                let r = http
                    .post(format!("http://{addr}/api/publish"))
                    .header("x-api-key", "bench")
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("publish");
                assert!(r.status().is_success(), "publish: {}", r.status());
            }
            let reader = reading.await.expect("reader");
            cpu_us[k] = (servers.cpu_seconds() - cpu0) * 1e6 / publications as f64;
            for (n, got) in reader.received.iter().enumerate() {
                assert_eq!(got, &document(n as u64, size), "document {n} rebuilt");
            }
            per_pub[k] = reader.bytes as f64 / publications as f64;
        }
        let saved = 100.0 * (1.0 - per_pub[1] / per_pub[0]);
        let doc_bytes = document(0, size).to_string().len();
        println!(
            "{doc_bytes:>9} {:>14.0} {:>14.0} {saved:>7.1}% {:>16.1} {:>16.1}",
            per_pub[0], per_pub[1], cpu_us[0], cpu_us[1]
        );
        emit(
            &common,
            json!({"scenario": "delta", "doc_bytes": doc_bytes, "publications": publications,
                   "plain_bytes_per_pub": per_pub[0], "delta_bytes_per_pub": per_pub[1],
                   "saved_pct": saved, "server_cpu_us_per_pub_plain": cpu_us[0],
                   "server_cpu_us_per_pub_delta": cpu_us[1]}),
        );
    }
    servers.stop().await;
}

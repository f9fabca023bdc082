//! A small chat client: subscribes to a channel, prints what arrives, and publishes each line
//! typed on stdin.
//!
//! ```text
//! # terminal 1: the server
//! cargo run -p rotor-server --bin rotor -- --config config/dev.toml
//! # terminal 2: a token for user "alice", then the client
//! TOKEN=$(cargo run -q -p rotor-server --bin rotor -- --config config/dev.toml gentoken --user alice)
//! ROTOR_TOKEN=$TOKEN cargo run -p rotor-client --example chat -- chat:index
//! ```
//!
//! `ROTOR_URL` picks the endpoint (default `ws://127.0.0.1:8000/connection/websocket`);
//! an `http://…/connection/http_stream` or `…/connection/sse` URL picks that transport.

use futures_util::StreamExt;
use rotor_client::{Client, ClientConfig, Event, FnTokenProvider, TokenError, Transport};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() {
    let channel = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "chat:index".into());
    let url = std::env::var("ROTOR_URL")
        .unwrap_or_else(|_| "ws://127.0.0.1:8000/connection/websocket".into());
    let transport = if url.ends_with("/http_stream") {
        Transport::HttpStream
    } else if url.ends_with("/sse") {
        Transport::Sse
    } else {
        Transport::WebSocket
    };
    // A real application would fetch a fresh token from its backend here; this example
    // re-reads the environment, so a refreshed token can be handed in by restarting.
    let provider = FnTokenProvider::new(|| async {
        std::env::var("ROTOR_TOKEN").map_err(|_| TokenError("set ROTOR_TOKEN".into()))
    });
    let config = ClientConfig::new(transport, url).with_token_provider(provider);
    let (client, mut events) = Client::new(config);
    let sub = client.subscribe(&channel, Default::default());
    client.connect();

    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Publication {
                    channel,
                    publication,
                } => {
                    println!("[{channel}] {}", publication.data.get())
                }
                Event::Connected { client, .. } => eprintln!("connected as {client}"),
                Event::Subscribed {
                    channel, recovered, ..
                } => {
                    eprintln!("subscribed to {channel} (recovered: {recovered})")
                }
                Event::Connecting { code, reason } if code != 0 => {
                    eprintln!("reconnecting: {code} {reason}")
                }
                Event::Disconnected { code, reason } => {
                    eprintln!("disconnected: {code} {reason}");
                    std::process::exit(1);
                }
                Event::Error(e) => eprintln!("error: {e}"),
                _ => {}
            }
        }
    });

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Err(e) = sub.publish(serde_json::json!({ "text": line })).await {
            eprintln!("publish failed: {e}");
        }
    }
    client.disconnect();
}

//! `bench-ceiling`: the practical ceiling for rotor's fan-out benchmarks. A minimal broadcast
//! server built from the same libraries as rotor (tokio + tokio-tungstenite, the same 4 KiB
//! read buffer) with no protocol, no auth and no state beyond the subscriber lists.
//!
//! - `ws://…/sub/<channel>`: answered with one `ok` text frame, then every message published
//!   to `<channel>`.
//! - `ws://…/pub`: each text frame is `<channel>\n<payload>`; the payload goes to the
//!   channel's subscribers as one text frame, the same bytes for all (encoded once).
//!
//! A subscriber that falls more than 4096 messages behind is closed, as a real server must.
//! Prints `listening on <addr>` and serves until killed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>;

fn sender(channels: &Channels, name: &str) -> broadcast::Sender<Utf8Bytes> {
    channels
        .lock()
        .expect("channels")
        .entry(name.to_string())
        .or_insert_with(|| broadcast::channel(4096).0)
        .clone()
}

async fn serve(stream: TcpStream, channels: Channels) {
    stream.set_nodelay(true).ok();
    let mut path = String::new();
    let config = WebSocketConfig::default().read_buffer_size(4096);
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    if let Some(channel) = path.strip_prefix("/sub/") {
        let mut rx = sender(&channels, channel).subscribe();
        if ws.send(Message::text("ok")).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Ok(m) = m else { break }; // lagged too far behind, or gone
                    if ws.feed(Message::Text(m)).await.is_err() { break }
                    // Whatever else is already queued goes out in the same write.
                    while let Ok(m) = rx.try_recv() {
                        if ws.feed(Message::Text(m)).await.is_err() { return }
                    }
                    if ws.flush().await.is_err() { break }
                }
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    _ => {}
                },
            }
        }
    } else if path == "/pub" {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                if let Some((channel, payload)) = t.as_str().split_once('\n') {
                    let _ = sender(&channels, channel).send(Utf8Bytes::from(payload.to_string()));
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("port"))
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let channels = Channels::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(stream, channels.clone()));
    }
}

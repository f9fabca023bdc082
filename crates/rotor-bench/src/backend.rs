//! A minimal application backend for the connect proxy: HTTP/1.1 with keep-alive on
//! 127.0.0.1, answering every POST with the user the connect's `data` names
//! (`{"result":{"user":…}}`). Just enough HTTP for rotor's proxy client: request head, a
//! `Content-Length` body, a JSON answer; what it costs is what any backend's answer costs
//! at the least.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the backend; returns its address and the number of calls it answered.
pub(crate) async fn start() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, counter.clone()));
        }
    });
    (addr, calls)
}

async fn serve(mut socket: tokio::net::TcpStream, calls: Arc<AtomicU64>) {
    let _ = socket.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[head_end..head_end + length];
        let user = user_of(body).unwrap_or("anonymous");
        let answer = format!("{{\"result\":{{\"user\":\"{user}\"}}}}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        calls.fetch_add(1, Ordering::Relaxed);
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        buf.drain(..head_end + length);
    }
}

/// The `"user":"…"` of the connect's data (alphanumeric users only, as the bench makes them).
fn user_of(body: &[u8]) -> Option<&str> {
    let at = memchr::memmem::find(body, b"\"user\":\"")? + 8;
    let len = body[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[at..at + len])
        .ok()
        .filter(|u| u.bytes().all(|b| b.is_ascii_alphanumeric()))
}

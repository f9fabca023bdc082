//! The three transports, each reduced to the same shape: frames out through one channel,
//! frames in (and finally how the connection closed) through another. Everything above this
//! module is transport-agnostic.

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{ClientConfig, Transport};
use crate::error::Error;

/// From the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// One frame: one or more JSON replies joined by `\n`.
    Frame(String),
    /// The connection ended; `code` 0 means no close code (the transport just went away).
    Closed { code: u32, reason: String },
}

/// To the server.
pub(crate) enum Out {
    Frame(String),
    /// Emulation routing, known once the connect reply is in.
    Session {
        session: String,
        node: String,
    },
}

/// An open connection. Dropping it stops its tasks and closes the transport.
pub(crate) struct Conn {
    out: mpsc::UnboundedSender<Out>,
    pub(crate) incoming: mpsc::UnboundedReceiver<Incoming>,
    tasks: Vec<JoinHandle<()>>,
}

impl Conn {
    pub(crate) fn send(&self, frame: String) {
        let _ = self.out.send(Out::Frame(frame));
    }

    pub(crate) fn set_session(&self, session: String, node: String) {
        let _ = self.out.send(Out::Session { session, node });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens the transport and sends `connect` (one JSON command) as its first frame.
pub(crate) async fn open(
    cfg: &ClientConfig,
    http: &reqwest::Client,
    connect: String,
) -> Result<Conn, Error> {
    match cfg.transport {
        Transport::WebSocket => open_ws(cfg, connect).await,
        Transport::HttpStream => {
            let resp = http
                .post(&cfg.endpoint)
                .header("Accept", "application/json")
                .header("Content-Type", "application/json")
                .body(connect)
                .send()
                .await
                .map_err(|e| Error::Transport(format!("http_stream: {e}")))?;
            open_emulated(cfg, http, resp, false)
        }
        Transport::Sse => {
            let sep = if cfg.endpoint.contains('?') { '&' } else { '?' };
            let url = format!("{}{sep}cf_connect={}", cfg.endpoint, urlencode(&connect));
            let resp = http
                .get(url)
                .header("Accept", "text/event-stream")
                .header("Cache-Control", "no-cache")
                .send()
                .await
                .map_err(|e| Error::Transport(format!("sse: {e}")))?;
            open_emulated(cfg, http, resp, true)
        }
    }
}

async fn open_ws(cfg: &ClientConfig, connect: String) -> Result<Conn, Error> {
    let (ws, _) = tokio_tungstenite::connect_async(cfg.endpoint.as_str())
        .await
        .map_err(|e| Error::Transport(format!("websocket: {e}")))?;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let _ = out_tx.send(Out::Frame(connect));
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            if let Out::Frame(f) = out {
                if sink.send(Message::text(f)).await.is_err() {
                    return;
                }
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        let closed = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    if in_tx.send(Incoming::Frame(t.as_str().to_owned())).is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    break Incoming::Closed {
                        code: 0,
                        reason: "binary frame on a JSON connection".into(),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => Incoming::Closed {
                            code: u32::from(u16::from(f.code)),
                            reason: f.reason.as_str().to_owned(),
                        },
                        None => Incoming::Closed {
                            code: 0,
                            reason: "closed without a code".into(),
                        },
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    break Incoming::Closed {
                        code: 0,
                        reason: format!("websocket: {e}"),
                    }
                }
                None => {
                    break Incoming::Closed {
                        code: 0,
                        reason: "connection closed".into(),
                    }
                }
            }
        };
        let _ = in_tx.send(closed);
    });
    Ok(Conn {
        out: out_tx,
        incoming: in_rx,
        tasks: vec![writer, reader],
    })
}

fn open_emulated(
    cfg: &ClientConfig,
    http: &reqwest::Client,
    mut resp: reqwest::Response,
    sse: bool,
) -> Result<Conn, Error> {
    let status = resp.status();
    if !status.is_success() || status.as_u16() == 204 {
        return Err(Error::Transport(format!(
            "{}: the server answered {status}",
            cfg.transport.name()
        )));
    }
    if sse {
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("text/event-stream") {
            return Err(Error::Transport(format!(
                "sse: unexpected content type {ct:?}"
            )));
        }
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let reader_tx = in_tx.clone();
    let reader = tokio::spawn(async move {
        let mut lines = LineBuffer::default();
        let mut event = SseEvent::default();
        let end = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    for line in lines.push(&chunk) {
                        let frame = if sse { event.line(&line) } else { Some(line) };
                        if let Some(f) = frame.filter(|f| !f.trim().is_empty()) {
                            if reader_tx.send(Incoming::Frame(f)).is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => break "stream ended".to_string(),
                Err(e) => break format!("stream: {e}"),
            }
        };
        let _ = reader_tx.send(Incoming::Closed {
            code: 0,
            reason: end,
        });
    });
    // Commands after connect go to the emulation endpoint one POST at a time, in order.
    let http = http.clone();
    let url = cfg.emulation_url();
    let timeout = cfg.timeout;
    let writer = tokio::spawn(async move {
        let mut route = None;
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Session { session, node } => route = Some((session, node)),
                Out::Frame(data) => {
                    let Some((session, node)) = &route else {
                        tracing::warn!(
                            "command before the connect reply on an emulated transport; dropped"
                        );
                        continue;
                    };
                    let body = serde_json::json!({"session": session, "node": node, "data": data});
                    let result = http
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .timeout(timeout)
                        .body(body.to_string())
                        .send()
                        .await;
                    let failure = match result {
                        Ok(r) if r.status().as_u16() == 404 || r.status().is_server_error() => {
                            Some(format!("emulation endpoint answered {}", r.status()))
                        }
                        Ok(_) => None,
                        Err(e) => Some(format!("emulation request: {e}")),
                    };
                    if let Some(reason) = failure {
                        let _ = in_tx.send(Incoming::Closed { code: 0, reason });
                        return;
                    }
                }
            }
        }
    });
    Ok(Conn {
        out: out_tx,
        incoming: in_rx,
        tasks: vec![reader, writer],
    })
}

/// Splits a byte stream into `\n`-terminated lines; a partial last line waits for more bytes.
#[derive(Default)]
struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }
}

/// Collects the `data:` lines of one server-sent event; a blank line ends the event.
#[derive(Default)]
struct SseEvent {
    data: Vec<String>,
}

impl SseEvent {
    fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            if self.data.is_empty() {
                return None;
            }
            return Some(std::mem::take(&mut self.data).join("\n"));
        }
        if let Some(rest) = line.strip_prefix("data:") {
            self.data
                .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
        // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing for this protocol.
        None
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_their_newline() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"{\"a\":").is_empty());
        assert_eq!(
            b.push(b"1}\r\n{\"b\":2}\n{\"c\""),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(b.push(b":3}\n"), vec!["{\"c\":3}"]);
    }

    #[test]
    fn sse_events_join_their_data_lines() {
        let mut e = SseEvent::default();
        assert_eq!(e.line(""), None, "the leading blank line Centrifugo sends");
        assert_eq!(e.line(": comment"), None);
        assert_eq!(e.line("data: {\"a\":1}"), None);
        assert_eq!(e.line("data:{\"b\":2}"), None);
        assert_eq!(e.line("").as_deref(), Some("{\"a\":1}\n{\"b\":2}"));
    }

    #[test]
    fn urlencode_keeps_only_unreserved() {
        assert_eq!(urlencode("{\"a\": 1}~"), "%7B%22a%22%3A%201%7D~");
        assert_eq!(urlencode("é"), "%C3%A9");
    }
}

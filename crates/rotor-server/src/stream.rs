//! HTTP transports that stream their response: bidirectional emulation (`http_stream`,
//! `sse`, with commands arriving by `POST /emulation`) and the unidirectional
//! `uni_http_stream` and `uni_sse`. Each is a transport around channels; the protocol itself
//! is the core's.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rotor_core::session::{
    self, ConnectFrom, Inbound, SessionParams, Transport, TransportInfo, TransportKind,
};
use rotor_protocol::Disconnect;
use tokio::sync::mpsc;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::state::{AppState, Peer, Sessions};

/// How messages are framed on the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line, each ending with `\n`.
    Lines,
    /// `data: <json>\n\n` per message.
    EventStream,
}

/// Body chunks waiting to be sent to the client.
const BODY_BACKLOG: usize = 16;

struct BodyStream(mpsc::Receiver<Bytes>);

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// A streaming response as the session's transport.
struct StreamTransport {
    /// Frames POSTed to `/emulation`; `None` for unidirectional transports.
    commands: Option<mpsc::Receiver<String>>,
    body: mpsc::Sender<Bytes>,
    /// Finishes when the client goes away (the response body is dropped).
    gone: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    framing: Framing,
    timeout: Duration,
}

impl StreamTransport {
    fn new(
        commands: Option<mpsc::Receiver<String>>,
        body: mpsc::Sender<Bytes>,
        framing: Framing,
        timeout: Duration,
    ) -> StreamTransport {
        let watch = body.clone();
        StreamTransport {
            commands,
            body,
            gone: Box::pin(async move { watch.closed().await }),
            framing,
            timeout,
        }
    }
}

impl Transport for StreamTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if let Some(rx) = &mut self.commands {
            if let Poll::Ready(frame) = rx.poll_recv(cx) {
                return Poll::Ready(frame.map(Inbound::Frame).unwrap_or(Inbound::Closed));
            }
        }
        self.gone.as_mut().poll(cx).map(|()| Inbound::Closed)
    }

    async fn write(&mut self, messages: Vec<Bytes>) -> std::io::Result<()> {
        let mut chunk = Vec::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
        for m in &messages {
            match self.framing {
                Framing::Lines => {
                    chunk.extend_from_slice(m);
                    chunk.push(b'\n');
                }
                Framing::EventStream => {
                    chunk.extend_from_slice(b"data: ");
                    chunk.extend_from_slice(m);
                    chunk.extend_from_slice(b"\n\n");
                }
            }
        }
        match crate::http::within(self.timeout, self.body.send(Bytes::from(chunk))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stream write timed out",
            )),
        }
    }

    async fn close(&mut self, _disconnect: &Disconnect) {
        // The body ends when the session drops this transport.
    }
}

fn streaming_response(rx: mpsc::Receiver<Bytes>, framing: Framing) -> Response {
    let mut res = warp::reply::stream(BodyStream(rx)).into_response();
    let h = res.headers_mut();
    let content_type = match framing {
        Framing::Lines => "application/json",
        Framing::EventStream => "text/event-stream; charset=utf-8",
    };
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert(
        "cache-control",
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Starts a bidirectional emulation session whose first frame is `connect` (the POST body
/// of `http_stream`, the `cf_connect` parameter of `sse`).
pub fn emulation(state: AppState, connect: String, peer: Peer, framing: Framing) -> Response {
    let (name, timeout) = match framing {
        Framing::Lines => ("http_stream", state.config.http_stream.write_timeout),
        Framing::EventStream => ("sse", state.config.sse.write_timeout),
    };
    let session_id = crate::http::new_session_id();
    let cmd_rx = state.sessions.open(&session_id, connect);
    let (body_tx, body_rx) = mpsc::channel(BODY_BACKLOG);
    let params = SessionParams {
        transport: TransportInfo {
            name,
            kind: TransportKind::Emulation,
        },
        session_id: Some(session_id.clone()),
        connect: ConnectFrom::Commands,
        remote: peer,
    };
    let transport = StreamTransport::new(Some(cmd_rx), body_tx, framing, timeout);
    tokio::spawn(async move {
        session::run(state.node.clone(), params, transport).await;
        state.sessions.close(&session_id);
    });
    streaming_response(body_rx, framing)
}

/// Starts a unidirectional streaming session with the connect request in `text` (the body
/// of `uni_http_stream`, the `cf_connect` parameter of `uni_sse`); a text that is not one is
/// answered 400 before anything streams.
pub fn unidirectional(
    state: AppState,
    text: &str,
    fallback_token: Option<String>,
    peer: Peer,
    framing: Framing,
) -> Response {
    let req = match session::uni_connect_request(text, fallback_token) {
        Ok(req) => req,
        Err(e) => {
            tracing::info!(error = %e, ?framing, "unidirectional stream: bad connect request");
            return crate::http::plain(StatusCode::BAD_REQUEST, "bad connect request\n");
        }
    };
    let (name, timeout) = match framing {
        Framing::Lines => (
            "uni_http_stream",
            state.config.uni_http_stream.write_timeout,
        ),
        Framing::EventStream => ("uni_sse", state.config.uni_sse.write_timeout),
    };
    let (body_tx, body_rx) = mpsc::channel(BODY_BACKLOG);
    let params = SessionParams {
        transport: TransportInfo {
            name,
            kind: TransportKind::Unidirectional,
        },
        session_id: Some(crate::http::new_session_id()),
        connect: ConnectFrom::Request(req),
        remote: peer,
    };
    let transport = StreamTransport::new(None, body_tx, framing, timeout);
    tokio::spawn(session::run(state.node.clone(), params, transport));
    streaming_response(body_rx, framing)
}

/// The body of `POST /emulation` (public for the fuzz target, fuzz/).
#[derive(Debug, serde::Deserialize)]
pub struct EmulationRequest {
    pub session: String,
    #[serde(default)]
    pub node: String,
    /// The commands as one JSON string, `\n`-joined.
    pub data: String,
}

impl EmulationRequest {
    /// Parses a `POST /emulation` body (or a copy forwarded by another node).
    pub fn parse(body: &[u8]) -> Result<EmulationRequest, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// `POST /emulation`: 204 when the commands were handed to the session, 404 for an unknown
/// session (the client reconnects), 400 for a bad body, 503 when the session's backlog is full.
/// A request for a session on another node (its `node` is not this one) is forwarded to that
/// node: 204 once it took it, 404 when no such node is up (always on a single node, unless the
/// session is here after all), 503 when it cannot be reached.
pub async fn post(state: &AppState, body: &[u8]) -> StatusCode {
    let req = match EmulationRequest::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "emulation request is not {{session, node, data: string}}");
            return StatusCode::BAD_REQUEST;
        }
    };
    if !req.node.is_empty() && req.node != state.node.uid() {
        let payload = String::from_utf8_lossy(body);
        match state.node.send_to_node(&req.node, &payload).await {
            Ok(true) => return StatusCode::NO_CONTENT,
            Ok(false) => {
                tracing::debug!(node = %req.node, "emulation request for a node that is not up");
            }
            Err(e) => {
                tracing::warn!(node = %req.node, error = %e, "cannot forward an emulation request");
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    }
    state.sessions.deliver(&req.session, req.data)
}

/// Emulation requests forwarded from other nodes to sessions on this one.
pub struct ForwardedEmulation(pub Arc<Sessions>);

impl rotor_core::broker::NodeMessageHandler for ForwardedEmulation {
    fn on_node_message(&self, payload: &str) {
        match EmulationRequest::parse(payload.as_bytes()) {
            Ok(req) => {
                let status = self.0.deliver(&req.session, req.data);
                if status != StatusCode::NO_CONTENT {
                    tracing::info!(%status, "forwarded emulation request not delivered");
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad forwarded emulation request"),
        }
    }
}

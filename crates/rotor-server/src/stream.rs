//! HTTP transports that stream their response: bidirectional emulation (`http_stream`,
//! `sse`, with commands arriving by `POST /emulation`) and the unidirectional
//! `uni_http_stream` and `uni_sse`. Each is a transport around channels; the protocol itself
//! is the core's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rotor_core::session::{self, Inbound, SessionParams, Transport, TransportInfo, TransportKind};
use rotor_protocol::{ConnectRequest, Disconnect};
use tokio::sync::mpsc;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::server::AppState;

/// How messages are framed on the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line, each ending with `\n`.
    Lines,
    /// `data: <json>\n\n` per message.
    EventStream,
}

/// Commands still to be delivered to emulation sessions, by session id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<String>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<String>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Commands a session may have waiting before `/emulation` POSTs are refused with 503.
const COMMAND_BACKLOG: usize = 256;
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
        match crate::within(self.timeout, self.body.send(Bytes::from(chunk))).await {
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
pub fn emulation(
    state: AppState,
    connect: String,
    peer: crate::server::Peer,
    framing: Framing,
) -> Response {
    let (name, timeout) = match framing {
        Framing::Lines => ("http_stream", state.config.http_stream.write_timeout),
        Framing::EventStream => ("sse", state.config.sse.write_timeout),
    };
    let session_id = crate::new_session_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_BACKLOG);
    cmd_tx.try_send(connect).expect("a new channel has room");
    let (body_tx, body_rx) = mpsc::channel(BODY_BACKLOG);
    state.sessions.lock().insert(session_id.to_string(), cmd_tx);
    let params = SessionParams {
        transport: TransportInfo {
            name,
            kind: TransportKind::Emulation,
        },
        session_id: Some(session_id.clone()),
        uni_connect: None,
        remote: peer,
    };
    let transport = StreamTransport::new(Some(cmd_rx), body_tx, framing, timeout);
    tokio::spawn(async move {
        session::run(state.node.clone(), params, transport).await;
        state.sessions.lock().remove(&*session_id);
    });
    streaming_response(body_rx, framing)
}

/// Starts a unidirectional streaming session with its connect request.
pub fn unidirectional(
    state: AppState,
    req: ConnectRequest,
    peer: crate::server::Peer,
    framing: Framing,
) -> Response {
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
        session_id: Some(crate::new_session_id()),
        uni_connect: Some(req),
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
/// A request for a session on another node (its `node` is not this one) is forwarded there
/// through Redis when the broker is Redis: 204 once a node took it, 404 when no node listens.
pub async fn post(state: &AppState, body: &[u8]) -> StatusCode {
    let req = match EmulationRequest::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "emulation request is not {{session, node, data: string}}");
            return StatusCode::BAD_REQUEST;
        }
    };
    if let Some(redis) = &state.redis {
        if !req.node.is_empty() && req.node != state.node.uid() {
            let payload = String::from_utf8_lossy(body);
            return match redis.send_to_node(&req.node, &payload).await {
                Ok(true) => StatusCode::NO_CONTENT,
                Ok(false) => {
                    tracing::debug!(node = %req.node, "emulation request for a node that is gone");
                    StatusCode::NOT_FOUND
                }
                Err(e) => {
                    tracing::warn!(node = %req.node, error = %e, "cannot forward an emulation request");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
        }
    }
    deliver(&state.sessions, req)
}

/// Emulation requests forwarded from other nodes (through Redis) to sessions on this one.
pub struct ForwardedEmulation(pub Arc<Sessions>);

impl rotor_broker_redis::NodeMessageHandler for ForwardedEmulation {
    fn on_node_message(&self, payload: &str) {
        match EmulationRequest::parse(payload.as_bytes()) {
            Ok(req) => {
                let status = deliver(&self.0, req);
                if status != StatusCode::NO_CONTENT {
                    tracing::info!(%status, "forwarded emulation request not delivered");
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad forwarded emulation request"),
        }
    }
}

fn deliver(sessions: &Sessions, req: EmulationRequest) -> StatusCode {
    let Some(tx) = sessions.lock().get(&req.session).cloned() else {
        tracing::debug!(session = %req.session, "emulation request for an unknown session");
        return StatusCode::NOT_FOUND;
    };
    match tx.try_send(req.data) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(mpsc::error::TrySendError::Closed(_)) => StatusCode::NOT_FOUND,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(session = %req.session, "emulation session has {COMMAND_BACKLOG} commands waiting; refusing more");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

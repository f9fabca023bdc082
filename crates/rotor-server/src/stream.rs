//! HTTP transports that stream their response: bidirectional emulation (`http_stream`,
//! `sse`, with commands arriving by `POST /emulation`) and the unidirectional
//! `uni_http_stream` and `uni_sse`. hyper answers with the response head and hands the
//! connection over (`listener::HandOver`); the transport writes the chunked body to the
//! socket itself. The protocol itself is the core's.

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rotor_core::session::{
    self, ConnectFrom, Inbound, SessionParams, Transport, TransportInfo, TransportKind,
};
use rotor_protocol::{Disconnect, Protocol};
use tokio::sync::mpsc;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::listener::{HandOver, StreamIo};
use crate::socket;
use crate::state::{AppState, Peer, Sessions};

/// How messages are framed on the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP streaming: JSON messages one per line, each ending with `\n`; Protobuf messages
    /// length-delimited.
    Lines,
    /// `data: <json>\n\n` per message (JSON only, as in Centrifugo).
    EventStream,
}

/// The content type of Protobuf requests (an http_stream connect, an emulation POST), as
/// centrifuge-js's Protobuf build sends them and Centrifugo reads them.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/octet-stream";

/// A streaming response as the session's transport. hyper writes the response head and
/// hands the connection over ([`HandOver`]); from then on the session writes the body's
/// chunks to the socket itself, so the connection holds no HTTP buffers while it streams.
struct StreamTransport {
    /// Frames POSTed to `/emulation`; `None` for unidirectional transports.
    commands: Option<mpsc::Receiver<Inbound>>,
    socket: Socket,
    /// Bytes the socket has not taken yet (see `socket::write_assembled`).
    unsent: Vec<u8>,
    framing: Framing,
    protocol: Protocol,
    timeout: Duration,
}

enum Socket {
    /// Until hyper has written the response head.
    Coming(tokio::sync::oneshot::Receiver<StreamIo>),
    Here(StreamIo),
    /// hyper ended the connection without handing it over (the client went away first).
    Gone,
}

impl StreamTransport {
    fn new(
        commands: Option<mpsc::Receiver<Inbound>>,
        socket: tokio::sync::oneshot::Receiver<StreamIo>,
        framing: Framing,
        protocol: Protocol,
        timeout: Duration,
    ) -> StreamTransport {
        StreamTransport {
            commands,
            socket: Socket::Coming(socket),
            unsent: Vec::new(),
            framing,
            protocol,
            timeout,
        }
    }
}

impl Socket {
    /// Ready once hyper has handed the socket over (or ended the connection instead).
    fn poll_arrived(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Socket::Coming(rx) = self {
            *self = match std::task::ready!(Pin::new(rx).poll(cx)) {
                Ok(io) => Socket::Here(io),
                Err(_) => Socket::Gone,
            };
        }
        Poll::Ready(())
    }
}

/// The length of `messages` as one chunk of the body, framed as `framing` frames them.
fn body_len(framing: Framing, protocol: Protocol, messages: &[Bytes]) -> usize {
    match (framing, protocol) {
        (Framing::EventStream, _) => messages.iter().map(|m| m.len() + 8).sum(),
        // One line per message, each ending with `\n`.
        (Framing::Lines, Protocol::Json) => messages.iter().map(|m| m.len() + 1).sum(),
        (Framing::Lines, Protocol::Protobuf) => protocol.frame_len(messages),
    }
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl Transport for StreamTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if let Some(rx) = &mut self.commands {
            if let Poll::Ready(frame) = rx.poll_recv(cx) {
                return Poll::Ready(frame.unwrap_or(Inbound::Closed));
            }
        }
        // The client sends nothing on a stream: reading only sees it go away.
        std::task::ready!(self.socket.poll_arrived(cx));
        let Socket::Here(io) = &mut self.socket else {
            return Poll::Ready(Inbound::Closed);
        };
        loop {
            match std::task::ready!(socket::poll_read_with(io, 512, cx, |_| {})) {
                Ok(0) | Err(_) => return Poll::Ready(Inbound::Closed),
                Ok(_) => {}
            }
        }
    }

    async fn write(&mut self, messages: Vec<Bytes>) -> std::io::Result<()> {
        let (framing, protocol) = (self.framing, self.protocol);
        let (sock, unsent) = (&mut self.socket, &mut self.unsent);
        let send = async move {
            std::future::poll_fn(|cx| sock.poll_arrived(cx)).await;
            let Socket::Here(io) = sock else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "client went away",
                ));
            };
            socket::write_assembled(io, unsent, |buf| {
                let len = body_len(framing, protocol, &messages);
                let _ = write!(buf, "{len:x}\r\n");
                let start = buf.len();
                match framing {
                    Framing::Lines => protocol.stream_into(buf, &messages),
                    Framing::EventStream => {
                        for m in &messages {
                            buf.extend_from_slice(b"data: ");
                            buf.extend_from_slice(m);
                            buf.extend_from_slice(b"\n\n");
                        }
                    }
                }
                debug_assert_eq!(buf.len() - start, len);
                buf.extend_from_slice(b"\r\n");
            })
            .await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stream write timed out",
            )),
        }
    }

    async fn close(&mut self, _disconnect: &Disconnect) {
        // The body's last chunk, then no more writing (the caller bounds the wait).
        if let Socket::Here(io) = &mut self.socket {
            let last = socket::write_assembled(io, &mut self.unsent, |buf| {
                buf.extend_from_slice(LAST_CHUNK)
            });
            if last.await.is_ok() {
                use tokio::io::AsyncWriteExt;
                let _ = io.shutdown().await;
            }
        }
    }
}

fn streaming_response(framing: Framing, protocol: Protocol) -> Response {
    let mut res = Response::default();
    let h = res.headers_mut();
    let content_type = match (framing, protocol) {
        (Framing::Lines, Protocol::Json) => "application/json",
        (Framing::Lines, Protocol::Protobuf) => PROTOBUF_CONTENT_TYPE,
        (Framing::EventStream, _) => "text/event-stream; charset=utf-8",
    };
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert(
        "cache-control",
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // hyper writes this head and hands the connection over: the session writes the chunks
    // of the body, and the connection ends with the stream.
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("connection", HeaderValue::from_static("close"));
    res
}

/// Starts a bidirectional emulation session whose first frame is `connect` (the POST body
/// of `http_stream`, the `cf_connect` parameter of `sse`), in its protocol: a text frame is
/// JSON, a binary one Protobuf (http_stream only).
pub fn emulation(
    state: AppState,
    connect: Inbound,
    (peer, headers, hand_over): (Peer, &HeaderMap, Option<HandOver>),
    framing: Framing,
) -> Response {
    let Some(hand_over) = hand_over else {
        return needs_http11();
    };
    let protocol = match connect {
        Inbound::Binary(_) => Protocol::Protobuf,
        _ => Protocol::Json,
    };
    let (name, timeout) = match framing {
        Framing::Lines => ("http_stream", state.config.http_stream.write_timeout),
        Framing::EventStream => ("sse", state.config.sse.write_timeout),
    };
    let session_id = crate::http::new_session_id();
    let cmd_rx = state.sessions.open(&session_id, connect);
    let params = SessionParams {
        transport: TransportInfo {
            name,
            kind: TransportKind::Emulation,
        },
        protocol,
        session_id: Some(session_id.clone()),
        connect: ConnectFrom::Commands,
        remote: peer,
        headers: crate::http::forwarded(&state.node, headers),
    };
    let socket = hand_over.claim();
    let transport = StreamTransport::new(Some(cmd_rx), socket, framing, protocol, timeout);
    tokio::spawn(async move {
        session::run(state.node.clone(), params, transport).await;
        state.sessions.close(&session_id);
    });
    streaming_response(framing, protocol)
}

/// Starts a unidirectional streaming session with the connect request in `text` (the body
/// of `uni_http_stream`, the `cf_connect` parameter of `uni_sse`); a text that is not one is
/// answered 400 before anything streams.
pub fn unidirectional(
    state: AppState,
    text: &str,
    fallback_token: Option<String>,
    (peer, headers, hand_over): (Peer, &HeaderMap, Option<HandOver>),
    framing: Framing,
) -> Response {
    let Some(hand_over) = hand_over else {
        return needs_http11();
    };
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
    let params = SessionParams {
        transport: TransportInfo {
            name,
            kind: TransportKind::Unidirectional,
        },
        protocol: Protocol::Json,
        session_id: Some(crate::http::new_session_id()),
        connect: ConnectFrom::Request(req),
        remote: peer,
        headers: crate::http::forwarded(&state.node, headers),
    };
    let socket = hand_over.claim();
    let transport = StreamTransport::new(None, socket, framing, Protocol::Json, timeout);
    tokio::spawn(session::run(state.node.clone(), params, transport));
    streaming_response(framing, Protocol::Json)
}

/// The answer to a stream asked for over HTTP/1.0: its body could not be chunked.
fn needs_http11() -> Response {
    crate::http::plain(
        StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        "streaming transports need HTTP/1.1\n",
    )
}

/// The body of `POST /emulation` in the JSON protocol, and the form a request takes when it
/// is forwarded to another node (public for the fuzz target, fuzz/).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct EmulationRequest {
    pub session: String,
    #[serde(default)]
    pub node: String,
    /// The commands as one JSON string, `\n`-joined.
    #[serde(default)]
    pub data: String,
    /// Between nodes only: the commands of a Protobuf session, length-delimited, in base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
    /// A Protobuf request's commands as they came (length-delimited): handed to the session
    /// as they are, written as `b64data` only when the request goes to another node.
    #[serde(skip)]
    pub binary: Option<Vec<u8>>,
}

impl EmulationRequest {
    /// Parses a JSON `POST /emulation` body (or a request forwarded by another node).
    pub fn parse(body: &[u8]) -> Result<EmulationRequest, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Parses a `POST /emulation` body: a Protobuf `EmulationRequest` when `protobuf` (the
    /// request's content type said so), else JSON.
    pub fn parse_as(body: &[u8], protobuf: bool) -> Result<EmulationRequest, String> {
        if !protobuf {
            return EmulationRequest::parse(body).map_err(|e| e.to_string());
        }
        let req: rotor_protocol::EmulationRequest =
            rotor_protocol::proto::decode(body).map_err(|e| e.to_string())?;
        Ok(EmulationRequest {
            session: req.session,
            node: req.node,
            data: String::new(),
            b64data: None,
            binary: Some(req.data),
        })
    }

    /// The request as it goes to another node (JSON; Protobuf commands as `b64data`).
    pub fn forwarded(&self) -> String {
        let b64data = self
            .binary
            .as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .or_else(|| self.b64data.clone());
        let forwarded = EmulationRequest {
            session: self.session.clone(),
            node: self.node.clone(),
            data: self.data.clone(),
            b64data,
            binary: None,
        };
        serde_json::to_string(&forwarded).expect("an emulation request serializes")
    }

    /// The frame for the session: binary commands (Protobuf) when the request carries them,
    /// else the JSON text.
    pub fn into_frame(self) -> Result<Inbound, base64::DecodeError> {
        match (self.binary, self.b64data) {
            (Some(bytes), _) => Ok(Inbound::Binary(Bytes::from(bytes))),
            (None, Some(b64)) => Ok(Inbound::Binary(Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(b64)?,
            ))),
            (None, None) => Ok(Inbound::Frame(self.data)),
        }
    }
}

/// `POST /emulation`: 204 when the commands were handed to the session, 404 for an unknown
/// session (the client reconnects), 400 for a bad body, 503 when the session's backlog is full.
/// A request for a session on another node (its `node` is not this one) is forwarded to that
/// node: 204 once it took it, 404 when no such node is up (always on a single node, unless the
/// session is here after all), 503 when it cannot be reached. The body is a Protobuf
/// `EmulationRequest` when `protobuf` (content type `application/octet-stream`), else JSON.
pub async fn post(state: &AppState, body: &[u8], protobuf: bool) -> StatusCode {
    let req = match EmulationRequest::parse_as(body, protobuf) {
        Ok(r) => r,
        Err(e) => {
            let want = if protobuf {
                "a Protobuf EmulationRequest"
            } else {
                "{session, node, data: string}"
            };
            tracing::info!(error = %e, "emulation request is not {want}");
            return StatusCode::BAD_REQUEST;
        }
    };
    if !req.node.is_empty() && req.node != state.node.uid() {
        let payload = req.forwarded();
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
    let session = req.session.clone();
    match req.into_frame() {
        Ok(frame) => state.sessions.deliver(&session, frame),
        Err(e) => {
            tracing::info!(error = %e, "emulation request with bad b64data");
            StatusCode::BAD_REQUEST
        }
    }
}

/// Emulation requests forwarded from other nodes to sessions on this one.
pub struct ForwardedEmulation(pub Arc<Sessions>);

impl rotor_core::broker::NodeMessageHandler for ForwardedEmulation {
    fn on_node_message(&self, payload: &str) {
        match EmulationRequest::parse(payload.as_bytes()) {
            Ok(req) => {
                let session = req.session.clone();
                let Ok(frame) = req.into_frame() else {
                    tracing::warn!("forwarded emulation request with bad b64data");
                    return;
                };
                let status = self.0.deliver(&session, frame);
                if status != StatusCode::NO_CONTENT {
                    tracing::info!(%status, "forwarded emulation request not delivered");
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad forwarded emulation request"),
        }
    }
}

//! The bidirectional WebSocket transport: rotor does the upgrade itself (warp's `ws()` filter
//! cannot set tungstenite's read buffer) and adapts the socket to the core's `Transport`.

use std::time::Duration;

use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use rotor_core::session::{
    self, ConnectFrom, Inbound, SessionParams, Transport, TransportInfo, TransportKind,
};
use rotor_protocol::{Disconnect, Protocol};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::http::{origin_allowed, plain};
use crate::listener::{drain, Lingering, CLOSE_DRAIN};
use crate::state::{AppState, Peer};

const TRANSPORT: TransportInfo = TransportInfo {
    name: "websocket",
    kind: TransportKind::WebSocket,
};
const UNI_TRANSPORT: TransportInfo = TransportInfo {
    name: "uni_websocket",
    kind: TransportKind::Unidirectional,
};

/// Which WebSocket endpoint answered.
pub enum Mode {
    /// `/connection/websocket`: commands in, replies and pushes out, in `protocol` (as
    /// [`protocol_asked`] says).
    Bidirectional { protocol: Asked },
    /// `/connection/uni_websocket`: the connect request comes in the `cf_connect` query
    /// parameter or as the first message (the session reads it); after that only pushes go
    /// out.
    Unidirectional {
        cf_connect: Option<String>,
        bearer: Option<String>,
    },
}

/// The WebSocket subprotocol of the Protobuf protocol (what the SDKs' Protobuf builds ask for).
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
/// The subprotocol of the JSON protocol (SDKs ask for none; Centrifugo accepts it).
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// The protocol a bidirectional WebSocket client asked for, and the subprotocol to answer.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    protocol: Protocol,
    subprotocol: Option<&'static str>,
}

/// The protocol a client asks for, as Centrifugo reads it: the subprotocol
/// `centrifuge-protobuf` (or `centrifuge-json`) in `Sec-WebSocket-Protocol`, else the query
/// parameter `format=protobuf` or `cf_protocol=protobuf`; JSON by default.
pub fn protocol_asked(
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Asked {
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for name in offered {
        if name == PROTOBUF_SUBPROTOCOL {
            return Asked {
                protocol: Protocol::Protobuf,
                subprotocol: Some(PROTOBUF_SUBPROTOCOL),
            };
        }
        if name == JSON_SUBPROTOCOL {
            return Asked {
                protocol: Protocol::Json,
                subprotocol: Some(JSON_SUBPROTOCOL),
            };
        }
    }
    let by_query = ["format", "cf_protocol"]
        .iter()
        .any(|k| query.get(*k).is_some_and(|v| v == "protobuf"));
    Asked {
        protocol: if by_query {
            Protocol::Protobuf
        } else {
            Protocol::Json
        },
        subprotocol: None,
    }
}

/// Answers a WebSocket upgrade request and starts the session once the upgrade completes.
pub fn upgrade(
    state: AppState,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Peer,
    mode: Mode,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let is_upgrade = header("upgrade").eq_ignore_ascii_case("websocket")
        && header("connection")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let key = header("sec-websocket-key");
    if !is_upgrade || key.is_empty() || header("sec-websocket-version") != "13" {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)\n",
        );
    }
    if !origin_allowed(
        headers.get("origin").and_then(|v| v.to_str().ok()),
        &state.config.client.allowed_origins,
    ) {
        tracing::info!(origin = header("origin"), client_addr = ?peer, "websocket origin not allowed");
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Some(on_upgrade) = on_upgrade else {
        return plain(StatusCode::BAD_REQUEST, "connection cannot be upgraded\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let ws = &state.config.websocket;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_size.max(256))
        .write_buffer_size(ws.write_buffer_size)
        .max_message_size(Some(ws.message_size_limit))
        .max_frame_size(Some(ws.message_size_limit));
    let write_timeout = match mode {
        Mode::Bidirectional { .. } => ws.write_timeout,
        Mode::Unidirectional { .. } => state.config.uni_websocket.write_timeout,
    };
    let forwarded = crate::http::forwarded(&state.node, &headers);
    let (protocol, subprotocol) = match &mode {
        Mode::Bidirectional { protocol } => (protocol.protocol, protocol.subprotocol),
        Mode::Unidirectional { .. } => (Protocol::Json, None),
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws = WsTransport {
            socket: socket(upgraded, ws_config).await,
            write_timeout,
            protocol,
            one_per_frame: matches!(mode, Mode::Unidirectional { .. }),
            unsent: Vec::new(),
        };
        let params = match mode {
            Mode::Bidirectional { .. } => SessionParams {
                transport: TRANSPORT,
                protocol,
                session_id: None,
                connect: ConnectFrom::Commands,
                remote: peer,
                headers: forwarded,
            },
            Mode::Unidirectional { cf_connect, bearer } => SessionParams {
                transport: UNI_TRANSPORT,
                protocol: Protocol::Json,
                session_id: Some(crate::http::new_session_id()),
                connect: ConnectFrom::Text {
                    text: cf_connect,
                    fallback_token: bearer,
                },
                remote: peer,
                headers: forwarded,
            },
        };
        session::run(state.node.clone(), params, ws).await;
    });
    let mut res = Response::default();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(name) = subprotocol {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(name));
    }
    res
}

/// The socket under a WebSocket: the accepted TCP stream itself when hyper hands it back
/// (plain connections), else hyper's upgraded connection (TLS). An enum, not a boxed trait
/// object: every delivery writes through it.
type Io = Either<TcpStream, TokioIo<Upgraded>>;

type Socket = WebSocketStream<Io>;

/// Takes the upgraded connection apart when it is a plain TCP stream (bytes the client sent
/// after its upgrade request come first).
async fn socket(upgraded: Upgraded, config: WebSocketConfig) -> Socket {
    let (io, read_ahead) = match upgraded.downcast::<TokioIo<Lingering<TcpStream>>>() {
        Ok(parts) => (
            Either::Left(parts.io.into_inner().into_inner()),
            parts.read_buf.to_vec(),
        ),
        Err(upgraded) => (Either::Right(TokioIo::new(upgraded)), Vec::new()),
    };
    WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await
}

/// One WebSocket connection as the session's transport: the socket is held inline (no split
/// halves behind a lock), so a delivery touches the session's own memory and the socket.
struct WsTransport {
    socket: Socket,
    write_timeout: Duration,
    /// JSON messages go in text frames, Protobuf ones (length-delimited) in binary frames.
    protocol: Protocol,
    /// Each message in a frame of its own (uni_websocket: its clients parse a frame as one
    /// push, as Centrifugo sends them by default). Otherwise messages written together are
    /// joined with `\n` into one frame, as the SDKs expect and Centrifugo does.
    one_per_frame: bool,
    /// Bytes of frames written straight to the socket that it has not taken yet (empty
    /// unless a write is waiting on a slow client, or was given up: timed out or cancelled
    /// mid-frame). They go before anything else, the close frame included, so the stream
    /// stays valid.
    unsent: Vec<u8>,
}

/// Writes `messages` as WebSocket frames straight to the socket: the frames (headers built
/// here, messages one per frame or framed together as `protocol` frames them: JSON joined
/// with `\n` in a text frame, Protobuf length-delimited in a binary one) are assembled in a
/// buffer of the
/// worker thread, written with one non-blocking write, and only what the socket did not
/// take is copied out to wait for it. So a batch is copied once, and no connection keeps a
/// buffer the size of its largest batch (tungstenite's write buffer would, for the life of
/// the connection). A server's frames are unmasked, and tungstenite keeps no state about
/// frames sent, so frames written around it are still a valid stream.
async fn write_frames(
    tcp: &mut TcpStream,
    messages: &[Bytes],
    protocol: Protocol,
    one_per_frame: bool,
    unsent: &mut Vec<u8>,
) -> std::io::Result<()> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if messages.is_empty() {
        return Ok(());
    }
    let left = SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        if one_per_frame {
            for m in messages {
                let one = std::slice::from_ref(m);
                buf.extend_from_slice(FrameHeader::new(protocol, protocol.frame_len(one)).bytes());
                protocol.frame_into(&mut buf, one);
            }
        } else {
            buf.extend_from_slice(FrameHeader::new(protocol, protocol.frame_len(messages)).bytes());
            protocol.frame_into(&mut buf, messages);
        }
        let mut done = 0;
        let result = loop {
            match tcp.try_write(&buf[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) if done + n == buf.len() => break Ok(Vec::new()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break Ok(buf[done..].to_vec())
                }
                Err(e) => break Err(e),
            }
        };
        // The thread keeps a buffer for the next batch, but not an outsized one.
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::new();
        }
        result
    })?;
    *unsent = left;
    finish_unsent(tcp, unsent).await
}

/// Writes what the socket has not taken yet, keeping in `unsent` whatever is still left if
/// the wait is given up.
async fn finish_unsent(tcp: &mut TcpStream, unsent: &mut Vec<u8>) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    while !unsent.is_empty() {
        let n = tcp.write(unsent).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        unsent.drain(..n);
    }
    // A remainder can be large (a slow client's whole batch): not kept once written.
    *unsent = Vec::new();
    Ok(())
}

/// The largest assembly buffer a worker thread keeps between writes.
const SCRATCH_KEEP: usize = 1 << 20;

/// The header of an unmasked, final frame (text for JSON, binary for Protobuf) with a payload
/// of `len` bytes.
struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    fn new(protocol: Protocol, len: usize) -> FrameHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = match protocol {
            Protocol::Json => 0x81,     // FIN, opcode 1 (text)
            Protocol::Protobuf => 0x82, // FIN, opcode 2 (binary)
        };
        let used = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        FrameHeader { bytes, len: used }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// [`write_frames`] for TLS connections: through tungstenite, which copies the frames into
/// its buffer.
async fn write_through_tungstenite(
    socket: &mut Socket,
    messages: Vec<Bytes>,
    protocol: Protocol,
    one_per_frame: bool,
) -> std::io::Result<()> {
    let result = if one_per_frame || messages.len() == 1 && protocol == Protocol::Json {
        async {
            for m in messages {
                let payload = match protocol {
                    Protocol::Json => m,
                    Protocol::Protobuf => {
                        let mut framed = Vec::with_capacity(m.len() + 5);
                        protocol.frame_into(&mut framed, &[m]);
                        Bytes::from(framed)
                    }
                };
                socket.feed(frame(protocol, payload)).await?;
            }
            socket.flush().await
        }
        .await
    } else {
        let mut framed = Vec::with_capacity(protocol.frame_len(&messages));
        protocol.frame_into(&mut framed, &messages);
        socket.send(frame(protocol, Bytes::from(framed))).await
    };
    result.map_err(std::io::Error::other)
}

/// A frame holding `payload`: text for JSON, binary for Protobuf. Built as a raw frame so
/// tungstenite does not check the bytes again: a JSON session only hands over JSON it
/// encoded (serde output, or publication data that was parsed as JSON text on the way in),
/// which is UTF-8.
fn frame(protocol: Protocol, payload: Bytes) -> Message {
    let opcode = match protocol {
        Protocol::Json => OpData::Text,
        Protocol::Protobuf => OpData::Binary,
    };
    Message::Frame(Frame::message(payload, OpCode::Data(opcode), true))
}

impl Transport for WsTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            let inbound = match ready!(self.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) => Inbound::Frame(text.to_string()),
                // The session checks the frame's kind against its protocol.
                Some(Ok(Message::Binary(bytes))) => Inbound::Binary(bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Inbound::Closed,
                Some(Err(WsError::Capacity(e))) => {
                    tracing::info!(error = %e, "websocket message too large, closing with 1009");
                    Inbound::Refused(Disconnect::MESSAGE_SIZE_LIMIT)
                }
                Some(Err(WsError::Utf8(e))) => {
                    tracing::info!(error = %e, "websocket text frame is not UTF-8, closing with 1007");
                    Inbound::Refused(Disconnect::INVALID_PAYLOAD)
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read error");
                    Inbound::Closed
                }
            };
            return Poll::Ready(inbound);
        }
    }

    async fn write(&mut self, messages: Vec<Bytes>) -> std::io::Result<()> {
        let socket = &mut self.socket;
        let one_per_frame = self.one_per_frame;
        let protocol = self.protocol;
        let unsent = &mut self.unsent;
        let send = async move {
            if matches!(socket.get_ref(), Either::Left(_)) {
                // Whatever tungstenite holds (a pong it queued while reading) goes first;
                // then the frames go straight to the socket, so nothing else can come
                // between their bytes.
                socket.flush().await.map_err(std::io::Error::other)?;
                if let Either::Left(tcp) = socket.get_mut() {
                    finish_unsent(tcp, unsent).await?;
                    return write_frames(tcp, &messages, protocol, one_per_frame, unsent).await;
                }
            }
            write_through_tungstenite(socket, messages, protocol, one_per_frame).await
        };
        match crate::http::within(self.write_timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "websocket write timed out",
            )),
        }
    }

    async fn close(&mut self, disconnect: &Disconnect) {
        // The rest of a frame given up on mid-way comes first (the caller bounds the wait).
        if let Either::Left(tcp) = self.socket.get_mut() {
            if finish_unsent(tcp, &mut self.unsent).await.is_err() {
                return;
            }
        }
        let reason = disconnect.close_reason();
        match self.socket.get_mut() {
            // Plain TCP: the close frame is written straight to the socket (tungstenite may
            // have given up on the stream after a read error, 1009's among them), then no
            // more writing; `finish` reads and drops what the client still sends, as RFC
            // 6455's closing handshake has it. Closing with unread bytes would make the
            // kernel reset the connection, and a reset throws away the close frame the
            // client has not read yet.
            Either::Left(tcp) => {
                use tokio::io::AsyncWriteExt;
                let frame = close_frame(disconnect.code, reason);
                if tcp.write_all(&frame).await.is_err() {
                    return;
                }
                let _ = tcp.shutdown().await;
            }
            Either::Right(_) => {
                let frame = CloseFrame {
                    code: CloseCode::from(disconnect.code),
                    reason: reason.to_string().into(),
                };
                let _ = self.socket.send(Message::Close(Some(frame))).await;
                let _ = SinkExt::close(&mut self.socket).await;
            }
        }
    }

    /// The rest of the closing handshake, after the session cleaned up: what the client
    /// still sends is read and dropped until it closes its side or the time is up.
    async fn finish(&mut self) {
        match self.socket.get_mut() {
            Either::Left(tcp) => drain(tcp, CLOSE_DRAIN).await,
            Either::Right(_) => {
                let _ = crate::http::within(CLOSE_DRAIN, async {
                    while let Some(Ok(_)) = self.socket.next().await {}
                })
                .await;
            }
        }
    }
}

/// An unmasked close frame with `code` and `reason` (at most 123 bytes: what
/// `Disconnect::close_reason` gives).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    debug_assert!(reason.len() <= 123);
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88); // FIN, opcode 8 (close)
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

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
use rotor_protocol::Disconnect;
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
    /// `/connection/websocket`: commands in, replies and pushes out.
    Bidirectional,
    /// `/connection/uni_websocket`: the connect request comes in the `cf_connect` query
    /// parameter or as the first message (the session reads it); after that only pushes go
    /// out.
    Unidirectional {
        cf_connect: Option<String>,
        bearer: Option<String>,
    },
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
        Mode::Bidirectional => ws.write_timeout,
        Mode::Unidirectional { .. } => state.config.uni_websocket.write_timeout,
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
            one_per_frame: matches!(mode, Mode::Unidirectional { .. }),
            unsent: Vec::new(),
        };
        let params = match mode {
            Mode::Bidirectional => SessionParams {
                transport: TRANSPORT,
                session_id: None,
                connect: ConnectFrom::Commands,
                remote: peer,
            },
            Mode::Unidirectional { cf_connect, bearer } => SessionParams {
                transport: UNI_TRANSPORT,
                session_id: Some(crate::http::new_session_id()),
                connect: ConnectFrom::Text {
                    text: cf_connect,
                    fallback_token: bearer,
                },
                remote: peer,
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
    let (io, read_ahead) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (Either::Left(parts.io.into_inner()), parts.read_buf.to_vec()),
        Err(upgraded) => (Either::Right(TokioIo::new(upgraded)), Vec::new()),
    };
    WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await
}

/// One WebSocket connection as the session's transport: the socket is held inline (no split
/// halves behind a lock), so a delivery touches the session's own memory and the socket.
struct WsTransport {
    socket: Socket,
    write_timeout: Duration,
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

/// Writes `messages` as WebSocket text frames straight to the socket: the frames (headers
/// built here, messages one per frame or joined with `\n`) are assembled in a buffer of the
/// worker thread, written with one non-blocking write, and only what the socket did not
/// take is copied out to wait for it. So a batch is copied once, and no connection keeps a
/// buffer the size of its largest batch (tungstenite's write buffer would, for the life of
/// the connection). A server's frames are unmasked, and tungstenite keeps no state about
/// frames sent, so frames written around it are still a valid stream.
async fn write_frames(
    tcp: &mut TcpStream,
    messages: &[Bytes],
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
                buf.extend_from_slice(FrameHeader::text(m.len()).bytes());
                buf.extend_from_slice(m);
            }
        } else {
            buf.extend_from_slice(FrameHeader::text(joined_len(messages)).bytes());
            join_lines(&mut buf, messages);
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

/// The header of an unmasked, final text frame with a payload of `len` bytes.
struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    fn text(len: usize) -> FrameHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x81; // FIN, opcode 1 (text)
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
    one_per_frame: bool,
) -> std::io::Result<()> {
    let result = if one_per_frame || messages.len() == 1 {
        async {
            for m in messages {
                socket.feed(text_frame(m)).await?;
            }
            socket.flush().await
        }
        .await
    } else {
        let mut joined = Vec::with_capacity(joined_len(&messages));
        join_lines(&mut joined, &messages);
        socket.send(text_frame(Bytes::from(joined))).await
    };
    result.map_err(std::io::Error::other)
}

/// The length of `messages` joined with `\n`.
fn joined_len(messages: &[Bytes]) -> usize {
    messages
        .iter()
        .map(|m| m.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

/// Appends `messages` joined with `\n` (several replies in one frame, as the SDKs read
/// them) to `buf`.
fn join_lines(buf: &mut Vec<u8>, messages: &[Bytes]) {
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            buf.push(b'\n');
        }
        buf.extend_from_slice(m);
    }
}

/// A text frame holding `json`. Built as a raw frame so tungstenite does not check the
/// bytes again: the session only hands over JSON it encoded (serde output, or publication
/// data that was parsed as JSON text on the way in), which is UTF-8.
fn text_frame(json: Bytes) -> Message {
    Message::Frame(Frame::message(json, OpCode::Data(OpData::Text), true))
}

impl Transport for WsTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            let inbound = match ready!(self.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) => Inbound::Frame(text.to_string()),
                Some(Ok(Message::Binary(_))) => {
                    tracing::info!("binary frame on the JSON protocol, disconnecting with 3501");
                    Inbound::Refused(
                        Disconnect::BAD_REQUEST.with_reason("binary frames are not supported"),
                    )
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Inbound::Closed,
                Some(Err(WsError::Capacity(e))) => {
                    tracing::info!(error = %e, "websocket message too large, closing with 1009");
                    Inbound::Refused(Disconnect::MESSAGE_SIZE_LIMIT)
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
        let unsent = &mut self.unsent;
        let send = async move {
            if matches!(socket.get_ref(), Either::Left(_)) {
                // Whatever tungstenite holds (a pong it queued while reading) goes first;
                // then the frames go straight to the socket, so nothing else can come
                // between their bytes.
                socket.flush().await.map_err(std::io::Error::other)?;
                if let Either::Left(tcp) = socket.get_mut() {
                    finish_unsent(tcp, unsent).await?;
                    return write_frames(tcp, &messages, one_per_frame, unsent).await;
                }
            }
            write_through_tungstenite(socket, messages, one_per_frame).await
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
        let frame = CloseFrame {
            code: CloseCode::from(disconnect.code),
            reason: disconnect.close_reason().to_string().into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
        let _ = SinkExt::close(&mut self.socket).await;
    }
}

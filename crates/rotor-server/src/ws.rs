//! The WebSocket transports (websocket, uni_websocket): rotor does the upgrade itself and
//! adapts the socket to the core's `Transport`, reading frames with `wsframe` and writing
//! them straight to the socket. It must not decide protocol behaviour (that is the
//! session's): it only frames bytes and maps bad frames to their close codes.

use std::time::Duration;

use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use rotor_core::session::{
    self, ConnectFrom, Inbound, SessionParams, Transport, TransportInfo, TransportKind,
};
use rotor_protocol::{Disconnect, Protocol};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::either::Either;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::http::{origin_allowed, plain};
use crate::listener::{drain, Lingering, CLOSE_DRAIN};
use crate::socket::{self, finish_unsent, poll_unsent, write_assembled};
use crate::state::{AppState, Peer};
use crate::wsframe::{control_frame, Event, FrameError, Reader, CLOSE_OPCODE, PONG_OPCODE};

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
    let (read_size, message_size_limit) = (ws.read_buffer_size.max(256), ws.message_size_limit);
    let write_timeout = match mode {
        Mode::Bidirectional { .. } => ws.write_timeout,
        Mode::Unidirectional { .. } => state.config.uni_websocket.write_timeout,
    };
    let forwarded = crate::http::forwarded(&state.node, &headers);
    let (protocol, subprotocol) = match &mode {
        Mode::Bidirectional { protocol } => (protocol.protocol, protocol.subprotocol),
        Mode::Unidirectional { .. } => (Protocol::Json, None),
    };
    // Chained rather than one `async` block: what the session is built from is dropped
    // once it is built, not kept beside the session for the connection's life.
    let node = state.node.clone();
    tokio::spawn(on_upgrade.then(move |upgraded| {
        let upgraded = match upgraded {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return Either::Left(std::future::ready(()));
            }
        };
        let (io, reader) = socket(upgraded);
        let ws = WsTransport {
            io,
            reader,
            read_size,
            message_size_limit,
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
        Either::Right(session::run(node, params, ws).map(drop))
    }));
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
type Io = socket::Io<TokioIo<Upgraded>>;

/// Takes the upgraded connection apart when it is a plain TCP stream; bytes the client sent
/// right after its upgrade request are the reader's first.
fn socket(upgraded: Upgraded) -> (Io, Reader) {
    match upgraded.downcast::<TokioIo<Lingering<TcpStream>>>() {
        Ok(parts) => (
            Either::Left(parts.io.into_inner().into_inner()),
            Reader::with(parts.read_buf.to_vec()),
        ),
        Err(upgraded) => (Either::Right(TokioIo::new(upgraded)), Reader::default()),
    }
}

/// One WebSocket connection as the session's transport: the socket is held inline (no split
/// halves behind a lock), so a delivery touches the session's own memory and the socket.
/// rotor reads and writes the frames itself (`wsframe` reads them): an idle connection
/// holds no read or write buffer.
struct WsTransport {
    io: Io,
    reader: Reader,
    /// Bytes read from the socket at a time (`websocket.read_buffer_size`), into a buffer
    /// of the worker thread.
    read_size: usize,
    /// A larger client message closes the connection with 1009.
    message_size_limit: usize,
    write_timeout: Duration,
    /// JSON messages go in text frames, Protobuf ones (length-delimited) in binary frames.
    protocol: Protocol,
    /// Each message in a frame of its own (uni_websocket: its clients parse a frame as one
    /// push, as Centrifugo sends them by default). Otherwise messages written together are
    /// joined with `\n` into one frame, as the SDKs expect and Centrifugo does.
    one_per_frame: bool,
    /// Bytes of frames the socket has not taken yet (empty unless a write is waiting on a
    /// slow client, was given up mid-frame, or a pong waits to go). They go before anything
    /// else, the close frame included, so the stream stays valid.
    unsent: Vec<u8>,
}

/// Writes `messages` as WebSocket frames (headers built here, messages one per frame or
/// framed together as `protocol` frames them: JSON joined with `\n` in a text frame,
/// Protobuf length-delimited in a binary one), through `socket::write_assembled`. A
/// server's frames are unmasked.
async fn write_frames(
    io: &mut Io,
    messages: Vec<Bytes>,
    protocol: Protocol,
    one_per_frame: bool,
    unsent: &mut Vec<u8>,
) -> std::io::Result<()> {
    if messages.is_empty() {
        return finish_unsent(io, unsent).await;
    }
    write_assembled(io, unsent, |buf| {
        if one_per_frame {
            for m in &messages {
                let one = std::slice::from_ref(m);
                buf.extend_from_slice(FrameHeader::new(protocol, protocol.frame_len(one)).bytes());
                protocol.frame_into(buf, one);
            }
        } else {
            buf.extend_from_slice(
                FrameHeader::new(protocol, protocol.frame_len(&messages)).bytes(),
            );
            protocol.frame_into(buf, &messages);
        }
    })
    .await
}

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

impl Transport for WsTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        // A pong that did not all go out when it was queued goes on now (an error shows
        // on the next write).
        if !self.unsent.is_empty() {
            let _ = poll_unsent(&mut self.io, &mut self.unsent, cx);
        }
        loop {
            match self.reader.next(self.message_size_limit) {
                Ok(Some(Event::Text(text))) => return Poll::Ready(Inbound::Frame(text)),
                // The session checks the frame's kind against its protocol.
                Ok(Some(Event::Binary(bytes))) => return Poll::Ready(Inbound::Binary(bytes)),
                Ok(Some(Event::Ping(payload))) => {
                    self.unsent.extend(control_frame(PONG_OPCODE, &payload));
                    let _ = poll_unsent(&mut self.io, &mut self.unsent, cx);
                    continue;
                }
                Ok(Some(Event::Close)) => {
                    // The closing handshake's answer, as far as the socket takes it now.
                    self.unsent.extend(close_frame(1000, ""));
                    let _ = poll_unsent(&mut self.io, &mut self.unsent, cx);
                    return Poll::Ready(Inbound::Closed);
                }
                Ok(None) => {}
                Err(FrameError::TooLarge { len }) => {
                    tracing::info!(
                        len,
                        limit = self.message_size_limit,
                        "websocket message too large, closing with 1009"
                    );
                    return Poll::Ready(Inbound::Refused(Disconnect::MESSAGE_SIZE_LIMIT));
                }
                Err(FrameError::NotUtf8) => {
                    tracing::info!("websocket text frame is not UTF-8, closing with 1007");
                    return Poll::Ready(Inbound::Refused(Disconnect::INVALID_PAYLOAD));
                }
                Err(FrameError::Protocol(what)) => {
                    tracing::info!(error = what, "websocket protocol error, closing");
                    return Poll::Ready(Inbound::Closed);
                }
            }
            let reader = &mut self.reader;
            match ready!(socket::poll_read_with(
                &mut self.io,
                self.read_size,
                cx,
                |bytes| reader.push(bytes)
            )) {
                Ok(0) => return Poll::Ready(Inbound::Closed),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "websocket read error");
                    return Poll::Ready(Inbound::Closed);
                }
            }
        }
    }

    /// Not an `async fn`: the session's future holds this one (under fan-out, the
    /// session awaits it once per delivery), and an `async fn` would hold its arguments
    /// twice and the frames' future inside another. A timeout's timer is registered only
    /// if the write has to wait.
    fn write(
        &mut self,
        messages: Vec<Bytes>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        // Whatever waits (a pong, a frame given up mid-way) goes first.
        let send = write_frames(
            &mut self.io,
            messages,
            self.protocol,
            self.one_per_frame,
            &mut self.unsent,
        );
        tokio::time::timeout(self.write_timeout, send).map(|r| {
            r.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "websocket write timed out",
                ))
            })
        })
    }

    async fn close(&mut self, disconnect: &Disconnect) {
        use tokio::io::AsyncWriteExt;
        // The rest of a frame given up on mid-way comes first (the caller bounds the wait).
        if finish_unsent(&mut self.io, &mut self.unsent).await.is_err() {
            return;
        }
        // The close frame, then no more writing; `finish` reads and drops what the client
        // still sends, as RFC 6455's closing handshake has it. Closing with unread bytes
        // would make the kernel reset the connection, and a reset throws away the close
        // frame the client has not read yet.
        let frame = close_frame(disconnect.code, disconnect.close_reason());
        if self.io.write_all(&frame).await.is_err() {
            return;
        }
        let _ = self.io.shutdown().await;
    }

    /// The rest of the closing handshake, after the session cleaned up: what the client
    /// still sends is read and dropped until it closes its side or the time is up.
    async fn finish(&mut self) {
        drain(&mut self.io, CLOSE_DRAIN).await;
    }
}

/// An unmasked close frame with `code` and `reason` (at most 123 bytes: what
/// `Disconnect::close_reason` gives).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    debug_assert!(reason.len() <= 123);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    control_frame(CLOSE_OPCODE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WebSocket session's future lives as long as the connection, so its size is memory
    /// every open connection pays (an 8 KiB buffer inline in it once more than doubled the
    /// memory of an idle connection: docs/benchmarks.md, memory per idle connection).
    #[tokio::test]
    async fn a_websocket_session_future_stays_small() {
        let server = crate::server::Server::new(crate::config::Config::default())
            .await
            .expect("the default configuration builds a server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = WsTransport {
            io: Either::Left(tcp),
            reader: Reader::default(),
            read_size: 1024,
            message_size_limit: 65536,
            write_timeout: Duration::from_secs(1),
            protocol: Protocol::Json,
            one_per_frame: false,
            unsent: Vec::new(),
        };
        let params = SessionParams {
            transport: TRANSPORT,
            protocol: Protocol::Json,
            session_id: None,
            connect: ConnectFrom::Commands,
            remote: None,
            headers: None,
        };
        let session = session::run(server.node().clone(), params, ws);
        let size = size_of_val(&session);
        assert!(size <= 2048, "a WebSocket session's future is {size} bytes");
    }
}

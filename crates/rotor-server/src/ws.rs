//! The bidirectional WebSocket transport: rotor does the upgrade itself (warp's `ws()` filter
//! cannot set tungstenite's read buffer) and adapts the socket to the core's reader/writer.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use rotor_core::session::{
    self, Inbound, SessionParams, TransportInfo, TransportKind, TransportReader, TransportWriter,
};
use rotor_protocol::Disconnect;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::server::AppState;
use crate::{origin_allowed, plain};

type Socket = WebSocketStream<TokioIo<Upgraded>>;

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
    /// parameter or as the first message; after that only pushes go out.
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
    peer: crate::server::Peer,
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
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        let (sink, stream) = socket.split();
        let mut reader = WsReader { stream };
        let mut writer = WsWriter {
            sink,
            write_timeout,
        };
        let params = match mode {
            Mode::Bidirectional => SessionParams {
                transport: TRANSPORT,
                session_id: None,
                uni_connect: None,
                remote: peer,
            },
            Mode::Unidirectional { cf_connect, bearer } => {
                let first = match cf_connect {
                    Some(c) => Some(c),
                    None => {
                        let wait = state.config.client.stale_close_delay;
                        match tokio::time::timeout(wait, reader.read()).await {
                            Ok(Inbound::Frame(f)) => Some(f),
                            Ok(_) => return,
                            Err(_) => None,
                        }
                    }
                };
                let req = match first.map(|f| crate::uni::connect_request(&f, bearer)) {
                    Some(Ok(req)) => req,
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "uni_websocket: bad connect request, closing with 3501");
                        writer.close(&Disconnect::BAD_REQUEST).await;
                        return;
                    }
                    None => {
                        tracing::info!(
                            "uni_websocket: no connect request in time, closing with 3502"
                        );
                        writer.close(&Disconnect::STALE).await;
                        return;
                    }
                };
                SessionParams {
                    transport: UNI_TRANSPORT,
                    session_id: Some(crate::new_session_id()),
                    uni_connect: Some(req),
                    remote: peer,
                }
            }
        };
        session::run(state.node.clone(), params, reader, writer).await;
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

struct WsReader {
    stream: SplitStream<Socket>,
}

#[async_trait]
impl TransportReader for WsReader {
    async fn read(&mut self) -> Inbound {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Inbound::Frame(text.to_string()),
                Some(Ok(Message::Binary(_))) => {
                    tracing::info!("binary frame on the JSON protocol, disconnecting with 3501");
                    return Inbound::Refused(
                        Disconnect::BAD_REQUEST.with_reason("binary frames are not supported"),
                    );
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Inbound::Closed,
                Some(Err(WsError::Capacity(e))) => {
                    tracing::info!(error = %e, "websocket message too large, closing with 1009");
                    return Inbound::Refused(Disconnect::custom(
                        1009,
                        "message size limit exceeded",
                    ));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read error");
                    return Inbound::Closed;
                }
            }
        }
    }
}

struct WsWriter {
    sink: SplitSink<Socket, Message>,
    write_timeout: Duration,
}

#[async_trait]
impl TransportWriter for WsWriter {
    async fn write(&mut self, messages: Vec<String>) -> std::io::Result<()> {
        let frame = if messages.len() == 1 {
            messages.into_iter().next().unwrap_or_default()
        } else {
            messages.join("\n")
        };
        let mut send = self.sink.send(Message::Text(frame.into()));
        // Most writes finish at once (the socket has room); only a write that has to wait
        // gets a timer, so the common case does not touch the timer wheel.
        let result = match futures_util::poll!(&mut send) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => {
                match tokio::time::timeout(self.write_timeout, send).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "websocket write timed out",
                        ))
                    }
                }
            }
        };
        result.map_err(std::io::Error::other)
    }

    async fn close(&mut self, disconnect: &Disconnect) {
        let frame = CloseFrame {
            code: CloseCode::from(disconnect.code),
            reason: disconnect.close_reason().to_string().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

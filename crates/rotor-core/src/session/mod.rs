//! The client session: one state machine per connection, fed by any transport.
//!
//! A transport implements [`Transport`] (frames from the client, messages to it) and calls
//! [`run`]. Everything the protocol says — connect first, commands in order, replies by id,
//! pings, expiry, server-side commands, cleanup — happens here, once, for every transport.
//! This file holds the loop and what every part shares; the parts, by concern:
//!
//! - `connect`: connect (bidirectional and unidirectional) and refresh;
//! - `commands`: frames, commands in order, their errors, publish/presence/history;
//! - `subscribe`: subscribe, unsubscribe, sub_refresh (membership itself is the node's);
//! - `control`: pushes and commands from the node (server-side subscribe, refresh, ...);
//! - `timers`: the one deadline: stale, ping/pong, presence refresh, expiries.
//!
//! The session touches the node only through [`Node`]'s methods.

mod commands;
mod connect;
mod control;
#[cfg(test)]
mod proxy_tests;
mod subscribe;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rotor_protocol::{
    ClientInfo, ConnectRequest, Disconnect, DisconnectPush, Protocol, Push, Raw, Reply,
};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::events::Stage;
use crate::hub::ClientHandle;
use crate::limits::{CommandBucket, Limit};
use crate::node::Node;
use crate::proxy::{Caller, ForwardedHeaders, NamedProxy, ProxyKind, ProxyResult};
use crate::revocation::Refusal;
use crate::CoreError;

pub use connect::uni_connect_request;

/// How a transport delivers messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// WebSocket: the close frame carries the disconnect code, no disconnect push.
    WebSocket,
    /// HTTP-streaming and SSE emulation: commands arrive by `/emulation` POST; a disconnect is
    /// written as a push before the stream ends; the connect reply carries session and node.
    Emulation,
    /// Unidirectional (uni_websocket, uni_sse, uni_http_stream): the connect request comes
    /// with the HTTP request, pushes are sent bare (`{"channel":…,"pub":…}`), pings are `{}`
    /// with no pong expected, and a disconnect is a bare `{"disconnect":…}`. Client frames
    /// after the connect are ignored.
    Unidirectional,
}

/// A transport's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportInfo {
    /// `websocket`, `http_stream`, `sse`: used in logs and metrics.
    pub name: &'static str,
    pub kind: TransportKind,
}

/// What the transport read from the client.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame: one or more `\n`-joined JSON commands.
    Frame(String),
    /// A binary frame: one or more length-delimited Protobuf commands. A session that speaks
    /// JSON refuses it (3501), as a Protobuf session refuses a text frame.
    Binary(Bytes),
    /// Input the transport itself refuses (frame too large): end with this code.
    Refused(Disconnect),
    /// The client went away.
    Closed,
}

/// A connection's transport: frames from the client in, messages to the client out. The
/// session owns it and is generic over it (nothing is boxed: under fan-out `write` runs once
/// per delivery and `poll_read` once per turn), so a transport keeps its socket inline.
pub trait Transport: Send {
    /// Polls for the next frame from the client. Partial progress is kept across polls: the
    /// session polls it only when nothing else needs its attention.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;
    /// Writes complete messages (encoded in the session's protocol, unframed) in order,
    /// framed as the transport frames them. A message may be shared with other connections
    /// (a pre-encoded push).
    fn write(&mut self, messages: Vec<Bytes>) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the connection with this code (a WebSocket close frame; the end of a stream).
    fn close(&mut self, disconnect: &Disconnect) -> impl Future<Output = ()> + Send;
    /// After `close` and the session's cleanup: waits (bounded) for the client to take the
    /// close, e.g. reading and dropping what it still sends so the socket is not reset
    /// under its unread close frame.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Per-connection parameters from the transport.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub transport: TransportInfo,
    /// The protocol the client speaks (the transport negotiated it: a WebSocket subprotocol,
    /// a request's content type). Unidirectional transports speak JSON.
    pub protocol: Protocol,
    /// The emulation session id the transport routes `/emulation` POSTs by.
    pub session_id: Option<Arc<str>>,
    /// Where the connect request comes from.
    pub connect: ConnectFrom,
    /// The client's address as the transport believes it (for log lines).
    pub remote: Option<std::net::IpAddr>,
    /// Headers of the connection request that proxies pass on to the backend (see
    /// [`Node::forwarded_headers`]); none without such proxies.
    pub headers: Option<Arc<ForwardedHeaders>>,
}

/// Where a session's connect request comes from.
#[derive(Debug, Clone)]
pub enum ConnectFrom {
    /// A `connect` command among the client's frames (bidirectional transports).
    Commands,
    /// Parsed already from the HTTP request (uni_http_stream, uni_sse).
    Request(ConnectRequest),
    /// The text of a unidirectional connect request (see [`uni_connect_request`]): the
    /// `cf_connect` parameter when `text` is given, else the client's first frame, which must
    /// arrive within `client.stale_close_delay` (uni_websocket). A bad request ends the
    /// connection with 3501, none in time with 3502. `fallback_token` (from the HTTP
    /// request's headers) fills in when the request carries no token.
    Text {
        text: Option<String>,
        fallback_token: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Connected,
}

struct Sub {
    server_side: bool,
    /// Effective options (after token overrides) that cleanup needs.
    presence: bool,
    join_leave: bool,
    chan_info: Option<Raw>,
    /// Unix seconds; `None` = does not expire.
    expire_at: Option<u64>,
    /// The backend extends it (the namespace's sub_refresh proxy), not the client.
    refreshed_by_proxy: bool,
}

struct Session {
    node: Node,
    client: Arc<ClientHandle>,
    transport: TransportInfo,
    protocol: Protocol,
    remote: Option<std::net::IpAddr>,
    state: State,
    user: Arc<str>,
    conn_info: Option<Raw>,
    expire_at: Option<u64>,
    subs: HashMap<Arc<str>, Sub>,
    /// The hub's name of the channel of the last push delivered (a subscribed channel):
    /// pushes of the same channel skip the lookup in `subs`. Cleared when a subscription ends.
    delivering: Option<Arc<str>>,
    stale_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_presence: Option<Instant>,
    /// Only when `client.command_rate_limit` is set.
    bucket: Option<CommandBucket>,
    /// Messages for the client, written at the end of the turn.
    out: Vec<Bytes>,
    /// A unidirectional session waiting for its connect request as its first frame: the
    /// token to fall back on.
    first_frame: Option<Option<String>>,
    /// A unidirectional connect request arrived: from then on a disconnect is announced with a
    /// bare push before the connection closes; before it (a bad or missing request), the
    /// close alone says it.
    connect_seen: bool,
    /// What the proxies need kept (boxed: a session that never has any pays one pointer).
    proxy: Option<Box<ProxyState>>,
    /// Positioned subscriptions that have not had a live publication yet: the position
    /// each started at (publications up to it were in the subscribe reply or before it).
    /// Empty, and without an allocation, otherwise.
    caught_up: Option<Box<CaughtUp>>,
    /// Publishes on their way to the broker (on Redis, a round trip), answered as each is
    /// done while the client's next commands are read. Empty (no allocation) otherwise.
    publishing: commands::InFlight,
}

/// Where positioned subscriptions started, until their first live publication or for
/// [`CAUGHT_UP_FOR`], whichever comes first.
#[derive(Default)]
struct CaughtUp(HashMap<Arc<str>, (u64, Instant)>);

/// How long after a positioned subscribe a live publication at or before its position
/// counts as one it already had. Such a publication is one another node had stored before
/// the subscribe read the position and whose broker message came after: a matter of the
/// broker's latency. The bound keeps a stream that starts over (a new epoch, offsets from
/// 1 again) from having its first publications taken for old ones.
const CAUGHT_UP_FOR: Duration = Duration::from_secs(10);

impl CaughtUp {
    fn start(&mut self, channel: Arc<str>, offset: u64) {
        self.0
            .insert(channel, (offset, Instant::now() + CAUGHT_UP_FOR));
    }

    /// Whether the subscription to `channel` already had the publication at `offset` (it
    /// is dropped); the first one past its start ends the check for that channel.
    fn already_had(&mut self, channel: &Arc<str>, offset: u64) -> bool {
        match self.0.get(channel) {
            Some(&(start, until)) if offset <= start && Instant::now() < until => true,
            Some(_) => {
                self.0.remove(channel);
                false
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a session keeps for its proxy calls.
#[derive(Default)]
struct ProxyState {
    /// What proxies pass on to the backend.
    headers: Option<Arc<ForwardedHeaders>>,
    /// The refresh proxy failed: when to ask again, and how many calls failed in a row.
    refresh_retry: Option<Retry>,
    /// Subscriptions whose sub_refresh proxy call failed, each with its own retry.
    sub_retries: HashMap<Arc<str>, Retry>,
}

/// A failed refresh proxy call: asked again at `at`, after 1, 2, 4, then every 8 seconds
/// (counted from when the failed call ended), until the grace period ends.
#[derive(Clone, Copy)]
struct Retry {
    at: Instant,
    failures: u8,
}

impl Retry {
    /// The retry after one more failure, which ended now.
    fn after(previous: Option<Retry>) -> Retry {
        let failures = previous.map_or(0, |r| r.failures);
        Retry {
            at: Instant::now() + Duration::from_secs(1 << failures.min(3)),
            failures: failures.saturating_add(1),
        }
    }
}
/// Creates a connection and runs it until it ends. Returns the code it ended with (`None`
/// when the client went away).
///
/// The session is set up here and the loop is an `async move` block over it, not an `async
/// fn`: an `async fn` keeps its arguments and the locals they are moved into side by side
/// for the whole life of the future, and this future lives as long as the connection
/// (docs/benchmarks.md, memory per idle connection).
pub fn run(
    node: Node,
    params: SessionParams,
    mut transport: impl Transport,
) -> impl Future<Output = Option<Disconnect>> + Send {
    let cfg = &node.config().client;
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let cancel = node.shutdown_token();
    let client = ClientHandle::new(
        id,
        params.session_id.clone(),
        params.protocol,
        cfg.queue_max_size,
        cancel.clone(),
    );
    let mut s = Session {
        stale_deadline: Some(Instant::now() + cfg.stale_close_delay),
        node: node.clone(),
        client: client.clone(),
        transport: params.transport,
        protocol: params.protocol,
        remote: params.remote,
        state: State::Connecting,
        user: Arc::from(""),
        conn_info: None,
        expire_at: None,
        subs: HashMap::new(),
        delivering: None,
        next_ping: None,
        pong_deadline: None,
        next_presence: None,
        bucket: (cfg.command_rate_limit > 0)
            .then(|| CommandBucket::new(rate_burst(cfg), Instant::now())),
        out: Vec::new(),
        first_frame: None,
        connect_seen: false,
        proxy: params.headers.map(|headers| {
            Box::new(ProxyState {
                headers: Some(headers),
                ..ProxyState::default()
            })
        }),
        publishing: commands::InFlight::default(),
        caught_up: None,
    };
    // A connect request that came with the HTTP request is handled first (boxed: only
    // unidirectional sessions have one).
    let connect_first = match params.connect {
        ConnectFrom::Commands => None,
        ConnectFrom::Text {
            text: None,
            fallback_token,
        } => {
            s.first_frame = Some(fallback_token);
            None
        }
        connect => Some(Box::new(connect)),
    };
    async move {
        let mut first = match connect_first.map(|c| *c) {
            Some(ConnectFrom::Request(req)) => Some(Box::pin(s.uni_connect(req)).await),
            Some(ConnectFrom::Text {
                text: Some(text),
                fallback_token,
            }) => Some(Box::pin(s.uni_connect_text(&text, fallback_token)).await),
            _ => None,
        };
        // Command, timer and node-command handlers run boxed: their state (often several KiB,
        // as they await storage and the broker) is allocated only while one runs, so an idle
        // connection's task holds just this loop. Pushes, the common case under fan-out, are
        // handled inline without an allocation.
        //
        // The loop runs once per wake-up, under fan-out once per delivery, so it does as little
        // as it can per turn. It keeps its futures across turns instead of making new ones: the
        // pending read, the timer (moved only when the next deadline moves) and the cancellation
        // wait. The cancellation wait is polled once to register its wake-up and afterwards only
        // on the fair turns and while a write is pending: a cancellation also sets flags
        // (`stopping`: every cancel goes through `Node::shutdown` or `ClientHandle::close`, which
        // set them first), which the loop reads on every turn and every wake-up, so re-polling
        // it each time would only repeat two locks. The timer is polled whenever the queue and
        // the read are both pending (a branch's condition is evaluated once per select, so a
        // "poll the timer only when due" condition would miss a deadline passing during the
        // wait).
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        // Registers the wake-up (if already cancelled, the flags below say so).
        let _ = poll_fn(|cx| Poll::Ready(cancelled.as_mut().poll(cx))).await;
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // Whether the last turn may have moved a deadline (anything but delivering pushes).
        let mut deadlines_moved = true;
        let mut turn: u32 = 0;
        let stopping = |client: &ClientHandle| {
            (client.closing() || node.stopping())
                .then(|| client.close_reason().unwrap_or(Disconnect::SHUTDOWN))
        };
        let ending = loop {
            if let Some(d) = stopping(&client) {
                break Some(d);
            }
            if deadlines_moved {
                let deadline = s.next_deadline();
                if deadline != armed {
                    if let Some(at) = deadline {
                        timer.as_mut().reset(at);
                    }
                    armed = deadline;
                }
            }
            deadlines_moved = true;
            let ending = if let Some(result) = first.take() {
                result
            } else {
                // Messages to deliver come first, but every FAIR_EVERY-th turn the timer and
                // the client's frames do: a client kept busy by a hot channel still gets its
                // expiry, ping and refresh handled.
                turn = turn.wrapping_add(1);
                let wake = if turn.is_multiple_of(FAIR_EVERY) {
                    tokio::select! {
                    biased;
                    _ = &mut timer, if armed.is_some() => Wake::Timer,
                    done = poll_fn(|cx| commands::poll_publishes(&mut s.publishing, cx)),
                        if !s.publishing.is_empty() => Wake::Published(done),
                    inbound = poll_fn(|cx| transport.poll_read(cx)) => Wake::Read(inbound),
                    _ = poll_fn(|cx| client.poll_ready(cx)) => Wake::Messages,
                    _ = &mut cancelled => Wake::Cancelled,
                    }
                } else {
                    tokio::select! {
                    biased;
                    _ = poll_fn(|cx| client.poll_ready(cx)) => Wake::Messages,
                    done = poll_fn(|cx| commands::poll_publishes(&mut s.publishing, cx)),
                        if !s.publishing.is_empty() => Wake::Published(done),
                    inbound = poll_fn(|cx| transport.poll_read(cx)) => Wake::Read(inbound),
                    _ = &mut timer, if armed.is_some() => Wake::Timer,
                    // The flags only: the cancellation wait registered the wake-up.
                    _ = poll_fn(|_| if stopping(&client).is_some() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }) => Wake::Cancelled,
                    }
                };
                match wake {
                    Wake::Messages => match s.take_pushes() {
                        None => {
                            deadlines_moved = false;
                            None
                        }
                        Some(control) => Box::pin(s.on_control(*control)).await,
                    },
                    Wake::Read(Inbound::Frame(frame)) => {
                        node.observer().received(s.transport.name, frame.len());
                        Box::pin(s.on_frame(frame.as_bytes(), Protocol::Json)).await
                    }
                    Wake::Read(Inbound::Binary(frame)) => {
                        node.observer().received(s.transport.name, frame.len());
                        Box::pin(s.on_frame(&frame, Protocol::Protobuf)).await
                    }
                    Wake::Published(done) => s.finish_published(done).err(),
                    Wake::Read(Inbound::Refused(d)) => Some(d),
                    Wake::Read(Inbound::Closed) => break None,
                    Wake::Timer => {
                        // Armed again next turn, even for the same deadline.
                        armed = None;
                        Box::pin(s.on_timer()).await
                    }
                    Wake::Cancelled => Some(client.close_reason().unwrap_or(Disconnect::SHUTDOWN)),
                }
            };
            if !s.out.is_empty() {
                let messages = std::mem::take(&mut s.out);
                let bytes = messages.iter().map(Bytes::len).sum();
                node.observer()
                    .sent(s.transport.name, messages.len(), bytes);
                let write = tokio::select! {
                    biased;
                    r = transport.write(messages) => r,
                    _ = &mut cancelled => Ok(()),
                };
                if let Err(e) = write {
                    tracing::debug!(client = %client.id(), error = %e, "write failed");
                    break ending.or(Some(Disconnect::WRITE_ERROR));
                }
            }
            if let Some(d) = ending {
                break Some(d);
            }
        };
        // Nothing reads the queue any more: drop what is in it and whatever comes until the
        // hub forgets this connection.
        client.end_inbox();
        // Publishes the client sent are carried through (nobody may be left with a
        // publication stored but never delivered), within a bound; their answers go nowhere.
        if !s.publishing.is_empty() {
            let carried = tokio::time::timeout(PUBLISHES_END_WITHIN, async {
                while !s.publishing.is_empty() {
                    poll_fn(|cx| commands::poll_publishes(&mut s.publishing, cx)).await;
                }
            });
            if carried.await.is_err() {
                tracing::warn!(client = %client.id(), left = s.publishing.get().len(), "publishes still unfinished when the connection ended; dropped");
            }
        }
        if let Some(d) = &ending {
            let limit = match d.code {
                c if c == Disconnect::SLOW.code => Some(Limit::QueueSize),
                c if c == Disconnect::STALE.code => Some(Limit::Stale),
                c if c == Disconnect::MESSAGE_SIZE_LIMIT.code => Some(Limit::MessageSize),
                _ => None,
            };
            if let Some(l) = limit {
                node.observer().limit_hit(l);
            }
            tracing::debug!(client = %client.id(), user = %s.user, code = d.code, reason = %d.reason, transport = s.transport.name, "disconnect");
            if let Some(m) = s.disconnect_message(d) {
                // Boxed: once per connection, and inline it would size the whole future.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    Box::pin(transport.write(vec![Bytes::from(m)])),
                )
                .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.close(d)).await;
        }
        Box::pin(s.cleanup()).await;
        if s.state == State::Connected {
            node.observer()
                .disconnected(s.transport.name, ending.as_ref().map(|d| d.code));
        }
        // The connection is gone for the node (hub, presence, metrics); only the socket waits
        // for the client to take the close.
        if ending.is_some() {
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.finish()).await;
        }
        ending
    }
}

impl Session {
    /// The message that announces a disconnect before the connection closes, where the
    /// transport has one (a WebSocket's close frame says it instead). Built here, outside
    /// the session's future: a `Push` is large, and a local held across the write would
    /// make every connection's future that much larger.
    fn disconnect_message(&self, d: &Disconnect) -> Option<Vec<u8>> {
        let push = Push {
            disconnect: Some(DisconnectPush {
                code: d.code as u32,
                reason: d.reason.to_string(),
            }),
            ..Push::default()
        };
        match self.transport.kind {
            TransportKind::WebSocket => None,
            TransportKind::Emulation => Some(self.protocol.encode_reply(&Reply::push(push))),
            TransportKind::Unidirectional if self.connect_seen => Some(to_json(&push).into_bytes()),
            TransportKind::Unidirectional => None,
        }
    }
}

/// What woke the session loop.
enum Wake {
    Messages,
    Published(Vec<commands::Published>),
    Read(Inbound),
    Timer,
    Cancelled,
}

/// How long an ending connection carries on the publishes it started.
const PUBLISHES_END_WITHIN: Duration = Duration::from_secs(5);

/// Every this many turns the session loop looks at its timer and the client's frames
/// before its queue of messages to deliver.
const FAIR_EVERY: u32 = 16;

/// A client address for log lines (`-` when the transport does not know it).
struct Addr(Option<std::net::IpAddr>);

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The command bucket's size: `command_rate_burst`, or one second's worth.
fn rate_burst(cfg: &ClientConfig) -> u32 {
    if cfg.command_rate_burst > 0 {
        cfg.command_rate_burst
    } else {
        cfg.command_rate_limit
    }
}

/// The wire's `ttl` of an expiry at `at` seen at `now`: at least 1 second, at most 365 days
/// (Centrifugo's limit; a far expiry from a token or a backend must not wrap the u32).
fn ttl(at: u64, now: u64) -> u32 {
    const MAX_TTL: u64 = 365 * 24 * 3600;
    at.saturating_sub(now).clamp(1, MAX_TTL) as u32
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("protocol types always serialize")
}

/// What a command ends in: a reply (or nothing, for `send` and pongs), or a disconnect.
type CommandResult = Result<Option<Reply>, CoreError>;

impl Session {
    fn cfg(&self) -> &ClientConfig {
        &self.node.config().client
    }

    fn now(&self) -> u64 {
        self.node.clock().unix()
    }

    fn info(&self, chan_info: Option<Raw>) -> ClientInfo {
        ClientInfo {
            user: self.user.to_string(),
            client: self.client.id().to_string(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    /// The revocation check, reported to the observer when it refuses.
    fn refusal(
        &self,
        stage: Stage,
        jti: Option<&str>,
        user: &str,
        iat: Option<u64>,
        channel: Option<&str>,
    ) -> Option<Refusal> {
        let r = self.node.token_refusal(jti, user, iat, channel)?;
        self.node.observer().rejected(stage, r);
        Some(r)
    }

    fn limit_hit(&self, limit: Limit) {
        self.node.observer().limit_hit(limit);
    }

    /// This connection as a proxy call describes it.
    fn caller(&self) -> Caller {
        Caller {
            client: self.client.id.clone(),
            transport: self.transport.name,
            protocol: self.protocol,
            user: self.user.clone(),
            meta: self.client.meta(),
            headers: self.proxy.as_ref().and_then(|p| p.headers.clone()),
        }
    }

    /// Runs one proxy call, reporting its duration and failure.
    async fn ask<T>(
        &self,
        kind: ProxyKind,
        proxy: &NamedProxy,
        call: impl Future<Output = ProxyResult<T>>,
    ) -> ProxyResult<T> {
        let started = Instant::now();
        let result = call.await;
        self.node
            .observer()
            .proxy_call(kind, &proxy.name, started.elapsed(), result.is_err());
        if let Err(e) = &result {
            tracing::warn!(client = %self.client.id(), user = %self.user, proxy = %proxy.name, kind = kind.as_str(), error = %e, "proxy call failed");
        }
        result
    }

    fn proxy_state(&mut self) -> &mut ProxyState {
        self.proxy.get_or_insert_with(Box::default)
    }

    /// When to ask the refresh proxy again after a failure.
    fn refresh_retry(&self) -> Option<Instant> {
        self.proxy.as_ref()?.refresh_retry.map(|r| r.at)
    }

    /// When to ask the sub_refresh proxy about `channel`, expiring at `expire_at`: at the
    /// expiry, or after a failed call at its retry.
    fn sub_refresh_at(&self, channel: &str, expire_at: u64) -> Instant {
        self.proxy
            .as_ref()
            .and_then(|p| p.sub_retries.get(channel))
            .map_or_else(|| self.node.clock().instant_at(expire_at), |r| r.at)
    }

    fn emit(&mut self, reply: &Reply) {
        self.out
            .push(Bytes::from(self.protocol.encode_reply(reply)));
    }

    fn emit_push(&mut self, push: Push) {
        if self.transport.kind == TransportKind::Unidirectional {
            self.out.push(Bytes::from(to_json(&push)));
        } else {
            self.emit(&Reply::push(push));
        }
    }

    /// Whether the client answers pings (bidirectional transports only).
    fn expects_pong(&self) -> bool {
        self.transport.kind != TransportKind::Unidirectional && !self.cfg().pong_timeout.is_zero()
    }

    /// Ends every subscription and takes the connection out of the hub.
    async fn cleanup(&mut self) {
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for ch in channels {
            self.leave(&ch).await;
        }
        if self.state == State::Connected {
            self.node.hub().remove_connection(&self.client);
        }
    }
}

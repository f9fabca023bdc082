//! The client session: one state machine per connection, fed by any transport.
//!
//! A transport implements [`Transport`] (frames from the client, messages to it) and calls
//! [`run`]. Everything the protocol says — connect first, commands in order, replies by id,
//! pings, expiry, server-side commands, cleanup — happens here, once, for every transport.

use std::collections::{BTreeMap, HashMap};
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use rotor_protocol::{
    decode_commands, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect,
    DisconnectPush, Empty, HistoryRequest, HistoryResult, MethodKind, PresenceResult,
    PresenceStatsResult, ProtocolError, PublishRequest, Push, Raw, RefreshPush, RefreshResult,
    Reply, StreamPosition, SubRefreshRequest, SubRefreshResult, SubscribePush, SubscribeRequest,
    SubscribeResult, UnsubscribeCode, UnsubscribePush,
};
use tokio::time::Instant;

use crate::broker::Control;
use crate::channels::{self, Asker};
use crate::config::ChannelOptions;
use crate::events::{RefreshOutcome, Stage, TokenKind};
use crate::hub::{bare_push, ClientHandle, Taken};
use crate::limits::{CommandBucket, Limit, Verdict};
use crate::node::{revoked_disconnect, server_unsubscribe, Node, PublishOptions};
use crate::storage::HistoryFilter;
use crate::CoreError;
use rotor_auth::AuthError;

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
    /// A text frame: one or more `\n`-joined commands.
    Frame(String),
    /// Input the transport itself refuses (binary frame, frame too large): end with this code.
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
    /// Writes complete JSON messages in order, framed as the transport frames them. A
    /// message may be shared with other connections (a pre-encoded push).
    fn write(&mut self, messages: Vec<Bytes>) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the connection with this code (a WebSocket close frame; the end of a stream).
    fn close(&mut self, disconnect: &Disconnect) -> impl Future<Output = ()> + Send;
}

/// Per-connection parameters from the transport.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub transport: TransportInfo,
    /// The emulation session id the transport routes `/emulation` POSTs by.
    pub session_id: Option<Arc<str>>,
    /// For unidirectional transports: the connect request that came with the HTTP request.
    pub uni_connect: Option<ConnectRequest>,
    /// The client's address as the transport believes it (for log lines).
    pub remote: Option<std::net::IpAddr>,
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
}

struct Session {
    node: Node,
    client: Arc<ClientHandle>,
    transport: TransportInfo,
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
}

/// Creates a connection and runs it until it ends. Returns the code it ended with (`None`
/// when the client went away).
pub async fn run(
    node: Node,
    params: SessionParams,
    mut transport: impl Transport,
) -> Option<Disconnect> {
    let cfg = &node.config().client;
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let cancel = node.inner.shutdown.child_token();
    let client = ClientHandle::new(
        id,
        params.session_id.clone(),
        cfg.queue_max_size,
        cancel.clone(),
    );
    let mut s = Session {
        stale_deadline: Some(Instant::now() + cfg.stale_close_delay),
        node: node.clone(),
        client: client.clone(),
        transport: params.transport,
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
    };
    let mut first = match params.uni_connect {
        Some(req) => Some(Box::pin(s.uni_connect(req)).await),
        None => None,
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
                inbound = poll_fn(|cx| transport.poll_read(cx)) => Wake::Read(inbound),
                _ = poll_fn(|cx| client.poll_ready(cx)) => Wake::Messages,
                _ = &mut cancelled => Wake::Cancelled,
                }
            } else {
                tokio::select! {
                biased;
                _ = poll_fn(|cx| client.poll_ready(cx)) => Wake::Messages,
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
                    node.inner.observer.received(s.transport.name, frame.len());
                    Box::pin(s.on_frame(&frame)).await
                }
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
            node.inner
                .observer
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
    if let Some(d) = &ending {
        let limit = match d.code {
            c if c == Disconnect::SLOW.code => Some(Limit::QueueSize),
            c if c == Disconnect::STALE.code => Some(Limit::Stale),
            c if c == Disconnect::MESSAGE_SIZE_LIMIT.code => Some(Limit::MessageSize),
            _ => None,
        };
        if let Some(l) = limit {
            node.inner.observer.limit_hit(l);
        }
        tracing::debug!(client = %client.id(), user = %s.user, code = d.code, reason = %d.reason, transport = s.transport.name, "disconnect");
        let push = Push {
            disconnect: Some(DisconnectPush {
                code: d.code as u32,
                reason: d.reason.to_string(),
            }),
            ..Push::default()
        };
        let message = match s.transport.kind {
            TransportKind::WebSocket => None,
            TransportKind::Emulation => Some(to_json(&Reply::push(push))),
            TransportKind::Unidirectional => Some(to_json(&push)),
        };
        if let Some(m) = message {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                transport.write(vec![Bytes::from(m)]),
            )
            .await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), transport.close(d)).await;
    }
    Box::pin(s.cleanup()).await;
    if s.state == State::Connected {
        node.inner
            .observer
            .disconnected(s.transport.name, ending.as_ref().map(|d| d.code));
    }
    ending
}

/// What woke the session loop.
enum Wake {
    Messages,
    Read(Inbound),
    Timer,
    Cancelled,
}

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
fn rate_burst(cfg: &crate::config::ClientConfig) -> u32 {
    if cfg.command_rate_burst > 0 {
        cfg.command_rate_burst
    } else {
        cfg.command_rate_limit
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("protocol types always serialize")
}

/// What a command ends in: a reply (or nothing, for `send` and pongs), or a disconnect.
type CommandResult = Result<Option<Reply>, CoreError>;

impl Session {
    fn cfg(&self) -> &crate::config::ClientConfig {
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
    ) -> Option<crate::revocation::Refusal> {
        let r = self.node.token_refusal(jti, user, iat, channel)?;
        self.node.inner.observer.rejected(stage, r);
        Some(r)
    }

    fn presence_ttl(&self) -> std::time::Duration {
        self.cfg().presence_update_interval * 2 + std::time::Duration::from_secs(6)
    }

    /// Re-adds this connection's presence entries so they do not expire while it lives.
    async fn refresh_presence(&mut self) {
        let ttl = self.presence_ttl();
        let mut any = false;
        let subs: Vec<(Arc<str>, Option<Raw>)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.presence)
            .map(|(c, s)| (c.clone(), s.chan_info.clone()))
            .collect();
        for (channel, chan_info) in subs {
            any = true;
            let info = self.info(chan_info);
            if let Err(e) = self
                .node
                .inner
                .storage
                .presence
                .add(&channel, &info, ttl)
                .await
            {
                tracing::warn!(channel = %channel, error = %e, "presence refresh failed");
            }
        }
        self.next_presence = any.then(|| Instant::now() + self.cfg().presence_update_interval);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let clock = self.node.clock();
        let cfg = self.cfg();
        let expiry = self
            .expire_at
            .map(|at| clock.instant_at(at) + cfg.expired_close_delay);
        let sub_expiry = self
            .subs
            .values()
            .filter_map(|s| s.expire_at)
            .min()
            .map(|at| clock.instant_at(at) + cfg.expired_sub_close_delay);
        [
            self.stale_deadline,
            self.next_ping,
            self.pong_deadline,
            self.next_presence,
            expiry,
            sub_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn limit_hit(&self, limit: Limit) {
        self.node.inner.observer.limit_hit(limit);
    }

    /// Applies `client.command_rate_limit` to one command.
    fn rate_check(&mut self, method: MethodKind) -> Result<(), CoreError> {
        let Some(bucket) = self.bucket.as_mut() else {
            return Ok(());
        };
        if method == MethodKind::Pong {
            return Ok(());
        }
        let cfg = &self.node.inner.config.client;
        match bucket.take(cfg.command_rate_limit, rate_burst(cfg), Instant::now()) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse => {
                self.limit_hit(Limit::CommandRate);
                tracing::debug!(client = %self.client.id(), user = %self.user, method = method.name(), "command over client.command_rate_limit, error 111");
                Err(CoreError::TooManyRequests)
            }
            Verdict::Disconnect => {
                self.limit_hit(Limit::CommandRate);
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "client keeps sending over client.command_rate_limit, disconnecting with 3013");
                Err(Disconnect::TOO_MANY_REQUESTS.into())
            }
        }
    }

    fn emit(&mut self, reply: &Reply) {
        self.out.push(Bytes::from(to_json(reply)));
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

    /// The connect of a unidirectional transport: the result goes out as a bare `connect`
    /// push, and an error becomes a disconnect (there is no reply to carry it).
    async fn uni_connect(&mut self, req: ConnectRequest) -> Option<Disconnect> {
        let result = self.connect(req).await;
        if let Err(e) = &result {
            self.node
                .inner
                .observer
                .connect_refused(self.transport.name, refusal_reason(e));
        }
        match result {
            Ok(Some(reply)) => {
                self.emit_push(Push {
                    connect: reply.connect,
                    ..Push::default()
                });
                None
            }
            Ok(None) => None,
            Err(CoreError::Disconnect(d)) => Some(d),
            Err(e) => {
                let d = e.to_disconnect();
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, code = d.code, "unidirectional connect refused");
                Some(d)
            }
        }
    }

    // ----- input -----

    async fn on_frame(&mut self, frame: &str) -> Option<Disconnect> {
        if self.transport.kind == TransportKind::Unidirectional {
            tracing::debug!(client = %self.client.id(), "ignoring a frame on a unidirectional transport");
            return None;
        }
        let commands = match decode_commands(frame) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, transport = self.transport.name, "malformed frame, disconnecting with 3501");
                return Some(Disconnect::BAD_REQUEST);
            }
        };
        for cmd in commands {
            if let Err(d) = self.on_command(cmd).await {
                return Some(d);
            }
        }
        None
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        let method = cmd.method();
        let id = cmd.id;
        if id == 0 && !matches!(method, MethodKind::Pong | MethodKind::Send) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), method = method.name(), "command without id, disconnecting with 3501");
            return Err(Disconnect::BAD_REQUEST);
        }
        if self.state == State::Connecting && method != MethodKind::Connect {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), method = method.name(), "command before connect, disconnecting with 3501");
            return Err(Disconnect::BAD_REQUEST);
        }
        let started = Instant::now();
        if let Err(e) = self.rate_check(method) {
            return self.answer_error(id, &e);
        }
        let result: CommandResult = match method {
            MethodKind::Connect => {
                let r = self.connect(cmd.connect.unwrap_or_default()).await;
                if let Err(e) = &r {
                    self.node
                        .inner
                        .observer
                        .connect_refused(self.transport.name, refusal_reason(e));
                }
                r
            }
            MethodKind::Subscribe => self.subscribe(cmd.subscribe.unwrap_or_default()).await,
            MethodKind::Unsubscribe => {
                let channel = cmd.unsubscribe.unwrap_or_default().channel;
                self.leave(&channel).await;
                Ok(Some(Reply {
                    unsubscribe: Some(Empty {}),
                    ..Reply::default()
                }))
            }
            MethodKind::Publish => match cmd.publish {
                Some(p) => self.publish(p).await,
                None => Err(CoreError::BadRequest("publish without data".into())),
            },
            MethodKind::Presence => {
                self.presence(cmd.presence.unwrap_or_default().channel)
                    .await
            }
            MethodKind::PresenceStats => {
                self.presence_stats(cmd.presence_stats.unwrap_or_default().channel)
                    .await
            }
            MethodKind::History => self.history(cmd.history.unwrap_or_default()).await,
            MethodKind::Ping => Ok(Some(Reply {
                ping: Some(Empty {}),
                ..Reply::default()
            })),
            MethodKind::Send => {
                tracing::debug!(client = %self.client.id(), "send: no handler configured, message dropped");
                Ok(None)
            }
            MethodKind::Rpc => Err(CoreError::NotAvailable),
            MethodKind::Refresh => self.refresh(cmd.refresh.unwrap_or_default().token).await,
            MethodKind::SubRefresh => self.sub_refresh(cmd.sub_refresh.unwrap_or_default()).await,
            MethodKind::Pong => {
                self.pong_deadline = None;
                Ok(None)
            }
            MethodKind::Unknown => Err(CoreError::MethodNotFound),
        };
        let error = match &result {
            Ok(_) => None,
            Err(e) => Some(e.code().map(|c| c.code()).unwrap_or(0)),
        };
        if method != MethodKind::Pong {
            self.node
                .inner
                .observer
                .command(method.name(), started.elapsed(), error);
        }
        match result {
            Ok(Some(mut reply)) => {
                reply.id = id;
                self.emit(&reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(client = %self.client.id(), method = method.name(), error = %e, "command error");
                self.answer_error(id, &e)
            }
        }
    }

    /// Answers command `id` with the error (commands without an id get no reply), or ends
    /// the connection when the error is a disconnect.
    fn answer_error(&mut self, id: u32, e: &CoreError) -> Result<(), Disconnect> {
        match e.to_protocol() {
            ProtocolError::Disconnect(d) => Err(d),
            ProtocolError::Reply(error) => {
                if id > 0 {
                    self.emit(&Reply::error(id, error));
                }
                Ok(())
            }
        }
    }

    // ----- connect and refresh -----

    async fn connect(&mut self, req: ConnectRequest) -> CommandResult {
        if self.state == State::Connected {
            return Err(Disconnect::BAD_REQUEST
                .with_reason("already connected")
                .into());
        }
        let now = self.now();
        let (user, expire_at, info, mut server_subs) = if req.token.is_empty() {
            if !self.cfg().allow_anonymous_connect_without_token {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "connect without a token, disconnecting with 3501");
                return Err(Disconnect::BAD_REQUEST
                    .with_reason("client credentials not found")
                    .into());
            }
            (String::new(), None, None, BTreeMap::new())
        } else {
            let token = match self
                .node
                .inner
                .verifier
                .verify_connect(&req.token, now)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "connect refused");
                    return Err(CoreError::from_connect_token(e));
                }
            };
            if token.user.is_empty() && self.cfg().disallow_anonymous_connection_tokens {
                return Err(Disconnect::PERMISSION_DENIED.into());
            }
            if let Some(r) = self.refusal(
                Stage::Connect,
                token.jti.as_deref(),
                &token.user,
                token.iat,
                None,
            ) {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %token.user, reason = r.as_str(), "connect with a revoked token, disconnecting with 3500");
                return Err(revoked_disconnect().into());
            }
            self.client.set_creds(token.jti.as_deref(), token.iat);
            let mut subs: BTreeMap<String, rotor_auth::SubscriptionClaim> = BTreeMap::new();
            for ch in token.channels {
                subs.insert(ch, rotor_auth::SubscriptionClaim::default());
            }
            subs.extend(token.subs);
            (token.user, token.expire_at, token.info, subs)
        };
        // Server-side channels must all be known before the connection is accepted.
        for ch in server_subs.keys() {
            self.node.channel_options(ch)?;
        }
        let node = self.node.clone();
        let cfg = &node.config().client;
        if server_subs.len() > cfg.channel_limit {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %user, channels = server_subs.len(), limit = cfg.channel_limit, "token names more channels than client.channel_limit, disconnecting with 3505");
            self.limit_hit(Limit::Channels);
            return Err(Disconnect::CHANNEL_LIMIT.into());
        }
        self.user = Arc::from(user.as_str());
        let _ = self.client.user.set(self.user.clone());
        if let Err(limit) = node.inner.hub.add_connection(
            &self.client,
            cfg.connection_limit,
            cfg.user_connection_limit,
        ) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, limit = limit.as_str(), "connection limit reached, disconnecting with 3504");
            self.limit_hit(limit);
            return Err(Disconnect::CONNECTION_LIMIT.into());
        }
        self.conn_info = info;
        self.expire_at = expire_at;
        self.client.set_expire_at(expire_at);
        self.state = State::Connected;
        self.stale_deadline = None;
        // The wire counts whole seconds: a sub-second interval is announced as 1 s, so the
        // client still knows to answer (announcing 0 would mean "no pings, no pongs" while the
        // server goes on expecting pongs).
        let ping = cfg.ping_interval.as_secs_f64().ceil() as u32;
        if !cfg.ping_interval.is_zero() {
            self.next_ping = Some(Instant::now() + cfg.ping_interval);
        }
        let mut result = ConnectResult {
            client: self.client.id().to_string(),
            version: self.node.config().version.clone(),
            ping,
            pong: ping > 0 && self.expects_pong(),
            ..ConnectResult::default()
        };
        if let Some(at) = expire_at {
            result.expires = true;
            result.ttl = at.saturating_sub(now).max(1) as u32;
        }
        if let Some(session) = self.client.session() {
            result.session = session.to_string();
        }
        if self.transport.kind == TransportKind::Emulation {
            result.node = self.node.uid().to_string();
        }
        for (ch, claim) in std::mem::take(&mut server_subs) {
            let recover = req.subs.get(&ch).cloned().unwrap_or_default();
            let opts = channels::with_override(&*self.node.channel_options(&ch)?, &claim.override_);
            let (chan_info, data) = (claim.info, claim.data);
            let want = SubscribeRequest {
                channel: ch.clone(),
                ..recover
            };
            let mut sub_result = self.join(&ch, &opts, &want, chan_info, true, None).await?;
            sub_result.data = data;
            result.subs.insert(ch, sub_result);
        }
        tracing::debug!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, transport = self.transport.name, "connected");
        self.node.inner.observer.connected(
            self.transport.name,
            expire_at.map(|at| at.saturating_sub(now)),
        );
        Ok(Some(Reply {
            connect: Some(result),
            ..Reply::default()
        }))
    }

    async fn refresh(&mut self, token: String) -> CommandResult {
        let now = self.now();
        let lag = self.lag_after(self.expire_at);
        let outcome = self.refresh_inner(token, now).await;
        self.report_refresh(TokenKind::Connection, lag, outcome)
    }

    /// Seconds from `expire_at` to now (negative before it).
    fn lag_after(&self, expire_at: Option<u64>) -> Option<f64> {
        expire_at.map(|at| self.node.clock().unix_ms() as f64 / 1000.0 - at as f64)
    }

    /// Reports a refresh's outcome and lag to the observer, then drops the outcome kind.
    fn report_refresh(
        &self,
        kind: TokenKind,
        lag: Option<f64>,
        outcome: Result<Option<Reply>, (RefreshOutcome, CoreError)>,
    ) -> CommandResult {
        let result = match &outcome {
            Ok(_) => RefreshOutcome::Ok,
            Err((r, _)) => *r,
        };
        self.node.inner.observer.refresh(kind, result, lag);
        outcome.map_err(|(_, e)| e)
    }

    async fn refresh_inner(
        &mut self,
        token: String,
        now: u64,
    ) -> Result<Option<Reply>, (RefreshOutcome, CoreError)> {
        if token.is_empty() {
            let d = Disconnect::BAD_REQUEST.with_reason("refresh without a token");
            return Err((RefreshOutcome::Empty, d.into()));
        }
        let t = match self.node.inner.verifier.verify_connect(&token, now).await {
            Ok(t) => t,
            Err(AuthError::Expired) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "refresh with an expired token, disconnecting with 3005");
                return Err((RefreshOutcome::Expired, Disconnect::EXPIRED.into()));
            }
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(client = %self.client.id(), error = %e, "refresh: token keys unavailable, answering 100");
                return Err((RefreshOutcome::Unavailable, CoreError::Unavailable(e)));
            }
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "refresh with an invalid token, disconnecting with 3500");
                return Err((RefreshOutcome::Invalid, Disconnect::INVALID_TOKEN.into()));
            }
        };
        if t.user != *self.user {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "refresh token is for another user, disconnecting with 3500");
            return Err((RefreshOutcome::Mismatch, Disconnect::INVALID_TOKEN.into()));
        }
        if let Some(r) = self.refusal(Stage::Refresh, t.jti.as_deref(), &t.user, t.iat, None) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), reason = r.as_str(), "refresh with a revoked token, disconnecting with 3500");
            return Err((RefreshOutcome::Revoked, revoked_disconnect().into()));
        }
        self.client.set_creds(t.jti.as_deref(), t.iat);
        self.expire_at = t.expire_at;
        self.client.set_expire_at(t.expire_at);
        if t.info.is_some() {
            self.conn_info = t.info;
        }
        let mut result = RefreshResult {
            client: self.client.id().to_string(),
            version: self.node.config().version.clone(),
            ..RefreshResult::default()
        };
        if let Some(at) = t.expire_at {
            result.expires = true;
            result.ttl = at.saturating_sub(now).max(1) as u32;
        }
        Ok(Some(Reply {
            refresh: Some(result),
            ..Reply::default()
        }))
    }

    // ----- subscriptions -----

    async fn subscribe(&mut self, req: SubscribeRequest) -> CommandResult {
        let channel = req.channel.clone();
        let opts = self.node.channel_options(&channel)?;
        if self.subs.contains_key(channel.as_str()) {
            return Err(CoreError::AlreadySubscribed);
        }
        if self.subs.values().filter(|s| !s.server_side).count() >= self.cfg().channel_limit {
            self.limit_hit(Limit::Channels);
            return Err(CoreError::LimitExceeded);
        }
        let (chan_info, expire_at, data, opts) = if req.token.is_empty() {
            channels::check_subscribe(
                &opts,
                &channel,
                Asker {
                    user: &self.user,
                    subscribed: false,
                },
            )?;
            (None, None, None, (*opts).clone())
        } else {
            let t = self
                .node
                .inner
                .sub_verifier
                .verify_subscribe(&req.token, self.now())
                .await
                .map_err(CoreError::from_subscribe_token)?;
            if t.user != *self.user
                || t.channel != channel
                || (!t.client.is_empty() && t.client != self.client.id())
            {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "subscription token for another user or channel, disconnecting with 3500");
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            if let Some(r) = self.refusal(
                Stage::Subscribe,
                t.jti.as_deref(),
                &t.user,
                t.iat,
                Some(&channel),
            ) {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, reason = r.as_str(), "subscription token revoked");
                return Err(CoreError::PermissionDenied);
            }
            let opts = channels::with_override(&opts, &t.claim.override_);
            (t.claim.info, t.expire_at, t.claim.data, opts)
        };
        let mut result = self
            .join(&channel, &opts, &req, chan_info, false, expire_at)
            .await?;
        result.data = data;
        Ok(Some(Reply {
            subscribe: Some(result),
            ..Reply::default()
        }))
    }

    /// Subscribes this connection: hub, broker, recovery, presence, join push.
    async fn join(
        &mut self,
        channel: &str,
        opts: &ChannelOptions,
        want: &SubscribeRequest,
        chan_info: Option<Raw>,
        server_side: bool,
        expire_at: Option<u64>,
    ) -> Result<SubscribeResult, CoreError> {
        let history_allowed = opts.allow_history_for_client || opts.allow_history_for_subscriber;
        let recoverable = opts.history_enabled()
            && (opts.force_recovery
                || (want.recoverable && (opts.allow_recovery || history_allowed))
                || (server_side && want.recover));
        let positioned = recoverable
            || (opts.history_enabled()
                && (opts.force_positioning
                    || (want.positioned && (opts.allow_positioning || history_allowed))));
        let join_leave = opts.force_push_join_leave || (want.join_leave && opts.join_leave);
        let mut result = SubscribeResult {
            recoverable,
            positioned,
            ..SubscribeResult::default()
        };
        let now = self.now();
        if let Some(at) = expire_at {
            result.expires = true;
            result.ttl = at.saturating_sub(now).max(1) as u32;
        }
        {
            let _guard = self.node.lock_channel(channel).await;
            let first = self
                .node
                .inner
                .hub
                .subscribe(channel, &self.client, join_leave);
            if first {
                if let Err(e) = self.node.inner.broker.subscribe(channel).await {
                    self.node.inner.hub.unsubscribe(channel, &self.client);
                    return Err(e);
                }
            }
            if positioned {
                if let Err(e) = self
                    .position(channel, opts, want, recoverable, &mut result)
                    .await
                {
                    drop(_guard);
                    self.unsubscribe_hub(channel).await;
                    return Err(e);
                }
            }
        }
        let info = self.info(chan_info.clone());
        if opts.presence {
            if let Err(e) = self
                .node
                .inner
                .storage
                .presence
                .add(channel, &info, self.presence_ttl())
                .await
            {
                tracing::warn!(channel, error = %e, "presence add failed");
            }
            if self.next_presence.is_none() {
                self.next_presence = Some(Instant::now() + self.cfg().presence_update_interval);
            }
        }
        if opts.join_leave {
            if let Err(e) = self.node.inner.broker.publish_join(channel, &info).await {
                tracing::warn!(channel, error = %e, "join push failed");
            }
        }
        self.subs.insert(
            Arc::from(channel),
            Sub {
                server_side,
                presence: opts.presence,
                join_leave: opts.join_leave,
                chan_info,
                expire_at,
            },
        );
        Ok(result)
    }

    /// Fills the stream position and, when the client recovers, the missed publications.
    async fn position(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        want: &SubscribeRequest,
        recoverable: bool,
        result: &mut SubscribeResult,
    ) -> Result<(), CoreError> {
        let store = &self.node.inner.storage.history;
        let hopts = self.node.history_options(opts);
        if recoverable && want.recover {
            result.was_recovering = true;
            let max = self.cfg().recovery_max_publication_limit;
            let filter = HistoryFilter {
                since: Some(StreamPosition {
                    offset: want.offset,
                    epoch: want.epoch.clone(),
                }),
                limit: max + 1,
                reverse: false,
            };
            match store.read(channel, &filter, &hopts).await {
                Ok(page) => {
                    let complete = page.publications.len() <= max
                        && match page.publications.first() {
                            Some(first) => first.offset == want.offset + 1,
                            None => page.position.offset == want.offset,
                        };
                    result.epoch = page.position.epoch;
                    result.offset = page.position.offset;
                    if complete {
                        result.recovered = true;
                        result.publications = page.publications;
                    }
                    return Ok(());
                }
                Err(CoreError::UnrecoverablePosition) => {}
                Err(e) => return Err(e),
            }
        }
        let page = store
            .read(channel, &HistoryFilter::default(), &hopts)
            .await?;
        result.epoch = page.position.epoch;
        result.offset = page.position.offset;
        Ok(())
    }

    async fn unsubscribe_hub(&self, channel: &str) {
        let _guard = self.node.lock_channel(channel).await;
        if self.node.inner.hub.unsubscribe(channel, &self.client) {
            if let Err(e) = self.node.inner.broker.unsubscribe(channel).await {
                tracing::warn!(channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    /// Removes a subscription (no-op when not subscribed): hub, presence, leave push.
    async fn leave(&mut self, channel: &str) -> bool {
        self.delivering = None;
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        self.unsubscribe_hub(channel).await;
        if sub.presence {
            let presence = &self.node.inner.storage.presence;
            if let Err(e) = presence.remove(channel, self.client.id()).await {
                tracing::warn!(channel, error = %e, "presence remove failed");
            }
        }
        if sub.join_leave {
            let info = self.info(sub.chan_info);
            if let Err(e) = self.node.inner.broker.publish_leave(channel, &info).await {
                tracing::warn!(channel, error = %e, "leave push failed");
            }
        }
        true
    }

    async fn sub_refresh(&mut self, req: SubRefreshRequest) -> CommandResult {
        let lag = self.lag_after(
            self.subs
                .get(req.channel.as_str())
                .and_then(|s| s.expire_at),
        );
        let outcome = self.sub_refresh_inner(req).await;
        self.report_refresh(TokenKind::Subscription, lag, outcome)
    }

    async fn sub_refresh_inner(
        &mut self,
        req: SubRefreshRequest,
    ) -> Result<Option<Reply>, (RefreshOutcome, CoreError)> {
        if req.channel.is_empty() || req.token.is_empty() {
            let d = Disconnect::BAD_REQUEST.with_reason("sub_refresh needs channel and token");
            return Err((RefreshOutcome::Empty, d.into()));
        }
        if !self.subs.contains_key(req.channel.as_str()) {
            return Err((RefreshOutcome::Mismatch, CoreError::PermissionDenied));
        }
        let now = self.now();
        let t = match self
            .node
            .inner
            .sub_verifier
            .verify_subscribe(&req.token, now)
            .await
        {
            Ok(t) => t,
            // An expired token never extends a subscription.
            Err(AuthError::Expired) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, "sub_refresh with an expired token, disconnecting with 3006");
                return Err((
                    RefreshOutcome::Expired,
                    Disconnect::SUBSCRIPTION_EXPIRED.into(),
                ));
            }
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(client = %self.client.id(), error = %e, "sub_refresh: token keys unavailable, answering 100");
                return Err((RefreshOutcome::Unavailable, CoreError::Unavailable(e)));
            }
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "sub_refresh with an invalid token, disconnecting with 3500");
                return Err((RefreshOutcome::Invalid, Disconnect::INVALID_TOKEN.into()));
            }
        };
        if t.user != *self.user || t.channel != req.channel {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, "sub_refresh token for another user or channel, disconnecting with 3500");
            return Err((RefreshOutcome::Mismatch, Disconnect::INVALID_TOKEN.into()));
        }
        if let Some(r) = self.refusal(
            Stage::SubRefresh,
            t.jti.as_deref(),
            &t.user,
            t.iat,
            Some(&req.channel),
        ) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, reason = r.as_str(), "sub_refresh with a revoked token, disconnecting with 3500");
            return Err((RefreshOutcome::Revoked, revoked_disconnect().into()));
        }
        let sub = self
            .subs
            .get_mut(req.channel.as_str())
            .expect("checked above");
        sub.expire_at = t.expire_at;
        if t.claim.info.is_some() {
            sub.chan_info = t.claim.info;
        }
        let mut result = SubRefreshResult::default();
        if let Some(at) = t.expire_at {
            result.expires = true;
            result.ttl = at.saturating_sub(now).max(1) as u32;
        }
        Ok(Some(Reply {
            sub_refresh: Some(result),
            ..Reply::default()
        }))
    }

    // ----- publish, presence, history -----

    fn asker(&self, channel: &str) -> Asker<'_> {
        Asker {
            user: &self.user,
            subscribed: self.subs.contains_key(channel),
        }
    }

    async fn publish(&mut self, req: PublishRequest) -> CommandResult {
        let opts = self.node.channel_options(&req.channel)?;
        channels::check_publish(&opts, self.asker(&req.channel))?;
        let max = self.cfg().publication_max_size;
        if req.data.get().len() > max {
            self.limit_hit(Limit::PublicationSize);
            return Err(CoreError::BadRequest(format!(
                "publication data larger than {max} bytes"
            )));
        }
        let chan_info = self
            .subs
            .get(req.channel.as_str())
            .and_then(|s| s.chan_info.clone());
        let options = PublishOptions {
            info: Some(self.info(chan_info)),
            ..PublishOptions::default()
        };
        self.node.publish(&req.channel, req.data, options).await?;
        Ok(Some(Reply {
            publish: Some(Empty {}),
            ..Reply::default()
        }))
    }

    async fn presence(&mut self, channel: String) -> CommandResult {
        let opts = self.node.channel_options(&channel)?;
        channels::check_presence(&opts, self.asker(&channel))?;
        let presence = self.node.presence(&channel).await?;
        Ok(Some(Reply {
            presence: Some(PresenceResult { presence }),
            ..Reply::default()
        }))
    }

    async fn presence_stats(&mut self, channel: String) -> CommandResult {
        let opts = self.node.channel_options(&channel)?;
        channels::check_presence(&opts, self.asker(&channel))?;
        let (num_clients, num_users) = self.node.presence_stats(&channel).await?;
        Ok(Some(Reply {
            presence_stats: Some(PresenceStatsResult {
                num_clients,
                num_users,
            }),
            ..Reply::default()
        }))
    }

    async fn history(&mut self, req: HistoryRequest) -> CommandResult {
        let opts = self.node.channel_options(&req.channel)?;
        channels::check_history(&opts, self.asker(&req.channel))?;
        if req.limit as i64 > self.cfg().history_max_publication_limit as i64 {
            self.limit_hit(Limit::HistoryLimit);
        }
        let page = self
            .node
            .history(&req.channel, req.limit as i64, req.since, req.reverse)
            .await?;
        Ok(Some(Reply {
            history: Some(HistoryResult {
                publications: page.publications,
                epoch: page.position.epoch,
                offset: page.position.offset,
            }),
            ..Reply::default()
        }))
    }

    // ----- messages from the node -----

    /// Takes messages off the queue (a bounded number per turn), queueing pushes
    /// for the client, until the queue is empty or a node command comes up, which is
    /// returned to be run.
    fn take_pushes(&mut self) -> Option<Box<Control>> {
        let Session {
            client,
            subs,
            out,
            delivering,
            transport,
            ..
        } = self;
        let bare = transport.kind == TransportKind::Unidirectional;
        let mut control = None;
        client.take(|taken| match taken {
            Taken::Push { channel, bytes } => {
                // The hub hands every push of a channel the same name, so the channel of
                // the previous push is recognised without a lookup.
                let subscribed = delivering.as_ref().is_some_and(|d| Arc::ptr_eq(d, channel))
                    || subs.contains_key(channel) && {
                        *delivering = Some(channel.clone());
                        true
                    };
                // Not subscribed: unsubscribed while the push was queued.
                if subscribed {
                    out.push(if bare {
                        bare_push(bytes)
                    } else {
                        bytes.clone()
                    });
                }
                true
            }
            Taken::Control(c) => {
                control = Some(c);
                false
            }
        });
        control
    }

    async fn on_control(&mut self, control: Control) -> Option<Disconnect> {
        if self.state != State::Connected {
            return None;
        }
        match control {
            Control::Unsubscribe { channel, .. } => {
                if self.leave(&channel).await {
                    self.emit_push(Push {
                        channel,
                        unsubscribe: Some(server_unsubscribe()),
                        ..Push::default()
                    });
                }
            }
            Control::Subscribe {
                channel,
                info,
                data,
                ..
            } => {
                if self.subs.contains_key(channel.as_str()) {
                    return None;
                }
                let opts = match self.node.channel_options(&channel) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "server-side subscribe refused");
                        return None;
                    }
                };
                let want = SubscribeRequest {
                    channel: channel.clone(),
                    ..SubscribeRequest::default()
                };
                match self.join(&channel, &opts, &want, info, true, None).await {
                    Ok(r) => self.emit_push(Push {
                        channel,
                        subscribe: Some(SubscribePush {
                            recoverable: r.recoverable,
                            epoch: r.epoch,
                            offset: r.offset,
                            positioned: r.positioned,
                            data,
                        }),
                        ..Push::default()
                    }),
                    Err(e) => tracing::warn!(channel, error = %e, "server-side subscribe failed"),
                }
            }
            Control::Refresh {
                expired, expire_at, ..
            } => {
                if expired {
                    return Some(Disconnect::EXPIRED);
                }
                self.expire_at = expire_at.filter(|at| *at > 0);
                self.client.set_expire_at(self.expire_at);
                let mut push = RefreshPush::default();
                if let Some(at) = self.expire_at {
                    push.expires = true;
                    push.ttl = at.saturating_sub(self.now()).max(1) as u32;
                }
                self.emit_push(Push {
                    refresh: Some(push),
                    ..Push::default()
                });
            }
            // Applied by the node to every connection (see `node::kick`).
            Control::Disconnect { .. }
            | Control::Revoke { .. }
            | Control::InvalidateUser { .. } => {}
        }
        None
    }

    // ----- timers -----

    async fn on_timer(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        if self.stale_deadline.is_some_and(|d| d <= now) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "no connect in time, disconnecting with 3502");
            return Some(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "no pong, disconnecting with 3012");
            return Some(Disconnect::NO_PONG);
        }
        let clock = self.node.clock();
        // A handle to the node (an Arc) keeps the config borrowed while `self` changes.
        let node = self.node.clone();
        let cfg = &node.config().client;
        if let Some(at) = self.expire_at {
            if clock.instant_at(at) + cfg.expired_close_delay <= now {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "connection expired, disconnecting with 3005");
                self.node
                    .inner
                    .observer
                    .connection_expired(self.transport.name);
                return Some(Disconnect::EXPIRED);
            }
        }
        if self.next_ping.is_some_and(|d| d <= now) {
            self.out.push(Bytes::from_static(b"{}"));
            self.next_ping = Some(now + cfg.ping_interval);
            if self.expects_pong() && self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + cfg.pong_timeout);
            }
        }
        if self.next_presence.is_some_and(|d| d <= now) {
            self.refresh_presence().await;
        }
        let expired: Vec<(Arc<str>, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.expire_at
                    .is_some_and(|at| clock.instant_at(at) + cfg.expired_sub_close_delay <= now)
            })
            .map(|(ch, s)| (ch.clone(), s.server_side))
            .collect();
        for (channel, server_side) in expired {
            self.node.inner.observer.subscription_expired();
            if server_side {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "server-side subscription expired, disconnecting with 3006");
                return Some(Disconnect::SUBSCRIPTION_EXPIRED);
            }
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "subscription expired, unsubscribing with 2501");
            self.leave(&channel).await;
            self.emit_push(Push {
                channel: channel.to_string(),
                unsubscribe: Some(UnsubscribePush {
                    code: UnsubscribeCode::Expired.code(),
                    reason: UnsubscribeCode::Expired.reason().into(),
                }),
                ..Push::default()
            });
        }
        None
    }

    // ----- end -----

    async fn cleanup(&mut self) {
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for ch in channels {
            self.leave(&ch).await;
        }
        if self.state == State::Connected {
            self.node.inner.hub.remove_connection(&self.client);
        }
    }
}

/// How a refused connect is counted.
fn refusal_reason(e: &CoreError) -> &'static str {
    match e {
        CoreError::TokenExpired => "token_expired",
        CoreError::UnknownChannel => "unknown_channel",
        CoreError::Unavailable(_) => "unavailable",
        CoreError::Disconnect(d) if *d == revoked_disconnect() => "revoked",
        CoreError::Disconnect(d) if d.code == Disconnect::INVALID_TOKEN.code => "invalid_token",
        CoreError::Disconnect(d) if d.code == Disconnect::BAD_REQUEST.code => "bad_request",
        CoreError::Disconnect(d) if d.code == Disconnect::PERMISSION_DENIED.code => {
            "permission_denied"
        }
        _ => "other",
    }
}

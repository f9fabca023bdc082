//! The client: a cheap handle ([`Client`]) in front of one task (the actor) that owns the
//! connection, the subscriptions and every timer. Handles talk to the actor through a channel;
//! the actor reports through the event stream and a watch of the current state.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rotor_protocol::{
    decode_replies, encode_frame, ClientInfo, Command, ConnectRequest, ConnectResult, ErrorCode,
    HistoryRequest, HistoryResult, PresenceRequest, PresenceStatsRequest, PresenceStatsResult,
    Publication, PublishRequest, Push, Raw, RefreshRequest, Reply, RpcRequest, SendRequest,
    StreamPosition, SubRefreshRequest, SubscribeRequest, SubscribeResult, UnsubscribeRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff;
use crate::config::{ClientConfig, SubscriptionOptions, Transport};
use crate::error::Error;
use crate::event::{ClientState, Event, SubscriptionState};
use crate::token::TokenError;
use crate::transport::{self, Conn, Incoming};

/// What handles see of the actor's state.
#[derive(Debug, Clone)]
struct Status {
    state: ClientState,
    client: Option<String>,
    /// Why the client stopped, when it stopped on its own.
    error: Option<Error>,
    subs: HashMap<String, (SubscriptionState, Option<Error>)>,
}

enum Op {
    Connect,
    Disconnect,
    Subscribe(String, SubscriptionOptions),
    Unsubscribe(String),
    Request(Box<Command>, oneshot::Sender<Result<Reply, Error>>),
    Send(Raw),
}

/// A connection to a rotor server. Cheap to clone; the connection lives as long as any clone.
/// Needs a Tokio runtime.
#[derive(Clone)]
pub struct Client {
    ops: mpsc::UnboundedSender<Op>,
    status: Arc<watch::Sender<Status>>,
    timeout: Duration,
}

/// The client's events, in order. Keep polling it: events are buffered until read. Dropping it
/// is allowed (events are then discarded).
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl futures_util::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Events {
    /// The next event, or `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Hands every event to `callback` on a task of its own, for applications that prefer
    /// callbacks to a stream.
    pub fn on_event(mut self, mut callback: impl FnMut(Event) + Send + 'static) {
        tokio::spawn(async move {
            while let Some(e) = self.rx.recv().await {
                callback(e);
            }
        });
    }
}

/// A subscription's handle: a channel name and a way to the client.
#[derive(Clone)]
pub struct Subscription {
    channel: String,
    client: Client,
}

impl Client {
    /// Creates a client (not yet connecting: call [`Client::connect`]) and its event stream.
    pub fn new(config: ClientConfig) -> (Client, Events) {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let status = Arc::new(watch::Sender::new(Status {
            state: ClientState::Disconnected,
            client: None,
            error: None,
            subs: HashMap::new(),
        }));
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .expect("an HTTP client with default TLS settings");
        let timeout = config.timeout;
        let actor = Actor {
            token: config.token.clone().filter(|t| !t.is_empty()),
            cfg: config,
            http,
            ops: ops_rx,
            events: ev_tx,
            status: status.clone(),
            internal_tx,
            internal_rx,
            want: false,
            gen: 0,
            phase: Phase::Idle,
            conn: None,
            live: None,
            token_stale: false,
            auth_failures: 0,
            attempt: 0,
            next_id: 0,
            pending: HashMap::new(),
            subs: BTreeMap::new(),
            server_subs: BTreeMap::new(),
            queued: Vec::new(),
        };
        tokio::spawn(actor.run());
        (
            Client {
                ops: ops_tx,
                status,
                timeout,
            },
            Events { rx: ev_rx },
        )
    }

    /// Starts connecting (and keeps the connection up, reconnecting as needed).
    pub fn connect(&self) {
        self.status.send_modify(|s| {
            if s.state == ClientState::Disconnected {
                s.state = ClientState::Connecting;
                s.error = None;
            }
        });
        let _ = self.ops.send(Op::Connect);
    }

    /// Closes the connection and stops reconnecting. Subscriptions are kept and come back on
    /// the next [`Client::connect`].
    pub fn disconnect(&self) {
        let _ = self.ops.send(Op::Disconnect);
    }

    pub fn state(&self) -> ClientState {
        self.status.borrow().state
    }

    /// The client id the server gave the current connection.
    pub fn client_id(&self) -> Option<String> {
        self.status.borrow().client.clone()
    }

    /// Waits until connected. Fails when the client stopped: with the reason it stopped for
    /// ([`Error::AuthExpired`], [`Error::Disconnected`], …) or [`Error::Closed`].
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.status.subscribe();
        let s = rx
            .wait_for(|s| s.state != ClientState::Connecting)
            .await
            .map_err(|_| Error::Closed)?;
        match s.state {
            ClientState::Connected => Ok(()),
            _ => Err(s.error.clone().unwrap_or(Error::Closed)),
        }
    }

    /// Subscribes to `channel` (now if connected, else as soon as the client connects) and
    /// keeps the subscription across reconnects.
    pub fn subscribe(&self, channel: &str, options: SubscriptionOptions) -> Subscription {
        self.status.send_modify(|s| {
            s.subs
                .insert(channel.to_string(), (SubscriptionState::Subscribing, None));
        });
        let _ = self.ops.send(Op::Subscribe(channel.to_string(), options));
        self.subscription(channel)
    }

    /// A handle to an existing subscription (or server-side channel).
    pub fn subscription(&self, channel: &str) -> Subscription {
        Subscription {
            channel: channel.to_string(),
            client: self.clone(),
        }
    }

    /// Sends a command and waits for its reply; requests made while connecting wait for the
    /// connection (within the same timeout).
    async fn request(&self, cmd: Command) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Request(Box::new(cmd), tx))
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(r)) => r,
        }
    }

    pub async fn publish(&self, channel: &str, data: impl serde::Serialize) -> Result<(), Error> {
        let cmd = Command {
            publish: Some(PublishRequest {
                channel: channel.to_string(),
                data: Raw::from_value(&data),
            }),
            ..Command::default()
        };
        self.request(cmd).await.map(|_| ())
    }

    /// Calls an RPC method; returns the result's data (`null` when there is none).
    pub async fn rpc(&self, method: &str, data: impl serde::Serialize) -> Result<Raw, Error> {
        let cmd = Command {
            rpc: Some(RpcRequest {
                method: method.to_string(),
                data: Some(Raw::from_value(&data)),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply
            .rpc
            .and_then(|r| r.data)
            .unwrap_or_else(|| Raw::from_json("null").expect("valid JSON")))
    }

    /// Sends an asynchronous message to the server (no reply). Fails when not connected.
    pub fn send(&self, data: impl serde::Serialize) -> Result<(), Error> {
        if self.state() != ClientState::Connected {
            return Err(Error::Transport("not connected".into()));
        }
        self.ops
            .send(Op::Send(Raw::from_value(&data)))
            .map_err(|_| Error::Closed)
    }

    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, Error> {
        let cmd = Command {
            presence: Some(PresenceRequest {
                channel: channel.to_string(),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.presence.map(|p| p.presence).unwrap_or_default())
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, Error> {
        let cmd = Command {
            presence_stats: Some(PresenceStatsRequest {
                channel: channel.to_string(),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.presence_stats.unwrap_or_default())
    }

    /// A channel's history: up to `limit` publications (`-1`: as many as the server allows;
    /// 0: only the stream position), after `since` when given, newest first when `reverse`.
    pub async fn history(
        &self,
        channel: &str,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryResult, Error> {
        let cmd = Command {
            history: Some(HistoryRequest {
                channel: channel.to_string(),
                limit,
                since,
                reverse,
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.history.unwrap_or_default())
    }
}

impl Subscription {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn state(&self) -> SubscriptionState {
        self.client
            .status
            .borrow()
            .subs
            .get(&self.channel)
            .map(|s| s.0)
            .unwrap_or(SubscriptionState::Unsubscribed)
    }

    /// Waits until subscribed. Fails when the subscription ended (with its error) or the client
    /// stopped.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.client.status.subscribe();
        let s = rx
            .wait_for(|s| {
                let sub = s.subs.get(&self.channel).map(|x| x.0);
                sub != Some(SubscriptionState::Subscribing)
                    || (s.state == ClientState::Disconnected && s.error.is_some())
            })
            .await
            .map_err(|_| Error::Closed)?;
        match s.subs.get(&self.channel) {
            Some((SubscriptionState::Subscribed, _)) => Ok(()),
            Some((_, Some(e))) => Err(e.clone()),
            _ => Err(s
                .error
                .clone()
                .unwrap_or_else(|| Error::NotSubscribed(self.channel.clone()))),
        }
    }

    /// Unsubscribes and forgets the subscription.
    pub fn unsubscribe(&self) {
        let _ = self.client.ops.send(Op::Unsubscribe(self.channel.clone()));
    }

    pub async fn publish(&self, data: impl serde::Serialize) -> Result<(), Error> {
        self.client.publish(&self.channel, data).await
    }

    pub async fn presence(&self) -> Result<BTreeMap<String, ClientInfo>, Error> {
        self.client.presence(&self.channel).await
    }

    pub async fn presence_stats(&self) -> Result<PresenceStatsResult, Error> {
        self.client.presence_stats(&self.channel).await
    }

    pub async fn history(
        &self,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryResult, Error> {
        self.client
            .history(&self.channel, limit, since, reverse)
            .await
    }
}

// ------------------------------------------------------------------------------------------
// The actor.

enum Phase {
    /// Not connected, not trying.
    Idle,
    /// Backing off until the next attempt.
    Waiting(Instant),
    /// Asking the token provider for a connection token.
    Fetching,
    /// Opening the transport.
    Opening,
    /// The connect command is out; waiting for its reply.
    Handshake,
    Connected,
}

/// Results of work the actor hands to other tasks, tagged with the connection generation they
/// belong to so that late results of an old connection are ignored.
enum Internal {
    ConnectToken(u64, Result<String, TokenError>),
    Opened(u64, Result<Conn, Error>),
    RefreshToken(u64, Result<String, TokenError>),
    SubToken {
        gen: u64,
        channel: String,
        refresh: bool,
        result: Result<String, TokenError>,
    },
}

enum Kind {
    Connect,
    Refresh,
    Subscribe(String),
    SubRefresh(String),
    Unsubscribe,
    User(oneshot::Sender<Result<Reply, Error>>),
}

struct Pending {
    kind: Kind,
    deadline: Instant,
}

/// What only exists while connected.
struct Live {
    ping: Option<Duration>,
    pong: bool,
    last_rx: Instant,
    refresh_at: Option<Instant>,
}

struct Sub {
    opts: SubscriptionOptions,
    state: SubscriptionState,
    token: Option<String>,
    /// Where to recover from: (offset, epoch) once the server said the channel is recoverable.
    position: Option<(u64, String)>,
    refresh_at: Option<Instant>,
    retry_at: Option<Instant>,
    auth_failures: u32,
    /// A token request or a subscribe command is in flight.
    busy: bool,
}

struct Actor {
    cfg: ClientConfig,
    http: reqwest::Client,
    ops: mpsc::UnboundedReceiver<Op>,
    events: mpsc::UnboundedSender<Event>,
    status: Arc<watch::Sender<Status>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// The application wants a connection.
    want: bool,
    gen: u64,
    phase: Phase,
    conn: Option<Conn>,
    live: Option<Live>,
    token: Option<String>,
    /// The token is known to be expired: get a new one before connecting.
    token_stale: bool,
    /// "Token expired" answers in a row (connect, refresh), reset by a success.
    auth_failures: u32,
    /// Reconnect attempts since the last successful connect.
    attempt: u32,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    subs: BTreeMap<String, Sub>,
    /// Server-side subscriptions and their positions.
    server_subs: BTreeMap<String, (u64, String)>,
    /// Requests made while not connected.
    queued: Vec<(Command, oneshot::Sender<Result<Reply, Error>>)>,
}

async fn next_incoming(conn: &mut Option<Conn>) -> Incoming {
    match conn {
        Some(c) => c.incoming.recv().await.unwrap_or(Incoming::Closed {
            code: 0,
            reason: "connection closed".into(),
        }),
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                op = self.ops.recv() => match op {
                    Some(op) => self.on_op(op),
                    None => {
                        // Every handle is gone.
                        self.conn = None;
                        return;
                    }
                },
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg),
                incoming = next_incoming(&mut self.conn) => self.on_incoming(incoming),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => self.on_timer(),
            }
        }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn set_state(&self, state: ClientState, error: Option<Error>) {
        self.status.send_modify(|s| {
            s.state = state;
            s.error = error;
            if state != ClientState::Connected {
                s.client = None;
            }
        });
    }

    fn set_sub_state(&self, channel: &str, state: Option<SubscriptionState>, error: Option<Error>) {
        self.status.send_modify(|s| match state {
            Some(st) => {
                s.subs.insert(channel.to_string(), (st, error));
            }
            None => {
                s.subs.remove(channel);
            }
        });
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Sends a command with an id and remembers what its reply is for.
    fn command(&mut self, mut cmd: Command, kind: Kind) {
        if self.conn.is_none() {
            if let Kind::User(tx) = kind {
                let _ = tx.send(Err(Error::ConnectionLost));
            }
            return;
        }
        cmd.id = self.id();
        if let Some(conn) = &self.conn {
            conn.send(encode_frame(&[&cmd]));
        }
        self.pending.insert(
            cmd.id,
            Pending {
                kind,
                deadline: Instant::now() + self.cfg.timeout,
            },
        );
    }

    // ----- operations from handles -----

    fn on_op(&mut self, op: Op) {
        match op {
            Op::Connect => {
                if !self.want {
                    self.want = true;
                    self.attempt = 0;
                    self.auth_failures = 0;
                    self.emit(Event::Connecting {
                        code: 0,
                        reason: "connect called".into(),
                    });
                    self.start_connect();
                }
            }
            Op::Disconnect => {
                if self.want || self.conn.is_some() {
                    self.stop(0, "disconnect called".into(), None);
                }
            }
            Op::Subscribe(channel, opts) => {
                if self.subs.contains_key(&channel) {
                    return;
                }
                self.subs.insert(
                    channel.clone(),
                    Sub {
                        token: opts.token.clone().filter(|t| !t.is_empty()),
                        position: opts.since.as_ref().map(|p| (p.offset, p.epoch.clone())),
                        opts,
                        state: SubscriptionState::Subscribing,
                        refresh_at: None,
                        retry_at: None,
                        auth_failures: 0,
                        busy: false,
                    },
                );
                self.emit(Event::Subscribing {
                    channel: channel.clone(),
                    code: 0,
                    reason: "subscribe called".into(),
                });
                self.send_subscribe(&channel);
            }
            Op::Unsubscribe(channel) => {
                if self.subs.remove(&channel).is_some() {
                    self.set_sub_state(&channel, None, None);
                    if matches!(self.phase, Phase::Connected) {
                        let cmd = Command {
                            unsubscribe: Some(UnsubscribeRequest {
                                channel: channel.clone(),
                            }),
                            ..Command::default()
                        };
                        self.command(cmd, Kind::Unsubscribe);
                    }
                    self.emit(Event::Unsubscribed {
                        channel,
                        code: 0,
                        reason: "unsubscribe called".into(),
                    });
                }
            }
            Op::Request(cmd, tx) => {
                if matches!(self.phase, Phase::Connected) {
                    self.command(*cmd, Kind::User(tx));
                } else if self.want {
                    self.queued.retain(|(_, t)| !t.is_closed());
                    self.queued.push((*cmd, tx));
                } else {
                    let err = self.status.borrow().error.clone().unwrap_or(Error::Closed);
                    let _ = tx.send(Err(err));
                }
            }
            Op::Send(data) => {
                if let (Phase::Connected, Some(conn)) = (&self.phase, &self.conn) {
                    let cmd = Command {
                        send: Some(SendRequest { data }),
                        ..Command::default()
                    };
                    conn.send(encode_frame(&[&cmd]));
                }
            }
        }
    }

    // ----- connecting -----

    fn start_connect(&mut self) {
        self.gen += 1;
        self.conn = None;
        self.live = None;
        self.fail_pending(Error::ConnectionLost);
        self.set_state(ClientState::Connecting, None);
        let need_token = self.token.is_none() || self.token_stale;
        match (&self.cfg.token_provider, need_token) {
            (Some(provider), true) => {
                self.phase = Phase::Fetching;
                let provider = provider.clone();
                let tx = self.internal_tx.clone();
                let gen = self.gen;
                tokio::spawn(async move {
                    let r = provider.connection_token().await;
                    let _ = tx.send(Internal::ConnectToken(gen, r));
                });
            }
            _ => self.open(),
        }
    }

    fn open(&mut self) {
        self.phase = Phase::Opening;
        let id = self.id();
        let cmd = Command {
            id,
            connect: Some(ConnectRequest {
                token: self.token.clone().unwrap_or_default(),
                data: self.cfg.data.clone(),
                subs: self
                    .server_subs
                    .iter()
                    .map(|(ch, (offset, epoch))| {
                        (
                            ch.clone(),
                            SubscribeRequest {
                                recover: true,
                                offset: *offset,
                                epoch: epoch.clone(),
                                ..SubscribeRequest::default()
                            },
                        )
                    })
                    .collect(),
                name: self.cfg.name.clone(),
                version: self.cfg.version.clone(),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        };
        self.pending.insert(
            id,
            Pending {
                kind: Kind::Connect,
                deadline: Instant::now() + self.cfg.timeout * 2,
            },
        );
        let frame = encode_frame(&[&cmd]);
        let cfg = self.cfg.clone();
        let http = self.http.clone();
        let tx = self.internal_tx.clone();
        let gen = self.gen;
        tokio::spawn(async move {
            let r = match tokio::time::timeout(cfg.timeout, transport::open(&cfg, &http, frame))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Transport(format!(
                    "{} did not open within {:?}",
                    cfg.transport.name(),
                    cfg.timeout
                ))),
            };
            let _ = tx.send(Internal::Opened(gen, r));
        });
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::ConnectToken(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Fetching) {
                    return;
                }
                match r {
                    Ok(t) => {
                        self.token = Some(t).filter(|t| !t.is_empty());
                        self.token_stale = false;
                        self.open();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token provider failed; retrying with backoff");
                        self.emit(Event::Error(Error::Token(e.0)));
                        self.schedule_reconnect(1, "token provider failed".into());
                    }
                }
            }
            Internal::Opened(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Opening) {
                    return;
                }
                match r {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.phase = Phase::Handshake;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "transport failed to open");
                        self.pending.clear();
                        self.emit(Event::Error(e.clone()));
                        self.schedule_reconnect(1, e.to_string());
                    }
                }
            }
            Internal::RefreshToken(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Connected) {
                    return;
                }
                match r {
                    Ok(t) => {
                        self.token = Some(t.clone());
                        let cmd = Command {
                            refresh: Some(RefreshRequest { token: t }),
                            ..Command::default()
                        };
                        self.command(cmd, Kind::Refresh);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token provider failed at refresh; retrying");
                        self.emit(Event::Error(Error::Token(e.0)));
                        if let Some(l) = &mut self.live {
                            l.refresh_at = Some(
                                Instant::now()
                                    + self.cfg.min_reconnect_delay.max(Duration::from_secs(1)),
                            );
                        }
                    }
                }
            }
            Internal::SubToken {
                gen,
                channel,
                refresh,
                result,
            } => {
                if gen != self.gen || !matches!(self.phase, Phase::Connected) {
                    return;
                }
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                sub.busy = false;
                match result {
                    Ok(t) => {
                        sub.token = Some(t.clone());
                        if refresh {
                            let cmd = Command {
                                sub_refresh: Some(SubRefreshRequest {
                                    channel: channel.clone(),
                                    token: t,
                                }),
                                ..Command::default()
                            };
                            self.command(cmd, Kind::SubRefresh(channel));
                        } else {
                            self.send_subscribe(&channel);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "subscription token provider failed; retrying");
                        let retry = Instant::now()
                            + self.cfg.min_reconnect_delay.max(Duration::from_secs(1));
                        if refresh {
                            sub.refresh_at = Some(retry);
                        } else {
                            sub.retry_at = Some(retry);
                        }
                        self.emit(Event::SubscriptionError {
                            channel,
                            error: Error::Token(e.0),
                        });
                    }
                }
            }
        }
    }

    fn on_connect_reply(&mut self, reply: Reply) {
        if let Some(e) = reply.error {
            self.conn = None;
            self.pending.clear();
            if e.code == ErrorCode::TokenExpired.code() {
                self.auth_failed(e.code, e.message);
            } else if e.temporary || e.code < 100 {
                self.emit(Event::Error(Error::from_reply(e.clone())));
                self.schedule_reconnect(e.code, e.message);
            } else {
                let (code, reason) = (e.code, e.message.clone());
                self.stop(code, reason, Some(Error::from_reply(e)));
            }
            return;
        }
        let Some(result) = reply.connect else {
            self.schedule_reconnect(2, "connect reply without a result".into());
            return;
        };
        self.connected(result);
    }

    fn connected(&mut self, r: ConnectResult) {
        let now = Instant::now();
        self.phase = Phase::Connected;
        self.attempt = 0;
        self.auth_failures = 0;
        if let Some(conn) = &self.conn {
            if self.cfg.transport != Transport::WebSocket {
                conn.set_session(r.session.clone(), r.node.clone());
            }
        }
        self.live = Some(Live {
            ping: (r.ping > 0).then(|| Duration::from_secs(u64::from(r.ping))),
            pong: r.pong,
            last_rx: now,
            refresh_at: (r.expires && r.ttl > 0).then(|| now + self.cfg.refresh_after(r.ttl)),
        });
        self.status.send_modify(|s| {
            s.state = ClientState::Connected;
            s.error = None;
            s.client = Some(r.client.clone());
        });
        tracing::debug!(client = %r.client, transport = self.cfg.transport.name(), "connected");
        self.emit(Event::Connected {
            client: r.client.clone(),
            data: r.data.clone(),
        });
        for (channel, sub) in r.subs {
            self.server_subscribed(&channel, sub);
        }
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for (cmd, tx) in std::mem::take(&mut self.queued) {
            if !tx.is_closed() {
                self.command(cmd, Kind::User(tx));
            }
        }
    }

    fn server_subscribed(&mut self, channel: &str, r: SubscribeResult) {
        let recoverable = r.recoverable;
        let position = self.announce_subscribed(channel, r);
        if recoverable {
            self.server_subs.insert(channel.to_string(), position);
        }
    }

    /// Emits `Subscribed` and then the publications the reply carried (recovered ones), in
    /// order; returns the stream position after them.
    fn announce_subscribed(&mut self, channel: &str, r: SubscribeResult) -> (u64, String) {
        let offset = r
            .publications
            .iter()
            .map(|p| p.offset)
            .fold(r.offset, u64::max);
        let position = (offset, r.epoch.clone());
        self.emit(Event::Subscribed {
            channel: channel.to_string(),
            recoverable: r.recoverable,
            recovered: r.recovered,
            was_recovering: r.was_recovering,
            epoch: r.epoch,
            offset: r.offset,
            data: r.data,
        });
        for p in r.publications {
            self.emit(Event::Publication {
                channel: channel.to_string(),
                publication: p,
            });
        }
        position
    }

    /// "Token expired" for the connection (at connect, at refresh, or a 3005 close): one more
    /// failure in a row. Within the budget, get a fresh token and try again at once; beyond it,
    /// surface [`Error::AuthExpired`] and stop.
    fn auth_failed(&mut self, code: u32, reason: String) {
        self.auth_failures += 1;
        if self.cfg.token_provider.is_none() || self.auth_failures > self.cfg.max_reauth_attempts {
            tracing::warn!(
                failures = self.auth_failures,
                "credentials expired again after re-authentication; stopping"
            );
            self.stop(
                ErrorCode::TokenExpired.code(),
                "authentication expired".into(),
                Some(Error::AuthExpired { channel: None }),
            );
            return;
        }
        tracing::info!(reason = %reason, "credentials expired; re-authenticating once");
        self.token_stale = true;
        self.conn = None;
        self.live = None;
        self.mark_subs_subscribing(code, &reason);
        self.emit(Event::Connecting { code, reason });
        self.start_connect();
    }

    fn schedule_reconnect(&mut self, code: u32, reason: String) {
        self.conn = None;
        self.live = None;
        self.fail_pending(Error::ConnectionLost);
        if !self.want {
            self.phase = Phase::Idle;
            return;
        }
        self.mark_subs_subscribing(code, &reason);
        let delay = backoff::delay(
            self.attempt,
            self.cfg.min_reconnect_delay,
            self.cfg.max_reconnect_delay,
        );
        self.attempt = self.attempt.saturating_add(1);
        tracing::debug!(code, reason = %reason, ?delay, "reconnecting");
        self.emit(Event::Connecting { code, reason });
        self.set_state(ClientState::Connecting, None);
        self.phase = Phase::Waiting(Instant::now() + delay);
    }

    /// Stops for good (until `connect` is called again).
    fn stop(&mut self, code: u32, reason: String, error: Option<Error>) {
        self.want = false;
        self.gen += 1;
        self.conn = None;
        self.live = None;
        self.phase = Phase::Idle;
        let failure = error.clone().unwrap_or(Error::Closed);
        self.fail_pending(failure.clone());
        for (_, tx) in self.queued.drain(..) {
            let _ = tx.send(Err(failure.clone()));
        }
        self.mark_subs_subscribing(code, &reason);
        if let Some(e) = &error {
            self.emit(Event::Error(e.clone()));
        }
        self.emit(Event::Disconnected { code, reason });
        self.set_state(ClientState::Disconnected, error);
    }

    fn fail_pending(&mut self, error: Error) {
        for (_, p) in self.pending.drain() {
            if let Kind::User(tx) = p.kind {
                let _ = tx.send(Err(error.clone()));
            }
        }
        for sub in self.subs.values_mut() {
            sub.busy = false;
        }
    }

    fn mark_subs_subscribing(&mut self, code: u32, reason: &str) {
        let mut changed = Vec::new();
        for (ch, sub) in self.subs.iter_mut() {
            sub.refresh_at = None;
            sub.retry_at = None;
            if sub.state == SubscriptionState::Subscribed {
                sub.state = SubscriptionState::Subscribing;
                changed.push(ch.clone());
            }
        }
        for ch in changed {
            self.set_sub_state(&ch, Some(SubscriptionState::Subscribing), None);
            self.emit(Event::Subscribing {
                channel: ch,
                code,
                reason: reason.to_string(),
            });
        }
    }

    // ----- subscriptions -----

    fn send_subscribe(&mut self, channel: &str) {
        if !matches!(self.phase, Phase::Connected) {
            return;
        }
        let gen = self.gen;
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.busy {
            return;
        }
        sub.retry_at = None;
        if sub.opts.token_required && sub.token.is_none() {
            let Some(provider) = self.cfg.token_provider.clone() else {
                let e = Error::Token("token_required without a token provider".into());
                sub.state = SubscriptionState::Unsubscribed;
                self.set_sub_state(
                    channel,
                    Some(SubscriptionState::Unsubscribed),
                    Some(e.clone()),
                );
                self.emit(Event::SubscriptionError {
                    channel: channel.to_string(),
                    error: e,
                });
                return;
            };
            sub.busy = true;
            spawn_sub_token(provider, self.internal_tx.clone(), gen, channel, false);
            return;
        }
        sub.busy = true;
        let (recover, offset, epoch) = match &sub.position {
            Some((o, e)) => (true, *o, e.clone()),
            None => (false, 0, String::new()),
        };
        let cmd = Command {
            subscribe: Some(SubscribeRequest {
                channel: channel.to_string(),
                token: sub.token.clone().unwrap_or_default(),
                recover,
                epoch,
                offset,
                data: sub.opts.data.clone(),
                positioned: sub.opts.positioned,
                recoverable: sub.opts.recoverable,
                join_leave: sub.opts.join_leave,
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        };
        self.command(cmd, Kind::Subscribe(channel.to_string()));
    }

    fn on_subscribe_reply(&mut self, channel: String, reply: Reply) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return; // unsubscribed meanwhile
        };
        sub.busy = false;
        if let Some(e) = reply.error {
            let code = e.code;
            if code == ErrorCode::TokenExpired.code() && sub.opts.token_required {
                sub.auth_failures += 1;
                sub.token = None;
                if sub.auth_failures > self.cfg.max_reauth_attempts {
                    self.sub_failed(
                        &channel,
                        Error::AuthExpired {
                            channel: Some(channel.clone()),
                        },
                    );
                } else {
                    self.send_subscribe(&channel);
                }
            } else if code == ErrorCode::UnrecoverablePosition.code() {
                sub.position = None;
                self.emit(Event::SubscriptionError {
                    channel: channel.clone(),
                    error: Error::from_reply(e),
                });
                self.send_subscribe(&channel);
            } else if e.temporary || code < 100 {
                let attempt = sub.auth_failures; // a small, bounded backoff
                sub.retry_at = Some(
                    Instant::now()
                        + backoff::delay(
                            attempt.max(1),
                            self.cfg.min_reconnect_delay,
                            self.cfg.max_reconnect_delay,
                        ),
                );
                self.emit(Event::SubscriptionError {
                    channel,
                    error: Error::from_reply(e),
                });
            } else {
                self.sub_failed(&channel, Error::from_reply(e));
            }
            return;
        }
        let Some(r) = reply.subscribe else {
            self.schedule_reconnect(2, "subscribe reply without a result".into());
            return;
        };
        sub.state = SubscriptionState::Subscribed;
        sub.auth_failures = 0;
        sub.refresh_at =
            (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        let recoverable = r.recoverable;
        self.set_sub_state(&channel, Some(SubscriptionState::Subscribed), None);
        let position = self.announce_subscribed(&channel, r);
        if let (true, Some(sub)) = (recoverable, self.subs.get_mut(&channel)) {
            sub.position = Some(position);
        }
    }

    fn sub_failed(&mut self, channel: &str, error: Error) {
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.state = SubscriptionState::Unsubscribed;
            sub.refresh_at = None;
            sub.retry_at = None;
        }
        let code = error.code().unwrap_or(0);
        self.set_sub_state(
            channel,
            Some(SubscriptionState::Unsubscribed),
            Some(error.clone()),
        );
        self.emit(Event::SubscriptionError {
            channel: channel.to_string(),
            error: error.clone(),
        });
        self.emit(Event::Unsubscribed {
            channel: channel.to_string(),
            code,
            reason: error.to_string(),
        });
    }

    fn on_sub_refresh_reply(&mut self, channel: String, reply: Reply) {
        let gen = self.gen;
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if let Some(e) = reply.error {
            if e.code == ErrorCode::TokenExpired.code() {
                sub.auth_failures += 1;
                if sub.auth_failures > self.cfg.max_reauth_attempts {
                    self.sub_failed(
                        &channel,
                        Error::AuthExpired {
                            channel: Some(channel.clone()),
                        },
                    );
                } else if let Some(p) = self.cfg.token_provider.clone() {
                    spawn_sub_token(p, self.internal_tx.clone(), gen, &channel, true);
                }
            } else if e.temporary {
                sub.refresh_at = Some(Instant::now() + Duration::from_secs(1));
            } else {
                self.emit(Event::SubscriptionError {
                    channel,
                    error: Error::from_reply(e),
                });
            }
            return;
        }
        let r = reply.sub_refresh.unwrap_or_default();
        sub.auth_failures = 0;
        sub.refresh_at =
            (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        self.emit(Event::SubscriptionRefreshed {
            channel,
            ttl: r.expires.then_some(r.ttl),
        });
    }

    // ----- incoming -----

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Closed { code, reason } => {
                self.conn = None;
                self.closed(code, reason);
            }
            Incoming::Frame(frame) => {
                if let Some(l) = &mut self.live {
                    l.last_rx = Instant::now();
                }
                let replies = match decode_replies(&frame) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable frame from the server; reconnecting");
                        self.emit(Event::Error(Error::Protocol(e.to_string())));
                        self.schedule_reconnect(2, "bad protocol".into());
                        return;
                    }
                };
                for reply in replies {
                    if self.conn.is_none() {
                        return; // an earlier message in the frame ended the connection
                    }
                    self.on_reply(reply);
                }
            }
        }
    }

    /// The connection ended with a close code (or without one: `code` 0).
    fn closed(&mut self, code: u32, reason: String) {
        if matches!(self.phase, Phase::Idle) {
            return;
        }
        if code == 3005 {
            self.auth_failed(code, reason);
        } else if !rotor_protocol::Disconnect::reconnects(code) {
            tracing::info!(code, reason = %reason, "terminal disconnect; not reconnecting");
            self.stop(
                code,
                reason.clone(),
                Some(Error::Disconnected { code, reason }),
            );
        } else {
            let code = if code == 0 { 1 } else { code };
            self.schedule_reconnect(code, reason);
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        if reply.id > 0 {
            let Some(p) = self.pending.remove(&reply.id) else {
                return; // a reply after its timeout
            };
            match p.kind {
                Kind::Connect => self.on_connect_reply(reply),
                Kind::Refresh => self.on_refresh_reply(reply),
                Kind::Subscribe(ch) => self.on_subscribe_reply(ch, reply),
                Kind::SubRefresh(ch) => self.on_sub_refresh_reply(ch, reply),
                Kind::Unsubscribe => {}
                Kind::User(tx) => {
                    let r = match reply.error {
                        Some(e) => Err(Error::from_reply(e)),
                        None => Ok(reply),
                    };
                    let _ = tx.send(r);
                }
            }
        } else if let Some(push) = reply.push {
            self.on_push(push);
        } else {
            // A server ping.
            if let (Some(l), Some(conn)) = (&self.live, &self.conn) {
                if l.pong {
                    conn.send("{}".into());
                }
            }
        }
    }

    fn on_refresh_reply(&mut self, reply: Reply) {
        if let Some(e) = reply.error {
            if e.code == ErrorCode::TokenExpired.code() {
                self.auth_failures += 1;
                if self.auth_failures > self.cfg.max_reauth_attempts {
                    self.stop(
                        e.code,
                        "authentication expired".into(),
                        Some(Error::AuthExpired { channel: None }),
                    );
                } else {
                    self.spawn_refresh_token();
                }
            } else if e.temporary {
                if let Some(l) = &mut self.live {
                    l.refresh_at = Some(Instant::now() + Duration::from_secs(1));
                }
            } else {
                self.emit(Event::Error(Error::from_reply(e.clone())));
                self.token_stale = true;
                self.schedule_reconnect(e.code, e.message);
            }
            return;
        }
        let r = reply.refresh.unwrap_or_default();
        self.auth_failures = 0;
        self.token_stale = false;
        if let Some(l) = &mut self.live {
            l.refresh_at =
                (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        }
        self.emit(Event::Refreshed {
            ttl: r.expires.then_some(r.ttl),
        });
    }

    fn spawn_refresh_token(&mut self) {
        let Some(provider) = self.cfg.token_provider.clone() else {
            return;
        };
        let tx = self.internal_tx.clone();
        let gen = self.gen;
        tokio::spawn(async move {
            let r = provider.connection_token().await;
            let _ = tx.send(Internal::RefreshToken(gen, r));
        });
    }

    fn on_push(&mut self, push: Push) {
        let channel = push.channel;
        if let Some(p) = push.publication {
            self.on_publication(channel, p);
        } else if let Some(j) = push.join {
            self.emit(Event::Join {
                channel,
                info: j.info,
            });
        } else if let Some(l) = push.leave {
            self.emit(Event::Leave {
                channel,
                info: l.info,
            });
        } else if let Some(m) = push.message {
            self.emit(Event::Message { data: m.data });
        } else if let Some(d) = push.disconnect {
            self.conn = None;
            self.closed(d.code, d.reason);
        } else if let Some(u) = push.unsubscribe {
            self.server_subs.remove(&channel);
            let Some(sub) = self.subs.get_mut(&channel) else {
                self.emit(Event::Unsubscribed {
                    channel,
                    code: u.code,
                    reason: u.reason,
                });
                return;
            };
            sub.refresh_at = None;
            sub.busy = false;
            if u.code >= 2500 {
                if u.code == 2501 && sub.opts.token_required {
                    sub.token = None;
                }
                sub.state = SubscriptionState::Subscribing;
                self.set_sub_state(&channel, Some(SubscriptionState::Subscribing), None);
                self.emit(Event::Subscribing {
                    channel: channel.clone(),
                    code: u.code,
                    reason: u.reason,
                });
                self.send_subscribe(&channel);
            } else {
                sub.state = SubscriptionState::Unsubscribed;
                self.set_sub_state(&channel, Some(SubscriptionState::Unsubscribed), None);
                self.emit(Event::Unsubscribed {
                    channel,
                    code: u.code,
                    reason: u.reason,
                });
            }
        } else if let Some(s) = push.subscribe {
            self.server_subscribed(
                &channel,
                SubscribeResult {
                    recoverable: s.recoverable,
                    epoch: s.epoch,
                    offset: s.offset,
                    positioned: s.positioned,
                    data: s.data,
                    ..SubscribeResult::default()
                },
            );
        } else if let Some(r) = push.refresh {
            if let Some(l) = &mut self.live {
                l.refresh_at = (r.expires && r.ttl > 0)
                    .then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
            }
        }
    }

    fn on_publication(&mut self, channel: String, p: Publication) {
        if p.offset > 0 {
            if let Some(sub) = self.subs.get_mut(&channel) {
                if let Some(pos) = &mut sub.position {
                    pos.0 = pos.0.max(p.offset);
                }
            } else if let Some(pos) = self.server_subs.get_mut(&channel) {
                pos.0 = pos.0.max(p.offset);
            }
        }
        self.emit(Event::Publication {
            channel,
            publication: p,
        });
    }

    // ----- timers -----

    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        };
        if let Phase::Waiting(t) = self.phase {
            consider(Some(t));
        }
        if let Some(l) = &self.live {
            consider(l.refresh_at);
            consider(
                l.ping
                    .map(|p| l.last_rx + p + self.cfg.max_server_ping_delay),
            );
        }
        for p in self.pending.values() {
            consider(Some(p.deadline));
        }
        if matches!(self.phase, Phase::Connected) {
            for s in self.subs.values() {
                consider(s.refresh_at);
                consider(s.retry_at);
            }
        }
        d
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let Phase::Waiting(t) = self.phase {
            if t <= now {
                self.start_connect();
                return;
            }
        }
        // Replies that did not come.
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match p.kind {
                Kind::User(tx) => {
                    let _ = tx.send(Err(Error::Timeout(self.cfg.timeout)));
                }
                Kind::Unsubscribe => {}
                Kind::Connect => {
                    self.schedule_reconnect(1, "no reply to connect".into());
                    return;
                }
                Kind::Refresh | Kind::Subscribe(_) | Kind::SubRefresh(_) => {
                    self.schedule_reconnect(3, "command timed out".into());
                    return;
                }
            }
        }
        let Some(l) = &mut self.live else {
            return;
        };
        if let Some(p) = l.ping {
            if l.last_rx + p + self.cfg.max_server_ping_delay <= now {
                self.schedule_reconnect(2, "no ping".into());
                return;
            }
        }
        if l.refresh_at.is_some_and(|t| t <= now) {
            l.refresh_at = None;
            self.spawn_refresh_token();
        }
        let gen = self.gen;
        let due: Vec<(String, bool)> = self
            .subs
            .iter_mut()
            .filter_map(|(ch, s)| {
                if s.refresh_at.is_some_and(|t| t <= now) {
                    s.refresh_at = None;
                    Some((ch.clone(), true))
                } else if s.retry_at.is_some_and(|t| t <= now) {
                    s.retry_at = None;
                    Some((ch.clone(), false))
                } else {
                    None
                }
            })
            .collect();
        for (channel, refresh) in due {
            if !refresh {
                self.send_subscribe(&channel);
                continue;
            }
            let Some(sub) = self.subs.get(&channel) else {
                continue;
            };
            if let (true, Some(p)) = (sub.opts.token_required, self.cfg.token_provider.clone()) {
                spawn_sub_token(p, self.internal_tx.clone(), gen, &channel, true);
            }
        }
    }
}

fn spawn_sub_token(
    provider: Arc<dyn crate::TokenProvider>,
    tx: mpsc::UnboundedSender<Internal>,
    gen: u64,
    channel: &str,
    refresh: bool,
) {
    let channel = channel.to_string();
    tokio::spawn(async move {
        let result = provider.subscription_token(&channel).await;
        let _ = tx.send(Internal::SubToken {
            gen,
            channel,
            refresh,
            result,
        });
    });
}

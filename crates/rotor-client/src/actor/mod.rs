//! The actor: the one task per client that owns the connection, the subscriptions, the
//! pending replies and every timer (reconnect backoff, refresh, sub refresh, ping watchdog,
//! reply timeouts). Handles send it [`Op`]s; it reports through the event stream and the
//! [`Status`] watch. Token provider calls and transport opens run on tasks of their own and
//! come back as [`Internal`] messages tagged with the connection generation.
//!
//! - this file: the actor's state, its loop, operations, frames in, pushes, timers;
//! - `connection`: connecting, the connect reply, refresh, reconnect and stopping;
//! - `subscriptions`: subscribe, resubscribe, sub refresh and their replies.

mod connection;
mod subscriptions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rotor_protocol::{
    decode_replies, encode_frame, Command, ConnectRequest, ConnectResult, Disconnect, ErrorCode,
    Publication, Push, Raw, RefreshRequest, Reply, SendRequest, SubRefreshRequest,
    SubscribeRequest, SubscribeResult, UnsubscribeCode, UnsubscribeRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff;
use crate::config::{ClientConfig, SubscriptionOptions, Transport};
use crate::error::Error;
use crate::event::{ClientState, Event, SubscriptionState};
use crate::transport::{self, Conn, Incoming};

/// What handles see of the actor's state.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) state: ClientState,
    pub(crate) client: Option<String>,
    /// Why the client stopped, when it stopped on its own.
    pub(crate) error: Option<Error>,
    pub(crate) subs: HashMap<String, (SubscriptionState, Option<Error>)>,
}

/// What a handle asks of the actor.
pub(crate) enum Op {
    Connect,
    Disconnect,
    Subscribe(String, SubscriptionOptions),
    Unsubscribe(String),
    Request(Box<Command>, oneshot::Sender<Result<Reply, Error>>),
    Send(Raw),
}

/// Starts the actor of a new client.
pub(crate) fn start(
    config: ClientConfig,
    ops_rx: mpsc::UnboundedReceiver<Op>,
    ev_tx: mpsc::UnboundedSender<Event>,
    status: Arc<watch::Sender<Status>>,
) {
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let http = reqwest::Client::builder()
        .connect_timeout(config.timeout)
        .build()
        .expect("an HTTP client with default TLS settings");
    let actor = Actor {
        token: config.token.clone().filter(|t| !t.is_empty()),
        cfg: config,
        http,
        ops: ops_rx,
        events: ev_tx,
        status,
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
}

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
    ConnectToken(u64, crate::token::Fetched),
    Opened(u64, Result<Conn, Error>),
    RefreshToken(u64, crate::token::Fetched),
    SubToken {
        gen: u64,
        channel: String,
        refresh: bool,
        result: crate::token::Fetched,
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
            if UnsubscribeCode::resubscribe(u.code) {
                if u.code == UnsubscribeCode::Expired.code() && sub.opts.token_required {
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
                spawn_sub_token(
                    p,
                    self.cfg.min_token_validity,
                    self.internal_tx.clone(),
                    gen,
                    &channel,
                    true,
                );
            }
        }
    }
}

fn spawn_sub_token(
    provider: Arc<dyn crate::TokenProvider>,
    min_validity: Option<Duration>,
    tx: mpsc::UnboundedSender<Internal>,
    gen: u64,
    channel: &str,
    refresh: bool,
) {
    let channel = channel.to_string();
    tokio::spawn(async move {
        let result =
            crate::token::fetch_fresh(|| provider.subscription_token(&channel), min_validity).await;
        let _ = tx.send(Internal::SubToken {
            gen,
            channel,
            refresh,
            result,
        });
    });
}

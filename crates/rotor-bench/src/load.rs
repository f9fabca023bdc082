//! The load side: subscriber connections for every target, the per-worker tally of what
//! arrived (latency histogram, losses and duplicates by sequence number), and the open-loop
//! publisher.
//!
//! Sequence numbers are global per run: publication `i` goes to channel `i % channels`, so
//! a subscriber of channel `c` expects `c, c + channels, c + 2·channels, …`. Several
//! publisher connections race each other, so numbers may arrive slightly out of order: each
//! subscriber keeps a window of the next 1024 numbers it has seen early. A number seen twice is
//! a duplicate; a number that never arrives (it fell out of the window, or was still missing
//! at the end of the step) is a loss.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::payload;

/// What is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// rotor, subscribers on WebSocket.
    RotorWs,
    /// rotor, subscribers on WebSocket speaking Protobuf (`centrifuge-protobuf`).
    RotorWsProtobuf,
    /// rotor, subscribers on WebSocket, every other one speaking Protobuf: a channel with
    /// both protocols (each push encoded twice, once per protocol).
    RotorWsMixed,
    /// rotor, subscribers on HTTP streaming (bidirectional emulation).
    RotorHttpStream,
    /// rotor, subscribers on SSE (bidirectional emulation).
    RotorSse,
    /// The minimal tokio + tokio-tungstenite broadcast server: the practical ceiling.
    Ceiling,
    /// nats-server over its WebSocket listener.
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::RotorWs => "rotor-ws",
            Target::RotorWsProtobuf => "rotor-ws-protobuf",
            Target::RotorWsMixed => "rotor-ws-mixed",
            Target::RotorHttpStream => "rotor-http-stream",
            Target::RotorSse => "rotor-sse",
            Target::Ceiling => "ceiling",
            Target::Nats => "nats",
        }
    }

    pub fn is_rotor(self) -> bool {
        matches!(
            self,
            Target::RotorWs
                | Target::RotorWsProtobuf
                | Target::RotorWsMixed
                | Target::RotorHttpStream
                | Target::RotorSse
        )
    }
}

pub fn channel_name(c: u64) -> String {
    format!("bench{c}")
}

/// Latencies are recorded in microseconds, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// What one worker saw during one step.
pub struct Tally {
    pub hist: Histogram<u64>,
    pub received: u64,
    pub lost: u64,
    pub dup: u64,
    pub last_ns: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            received: 0,
            lost: 0,
            dup: 0,
            last_ns: 0,
        }
    }
}

/// Which sequence numbers one subscriber has seen: everything below `next`, plus the
/// numbers seen early among the following `WINDOW` (bit `k` of the bitmap is
/// `next + (k + 1) · stride`).
#[derive(Clone)]
pub struct Window {
    pub next: u64,
    bits: [u64; WINDOW_WORDS],
}

const WINDOW_WORDS: usize = 16;
/// Publications may overtake each other by this many positions (1024) without counting
/// as lost: publisher connections race, and at 8,000 publications/s a 64-wide window was
/// seen to overflow.
pub const WINDOW: u64 = 64 * WINDOW_WORDS as u64;

impl Window {
    fn new(next: u64) -> Window {
        Window {
            next,
            bits: [0; WINDOW_WORDS],
        }
    }

    fn get(&self, k: u64) -> bool {
        self.bits[(k / 64) as usize] >> (k % 64) & 1 == 1
    }

    fn set(&mut self, k: u64) {
        self.bits[(k / 64) as usize] |= 1 << (k % 64);
    }

    fn seen_early(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Drops the first position of the bitmap (it becomes `next`); says if it was seen.
    fn shift_one(&mut self) -> bool {
        let first = self.bits[0] & 1 == 1;
        for i in 0..WINDOW_WORDS {
            let carry = if i + 1 < WINDOW_WORDS {
                self.bits[i + 1] & 1
            } else {
                0
            };
            self.bits[i] = (self.bits[i] >> 1) | (carry << 63);
        }
        first
    }

    /// `next` arrived (or is given up): move past it and past everything seen early right
    /// after it.
    fn advance(&mut self, stride: u64) {
        loop {
            self.next += stride;
            if !self.shift_one() {
                break;
            }
        }
    }
}

/// What arrived: per subscriber a window of sequence numbers, and the step's tally.
pub struct State {
    pub tally: Tally,
    pub windows: Vec<Window>,
}

/// State shared by every subscriber of a worker process.
pub struct Shared {
    /// Channels publications are spread over (1 for fan-out).
    pub stride: u64,
    /// Global index of each subscriber (its channel is `index % stride`).
    pub first_index: u64,
    /// The first sequence number of the current step; older numbers are stragglers.
    pub step_first: AtomicU64,
    pub state: Mutex<State>,
    pub connected: AtomicUsize,
    pub disconnected: AtomicUsize,
}

impl Shared {
    pub fn new(first_index: u64, count: usize, stride: u64) -> Shared {
        let s = Shared {
            stride,
            first_index,
            step_first: AtomicU64::new(0),
            state: Mutex::new(State {
                tally: Tally::new(),
                windows: vec![Window::new(0); count],
            }),
            connected: AtomicUsize::new(0),
            disconnected: AtomicUsize::new(0),
        };
        s.reset(0);
        s
    }

    fn class(&self, i: usize) -> u64 {
        (self.first_index + i as u64) % self.stride
    }

    /// The smallest sequence number at or after `from` meant for subscriber `i`.
    fn first_for(&self, i: usize, from: u64) -> u64 {
        let c = self.class(i);
        let r = from % self.stride;
        from - r + c + if c < r { self.stride } else { 0 }
    }

    /// Starts a step whose publications are numbered from `first`.
    pub fn reset(&self, first: u64) {
        self.step_first.store(first, Ordering::SeqCst);
        let mut st = self.state.lock().expect("state");
        for i in 0..st.windows.len() {
            st.windows[i] = Window::new(self.first_for(i, first));
        }
        st.tally = Tally::new();
    }

    /// Publications numbered below `end` this step's subscribers should have received.
    pub fn expected(&self, end: u64) -> u64 {
        let first = self.step_first.load(Ordering::SeqCst);
        let n = self.state.lock().expect("state").windows.len();
        (0..n)
            .map(|i| {
                let f = self.first_for(i, first);
                if f >= end {
                    0
                } else {
                    (end - f).div_ceil(self.stride)
                }
            })
            .sum()
    }

    pub fn received(&self) -> u64 {
        self.state.lock().expect("state").tally.received
    }

    /// Records a payload that subscriber `i` received at `now` (ns since the epoch, read
    /// once per frame: everything in one frame arrived together).
    pub fn on_payload(&self, i: usize, seq: u64, intended_ns: u64, now: u64) {
        if seq < self.step_first.load(Ordering::Relaxed) {
            return; // a straggler from the previous step
        }
        let stride = self.stride;
        let mut st = self.state.lock().expect("state");
        let State { tally: t, windows } = &mut *st;
        let w = &mut windows[i];
        if seq < w.next {
            t.dup += 1;
            return;
        }
        // Too far ahead: give up on the oldest positions until `seq` fits the window.
        while (seq - w.next) / stride > WINDOW {
            t.lost += 1;
            w.advance(stride);
        }
        let d = (seq - w.next) / stride;
        if d == 0 {
            w.advance(stride);
        } else if w.get(d - 1) {
            t.dup += 1;
            return;
        } else {
            w.set(d - 1);
        }
        t.received += 1;
        t.last_ns = t.last_ns.max(now);
        let us = now.saturating_sub(intended_ns) / 1000;
        let _ = t.hist.record(us.max(1));
    }

    /// Losses at the tail: publications below `end` that never arrived.
    pub fn tail_lost(&self, end: u64) -> u64 {
        let st = self.state.lock().expect("state");
        st.windows
            .iter()
            .map(|w| {
                if w.next >= end {
                    return 0;
                }
                let missing = (end - w.next).div_ceil(self.stride);
                missing - w.seen_early().min(missing)
            })
            .sum()
    }
}

/// Where and how subscribers connect.
pub struct SubSpec {
    pub target: Target,
    /// Nodes; subscriber `g` uses `addrs[g % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    /// A connection token (rotor targets).
    pub token: String,
    /// Each subscriber its own user, with a token signed by this (rotor targets): HTTP
    /// streaming and SSE ones subscribed server-side by the token's `channels` claim.
    pub personal: Option<crate::tokens::Signer>,
    pub http: reqwest::Client,
    /// A tags filter (JSON) every subscriber sends with its subscribe (rotor-ws only).
    pub tags_filter: Option<String>,
}

pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client with a small read buffer, so 10k+ load connections stay cheap.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    ws_connect_with(addr, path, None).await
}

/// [`ws_connect`] asking for a subprotocol.
pub async fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).ok();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(p) = subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            p.parse().map_err(|_| "bad subprotocol".to_string())?,
        );
    }
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    Ok(ws)
}

/// Opens subscriber `i` (global index `first_index + i`), reports on `ready` once it is
/// subscribed, then tallies what it receives until the connection ends.
pub async fn subscriber(
    spec: Arc<SubSpec>,
    shared: Arc<Shared>,
    i: usize,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
) {
    let ready = Ready {
        tx: ready,
        sent: std::sync::atomic::AtomicBool::new(false),
    };
    let g = shared.first_index + i as u64;
    let addr = spec.addrs[(g % spec.addrs.len() as u64) as usize];
    let channel = channel_name(g % shared.stride);
    let emulated = matches!(spec.target, Target::RotorHttpStream | Target::RotorSse);
    let token = match &spec.personal {
        Some(signer) if emulated => signer.token_subscribed(&format!("u{g}"), &channel),
        Some(signer) => signer.token(&format!("u{g}"), None),
        None => spec.token.clone(),
    };
    let sub = Sub {
        addr,
        token: &token,
        channel: &channel,
        server_side: emulated && spec.personal.is_some(),
        shared: &shared,
        i,
        ready: &ready,
        tags_filter: spec.tags_filter.as_deref(),
    };
    let result = match spec.target {
        Target::RotorWs => rotor_ws(&sub).await,
        Target::RotorWsProtobuf => rotor_ws_protobuf(&sub).await,
        Target::RotorWsMixed if g % 2 == 1 => rotor_ws_protobuf(&sub).await,
        Target::RotorWsMixed => rotor_ws(&sub).await,
        Target::RotorHttpStream | Target::RotorSse => rotor_emulated(&spec, &sub).await,
        Target::Ceiling => ceiling(addr, &channel, &shared, i, &ready).await,
        Target::Nats => nats(addr, &channel, &shared, i, &ready).await,
    };
    if let Err(e) = result {
        // Before `ready` this reports the failure; after it, the loss shows in the tally.
        if !ready.sent.swap(true, Ordering::SeqCst) {
            let _ = ready.tx.send(Err(e));
        }
    }
    shared.disconnected.fetch_add(1, Ordering::Relaxed);
}

/// One subscriber as its protocol's loop sees it.
#[derive(Clone, Copy)]
struct Sub<'a> {
    addr: SocketAddr,
    token: &'a str,
    channel: &'a str,
    /// The token subscribes the connection (no subscribe command to send).
    server_side: bool,
    shared: &'a Shared,
    i: usize,
    ready: &'a Ready,
    tags_filter: Option<&'a str>,
}

/// Tells the worker once whether a subscriber got subscribed.
struct Ready {
    tx: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    sent: std::sync::atomic::AtomicBool,
}

fn mark_ready(shared: &Shared, ready: &Ready) {
    if !ready.sent.swap(true, Ordering::SeqCst) {
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let _ = ready.tx.send(Ok(()));
    }
}

/// One line of rotor's JSON protocol: a reply to our command, a ping, or a push.
enum RotorLine<'a> {
    Reply { id: u64, line: &'a [u8] },
    Ping,
    Push,
    Other,
}

fn rotor_line<'a>(line: &'a [u8], shared: &Shared, i: usize, now: u64) -> RotorLine<'a> {
    if line == b"{}" {
        return RotorLine::Ping;
    }
    if line.starts_with(b"{\"id\":") {
        let id = line[6..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
        return RotorLine::Reply { id, line };
    }
    if line.starts_with(b"{\"push\"") {
        if let Some((seq, t)) = payload::scan(line) {
            shared.on_payload(i, seq, t, now);
        }
        return RotorLine::Push;
    }
    RotorLine::Other
}

fn reply_error(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("error").map(|e| e.to_string())
}

async fn rotor_ws(sub: &Sub<'_>) -> Result<(), String> {
    let Sub {
        addr,
        token,
        channel,
        shared,
        i,
        ready,
        ..
    } = *sub;
    let mut ws = ws_connect(addr, "/connection/websocket").await?;
    let tf = match sub.tags_filter {
        Some(f) => format!(",\"tf\":{f}"),
        None => String::new(),
    };
    let hello = format!(
        "{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"{tf}}}}}"
    );
    ws.send(Message::text(hello))
        .await
        .map_err(|e| e.to_string())?;
    let mut replies = 0;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let Message::Text(text) = msg else {
            if let Message::Close(f) = msg {
                return Err(format!("closed: {f:?}"));
            }
            continue;
        };
        let mut pong = false;
        let now = payload::now_ns();
        for line in payload::lines(text.as_bytes()) {
            match rotor_line(line, shared, i, now) {
                RotorLine::Reply { id, line } if id <= 2 => {
                    if let Some(e) = reply_error(line) {
                        return Err(format!("command {id}: {e}"));
                    }
                    replies += 1;
                    if replies == 2 {
                        mark_ready(shared, ready);
                    }
                }
                RotorLine::Ping => pong = true,
                _ => {}
            }
        }
        if pong {
            ws.send(Message::text("{}"))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Err("connection closed".into())
}

/// The messages of a Protobuf frame: each is a varint length, then that many bytes.
fn delimited(mut frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let mut len: usize = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = frame.split_first()?;
            frame = rest;
            len |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
        }
        let len = len.min(frame.len());
        let (m, rest) = frame.split_at(len);
        frame = rest;
        Some(m)
    })
}

/// A rotor subscriber speaking Protobuf: the same connect and subscribe as [`rotor_ws`], in
/// binary frames. A reply (field 1 set: it starts with 0x08) is decoded; a push (field 4:
/// 0x22) only scanned for the payload, whose JSON text Protobuf carries as bytes; an empty
/// message is a ping.
async fn rotor_ws_protobuf(sub: &Sub<'_>) -> Result<(), String> {
    let Sub {
        addr,
        token,
        channel,
        shared,
        i,
        ready,
        ..
    } = *sub;
    use rotor_protocol::{Command, ConnectRequest, Protocol, Reply, SubscribeRequest};
    let p = Protocol::Protobuf;
    let mut ws =
        ws_connect_with(addr, "/connection/websocket", Some("centrifuge-protobuf")).await?;
    let hello = [
        Command {
            id: 1,
            connect: Some(ConnectRequest {
                token: token.to_string(),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        },
        Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: channel.to_string(),
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        },
    ];
    let messages: Vec<Vec<u8>> = hello.iter().map(|c| p.encode_command(c)).collect();
    let mut frame = Vec::new();
    p.frame_into(&mut frame, &messages);
    ws.send(Message::binary(frame))
        .await
        .map_err(|e| e.to_string())?;
    let mut replies = 0;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let Message::Binary(bytes) = msg else {
            if let Message::Close(f) = msg {
                return Err(format!("closed: {f:?}"));
            }
            continue;
        };
        let mut pong = false;
        let now = payload::now_ns();
        for m in delimited(&bytes) {
            match m.first() {
                None => pong = true,
                Some(0x22) => {
                    if let Some((seq, t)) = payload::scan(m) {
                        shared.on_payload(i, seq, t, now);
                    }
                }
                Some(0x08) => {
                    let reply: Reply =
                        rotor_protocol::proto::decode(m).map_err(|e| e.to_string())?;
                    if reply.id <= 2 {
                        if let Some(e) = reply.error {
                            return Err(format!("command {}: {e:?}", reply.id));
                        }
                        replies += 1;
                        if replies == 2 {
                            mark_ready(shared, ready);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        if pong {
            ws.send(Message::binary(vec![0u8]))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Err("connection closed".into())
}

async fn rotor_emulated(spec: &SubSpec, sub: &Sub<'_>) -> Result<(), String> {
    let Sub {
        addr,
        token,
        channel,
        server_side,
        shared,
        i,
        ready,
        ..
    } = *sub;
    let connect = format!("{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}");
    let sse = spec.target == Target::RotorSse;
    let mut resp = if sse {
        spec.http
            .get(format!(
                "http://{addr}/connection/sse?cf_connect={}",
                urlencode(&connect)
            ))
            .header("Accept", "text/event-stream")
            .send()
            .await
    } else {
        spec.http
            .post(format!("http://{addr}/connection/http_stream"))
            .header("Content-Type", "application/json")
            .body(connect)
            .send()
            .await
    }
    .map_err(|e| format!("open stream: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("stream answered {}", resp.status()));
    }
    let emulation = format!("http://{addr}/emulation");
    let post = |session: &str, node: &str, data: &str| {
        let body = serde_json::json!({"session": session, "node": node, "data": data});
        spec.http
            .post(&emulation)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };
    let mut route: Option<(String, String)> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Err("stream ended".into()),
            Err(e) => return Err(format!("stream: {e}")),
        };
        buf.extend_from_slice(&chunk);
        let now = payload::now_ns();
        let mut start = 0;
        let mut pings = 0;
        let mut to_subscribe = false;
        while let Some(pos) = memchr::memchr(b'\n', &buf[start..]) {
            let mut line = &buf[start..start + pos];
            start += pos + 1;
            if sse {
                match line.strip_prefix(b"data: ") {
                    Some(l) => line = l,
                    None => continue,
                }
            }
            match rotor_line(line, shared, i, now) {
                RotorLine::Reply { id: 1, line } => {
                    if let Some(e) = reply_error(line) {
                        return Err(format!("connect: {e}"));
                    }
                    let v: serde_json::Value =
                        serde_json::from_slice(line).map_err(|e| e.to_string())?;
                    let field = |k: &str| v["connect"][k].as_str().unwrap_or("").to_string();
                    route = Some((field("session"), field("node")));
                    if server_side {
                        // The connect reply carries the token's subscription.
                        mark_ready(shared, ready);
                    } else {
                        to_subscribe = true;
                    }
                }
                RotorLine::Reply { id: 2, line } => {
                    if let Some(e) = reply_error(line) {
                        return Err(format!("subscribe: {e}"));
                    }
                    mark_ready(shared, ready);
                }
                RotorLine::Ping => pings += 1,
                _ => {}
            }
        }
        buf.drain(..start);
        if let Some((session, node)) = &route {
            if to_subscribe {
                let sub = format!("{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}");
                post(session, node, &sub)
                    .await
                    .map_err(|e| format!("emulation: {e}"))?;
            }
            for _ in 0..pings {
                post(session, node, "{}")
                    .await
                    .map_err(|e| format!("emulation: {e}"))?;
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn ceiling(
    addr: SocketAddr,
    channel: &str,
    shared: &Shared,
    i: usize,
    ready: &Ready,
) -> Result<(), String> {
    let mut ws = ws_connect(addr, &format!("/sub/{channel}")).await?;
    // The ceiling confirms a subscription with one "ok" frame.
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str() == "ok" => mark_ready(shared, ready),
        other => return Err(format!("ceiling: unexpected {other:?}")),
    }
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            if let Some((seq, ts)) = payload::scan(t.as_bytes()) {
                shared.on_payload(i, seq, ts, payload::now_ns());
            }
        }
    }
    Err("connection closed".into())
}

/// Splits NATS protocol operations out of a byte stream (`MSG` with its payload, `PING`, …).
#[derive(Default)]
pub struct NatsParser {
    buf: Vec<u8>,
}

pub enum NatsOp {
    Msg(Vec<u8>),
    Ping,
    Pong,
    Err(String),
    Other,
}

impl NatsParser {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<NatsOp>) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &self.buf[start..start + pos];
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                let len: usize = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|r| r.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let body = start + pos + 2;
                if self.buf.len() < body + len + 2 {
                    break; // wait for the rest of the payload
                }
                out.push(NatsOp::Msg(self.buf[body..body + len].to_vec()));
                start = body + len + 2;
                continue;
            }
            out.push(match line {
                b"PING" => NatsOp::Ping,
                b"PONG" => NatsOp::Pong,
                l if l.starts_with(b"-ERR") => NatsOp::Err(String::from_utf8_lossy(l).into()),
                _ => NatsOp::Other,
            });
            start += pos + 2;
        }
        self.buf.drain(..start);
    }
}

async fn nats(
    addr: SocketAddr,
    channel: &str,
    shared: &Shared,
    i: usize,
    ready: &Ready,
) -> Result<(), String> {
    let mut ws = ws_connect(addr, "/").await?;
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}}\r\nSUB {channel} 1\r\nPING\r\n"
    );
    ws.send(Message::binary(hello.into_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    let mut parser = NatsParser::default();
    let mut ops = Vec::new();
    let mut subscribed = false;
    while let Some(msg) = ws.next().await {
        let bytes = match msg.map_err(|e| e.to_string())? {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes().to_vec().into(),
            _ => continue,
        };
        parser.push(&bytes, &mut ops);
        let mut pong = false;
        let now = payload::now_ns();
        for op in ops.drain(..) {
            match op {
                NatsOp::Msg(p) => {
                    if let Some((seq, ts)) = payload::scan(&p) {
                        shared.on_payload(i, seq, ts, now);
                    }
                }
                NatsOp::Ping => pong = true,
                NatsOp::Pong if !subscribed => {
                    subscribed = true;
                    mark_ready(shared, ready);
                }
                NatsOp::Err(e) => return Err(e),
                _ => {}
            }
        }
        if pong {
            ws.send(Message::binary(b"PONG\r\n".to_vec()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Err("connection closed".into())
}

/// Publishes over one WebSocket connection in the target's own protocol.
pub struct Publisher {
    target: Target,
    ws: Option<futures_util::stream::SplitSink<Ws, Message>>,
    /// Publishing through rotor's server API instead (publications with tags).
    api: Option<ApiConn>,
    next_id: u64,
    pub errors: Arc<AtomicU64>,
    /// rotor sent a ping (`{}`) that the next flush answers, or the server would close
    /// the publisher with 3012 in runs longer than ping + pong timeout (33 s).
    pinged: Arc<std::sync::atomic::AtomicBool>,
}

impl Publisher {
    pub async fn connect(target: Target, addr: SocketAddr, token: &str) -> Publisher {
        let path = match target {
            Target::Ceiling => "/pub",
            Target::Nats => "/",
            _ => "/connection/websocket",
        };
        let mut ws = ws_connect(addr, path).await.expect("publisher connects");
        let errors = Arc::new(AtomicU64::new(0));
        if target.is_rotor() {
            ws.send(Message::text(format!(
                "{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}"
            )))
            .await
            .expect("send connect");
            match ws.next().await {
                Some(Ok(Message::Text(t))) if !t.contains("\"error\"") => {}
                other => panic!("publisher connect: {other:?}"),
            }
        } else if target == Target::Nats {
            ws.send(Message::binary(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n".to_vec(),
            ))
            .await
            .expect("send connect");
        }
        let (sink, mut stream) = ws.split();
        // Replies (rotor) and pings (NATS) come back on the same socket; count errors.
        let errs = errors.clone();
        let pinged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ping_seen = pinged.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    let n = t.split('\n').filter(|l| l.contains("\"error\"")).count();
                    errs.fetch_add(n as u64, Ordering::Relaxed);
                    if t.split('\n').any(|l| l == "{}") {
                        ping_seen.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        Publisher {
            target,
            ws: Some(sink),
            api: None,
            next_id: 2,
            errors,
            pinged,
        }
    }

    /// A publisher through rotor's HTTP server API (`key`), each publication with these
    /// `tags` (a JSON object), on one keep-alive connection, requests pipelined between
    /// flushes.
    pub async fn connect_api(addr: SocketAddr, key: &str, tags: &str) -> Publisher {
        let stream = TcpStream::connect(addr)
            .await
            .expect("api publisher connects");
        stream.set_nodelay(true).ok();
        Publisher {
            target: Target::RotorWs,
            ws: None,
            api: Some(ApiConn {
                stream: tokio::io::BufReader::new(stream),
                out: Vec::new(),
                pending: 0,
                key: key.to_string(),
                tags: tags.to_string(),
            }),
            next_id: 0,
            errors: Arc::new(AtomicU64::new(0)),
            pinged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Queues one publication (sent on the next `flush`).
    pub async fn feed(&mut self, channel: &str, data: &str) {
        if let Some(api) = &mut self.api {
            api.feed(channel, data);
            return;
        }
        let msg = match self.target {
            Target::Ceiling => Message::text(format!("{channel}\n{data}")),
            Target::Nats => {
                Message::binary(format!("PUB {channel} {}\r\n{data}\r\n", data.len()).into_bytes())
            }
            _ => {
                self.next_id += 1;
                Message::text(format!(
                    "{{\"id\":{},\"publish\":{{\"channel\":\"{channel}\",\"data\":{data}}}}}",
                    self.next_id
                ))
            }
        };
        let ws = self.ws.as_mut().expect("a WebSocket publisher");
        ws.feed(msg).await.expect("publish");
    }

    pub async fn flush(&mut self) {
        if let Some(api) = &mut self.api {
            let failed = api.flush().await;
            self.errors.fetch_add(failed, Ordering::Relaxed);
            return;
        }
        let ws = self.ws.as_mut().expect("a WebSocket publisher");
        if self.pinged.swap(false, Ordering::Relaxed) {
            ws.feed(Message::text("{}")).await.expect("pong");
        }
        ws.flush().await.expect("flush");
    }
}

/// An HTTP/1.1 keep-alive connection to rotor's server API.
struct ApiConn {
    stream: tokio::io::BufReader<TcpStream>,
    /// Requests queued since the last flush.
    out: Vec<u8>,
    pending: usize,
    key: String,
    tags: String,
}

impl ApiConn {
    fn feed(&mut self, channel: &str, data: &str) {
        let body = format!(
            "{{\"channel\":\"{channel}\",\"data\":{data},\"tags\":{}}}",
            self.tags
        );
        self.out.extend_from_slice(
            format!(
                "POST /api/publish HTTP/1.1\r\nhost: rotor\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                self.key,
                body.len()
            )
            .as_bytes(),
        );
        self.pending += 1;
    }

    /// Sends what was queued and reads every answer; returns how many failed.
    async fn flush(&mut self) -> u64 {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream
            .get_mut()
            .write_all(&self.out)
            .await
            .expect("api publish");
        self.out.clear();
        let mut failed = 0;
        for _ in 0..std::mem::take(&mut self.pending) {
            let (mut status, mut length, mut line) = (0u16, 0usize, String::new());
            loop {
                line.clear();
                let n = self.stream.read_line(&mut line).await.expect("api answer");
                assert!(n > 0, "the server closed the API connection");
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some(code) = l.strip_prefix("HTTP/1.1 ") {
                    status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                } else if let Some((name, value)) = l.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            self.stream
                .read_exact(&mut body)
                .await
                .expect("api answer body");
            if status != 200 || body.windows(7).any(|w| w == b"\"error\"") {
                failed += 1;
            }
        }
        failed
    }
}

/// Tags filters subscribers of a filtered fan-out use, with tags every publication
/// carries that pass them (so deliveries are the same as without a filter): `simple`, one
/// comparison; `complex`, an `and` of a set, a number and a negation.
pub fn tags_filter(kind: &str) -> (&'static str, &'static str) {
    const TAGS: &str = r#"{"ticker":"BTC","price":"50123.5","region":"eu","venue":"x"}"#;
    match kind {
        "simple" => (r#"{"key":"ticker","cmp":"eq","val":"BTC"}"#, TAGS),
        _ => (
            r#"{"op":"and","nodes":[{"key":"ticker","cmp":"in","vals":["ETH","BTC","SOL"]},{"key":"price","cmp":"gt","val":"50000"},{"op":"not","nodes":[{"key":"region","cmp":"eq","val":"us"}]}]}"#,
            TAGS,
        ),
    }
}

/// Publishes `count` payloads numbered from `first` at `rate` per second, open loop: each
/// carries its intended send time (`start + k / rate`), so a publisher that falls behind
/// does not hide the delay from the latency figures. Returns when all were sent.
pub async fn publish_open_loop(
    publishers: &mut [Publisher],
    first: u64,
    count: u64,
    rate: f64,
    channels: u64,
    size: usize,
) {
    let start = payload::now_ns();
    let interval_ns = 1e9 / rate;
    let mut k = 0u64;
    while k < count {
        let now = payload::now_ns();
        let due = (((now.saturating_sub(start)) as f64 / interval_ns) as u64 + 1).min(count);
        if due <= k {
            let next_at = start + (k as f64 * interval_ns) as u64;
            tokio::time::sleep(Duration::from_nanos(next_at.saturating_sub(now))).await;
            continue;
        }
        let mut used = vec![false; publishers.len()];
        while k < due {
            let seq = first + k;
            let intended = start + (k as f64 * interval_ns) as u64;
            let p = (k % publishers.len() as u64) as usize;
            let data = payload::make(seq, intended, size);
            publishers[p]
                .feed(&channel_name(seq % channels), &data)
                .await;
            used[p] = true;
            k += 1;
        }
        for (p, u) in publishers.iter_mut().zip(used) {
            if u {
                p.flush().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (received, duplicates, lost so far)
    fn counts(s: &Shared) -> (u64, u64, u64) {
        let st = s.state.lock().unwrap();
        (st.tally.received, st.tally.dup, st.tally.lost)
    }

    #[test]
    fn gaps_are_losses_and_repeats_duplicates() {
        let s = Shared::new(0, 2, 1);
        s.reset(10);
        s.on_payload(0, 10, payload::now_ns(), payload::now_ns());
        s.on_payload(0, 11, payload::now_ns(), payload::now_ns());
        s.on_payload(0, 11, payload::now_ns(), payload::now_ns()); // duplicate
        s.on_payload(0, 14, payload::now_ns(), payload::now_ns()); // 12 and 13 may still come
        s.on_payload(1, 9, payload::now_ns(), payload::now_ns()); // previous step: ignored
        let t = counts(&s);
        assert_eq!(t, (3, 1, 0));
        assert_eq!(s.expected(16), 12);
        // At the end subscriber 0 misses 12, 13 and 15, subscriber 1 everything from 10.
        assert_eq!(s.tail_lost(16), 3 + 6);
    }

    #[test]
    fn reordering_within_the_window_is_neither_loss_nor_duplicate() {
        let s = Shared::new(0, 1, 1);
        s.reset(0);
        for seq in [1, 0, 3, 2, 5, 4, 4, 6, 2000] {
            s.on_payload(0, seq, payload::now_ns(), payload::now_ns());
        }
        // 4 twice is a duplicate; jumping to 2000 drops 7..=975 from the window: lost.
        assert_eq!(
            counts(&s),
            (8, 1, 969),
            "7..=975 fell out of the window unseen"
        );
        // Below 2001 still missing: 976..=1999 (1024 numbers); 2000 was seen.
        assert_eq!(s.tail_lost(2001), 1024);
    }

    #[test]
    fn many_channels_expect_their_own_numbers() {
        // Subscribers 3 and 4 of a run with 4 channels: channels 3 and 0.
        let s = Shared::new(3, 2, 4);
        s.reset(5);
        assert_eq!(s.state.lock().unwrap().windows[0].next, 7);
        assert_eq!(s.state.lock().unwrap().windows[1].next, 8);
        s.on_payload(0, 7, payload::now_ns(), payload::now_ns());
        s.on_payload(0, 15, payload::now_ns(), payload::now_ns()); // 11 not (yet) seen
        assert_eq!(s.received(), 2);
        // Below 17: channel 3 gets 7, 11, 15; channel 0 gets 8, 12, 16.
        assert_eq!(s.expected(17), 6);
        assert_eq!(s.tail_lost(17), 1 + 3);
    }

    #[test]
    fn nats_messages_split_across_frames() {
        let mut p = NatsParser::default();
        let mut ops = Vec::new();
        p.push(b"INFO {}\r\nMSG bench0 1 5\r\nhel", &mut ops);
        assert_eq!(ops.len(), 1);
        p.push(b"lo\r\nPING\r\n", &mut ops);
        assert!(matches!(&ops[1], NatsOp::Msg(m) if m == b"hello"));
        assert!(matches!(ops[2], NatsOp::Ping));
    }
}

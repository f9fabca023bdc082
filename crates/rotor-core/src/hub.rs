//! The hub: which local connections exist, which user they belong to, and who is subscribed
//! to each channel. Fan-out encodes a push once, keeps it in a chunk of the channel's recent
//! pushes shared by the subscribers, and queues runs of that chunk to every subscriber.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rotor_protocol::{Disconnect, Protocol, Push};
use tokio_util::sync::CancellationToken;

use crate::broker::Control;
use crate::filter::TagsFilter;

pub(crate) mod deltas;

/// Pushes of one channel in the order the hub broadcast them, shared by every local
/// subscriber that still has some of them to deliver. A subscriber's queue holds runs of a
/// chunk (`from..to`), so a session that is behind is sent the next push of the channel by
/// extending its last run: a store on its queue's own cache line, no new queue entry.
pub(crate) struct Chunk {
    /// The hub's name of the channel (the same allocation for every chunk of the channel).
    channel: Arc<str>,
    /// Filled in order by [`Hub::broadcast`] (under the channel's shard lock), each before
    /// any subscriber is told of it, in the protocols the subscribers speak (see
    /// [`Encoded`]). Boxed, so that the pushes go when the last run does, not when the hub's
    /// weak pointer does.
    slots: Box<[OnceLock<Encoded>; CHUNK]>,
}

/// Pushes per chunk.
const CHUNK: usize = 16;

/// Consecutive pushes `from..to` of one chunk, queued for one session.
struct Run {
    chunk: Arc<Chunk>,
    from: u16,
    to: u16,
}

/// An entry of a session's queue.
enum Queued {
    Pushes(Run),
    /// A push encoded for this subscriber alone (a publication for a delta subscriber: a
    /// delta against what it was sent before, or the full data in the form deltas need).
    Own(Box<OwnPush>),
    /// A node-wide command addressed to this connection.
    Control(Box<Control>),
}

struct OwnPush {
    channel: Arc<str>,
    bytes: Bytes,
    offset: u64,
}

/// What a session takes off its queue.
pub(crate) enum Taken<'a> {
    /// A pre-encoded push (`{"push":…}`) for a channel the session may be subscribed to;
    /// `channel` is the hub's name of it.
    Push {
        channel: &'a Arc<str>,
        bytes: &'a Bytes,
        /// The publication's offset (0: not a publication, or no history).
        offset: u64,
    },
    Control(Box<Control>),
}

/// A push encoded once for every subscriber of a channel, in each protocol some subscriber
/// speaks (the other is left empty, never encoded): JSON as a reply `{"push":…}` (see
/// [`wrap_push`]), Protobuf as a `Reply` message (unframed).
pub(crate) struct Encoded {
    json: Bytes,
    protobuf: Bytes,
    /// The publication's offset in its stream (0: not a publication, or no history).
    offset: u64,
}

impl Encoded {
    /// `push`, encoded for the protocols asked for.
    pub(crate) fn of(push: &Push, wanted: Wanted) -> Encoded {
        Encoded {
            json: if wanted.json {
                wrap_push(push)
            } else {
                Bytes::new()
            },
            protobuf: if wanted.protobuf {
                Bytes::from(rotor_protocol::proto::encode_push_reply(push))
            } else {
                Bytes::new()
            },
            offset: push.publication.as_ref().map_or(0, |p| p.offset),
        }
    }

    /// A JSON push only (`{"push":…}`), for a channel whose subscribers all speak JSON.
    #[cfg(test)]
    pub(crate) fn json(wrapped: Bytes) -> Encoded {
        Encoded {
            json: wrapped,
            protobuf: Bytes::new(),
            offset: 0,
        }
    }

    fn bytes(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Json => &self.json,
            Protocol::Protobuf => &self.protobuf,
        }
    }

    /// What the push counts against a queue's byte limit: for JSON the bare push, as before
    /// pushes were kept wrapped (the limit means the same), and never 0 (an empty queue is
    /// one that counts 0 bytes).
    fn cost(&self, protocol: Protocol) -> u32 {
        let len = match protocol {
            // Not encoded: nobody speaking it is handed this push.
            Protocol::Json if self.json.is_empty() => 0,
            Protocol::Json => bare_range(&self.json).len(),
            Protocol::Protobuf => self.protobuf.len(),
        };
        u32::try_from(len).unwrap_or(u32::MAX).max(1)
    }
}

/// The protocols a channel's subscribers speak.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub(crate) json: bool,
    pub(crate) protobuf: bool,
}

/// What a queued node command counts against the limit.
const CONTROL_COST: u32 = 64;

/// What `len` bytes count against a queue's limit (never 0: see [`Encoded::cost`]).
fn cost_of(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).max(1)
}

/// The prefix [`wrap_push`] puts before a bare push.
const PUSH_PREFIX: &[u8] = b"{\"push\":";

/// Encodes a push once for all subscribers, in the form bidirectional transports send
/// (`{"push":…}`); [`bare_push`] is the view unidirectional transports send.
pub(crate) fn wrap_push(push: &Push) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(PUSH_PREFIX);
    serde_json::to_writer(&mut out, push).expect("pushes always serialize");
    out.push(b'}');
    Bytes::from(out)
}

/// The bare push inside what [`wrap_push`] made, without copying.
pub(crate) fn bare_push(wrapped: &Bytes) -> Bytes {
    wrapped.slice(bare_range(wrapped))
}

/// Where the bare push lies inside what [`wrap_push`] made.
fn bare_range(wrapped: &Bytes) -> std::ops::Range<usize> {
    PUSH_PREFIX.len()..wrapped.len() - 1
}

/// The part of a connection the rest of the node can reach.
pub struct ClientHandle {
    pub(crate) id: Arc<str>,
    pub(crate) user: OnceLock<Arc<str>>,
    pub(crate) session: Option<Arc<str>>,
    /// Messages for the session. A plain queue under a mutex rather than a channel: fan-out
    /// sends one message to every subscriber, and with the queue, its byte count, its limit
    /// and the session's waker on one cache line a send touches this line and nothing else
    /// when the queue was empty (the common case: a session that keeps up drains its queue
    /// every turn). Only a session that falls behind gets a buffer for the rest.
    inbox: Line<Mutex<Inbox>>,
    pub(crate) cancel: CancellationToken,
    reason: OnceLock<Disconnect>,
    /// Set by `close`: read on every turn of the session loop, cheaper than asking the
    /// cancellation token (a mutex).
    closed: std::sync::atomic::AtomicBool,
    /// The connection token's `jti` and `iat` (for revocation) and `meta`.
    creds: Mutex<Creds>,
    /// When the connection expires (Unix seconds, 0 = never), for the expiry gauges.
    expire_at: std::sync::atomic::AtomicU64,
}

/// What a connection's token said that the node needs later, and where and when it was
/// made. Packed: a `ClientHandle` is exactly four cache lines, and every field here counts
/// against that (idle memory per connection, docs/benchmarks.md).
#[derive(Default)]
struct Creds {
    jti: Option<Arc<str>>,
    /// The token's `iat`; 0 for none (every check treats a token issued at 0 as one
    /// without `iat`: it proves nothing).
    iat: u64,
    /// The token's `meta` claim: kept for the backend (proxies, the connections API), never
    /// sent to clients. Boxed: most tokens have none.
    meta: Option<Box<rotor_protocol::Raw>>,
    /// When it connected (Unix seconds; 0 until connected).
    connected_at: u32,
    remote: Option<std::net::IpAddr>,
    /// Its transport (see [`transport_id`]); 0 until connected.
    transport: u8,
}

/// Where and when a connection was made.
#[derive(Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) transport: &'static str,
    pub(crate) remote: Option<std::net::IpAddr>,
    /// Unix seconds.
    pub(crate) connected_at: u64,
}

/// What the connections API shows of one connection (read under its lock, once).
pub(crate) struct Snapshot {
    pub(crate) jti: Option<Arc<str>>,
    pub(crate) iat: Option<u64>,
    pub(crate) meta: Option<rotor_protocol::Raw>,
    pub(crate) origin: Option<Origin>,
    pub(crate) expire_at: u64,
}

/// The transport names connections were made with, so that a connection keeps one byte
/// (its index + 1) instead of a name. Few names ever (one per transport).
static TRANSPORT_NAMES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

/// The byte that stands for `name` ([`OTHER_TRANSPORT`] once 254 names are known).
fn transport_id(name: &'static str) -> u8 {
    let find = |names: &[&'static str]| names.iter().position(|n| *n == name);
    let names = TRANSPORT_NAMES.read().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = find(&names) {
        return i as u8 + 1;
    }
    drop(names);
    let mut names = TRANSPORT_NAMES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = find(&names) {
        return i as u8 + 1;
    }
    if names.len() >= usize::from(OTHER_TRANSPORT - 1) {
        return OTHER_TRANSPORT;
    }
    names.push(name);
    names.len() as u8
}

const OTHER_TRANSPORT: u8 = 255;

fn transport_name(id: u8) -> &'static str {
    if id == OTHER_TRANSPORT {
        return "other";
    }
    let names = TRANSPORT_NAMES.read().unwrap_or_else(|e| e.into_inner());
    names
        .get(usize::from(id).wrapping_sub(1))
        .copied()
        .unwrap_or("")
}

/// Keeps its content on a cache line of its own: the queue's lock and state are what fan-out
/// touches first for every subscriber ([`Hub::broadcast`] reads the line ahead of locking).
#[repr(align(64))]
struct Line<T>(T);

#[derive(Default)]
struct Inbox {
    /// The newest queued run, kept inline: a push into an empty queue, or the next push of
    /// the channel a session is behind on, is stored on the line the lock is on.
    last: Option<Run>,
    /// Everything queued before `last`, oldest first; allocated only when a session falls
    /// behind on more than one run or gets a node command. Boxed on purpose: one pointer on
    /// the line instead of the deque's four words.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Queued>>>,
    /// The cost (bytes) of what is queued, against `limit`; 0 exactly when the queue is
    /// empty (every entry costs at least 1), so emptiness is known without reading `rest`.
    bytes: u32,
    limit: u32,
    /// The session's task, woken when a message arrives in an empty queue.
    waker: Option<Waker>,
    /// The session has ended: messages are dropped.
    ended: bool,
    /// The protocol the client speaks: which encoding of a push it is handed. Kept on the
    /// queue's line, which fan-out and the session touch anyway.
    protocol: Protocol,
}

impl Inbox {
    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn push_back(&mut self, q: Queued) {
        self.rest.get_or_insert_with(Default::default).push_back(q);
    }

    /// Queues push `idx` of `chunk`, extending the last run when it ends right before it.
    fn push_run(&mut self, chunk: &Arc<Chunk>, idx: u16) {
        if let Some(run) = &mut self.last {
            if run.to == idx && Arc::ptr_eq(&run.chunk, chunk) {
                run.to += 1;
                return;
            }
        }
        let run = Run {
            chunk: chunk.clone(),
            from: idx,
            to: idx + 1,
        };
        if let Some(prev) = self.last.replace(run) {
            self.push_back(Queued::Pushes(prev));
        }
    }

    /// Queues an entry after everything queued so far.
    fn push_entry(&mut self, entry: Queued) {
        if let Some(prev) = self.last.take() {
            self.push_back(Queued::Pushes(prev));
        }
        self.push_back(entry);
    }

    /// The oldest entry.
    fn pop(&mut self) -> Option<Queued> {
        self.rest
            .as_mut()
            .and_then(|r| r.pop_front())
            .or_else(|| self.last.take().map(Queued::Pushes))
    }

    /// Puts back the rest of a run [`pop`](Self::pop) returned, as the oldest entry again:
    /// inline when the queue is otherwise empty, else at the front of `rest`.
    fn unpop(&mut self, run: Run) {
        if self.last.is_none() && self.rest.as_ref().is_none_or(|r| r.is_empty()) {
            self.last = Some(run);
        } else {
            self.rest
                .get_or_insert_with(Default::default)
                .push_front(Queued::Pushes(run));
        }
    }
}

// The lock and everything under it on one cache line.
const _: () = assert!(size_of::<Mutex<Inbox>>() <= 64);

/// Messages the session takes off its queue in one turn at most.
const TAKE_AT_MOST: usize = 256;
/// A drained queue keeps a buffer at most this large (messages) for the next burst.
const KEEP_CAPACITY: usize = 64;

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClientHandle {
    pub(crate) fn new(
        id: Arc<str>,
        session: Option<Arc<str>>,
        protocol: Protocol,
        queue_limit: usize,
        cancel: CancellationToken,
    ) -> Arc<ClientHandle> {
        Arc::new(ClientHandle {
            id,
            user: OnceLock::new(),
            session,
            inbox: Line(Mutex::new(Inbox {
                limit: u32::try_from(queue_limit).unwrap_or(u32::MAX),
                protocol,
                ..Inbox::default()
            })),
            cancel,
            reason: OnceLock::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            creds: Mutex::new(Creds::default()),
            expire_at: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The client id (a UUID).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user id, once connected ("" for anonymous).
    pub fn user(&self) -> &str {
        self.user.get().map(|u| u.as_ref()).unwrap_or("")
    }

    /// The emulation session id, if the connection has one.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Queues a node command for the session.
    pub(crate) fn send_control(&self, control: Control) {
        self.enqueue(
            |_| CONTROL_COST,
            |inbox| inbox.push_entry(Queued::Control(Box::new(control))),
        );
    }

    /// Queues a push encoded for this client alone.
    fn send_own(&self, push: OwnPush) {
        let cost = cost_of(push.bytes.len());
        self.enqueue(
            |_| cost,
            |inbox| inbox.push_entry(Queued::Own(Box::new(push))),
        );
    }

    /// The protocol the client speaks.
    pub(crate) fn protocol(&self) -> Protocol {
        lock(&self.inbox.0).protocol
    }

    /// Queues push `idx` of `chunk`, which costs `costs[0]` in JSON and `costs[1]` in
    /// Protobuf.
    fn send_push(&self, chunk: &Arc<Chunk>, idx: u16, costs: [u32; 2]) {
        self.enqueue(
            |inbox| costs[usize::from(inbox.protocol == Protocol::Protobuf)],
            |inbox| inbox.push_run(chunk, idx),
        );
    }

    /// Queues what `push` adds (`cost` says what it counts, from the queue); a connection
    /// whose queue would exceed its byte limit is closed as slow (3008) instead of growing
    /// memory.
    fn enqueue(&self, cost: impl FnOnce(&Inbox) -> u32, push: impl FnOnce(&mut Inbox)) {
        let mut inbox = lock(&self.inbox.0);
        if inbox.ended {
            return;
        }
        let cost = cost(&inbox);
        if u64::from(inbox.bytes) + u64::from(cost) > u64::from(inbox.limit) {
            drop(inbox);
            self.close(Disconnect::SLOW);
            return;
        }
        // A session only waits after finding its queue empty (under this lock), so only a
        // message into an empty queue needs to wake it.
        let was_empty = inbox.is_empty();
        inbox.bytes += cost;
        push(&mut inbox);
        if was_empty {
            if let Some(w) = &inbox.waker {
                w.wake_by_ref();
            }
        }
    }

    /// Reads the queue's cache line without taking the lock, so that several subscribers'
    /// lines load at once before [`send`](Self::send) locks them one by one (a lock is a
    /// memory barrier: a miss taken by the lock itself cannot overlap with the next one).
    fn touch(&self) -> bool {
        self.inbox.0.is_poisoned()
    }

    /// Waits for the queue to hold something (the message stays queued).
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbox = lock(&self.inbox.0);
        if !inbox.is_empty() {
            return Poll::Ready(());
        }
        if !inbox
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inbox.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes up to [`TAKE_AT_MOST`] messages, handing each to `each` in order, until the
    /// queue is empty or `each` returns false (that message is taken; the rest stay).
    pub(crate) fn take(&self, mut each: impl FnMut(Taken<'_>) -> bool) {
        let mut inbox = lock(&self.inbox.0);
        let protocol = inbox.protocol;
        let mut budget = TAKE_AT_MOST;
        while budget > 0 {
            let Some(queued) = inbox.pop() else {
                break;
            };
            match queued {
                Queued::Control(c) => {
                    inbox.bytes -= CONTROL_COST;
                    budget -= 1;
                    if !each(Taken::Control(c)) {
                        break;
                    }
                }
                Queued::Own(own) => {
                    inbox.bytes -= cost_of(own.bytes.len());
                    budget -= 1;
                    let go_on = each(Taken::Push {
                        channel: &own.channel,
                        bytes: &own.bytes,
                        offset: own.offset,
                    });
                    if !go_on {
                        break;
                    }
                }
                Queued::Pushes(mut run) => {
                    let mut go_on = true;
                    while run.from < run.to && budget > 0 && go_on {
                        let slot = &run.chunk.slots[usize::from(run.from)];
                        run.from += 1;
                        budget -= 1;
                        // Always filled: a slot is set before it is queued anywhere.
                        if let Some(encoded) = slot.get() {
                            inbox.bytes -= encoded.cost(protocol);
                            go_on = each(Taken::Push {
                                channel: &run.chunk.channel,
                                bytes: encoded.bytes(protocol),
                                offset: encoded.offset,
                            });
                        }
                    }
                    if run.from < run.to {
                        inbox.unpop(run);
                    }
                    if !go_on {
                        break;
                    }
                }
            }
        }
        if inbox
            .rest
            .as_ref()
            .is_some_and(|r| r.is_empty() && r.capacity() > KEEP_CAPACITY)
        {
            inbox.rest = None;
        }
    }

    /// The session has ended: what is queued is dropped, and so is whatever comes later.
    pub(crate) fn end_inbox(&self) {
        let mut inbox = lock(&self.inbox.0);
        inbox.ended = true;
        inbox.bytes = 0;
        inbox.waker = None;
        let dropped = (inbox.last.take(), inbox.rest.take());
        drop(inbox);
        drop(dropped);
    }

    /// Records the current connection token's `jti` and `iat`.
    pub(crate) fn set_creds(&self, jti: Option<&str>, iat: Option<u64>) {
        let mut c = lock(&self.creds);
        c.jti = jti.map(Arc::from);
        c.iat = iat.unwrap_or(0);
    }

    /// Records the connection token's `meta` claim.
    pub(crate) fn set_meta(&self, meta: Option<rotor_protocol::Raw>) {
        lock(&self.creds).meta = meta.map(Box::new);
    }

    /// Records where and when the connection was made.
    pub(crate) fn set_origin(&self, origin: Origin) {
        let transport = transport_id(origin.transport);
        let mut c = lock(&self.creds);
        c.transport = transport;
        c.remote = origin.remote;
        c.connected_at = u32::try_from(origin.connected_at).unwrap_or(u32::MAX);
    }

    /// What the connections API shows of it.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let c = lock(&self.creds);
        let origin = (c.transport != 0).then(|| Origin {
            transport: transport_name(c.transport),
            remote: c.remote,
            connected_at: u64::from(c.connected_at),
        });
        Snapshot {
            jti: c.jti.clone(),
            iat: (c.iat != 0).then_some(c.iat),
            meta: c.meta.as_deref().cloned(),
            origin,
            expire_at: self.expire_at.load(Ordering::Relaxed),
        }
    }

    /// The connection token's `meta` claim (never sent to the client).
    pub fn meta(&self) -> Option<rotor_protocol::Raw> {
        lock(&self.creds).meta.as_deref().cloned()
    }

    /// Records when the connection expires (`None`: never).
    pub(crate) fn set_expire_at(&self, at: Option<u64>) {
        self.expire_at.store(at.unwrap_or(0), Ordering::Relaxed);
    }

    /// The current connection token's `jti` and `iat`.
    pub(crate) fn creds(&self) -> (Option<Arc<str>>, Option<u64>) {
        let c = lock(&self.creds);
        (c.jti.clone(), (c.iat != 0).then_some(c.iat))
    }

    /// Whether the connection is already closing.
    pub(crate) fn closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the connection with `disconnect` (the first reason given wins).
    pub fn close(&self, disconnect: Disconnect) {
        let _ = self.reason.set(disconnect);
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// Why the connection was closed from outside; `None` means node shutdown.
    pub(crate) fn close_reason(&self) -> Option<Disconnect> {
        self.reason.get().cloned()
    }
}

struct Subscriber {
    client: Arc<ClientHandle>,
    join_leave: bool,
    /// Whether it negotiated delta compression, and what it has.
    delta: DeltaBase,
    /// Its tags filter: only publications that match are queued to it.
    filter: Option<Arc<TagsFilter>>,
}

/// What a subscriber has of a channel's publications, for delta compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaBase {
    /// It did not negotiate deltas: it shares the channel's pushes.
    Off,
    /// Deltas negotiated; its next publication goes full.
    NeedsFull,
    /// It has the channel's previous publication: the next may be a delta against it.
    HasBase,
}

impl Subscriber {
    /// Whether `push` goes to this subscriber (`memo`: the filters this push has met).
    fn wants(&self, push: &Push, only_join_leave: bool, memo: &Memo) -> bool {
        if only_join_leave {
            return self.join_leave;
        }
        match (&self.filter, &push.publication) {
            (Some(f), Some(p)) => memo.matches(f, &p.tags),
            _ => true,
        }
    }
}

/// What the distinct filters of a channel said of one publication: subscribers share
/// their channel's copy of equal filters, so each runs once, however many use it.
#[derive(Default)]
struct Memo(std::cell::RefCell<Vec<(*const TagsFilter, bool)>>);

/// Distinct filters remembered per publication (more are run for each subscriber).
const MEMO: usize = 32;

impl Memo {
    fn matches(
        &self,
        f: &Arc<TagsFilter>,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let key = Arc::as_ptr(f);
        let mut seen = self.0.borrow_mut();
        if let Some(&(_, m)) = seen.iter().find(|(k, _)| *k == key) {
            return m;
        }
        let m = f.matches(tags);
        if seen.len() < MEMO {
            seen.push((key, m));
        }
        m
    }
}

/// What a channel with delta subscribers keeps: how many there are, and the previous
/// publication's offset and data (the base of the next delta).
struct DeltaChannel {
    subscribers: u32,
    prev: Option<(u64, Bytes)>,
    /// A publication passed since the channel had delta subscribers: `prev` (or its
    /// absence, after a publication without an offset) is what they were sent.
    seen: bool,
    /// Subscribers that need a full publication, by client key: the offset it must be
    /// past to count (their subscribe's position: a live publication at or before it is
    /// dropped by the session, see `CaughtUp`). Until the subscribe says, none counts.
    after: HashMap<usize, u64>,
}

impl DeltaChannel {
    /// Whether a full publication at `offset`, just queued to subscriber `key`, is its
    /// base from now on.
    fn full_counts(&mut self, key: usize, offset: u64) -> bool {
        match self.after.get(&key) {
            Some(&after) if offset > after && offset > 0 => {
                self.after.remove(&key);
                true
            }
            Some(_) => false,
            None => offset > 0,
        }
    }
}

/// A map that most of the time holds one entry, kept inline without a map: a channel's
/// subscribers (a personal channel has one; ~120 bytes less each) and a user's
/// connections on the node (most users have one). Never empty while in use: its owner
/// drops it when the last entry goes.
enum OneOrMany<K, V> {
    One(K, V),
    Many(HashMap<K, V>),
}

impl<K: std::hash::Hash + Eq, V> OneOrMany<K, V> {
    /// Adds or replaces; returns the value replaced.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            OneOrMany::One(k, old) if *k == key => Some(std::mem::replace(old, value)),
            OneOrMany::One(..) => {
                let OneOrMany::One(k, first) =
                    std::mem::replace(self, OneOrMany::Many(HashMap::with_capacity(2)))
                else {
                    unreachable!("matched above")
                };
                if let OneOrMany::Many(map) = self {
                    map.insert(k, first);
                    map.insert(key, value);
                }
                None
            }
            OneOrMany::Many(map) => map.insert(key, value),
        }
    }

    /// Removes one (afterwards the owner checks `is_empty`).
    fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        match self {
            OneOrMany::One(k, _) if k.borrow() == key => {
                let OneOrMany::One(_, gone) =
                    std::mem::replace(self, OneOrMany::Many(HashMap::new()))
                else {
                    unreachable!("matched above")
                };
                Some(gone)
            }
            OneOrMany::One(..) => None,
            OneOrMany::Many(map) => map.remove(key),
        }
    }

    fn len(&self) -> usize {
        match self {
            OneOrMany::One(..) => 1,
            OneOrMany::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (one, many) = match self {
            OneOrMany::One(k, v) => (Some((k, v)), None),
            OneOrMany::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        let (one, many) = match self {
            OneOrMany::One(k, v) => (Some((&*k, v)), None),
            OneOrMany::Many(map) => (None, Some(map.iter_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        match self {
            OneOrMany::One(k, v) if (*k).borrow() == key => Some(v),
            OneOrMany::One(..) => None,
            OneOrMany::Many(map) => map.get_mut(key),
        }
    }
}

/// Queues a push encoded by `encode` (once, with the protocols of the channel's
/// subscribers) into the channel's current chunk, to the subscribers `to` picks.
fn fan_out(
    ch: &mut Channel,
    to: impl Fn(&Subscriber) -> bool,
    encode: impl FnOnce(Wanted) -> Encoded,
) -> usize {
    let push = encode(Wanted {
        json: ch.subs.len() > ch.protobuf as usize,
        protobuf: ch.protobuf > 0,
    });
    let costs = [push.cost(Protocol::Json), push.cost(Protocol::Protobuf)];
    let (chunk, idx) = match ch.chunk.upgrade() {
        Some(chunk) if usize::from(ch.next) < CHUNK => (chunk, ch.next),
        _ => (
            Arc::new(Chunk {
                channel: ch.name.clone(),
                slots: Box::default(),
            }),
            0,
        ),
    };
    let _ = chunk.slots[usize::from(idx)].set(push);
    ch.chunk = Arc::downgrade(&chunk);
    ch.next = idx + 1;
    let mut targets: Vec<&ClientHandle> = Vec::with_capacity(ch.subs.len());
    targets.extend(
        ch.subs
            .values()
            .filter(|sub| to(sub))
            .map(|sub| &*sub.client),
    );
    // In groups: first every queue's cache line is loaded (plain reads, which overlap),
    // then each is locked and pushed to, hitting the cache.
    for group in targets.chunks(16) {
        for client in group {
            std::hint::black_box(client.touch());
        }
        for client in group {
            client.send_push(&chunk, idx, costs);
        }
    }
    targets.len()
}

/// A channel's local subscribers, by their client handle's address.
type Subscribers = OneOrMany<usize, Subscriber>;

/// A channel with local subscribers.
struct Channel {
    /// The key it is stored under (every push of the channel carries this allocation).
    name: Arc<str>,
    subs: Subscribers,
    /// How many of `subs` speak Protobuf (the rest speak JSON).
    protobuf: u32,
    /// The chunk new pushes go into while some subscriber still holds a run of it (weak:
    /// once every subscriber has taken its pushes, the chunk and its pushes are freed), and
    /// its next free slot.
    chunk: std::sync::Weak<Chunk>,
    next: u16,
    /// Only while some subscriber negotiated deltas or has a tags filter.
    extras: Option<Box<Extras>>,
}

/// What a channel keeps for its subscribers' options, only while one uses them.
#[derive(Default)]
struct Extras {
    /// While some subscriber negotiated delta compression.
    delta: Option<DeltaChannel>,
    /// The subscribers' tags filters, one `Arc` per distinct filter with how many
    /// subscribers use it: a publication runs each distinct filter once, however many
    /// subscribers share it.
    filters: HashMap<Arc<TagsFilter>, u32>,
}

impl Channel {
    fn delta_mut(&mut self) -> Option<&mut DeltaChannel> {
        self.extras.as_deref_mut().and_then(|e| e.delta.as_mut())
    }

    /// Counts delta subscriber `key` in (`by` 1: it needs a full publication, and none
    /// counts until its subscribe says from where) or out (-1).
    fn count_delta(&mut self, base: DeltaBase, key: usize, by: i32) {
        if base == DeltaBase::Off {
            return;
        }
        let extras = self.extras.get_or_insert_with(Default::default);
        let d = extras.delta.get_or_insert(DeltaChannel {
            subscribers: 0,
            prev: None,
            seen: false,
            after: HashMap::new(),
        });
        d.subscribers = d.subscribers.saturating_add_signed(by);
        if by > 0 {
            d.after.insert(key, u64::MAX);
        } else {
            d.after.remove(&key);
        }
        if d.subscribers == 0 {
            extras.delta = None;
        }
        self.drop_empty_extras();
    }

    /// The channel's copy of a filter equal to `f` (`f` itself when it is the first), for
    /// one more subscriber.
    fn intern(&mut self, f: Arc<TagsFilter>) -> Arc<TagsFilter> {
        let extras = self.extras.get_or_insert_with(Default::default);
        if let Some((known, users)) = extras.filters.get_key_value(&*f) {
            let known = known.clone();
            extras.filters.insert(known.clone(), users + 1);
            return known;
        }
        extras.filters.insert(f.clone(), 1);
        f
    }

    /// A subscriber with this filter is gone: the filter goes with its last user.
    fn release(&mut self, f: Option<&Arc<TagsFilter>>) {
        let (Some(f), Some(extras)) = (f, self.extras.as_deref_mut()) else {
            return;
        };
        if let Some(users) = extras.filters.get_mut(&**f) {
            *users -= 1;
            if *users == 0 {
                extras.filters.remove(&**f);
            }
        }
        self.drop_empty_extras();
    }

    fn drop_empty_extras(&mut self) {
        if self
            .extras
            .as_ref()
            .is_some_and(|e| e.delta.is_none() && e.filters.is_empty())
        {
            self.extras = None;
        }
    }
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, Channel>,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<Arc<str>, Arc<ClientHandle>>,
    by_user: HashMap<Arc<str>, UserConnections>,
}

/// The ids of a user's connections on this node.
type UserConnections = OneOrMany<Arc<str>, ()>;

const SHARDS: usize = 32;

/// Local connections and subscriptions of one node.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    conns: Mutex<Connections>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            conns: Mutex::new(Connections::default()),
            hasher: Default::default(),
        }
    }
}

fn key(client: &Arc<ClientHandle>) -> usize {
    Arc::as_ptr(client) as usize
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a hub lock cannot leave the maps half-updated in a way that matters
    // more than stopping every connection would, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Registers a connected client unless that would take the node past `node_limit`
    /// connections or a (named) user past `user_limit`; 0 means no limit.
    pub(crate) fn add_connection(
        &self,
        client: &Arc<ClientHandle>,
        node_limit: usize,
        user_limit: usize,
    ) -> Result<(), crate::limits::Limit> {
        let mut c = lock(&self.conns);
        if node_limit > 0 && c.by_id.len() >= node_limit {
            return Err(crate::limits::Limit::NodeConnections);
        }
        if user_limit > 0 && !client.user().is_empty() {
            let held = c.by_user.get(client.user()).map_or(0, UserConnections::len);
            if held >= user_limit {
                return Err(crate::limits::Limit::UserConnections);
            }
        }
        c.by_id.insert(client.id.clone(), client.clone());
        match c.by_user.get_mut(client.user()) {
            Some(ids) => {
                ids.insert(client.id.clone(), ());
            }
            None => {
                let user = client.user.get().cloned().unwrap_or_else(|| Arc::from(""));
                c.by_user
                    .insert(user, OneOrMany::One(client.id.clone(), ()));
            }
        }
        Ok(())
    }

    pub(crate) fn remove_connection(&self, client: &ClientHandle) {
        let mut c = lock(&self.conns);
        c.by_id.remove(&client.id);
        if let Some(ids) = c.by_user.get_mut(client.user()) {
            ids.remove(&*client.id);
            if ids.is_empty() {
                c.by_user.remove(client.user());
            }
        }
    }

    /// Adds a subscriber (with its tags filter, if any; `delta`: whether it negotiated
    /// delta compression); true when it is the node's first subscriber of the channel.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        client: &Arc<ClientHandle>,
        join_leave: bool,
        delta: bool,
        filter: Option<Arc<TagsFilter>>,
    ) -> bool {
        let mut shard = lock(self.shard(channel));
        let first = !shard.channels.contains_key(channel);
        let delta = if delta {
            DeltaBase::NeedsFull
        } else {
            DeltaBase::Off
        };
        let subscriber = Subscriber {
            client: client.clone(),
            join_leave,
            delta,
            filter,
        };
        let protobuf = u32::from(client.protocol() == Protocol::Protobuf);
        let ch = match shard.channels.get_mut(channel) {
            Some(ch) => {
                let mut subscriber = subscriber;
                subscriber.filter = subscriber.filter.map(|f| ch.intern(f));
                if let Some(old) = ch.subs.insert(key(client), subscriber) {
                    ch.protobuf -= u32::from(old.client.protocol() == Protocol::Protobuf);
                    ch.count_delta(old.delta, key(client), -1);
                    ch.release(old.filter.as_ref());
                }
                ch.protobuf += protobuf;
                ch
            }
            None => {
                let name: Arc<str> = Arc::from(channel);
                let ch = shard.channels.entry(name.clone()).or_insert(Channel {
                    name,
                    subs: OneOrMany::One(key(client), subscriber),
                    protobuf,
                    chunk: std::sync::Weak::new(),
                    next: 0,
                    extras: None,
                });
                // The channel's first filter is its own copy.
                if let OneOrMany::One(_, sub) = &ch.subs {
                    if let Some(f) = sub.filter.clone() {
                        ch.intern(f);
                    }
                }
                ch
            }
        };
        ch.count_delta(delta, key(client), 1);
        first
    }

    /// Where a delta subscriber's subscribe left it: `after`, its position (a full
    /// publication past it becomes its base), or `recovered`: it has the channel's latest
    /// publication (the base, when known: its offset and data), so its next publication
    /// may be a delta. A channel that has passed no publication since its delta
    /// subscribers came takes that base as its own.
    pub(crate) fn delta_position(
        &self,
        channel: &str,
        client: &Arc<ClientHandle>,
        after: u64,
        recovered: Option<Option<(u64, Vec<u8>)>>,
    ) {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.channels.get_mut(channel) else {
            return;
        };
        let k = key(client);
        let Some(sub) = ch.subs.get_mut(&k) else {
            return;
        };
        if sub.delta == DeltaBase::Off {
            return;
        }
        let has_base = recovered.is_some() && sub.delta == DeltaBase::NeedsFull;
        if has_base {
            sub.delta = DeltaBase::HasBase;
        }
        let Some(d) = ch.delta_mut() else { return };
        match recovered {
            Some(base) if has_base => {
                d.after.remove(&k);
                if let (false, Some((offset, data))) = (d.seen, base) {
                    d.prev = Some((offset, Bytes::from(data)));
                }
            }
            Some(_) => {}
            None => {
                if let Some(a) = d.after.get_mut(&k) {
                    *a = after;
                }
            }
        }
    }

    /// Removes a subscriber; true when the channel has no local subscriber left.
    pub(crate) fn unsubscribe(&self, channel: &str, client: &Arc<ClientHandle>) -> bool {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.channels.get_mut(channel) else {
            return false;
        };
        let Some(gone) = ch.subs.remove(&key(client)) else {
            return false;
        };
        ch.protobuf -= u32::from(gone.client.protocol() == Protocol::Protobuf);
        ch.count_delta(gone.delta, key(client), -1);
        ch.release(gone.filter.as_ref());
        if ch.subs.is_empty() {
            shard.channels.remove(channel);
            return true;
        }
        false
    }

    /// Queues `push` to every subscriber it is for (only those that want join/leave; a
    /// publication only to those whose tags filter it passes), encoded once per protocol the
    /// channel's subscribers speak, and only when it has local subscribers.
    pub(crate) fn broadcast(&self, channel: &str, push: &Push, only_join_leave: bool) -> usize {
        let memo = Memo::default();
        self.broadcast_with(
            channel,
            |sub| sub.wants(push, only_join_leave, &memo),
            |wanted| Encoded::of(push, wanted),
        )
    }

    /// Queues a publication push: like [`broadcast`](Self::broadcast) for the subscribers
    /// that did not negotiate deltas; each that did is sent a fossil delta against the
    /// channel's previous publication when `use_delta`, it has that one, and the delta is
    /// smaller, else the full data (see [`deltas`]).
    pub(crate) fn broadcast_publication(
        &self,
        channel: &str,
        push: &Push,
        use_delta: bool,
    ) -> usize {
        let Some(publication) = &push.publication else {
            return self.broadcast(channel, push, false);
        };
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.channels.get_mut(channel) else {
            return 0;
        };
        let encode = |wanted| Encoded::of(push, wanted);
        let memo = Memo::default();
        let delta = ch.extras.as_deref_mut().and_then(|e| e.delta.as_mut());
        let Some(d) = delta else {
            return fan_out(ch, |sub| sub.wants(push, false, &memo), encode);
        };
        let sent = deltas::send(&ch.name, &mut ch.subs, d, push, publication, use_delta);
        if d.subscribers as usize == ch.subs.len() {
            return sent;
        }
        sent + fan_out(
            ch,
            |sub| sub.delta == DeltaBase::Off && sub.wants(push, false, &memo),
            encode,
        )
    }

    /// [`broadcast`](Self::broadcast) with the choice of subscribers left to `to` and the
    /// encoding to `encode` (called under the channel's shard lock, once, with the protocols
    /// of the channel's subscribers).
    fn broadcast_with(
        &self,
        channel: &str,
        to: impl Fn(&Subscriber) -> bool,
        encode: impl FnOnce(Wanted) -> Encoded,
    ) -> usize {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.channels.get_mut(channel) else {
            return 0;
        };
        fan_out(ch, to, encode)
    }

    /// Local connections of `user`, optionally narrowed to one client or session.
    pub(crate) fn user_connections(
        &self,
        user: &str,
        client: Option<&str>,
        session: Option<&str>,
    ) -> Vec<Arc<ClientHandle>> {
        let c = lock(&self.conns);
        let Some(ids) = c.by_user.get(user) else {
            return Vec::new();
        };
        ids.iter()
            .map(|(id, ())| id)
            .filter_map(|id| c.by_id.get(id))
            .filter(|h| client.is_none_or(|want| want == &*h.id))
            .filter(|h| session.is_none_or(|want| h.session.as_deref() == Some(want)))
            .cloned()
            .collect()
    }

    /// Local subscribers of `channel`.
    pub(crate) fn subscribers(&self, channel: &str) -> Vec<Arc<ClientHandle>> {
        lock(self.shard(channel))
            .channels
            .get(channel)
            .map(|ch| ch.subs.values().map(|s| s.client.clone()).collect())
            .unwrap_or_default()
    }

    /// Every local connection.
    pub(crate) fn all_connections(&self) -> Vec<Arc<ClientHandle>> {
        lock(&self.conns).by_id.values().cloned().collect()
    }

    /// The channels each of `clients` is subscribed to here, sorted: one pass over every
    /// channel (for the connections API, never on the fan-out path).
    pub(crate) fn channels_of(&self, clients: &[Arc<ClientHandle>]) -> Vec<Vec<String>> {
        if clients.is_empty() {
            return Vec::new();
        }
        let index: HashMap<usize, usize> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (key(c), i))
            .collect();
        let mut out = vec![Vec::new(); clients.len()];
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (name, ch) in &shard.channels {
                for (k, _) in ch.subs.iter() {
                    if let Some(&i) = index.get(k) {
                        out[i].push(name.to_string());
                    }
                }
            }
        }
        for channels in &mut out {
            channels.sort_unstable();
        }
        out
    }

    /// How many connections expire at all, and how many expire before each of `deadlines`
    /// (Unix seconds).
    pub fn expiry_counts(&self, deadlines: &[u64]) -> (usize, Vec<usize>) {
        let conns = lock(&self.conns);
        let mut with_expiry = 0;
        let mut within = vec![0; deadlines.len()];
        for c in conns.by_id.values() {
            let at = c.expire_at.load(Ordering::Relaxed);
            if at == 0 {
                continue;
            }
            with_expiry += 1;
            for (n, d) in within.iter_mut().zip(deadlines) {
                if at <= *d {
                    *n += 1;
                }
            }
        }
        (with_expiry, within)
    }

    pub fn num_clients(&self) -> usize {
        lock(&self.conns).by_id.len()
    }

    pub fn num_users(&self) -> usize {
        lock(&self.conns).by_user.len()
    }

    pub fn num_channels(&self) -> usize {
        self.shards.iter().map(|s| lock(s).channels.len()).sum()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .channels
                    .values()
                    .map(|c| c.subs.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Channels with their number of local subscribers.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(
                lock(s)
                    .channels
                    .iter()
                    .map(|(k, c)| (k.to_string(), c.subs.len())),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// Every idle connection holds one: a field that pushes it past four cache lines costs
    /// 64 bytes per connection (docs/benchmarks.md measures the whole connection).
    #[test]
    fn a_client_handle_stays_within_four_cache_lines() {
        assert!(
            size_of::<ClientHandle>() <= 256,
            "ClientHandle grew to {} bytes",
            size_of::<ClientHandle>()
        );
    }

    #[test]
    fn transport_names_are_kept_as_one_byte_each() {
        let ws = transport_id("websocket-test");
        let sse = transport_id("sse-test");
        assert_ne!(ws, sse);
        assert_eq!(
            transport_id("websocket-test"),
            ws,
            "the same name, the same byte"
        );
        assert_eq!(transport_name(ws), "websocket-test");
        assert_eq!(transport_name(0), "");
        let h = handle(1024);
        assert!(h.snapshot().origin.is_none(), "not connected yet");
        h.set_origin(Origin {
            transport: "sse-test",
            remote: Some("10.1.2.3".parse().unwrap()),
            connected_at: 1_800_000_000,
        });
        h.set_creds(Some("j"), Some(0));
        let snap = h.snapshot();
        let origin = snap.origin.expect("connected");
        assert_eq!(
            (origin.transport, origin.remote, origin.connected_at),
            ("sse-test", Some("10.1.2.3".parse().unwrap()), 1_800_000_000)
        );
        assert_eq!(snap.iat, None, "iat 0 proves nothing, like none");
    }

    fn handle(limit: usize) -> Arc<ClientHandle> {
        ClientHandle::new(
            Arc::from("c"),
            None,
            Protocol::Json,
            limit,
            CancellationToken::new(),
        )
    }

    /// A hub with one client (a queue of `limit` bytes) subscribed to `channels`.
    fn subscribed(limit: usize, channels: &[&str]) -> (Hub, Arc<ClientHandle>) {
        let hub = Hub::default();
        let client = handle(limit);
        for channel in channels {
            hub.subscribe(channel, &client, false, false, None);
        }
        (hub, client)
    }

    fn push(channel: &str, n: u32) -> Bytes {
        Bytes::from(format!(
            "{{\"push\":{{\"channel\":\"{channel}\",\"pub\":{{\"data\":{n}}}}}}}"
        ))
    }

    fn control(jti: &str) -> Control {
        Control::Revoke {
            jti: jti.into(),
            expire_at: 0,
        }
    }

    /// What `take` hands over, one label per message, until it stops: `channel:n` for a
    /// push, `jti` for a revocation.
    fn take_all(client: &ClientHandle) -> Vec<String> {
        let mut got = Vec::new();
        client.take(|taken| match taken {
            Taken::Push { channel, bytes, .. } => {
                let text = String::from_utf8_lossy(bytes);
                let n = text.rsplit(':').next().unwrap_or("").trim_end_matches('}');
                got.push(format!("{channel}:{n}"));
                true
            }
            Taken::Control(c) => {
                if let Control::Revoke { jti, .. } = *c {
                    got.push(jti);
                }
                false
            }
        });
        got
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn messages_come_out_in_the_order_they_were_sent_across_stops() {
        let (hub, client) = subscribed(1 << 20, &["a", "b"]);
        // Runs of two channels, interleaved with a node command; more than one chunk.
        for n in 0..20 {
            hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", n)));
        }
        hub.broadcast_with("b", |_| true, |_| Encoded::json(push("b", 0)));
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 20)));
        client.send_control(control("x"));
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 21)));
        // Stops at the node command, which is handed over; the push after it stays.
        let first = take_all(&client);
        let mut want: Vec<String> = (0..20).map(|n| format!("a:{n}")).collect();
        want.extend(["b:0".into(), "a:20".into(), "x".into()]);
        assert_eq!(first, want);
        // Sent while a push is still queued behind the taken ones: after it.
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 22)));
        assert_eq!(take_all(&client), ["a:21", "a:22"]);
        assert!(take_all(&client).is_empty());
    }

    #[test]
    fn a_turn_takes_a_bounded_number_and_leaves_the_rest_in_order() {
        let (hub, client) = subscribed(1 << 20, &["a", "b"]);
        // 8 of b first, so that the turn's bound falls in the middle of one of a's runs.
        let mut want: Vec<String> = (0..8).map(|n| format!("b:{n}")).collect();
        for n in 0..8 {
            hub.broadcast_with("b", |_| true, |_| Encoded::json(push("b", n)));
        }
        let total = TAKE_AT_MOST as u32 + 40;
        for n in 0..total {
            hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", n)));
            want.push(format!("a:{n}"));
        }
        hub.broadcast_with("b", |_| true, |_| Encoded::json(push("b", 8)));
        want.push("b:8".into());
        let first = take_all(&client);
        assert_eq!(first.len(), TAKE_AT_MOST);
        // Sent after a turn stopped in the middle of a run: after everything before it.
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", total)));
        want.push(format!("a:{total}"));
        let second = take_all(&client);
        let got: Vec<String> = first.into_iter().chain(second).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_subscriber_gets_every_push_and_join_leave_only_those_asking() {
        let hub = Hub::default();
        let (fast, slow, quiet) = (handle(1 << 20), handle(1 << 20), handle(1 << 20));
        hub.subscribe("a", &fast, true, false, None);
        hub.subscribe("a", &slow, true, false, None);
        hub.subscribe("a", &quiet, false, false, None);
        let mut fast_got = Vec::new();
        for n in 0..40 {
            let only_join_leave = n % 10 == 9;
            let sent = hub.broadcast_with(
                "a",
                |s| !only_join_leave || s.join_leave,
                |_| Encoded::json(push("a", n)),
            );
            assert_eq!(sent, if only_join_leave { 2 } else { 3 });
            // One subscriber keeps up, one does not take anything until the end.
            fast_got.extend(take_all(&fast));
        }
        let all: Vec<String> = (0..40).map(|n| format!("a:{n}")).collect();
        assert_eq!(fast_got, all);
        assert_eq!(take_all(&slow), all);
        let without: Vec<String> = (0..40)
            .filter(|n| n % 10 != 9)
            .map(|n| format!("a:{n}"))
            .collect();
        assert_eq!(take_all(&quiet), without);
        // The channel's chunks are freed once nobody holds a run of them.
        let shard = lock(hub.shard("a"));
        assert!(shard.channels["a"].chunk.upgrade().is_none());
    }

    /// A subscriber with a tags filter is queued the publications that match it and every
    /// join and leave; one without is queued everything.
    #[test]
    fn a_tags_filter_narrows_publications_only() {
        let hub = Hub::default();
        let (all, some) = (handle(1 << 20), handle(1 << 20));
        hub.subscribe("x", &all, true, false, None);
        let only_yes = rotor_protocol::FilterNode {
            key: "k".into(),
            cmp: "eq".into(),
            val: "yes".into(),
            ..Default::default()
        };
        let filter = TagsFilter::compile(&only_yes).unwrap();
        hub.subscribe("x", &some, true, false, Some(Arc::new(filter)));
        let publication = |n: u64, tag: Option<&str>| Push {
            channel: "x".into(),
            publication: Some(rotor_protocol::Publication {
                data: rotor_protocol::Raw::from_bytes(n.to_string().as_bytes()),
                tags: tag
                    .map(|t| ("k".to_string(), t.to_string()))
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Push::default()
        };
        assert_eq!(hub.broadcast("x", &publication(1, Some("yes")), false), 2);
        assert_eq!(hub.broadcast("x", &publication(2, Some("no")), false), 1);
        assert_eq!(hub.broadcast("x", &publication(3, None), false), 1);
        let join = Push {
            channel: "x".into(),
            join: Some(rotor_protocol::Join::default()),
            ..Push::default()
        };
        assert_eq!(hub.broadcast("x", &join, true), 2);
        let texts = |client: &ClientHandle| {
            let mut got = Vec::new();
            client.take(|taken| {
                if let Taken::Push { bytes, .. } = taken {
                    got.push(String::from_utf8_lossy(bytes).into_owned());
                }
                true
            });
            got
        };
        let (all_got, some_got) = (texts(&all), texts(&some));
        assert_eq!(all_got.len(), 4);
        assert_eq!(some_got.len(), 2);
        assert!(some_got[0].contains(r#""data":1"#), "{some_got:?}");
        assert!(some_got[1].contains(r#""join""#), "{some_got:?}");

        // Equal filters are one copy in the channel (run once per publication), gone with
        // their last subscriber.
        let other = handle(1 << 20);
        let again = TagsFilter::compile(&only_yes).unwrap();
        hub.subscribe("x", &other, false, false, Some(Arc::new(again)));
        let copies = |hub: &Hub| {
            let shard = lock(hub.shard("x"));
            shard.channels["x"].extras.as_ref().map(|e| e.filters.len())
        };
        assert_eq!(copies(&hub), Some(1));
        assert_eq!(hub.broadcast("x", &publication(4, Some("yes")), false), 3);
        assert_eq!(hub.broadcast("x", &publication(5, Some("no")), false), 1);
        hub.unsubscribe("x", &some);
        assert_eq!(copies(&hub), Some(1), "still used");
        hub.unsubscribe("x", &other);
        assert_eq!(copies(&hub), None, "the last user took it");
    }

    /// A delta subscriber gets its first publication full (as a JSON string) and the next
    /// ones as deltas that rebuild the data; a subscriber without deltas shares the plain
    /// pushes; a publication the publisher did not ask deltas for goes full.
    #[test]
    fn delta_subscribers_get_deltas_that_rebuild_the_data() {
        let hub = Hub::default();
        let (plain, delta) = (handle(1 << 20), handle(1 << 20));
        hub.subscribe("d", &plain, false, false, None);
        hub.subscribe("d", &delta, false, true, None);
        // Subscribed at the stream's start (not recovering).
        hub.delta_position("d", &delta, 0, None);
        let doc = |n: u64| format!(r#"{{"n":{n},"text":"{}"}}"#, "same words ".repeat(20));
        let publish = |n: u64, use_delta: bool| {
            let push = Push {
                channel: "d".into(),
                publication: Some(rotor_protocol::Publication {
                    data: rotor_protocol::Raw::from_json(&doc(n)).unwrap(),
                    offset: n,
                    ..Default::default()
                }),
                ..Push::default()
            };
            assert_eq!(hub.broadcast_publication("d", &push, use_delta), 2);
        };
        publish(1, true);
        publish(2, true);
        publish(3, false);
        publish(4, true);
        let pubs = |client: &ClientHandle| {
            let mut got = Vec::new();
            client.take(|taken| {
                if let Taken::Push { bytes, .. } = taken {
                    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    got.push(v["push"]["pub"].clone());
                }
                true
            });
            got
        };
        for (n, p) in (1..).zip(pubs(&plain)) {
            assert_eq!(p["data"]["n"], n, "plain JSON: {p}");
            assert!(p.get("delta").is_none());
        }
        let mut base = Vec::new();
        let got = pubs(&delta);
        let deltas: Vec<bool> = got.iter().map(|p| p["delta"] == true).collect();
        assert_eq!(deltas, [false, true, false, true]);
        for (n, p) in (1..).zip(got) {
            let text = p["data"].as_str().expect("a JSON string").as_bytes();
            base = if p["delta"] == true {
                rotor_protocol::fossil::apply(&base, text).unwrap()
            } else {
                text.to_vec()
            };
            assert_eq!(String::from_utf8(base.clone()).unwrap(), doc(n));
        }
    }

    /// A delta subscriber's base starts with a full publication past its subscribe's
    /// position: the session drops live publications at or before it, so those cannot be
    /// its base (until then it keeps getting full ones).
    #[test]
    fn a_delta_base_starts_past_the_subscribe_position() {
        let hub = Hub::default();
        let sub = handle(1 << 20);
        hub.subscribe("p", &sub, false, true, None);
        let doc = |n: u64| format!(r#"{{"n":{n},"text":"{}"}}"#, "same words ".repeat(20));
        let publish = |n: u64| {
            let push = Push {
                channel: "p".into(),
                publication: Some(rotor_protocol::Publication {
                    data: rotor_protocol::Raw::from_json(&doc(n)).unwrap(),
                    offset: n,
                    ..Default::default()
                }),
                ..Push::default()
            };
            hub.broadcast_publication("p", &push, true);
        };
        publish(4); // between the hub's subscribe and the position: never a base
        hub.delta_position("p", &sub, 5, None);
        publish(5); // at the position: the session drops it
        publish(6);
        publish(7);
        let mut deltas = Vec::new();
        sub.take(|taken| {
            if let Taken::Push { bytes, .. } = taken {
                let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                deltas.push(v["push"]["pub"]["delta"] == true);
            }
            true
        });
        assert_eq!(deltas, [false, false, false, true]);
    }

    /// A channel's subscribers as they come and go: one kept inline, then a map, and the
    /// channel forgotten with its last subscriber.
    #[test]
    fn subscribers_come_and_go_one_inline_then_a_map() {
        let hub = Hub::default();
        let (a, b) = (handle(1 << 20), handle(1 << 20));
        assert!(
            hub.subscribe("x", &a, false, false, None),
            "the node's first subscriber"
        );
        assert!(
            !hub.subscribe("x", &a, true, false, None),
            "again: replaced, not added"
        );
        assert_eq!(hub.num_subscriptions(), 1);
        assert_eq!(
            hub.broadcast_with("x", |s| s.join_leave, |_| Encoded::json(push("x", 1))),
            1
        );
        assert!(!hub.subscribe("x", &b, false, false, None));
        assert_eq!(hub.num_subscriptions(), 2);
        assert_eq!(
            hub.broadcast_with("x", |_| true, |_| Encoded::json(push("x", 2))),
            2
        );
        assert!(!hub.unsubscribe("x", &a), "b is still there");
        assert!(!hub.unsubscribe("x", &a), "a twice: nothing to remove");
        assert_eq!(
            hub.broadcast_with("x", |_| true, |_| Encoded::json(push("x", 3))),
            1
        );
        assert_eq!(take_all(&a), ["x:1", "x:2"]);
        assert_eq!(take_all(&b), ["x:2", "x:3"]);
        assert!(
            hub.unsubscribe("x", &b),
            "the last one: the channel is gone"
        );
        assert_eq!(hub.channels(), vec![]);
        assert!(
            hub.subscribe("x", &b, false, false, None),
            "a first subscriber again"
        );
        assert!(!hub.unsubscribe("x", &a), "not a subscriber");
        assert!(hub.unsubscribe("x", &b));
    }

    #[test]
    fn a_session_waiting_on_an_empty_queue_is_woken_once_per_burst() {
        let (hub, client) = subscribed(1 << 20, &["a"]);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(client.poll_ready(&mut cx).is_pending());
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 0)));
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 1)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(client.poll_ready(&mut cx).is_ready());
        assert_eq!(take_all(&client).len(), 2);
        assert!(client.poll_ready(&mut cx).is_pending());
        client.send_control(control("x"));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_queue_past_its_byte_limit_closes_the_connection_as_slow() {
        let one = Encoded::json(push("a", 0)).cost(Protocol::Json) as usize;
        let (hub, client) = subscribed(one * 3, &["a"]);
        for n in 0..3 {
            hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", n)));
        }
        assert!(!client.closing(), "three pushes fit the limit exactly");
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 3)));
        assert!(client.closing());
        assert_eq!(
            client.close_reason().map(|d| d.code),
            Some(Disconnect::SLOW.code)
        );
        // What was queued before the limit is still there, in order; the fourth is not.
        assert_eq!(take_all(&client), ["a:0", "a:1", "a:2"]);
    }

    #[test]
    fn taking_frees_the_byte_count_and_an_ended_queue_drops_everything() {
        let one = Encoded::json(push("a", 0)).cost(Protocol::Json) as usize;
        let (hub, client) = subscribed(one * 2, &["a"]);
        for n in 0..20 {
            // Same-sized pushes (one digit), two at a time: exactly the limit.
            hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", n % 10)));
            hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", n % 10)));
            assert_eq!(take_all(&client).len(), 2);
        }
        assert!(!client.closing(), "the count went down with every take");
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 0)));
        client.end_inbox();
        hub.broadcast_with("a", |_| true, |_| Encoded::json(push("a", 1)));
        assert!(take_all(&client).is_empty());
        assert!(!client.closing());
    }
}

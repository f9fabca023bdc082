//! The hub: which local connections exist, which user they belong to, and who is subscribed
//! to each channel. Fan-out encodes a push once and queues the same bytes to every subscriber.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rotor_protocol::Disconnect;
use tokio_util::sync::CancellationToken;

use crate::broker::Control;

/// What a session receives from the rest of the node.
#[derive(Debug)]
pub(crate) enum SessionMsg {
    /// A pre-encoded push for a channel the session may be subscribed to, shared by every
    /// subscriber (one pointer per queued message).
    Push(Arc<EncodedPush>),
    /// A node-wide command addressed to this connection.
    Control(Box<Control>),
}

impl SessionMsg {
    fn cost(&self) -> u32 {
        match self {
            // The bare push, as before pushes were kept wrapped: the limit means the same.
            SessionMsg::Push(push) => {
                u32::try_from(bare_range(&push.bytes).len()).unwrap_or(u32::MAX)
            }
            SessionMsg::Control(_) => 64,
        }
    }
}

/// A push encoded once for all local subscribers of a channel.
#[derive(Debug)]
pub(crate) struct EncodedPush {
    /// The hub's name of the channel (the same allocation for every push of the channel).
    pub(crate) channel: Arc<str>,
    /// As a reply (`{"push":{"channel":…,"pub":…}}`, see [`wrap_push`]).
    pub(crate) bytes: Bytes,
}

/// The prefix [`wrap_push`] puts before a bare push.
const PUSH_PREFIX: &[u8] = b"{\"push\":";

/// Encodes a push once for all subscribers, in the form bidirectional transports send
/// (`{"push":…}`); [`bare_push`] is the view unidirectional transports send.
pub(crate) fn wrap_push(push: &rotor_protocol::Push) -> Bytes {
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
    /// The connection token's `jti` and `iat`, for revocation.
    creds: std::sync::Mutex<(Option<Arc<str>>, Option<u64>)>,
    /// When the connection expires (Unix seconds, 0 = never), for the expiry gauges.
    expire_at: std::sync::atomic::AtomicU64,
}

/// Keeps its content on a cache line of its own: the queue's lock and state are what fan-out
/// touches first for every subscriber ([`Hub::broadcast`] reads the line ahead of locking).
#[repr(align(64))]
struct Line<T>(T);

#[derive(Default)]
struct Inbox {
    /// The oldest queued message, kept inline: a message into an empty queue is stored on
    /// the line the lock is on, with no other memory to reach.
    first: Option<SessionMsg>,
    /// The messages after `first`, allocated only when more than one is waiting. Invariant:
    /// while `rest` holds anything, new messages go to its end (order is kept), and `first`
    /// may be empty (the session took it and stopped). Boxed on purpose: one pointer on
    /// the line instead of the deque's four words.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<SessionMsg>>>,
    /// The cost (bytes) of what is queued, against `limit` (both small, so the whole locked
    /// inbox fits one cache line).
    bytes: u32,
    limit: u32,
    /// The session's task, woken when a message arrives in an empty queue.
    waker: Option<Waker>,
    /// The session has ended: messages are dropped.
    ended: bool,
}

impl Inbox {
    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.as_ref().is_none_or(|r| r.is_empty())
    }

    fn push(&mut self, msg: SessionMsg) {
        match &mut self.rest {
            Some(rest) if !rest.is_empty() => rest.push_back(msg),
            _ if self.first.is_none() => self.first = Some(msg),
            Some(rest) => rest.push_back(msg),
            None => self.rest = Some(Box::new(VecDeque::from([msg]))),
        }
    }

    fn pop(&mut self) -> Option<SessionMsg> {
        self.first
            .take()
            .or_else(|| self.rest.as_mut().and_then(|r| r.pop_front()))
    }
}

// The lock and everything under it on one cache line.
const _: () = assert!(std::mem::size_of::<Mutex<Inbox>>() <= 64);

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
        queue_limit: usize,
        cancel: CancellationToken,
    ) -> Arc<ClientHandle> {
        Arc::new(ClientHandle {
            id,
            user: OnceLock::new(),
            session,
            inbox: Line(Mutex::new(Inbox {
                limit: u32::try_from(queue_limit).unwrap_or(u32::MAX),
                ..Inbox::default()
            })),
            cancel,
            reason: OnceLock::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            creds: std::sync::Mutex::new((None, None)),
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

    /// Queues a message; a connection whose queue exceeds its byte limit is closed as slow
    /// (3008) instead of growing memory.
    pub(crate) fn send(&self, msg: SessionMsg) {
        let cost = msg.cost();
        let mut inbox = lock(&self.inbox.0);
        if inbox.ended {
            return;
        }
        if u64::from(inbox.bytes) + u64::from(cost) > u64::from(inbox.limit) {
            drop(inbox);
            self.close(Disconnect::SLOW);
            return;
        }
        // A session only waits after finding its queue empty (under this lock), so only a
        // message into an empty queue needs to wake it.
        let was_empty = inbox.is_empty();
        inbox.bytes += cost;
        inbox.push(msg);
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
    pub(crate) fn take(&self, mut each: impl FnMut(SessionMsg) -> bool) {
        let mut inbox = lock(&self.inbox.0);
        for _ in 0..TAKE_AT_MOST {
            let Some(msg) = inbox.pop() else {
                break;
            };
            inbox.bytes -= msg.cost();
            if !each(msg) {
                break;
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
        let dropped = (inbox.first.take(), inbox.rest.take());
        drop(inbox);
        drop(dropped);
    }

    /// Records the current connection token's `jti` and `iat`.
    pub(crate) fn set_creds(&self, jti: Option<&str>, iat: Option<u64>) {
        *self.creds.lock().unwrap_or_else(|e| e.into_inner()) = (jti.map(Arc::from), iat);
    }

    /// Records when the connection expires (`None`: never).
    pub(crate) fn set_expire_at(&self, at: Option<u64>) {
        self.expire_at.store(at.unwrap_or(0), Ordering::Relaxed);
    }

    /// The current connection token's `jti` and `iat`.
    pub(crate) fn creds(&self) -> (Option<Arc<str>>, Option<u64>) {
        self.creds.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, HashMap<usize, Subscriber>>,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<Arc<str>, Arc<ClientHandle>>,
    by_user: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

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
            let held = c.by_user.get(client.user()).map_or(0, HashSet::len);
            if held >= user_limit {
                return Err(crate::limits::Limit::UserConnections);
            }
        }
        c.by_id.insert(client.id.clone(), client.clone());
        c.by_user
            .entry(Arc::from(client.user()))
            .or_default()
            .insert(client.id.clone());
        Ok(())
    }

    pub(crate) fn remove_connection(&self, client: &ClientHandle) {
        let mut c = lock(&self.conns);
        c.by_id.remove(&client.id);
        if let Some(set) = c.by_user.get_mut(client.user()) {
            set.remove(&client.id);
            if set.is_empty() {
                c.by_user.remove(client.user());
            }
        }
    }

    /// Adds a subscriber; true when it is the node's first subscriber of the channel.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        client: &Arc<ClientHandle>,
        join_leave: bool,
    ) -> bool {
        let mut shard = lock(self.shard(channel));
        let first = !shard.channels.contains_key(channel);
        shard
            .channels
            .entry(Arc::from(channel))
            .or_default()
            .insert(
                key(client),
                Subscriber {
                    client: client.clone(),
                    join_leave,
                },
            );
        first
    }

    /// Removes a subscriber; true when the channel has no local subscriber left.
    pub(crate) fn unsubscribe(&self, channel: &str, client: &Arc<ClientHandle>) -> bool {
        let mut shard = lock(self.shard(channel));
        let Some(subs) = shard.channels.get_mut(channel) else {
            return false;
        };
        if subs.remove(&key(client)).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.channels.remove(channel);
            return true;
        }
        false
    }

    /// Queues a pre-encoded push to every subscriber (or only those that want join/leave).
    pub(crate) fn broadcast(&self, channel: &str, push: Bytes, only_join_leave: bool) -> usize {
        let shard = lock(self.shard(channel));
        let Some((name, subs)) = shard.channels.get_key_value(channel) else {
            return 0;
        };
        let push = Arc::new(EncodedPush {
            channel: name.clone(),
            bytes: push,
        });
        let mut targets: Vec<&ClientHandle> = Vec::with_capacity(subs.len());
        targets.extend(
            subs.values()
                .filter(|sub| !only_join_leave || sub.join_leave)
                .map(|sub| &*sub.client),
        );
        // In groups: first every queue's cache line is loaded (plain reads, which overlap),
        // then each is locked and pushed to, hitting the cache.
        for group in targets.chunks(16) {
            for client in group {
                std::hint::black_box(client.touch());
            }
            for client in group {
                client.send(SessionMsg::Push(push.clone()));
            }
        }
        targets.len()
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
            .filter_map(|id| c.by_id.get(id))
            .filter(|h| client.is_none_or(|want| want == &*h.id))
            .filter(|h| session.is_none_or(|want| h.session.as_deref() == Some(want)))
            .cloned()
            .collect()
    }

    /// Every local connection.
    pub(crate) fn all_connections(&self) -> Vec<Arc<ClientHandle>> {
        lock(&self.conns).by_id.values().cloned().collect()
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
            .map(|s| lock(s).channels.values().map(|m| m.len()).sum::<usize>())
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
                    .map(|(k, v)| (k.to_string(), v.len())),
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

    fn handle(limit: usize) -> Arc<ClientHandle> {
        ClientHandle::new(Arc::from("c"), None, limit, CancellationToken::new())
    }

    fn push(channel: &Arc<str>, n: u32) -> SessionMsg {
        let data = format!("{{\"push\":{{\"channel\":\"{channel}\",\"pub\":{{\"data\":{n}}}}}}}");
        SessionMsg::Push(Arc::new(EncodedPush {
            channel: channel.clone(),
            bytes: Bytes::from(data),
        }))
    }

    fn control(jti: &str) -> SessionMsg {
        SessionMsg::Control(Box::new(Control::Revoke {
            jti: jti.into(),
            expire_at: 0,
        }))
    }

    /// What `take` hands over, one label per message, until it stops.
    fn take_all(client: &ClientHandle) -> Vec<String> {
        let mut got = Vec::new();
        client.take(|msg| match msg {
            SessionMsg::Push(p) => {
                got.push(String::from_utf8_lossy(&p.bytes).into_owned());
                true
            }
            SessionMsg::Control(c) => {
                got.push(format!("{c:?}"));
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
        let client = handle(1 << 20);
        let ch: Arc<str> = Arc::from("news");
        for n in 0..3 {
            client.send(push(&ch, n));
        }
        client.send(control("a"));
        client.send(push(&ch, 3));
        // Stops at the node command, which is handed over; the push after it stays.
        let first = take_all(&client);
        assert_eq!(first.len(), 4, "{first:?}");
        assert!(first[0].contains("\"data\":0") && first[2].contains("\"data\":2"));
        assert!(first[3].contains("Revoke"));
        // Sent while a message is still queued behind the taken ones: after it.
        client.send(push(&ch, 4));
        let second = take_all(&client);
        assert_eq!(second.len(), 2, "{second:?}");
        assert!(second[0].contains("\"data\":3") && second[1].contains("\"data\":4"));
        // Empty again: the next message goes first, then the ones after it.
        client.send(push(&ch, 5));
        client.send(push(&ch, 6));
        let third = take_all(&client);
        assert!(third[0].contains("\"data\":5") && third[1].contains("\"data\":6"));
        assert!(take_all(&client).is_empty());
    }

    #[test]
    fn a_session_waiting_on_an_empty_queue_is_woken_once_per_burst() {
        let client = handle(1 << 20);
        let ch: Arc<str> = Arc::from("news");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(client.poll_ready(&mut cx).is_pending());
        client.send(push(&ch, 0));
        client.send(push(&ch, 1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(client.poll_ready(&mut cx).is_ready());
        assert_eq!(take_all(&client).len(), 2);
        assert!(client.poll_ready(&mut cx).is_pending());
        client.send(push(&ch, 2));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_queue_past_its_byte_limit_closes_the_connection_as_slow() {
        let ch: Arc<str> = Arc::from("news");
        let one = push(&ch, 0).cost() as usize;
        let client = handle(one * 3);
        for n in 0..3 {
            client.send(push(&ch, n));
        }
        assert!(!client.closing(), "three pushes fit the limit exactly");
        client.send(push(&ch, 3));
        assert!(client.closing());
        assert_eq!(
            client.close_reason().map(|d| d.code),
            Some(Disconnect::SLOW.code)
        );
        // What was queued before the limit is still there, in order; the fourth is not.
        let got = take_all(&client);
        assert_eq!(got.len(), 3);
        assert!(got[2].contains("\"data\":2"));
    }

    #[test]
    fn taking_frees_the_byte_count_and_an_ended_queue_drops_everything() {
        let ch: Arc<str> = Arc::from("news");
        let one = push(&ch, 0).cost() as usize;
        let client = handle(one * 2);
        for n in 0..10 {
            client.send(push(&ch, n));
            client.send(push(&ch, n));
            assert_eq!(take_all(&client).len(), 2);
        }
        assert!(!client.closing(), "the count went down with every take");
        client.send(push(&ch, 0));
        client.end_inbox();
        client.send(push(&ch, 1));
        assert!(take_all(&client).is_empty());
        assert!(!client.closing());
    }
}

//! In-memory implementations of the core's storage traits, for a single node: history with
//! size and TTL trimming, presence with expiry, the revocation list, and idempotent publish
//! results.
//!
//! Nothing here survives a restart, and nothing is shared between nodes; use
//! `rotor-store-postgres` for that. This crate must not do any IO.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rotor_core::storage::*;
use rotor_core::CoreError;
use rotor_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_epoch() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

struct Stream {
    epoch: String,
    top: u64,
    pubs: VecDeque<(Instant, Publication)>,
    /// When the stream's position may be forgotten.
    meta_expires: Instant,
}

impl Stream {
    fn new(meta_ttl: Duration) -> Stream {
        Stream {
            epoch: new_epoch(),
            top: 0,
            pubs: VecDeque::new(),
            meta_expires: Instant::now() + meta_ttl,
        }
    }

    fn trim(&mut self, size: usize, ttl: Duration, now: Instant) {
        while self.pubs.len() > size {
            self.pubs.pop_front();
        }
        while self.pubs.front().is_some_and(|(at, _)| *at + ttl <= now) {
            self.pubs.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

/// Channel history in memory.
#[derive(Default)]
pub struct MemoryHistory {
    streams: Mutex<HashMap<String, Stream>>,
}

impl MemoryHistory {
    pub fn new() -> Arc<MemoryHistory> {
        Arc::new(MemoryHistory::default())
    }

    fn stream<'a>(
        map: &'a mut HashMap<String, Stream>,
        channel: &str,
        meta_ttl: Duration,
        now: Instant,
    ) -> &'a mut Stream {
        let fresh = match map.get(channel) {
            Some(s) => s.meta_expires <= now,
            None => true,
        };
        if fresh {
            map.insert(channel.to_string(), Stream::new(meta_ttl));
        }
        map.get_mut(channel).expect("inserted above")
    }

    /// Drops expired publications and forgotten streams. Returns the number of streams left.
    pub fn sweep(&self, ttl_of: impl Fn(&str) -> Option<Duration>) -> usize {
        let now = Instant::now();
        let mut map = lock(&self.streams);
        map.retain(|channel, s| {
            if let Some(ttl) = ttl_of(channel) {
                s.trim(usize::MAX, ttl, now);
            }
            s.meta_expires > now
        });
        map.len()
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    fn add(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>> {
        let now = Instant::now();
        let mut map = lock(&self.streams);
        let s = Self::stream(&mut map, channel, opts.meta_ttl, now);
        s.top += 1;
        publication.offset = s.top;
        s.pubs.push_back((now, publication));
        s.trim(opts.size, opts.ttl, now);
        s.meta_expires = now + opts.meta_ttl;
        Box::pin(std::future::ready(Ok(s.position())))
    }

    async fn read(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryPage, CoreError> {
        let now = Instant::now();
        let mut map = lock(&self.streams);
        let s = Self::stream(&mut map, channel, opts.meta_ttl, now);
        s.trim(opts.size, opts.ttl, now);
        filter.check_epoch(&s.epoch)?;
        let pubs = s.pubs.iter().map(|(_, p)| p);
        let publications: Vec<Publication> = match (&filter.since, filter.reverse) {
            (_, _) if filter.limit == 0 => Vec::new(),
            (Some(since), false) => pubs
                .filter(|p| p.offset > since.offset)
                .take(filter.limit)
                .cloned()
                .collect(),
            (Some(since), true) => pubs
                .rev()
                .filter(|p| p.offset < since.offset)
                .take(filter.limit)
                .cloned()
                .collect(),
            (None, false) => pubs.take(filter.limit).cloned().collect(),
            (None, true) => pubs.rev().take(filter.limit).cloned().collect(),
        };
        Ok(HistoryPage {
            publications,
            position: s.position(),
        })
    }

    async fn remove(&self, channel: &str) -> Result<(), CoreError> {
        if let Some(s) = lock(&self.streams).get_mut(channel) {
            s.pubs.clear();
        }
        Ok(())
    }
}

/// A channel's members. Most presence channels have one or a few (a personal channel, a
/// small room), so the set holds one pointer per member: a B-tree's first leaf has room
/// for eleven entries and cost ~1.5 KiB for a channel of one.
type Entries = HashSet<Member>;

/// One client present in a channel, until `expires`; found by its client id.
struct Member(Box<(ClientInfo, Instant)>);

impl Member {
    fn info(&self) -> &ClientInfo {
        &self.0 .0
    }

    fn expires(&self) -> Instant {
        self.0 .1
    }
}

impl std::borrow::Borrow<str> for Member {
    fn borrow(&self) -> &str {
        &self.info().client
    }
}

impl std::hash::Hash for Member {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.info().client.as_str().hash(state)
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Member) -> bool {
        self.info().client == other.info().client
    }
}

impl Eq for Member {}

/// Channel presence in memory.
#[derive(Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, Entries>>,
}

impl MemoryPresence {
    pub fn new() -> Arc<MemoryPresence> {
        Arc::new(MemoryPresence::default())
    }

    fn live<'a>(map: &'a mut HashMap<String, Entries>, channel: &str) -> Option<&'a Entries> {
        let now = Instant::now();
        let entries = map.get_mut(channel)?;
        entries.retain(|m| m.expires() > now);
        if entries.is_empty() {
            map.remove(channel);
            return None;
        }
        map.get(channel)
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration) -> Result<(), CoreError> {
        lock(&self.channels)
            .entry(channel.to_string())
            .or_default()
            .replace(Member(Box::new((info.clone(), Instant::now() + ttl))));
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), CoreError> {
        let mut map = lock(&self.channels);
        if let Some(entries) = map.get_mut(channel) {
            entries.remove(client_id);
            if entries.is_empty() {
                map.remove(channel);
            }
        }
        Ok(())
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        let mut map = lock(&self.channels);
        Ok(Self::live(&mut map, channel)
            .map(|e| {
                e.iter()
                    .map(|m| (m.info().client.clone(), m.info().clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        let mut map = lock(&self.channels);
        let Some(entries) = Self::live(&mut map, channel) else {
            return Ok((0, 0));
        };
        let users: HashSet<&str> = entries.iter().map(|m| m.info().user.as_str()).collect();
        Ok((entries.len() as u32, users.len() as u32))
    }
}

/// The revocation list in memory.
#[derive(Default)]
pub struct MemoryRevocations {
    entries: Mutex<HashMap<String, RevokedToken>>,
    users: Mutex<HashMap<(String, String), UserInvalidation>>,
}

impl MemoryRevocations {
    pub fn new() -> Arc<MemoryRevocations> {
        Arc::new(MemoryRevocations::default())
    }
}

#[async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke(&self, entry: RevokedToken) -> Result<(), CoreError> {
        lock(&self.entries).insert(entry.jti.clone(), entry);
        Ok(())
    }

    async fn active(&self, now: u64) -> Result<Vec<RevokedToken>, CoreError> {
        Ok(lock(&self.entries)
            .values()
            .filter(|e| e.expire_at == 0 || e.expire_at > now)
            .cloned()
            .collect())
    }

    async fn list(&self, filter: &RevocationFilter) -> Result<Vec<RevokedToken>, CoreError> {
        let entries = lock(&self.entries);
        let mut out: Vec<RevokedToken> = entries
            .values()
            .filter(|e| filter.user.as_ref().is_none_or(|u| *u == e.user))
            .filter(|e| filter.jti.as_ref().is_none_or(|j| *j == e.jti))
            .filter(|e| filter.since.is_none_or(|t| e.revoked_at >= t))
            .filter(|e| filter.until.is_none_or(|t| e.revoked_at <= t))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.revoked_at
                .cmp(&a.revoked_at)
                .then_with(|| a.jti.cmp(&b.jti))
        });
        Ok(out
            .into_iter()
            .skip(filter.offset)
            .take(filter.limit)
            .collect())
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, CoreError> {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|_, e| e.expire_at == 0 || e.expire_at > now);
        let mut users = lock(&self.users);
        let users_before = users.len();
        users.retain(|_, e| e.expire_at == 0 || e.expire_at > now);
        Ok((before - entries.len() + users_before - users.len()) as u64)
    }

    async fn invalidate_user(&self, entry: UserInvalidation) -> Result<(), CoreError> {
        lock(&self.users).insert((entry.user.clone(), entry.channel.clone()), entry);
        Ok(())
    }

    async fn active_invalidations(&self, now: u64) -> Result<Vec<UserInvalidation>, CoreError> {
        Ok(lock(&self.users)
            .values()
            .filter(|e| e.expire_at == 0 || e.expire_at > now)
            .cloned()
            .collect())
    }
}

/// Idempotent publish results of this node, each dropped when its window ends.
#[derive(Default)]
pub struct MemoryIdempotency {
    inner: Mutex<Results>,
}

#[derive(Default)]
struct Results {
    /// (channel, key) -> its result (`None` while the publish is on its way), and until when.
    by_key: HashMap<(String, String), (Option<StreamPosition>, Instant)>,
    /// When the expired entries were last dropped.
    swept: Option<Instant>,
}

impl MemoryIdempotency {
    pub fn new() -> Arc<MemoryIdempotency> {
        Arc::new(MemoryIdempotency::default())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotency {
    async fn claim(&self, channel: &str, key: &str, pending: Duration) -> Result<Claim, CoreError> {
        let now = Instant::now();
        let mut r = lock(&self.inner);
        // Expired entries go at most once a second, in one pass.
        if r.swept.is_none_or(|at| at + Duration::from_secs(1) <= now) {
            r.by_key.retain(|_, (_, until)| *until > now);
            r.swept = Some(now);
        }
        let k = (channel.to_owned(), key.to_owned());
        match r.by_key.get(&k) {
            Some((Some(pos), until)) if *until > now => Ok(Claim::Done(pos.clone())),
            Some((None, until)) if *until > now => Ok(Claim::InProgress),
            _ => {
                r.by_key.insert(k, (None, now + pending));
                Ok(Claim::First)
            }
        }
    }

    async fn settle(
        &self,
        channel: &str,
        key: &str,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<(), CoreError> {
        let until = Instant::now() + ttl;
        lock(&self.inner).by_key.insert(
            (channel.to_owned(), key.to_owned()),
            (Some(position.clone()), until),
        );
        Ok(())
    }

    async fn release(&self, channel: &str, key: &str) -> Result<(), CoreError> {
        let mut r = lock(&self.inner);
        let k = (channel.to_owned(), key.to_owned());
        // Only a claim still on its way: a result another publish settled stays.
        if r.by_key.get(&k).is_some_and(|(result, _)| result.is_none()) {
            r.by_key.remove(&k);
        }
        Ok(())
    }
}

/// The in-memory stores as the node's storage.
pub fn storage() -> Storage {
    Storage {
        history: MemoryHistory::new(),
        presence: MemoryPresence::new(),
        revocations: MemoryRevocations::new(),
        idempotency: MemoryIdempotency::new(),
    }
}

#[cfg(test)]
mod tests {
    use rotor_core::conformance::Subject;
    use rotor_core::storage::{HistoryStore, IdempotencyStore, PresenceStore, RevocationStore};

    use super::*;

    async fn history_store(_test: &'static str) -> Option<Subject<dyn HistoryStore>> {
        Some(Subject::new(MemoryHistory::new()))
    }

    async fn presence_store(_test: &'static str) -> Option<Subject<dyn PresenceStore>> {
        Some(Subject::new(MemoryPresence::new()))
    }

    async fn revocation_store(_test: &'static str) -> Option<Subject<dyn RevocationStore>> {
        Some(Subject::new(MemoryRevocations::new()))
    }

    async fn idempotency_store(_test: &'static str) -> Option<Subject<dyn IdempotencyStore>> {
        Some(Subject::new(MemoryIdempotency::new()))
    }

    // The memory stores keep tokio's time: the suite's waits run on the paused clock.
    rotor_core::storage_suite! {
        history: history_store,
        presence: presence_store,
        revocations: revocation_store,
        idempotency: idempotency_store,
        paused_clock
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_streams_get_a_new_epoch_and_sweep_drops_them() {
        let h = MemoryHistory::new();
        let o = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(60),
        };
        let first = h.add("x", suite_pub(), &o).await.unwrap();
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(h.sweep(|_| Some(Duration::from_secs(5))), 0);
        let second = h.add("x", suite_pub(), &o).await.unwrap();
        assert_eq!(second.offset, 1);
        assert_ne!(
            second.epoch, first.epoch,
            "a recreated stream has a new epoch"
        );
    }

    fn suite_pub() -> Publication {
        Publication {
            delta: false,
            data: rotor_protocol::Raw::from_value(&1),
            info: None,
            offset: 0,
            tags: BTreeMap::new(),
            time: 0,
        }
    }
}

//! Storage traits: history, presence, the token revocation list and idempotent publish results. Implementations live in
//! their own crates (`rotor-store-memory`, `rotor-store-postgres`, `rotor-broker-redis`) and
//! are used as `Arc<dyn …>`; one conformance suite per trait (`crate::conformance`, behind
//! the `testing` feature) is stamped for each of them.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rotor_protocol::{ClientInfo, Publication, StreamPosition};

use crate::CoreError;

/// How a channel keeps history, from its channel options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications kept.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
    /// How long the stream position outlives the last publication.
    pub meta_ttl: Duration,
}

/// Which publications to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Start after this position (its epoch must match the stream's, else error 112; an
    /// empty epoch matches any).
    pub since: Option<StreamPosition>,
    /// Most publications to return; 0 returns only the stream position.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryFilter {
    /// Whether `since` may be read from a stream of `epoch`: the same epoch, or none given
    /// (an empty epoch matches any, as in centrifuge's history). Every store checks here.
    pub fn check_epoch(&self, epoch: &str) -> Result<(), CoreError> {
        match &self.since {
            Some(since) if !since.epoch.is_empty() && since.epoch != epoch => {
                Err(CoreError::UnrecoverablePosition)
            }
            _ => Ok(()),
        }
    }
}

/// Publications read from history plus the stream's current top position.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub publications: Vec<Publication>,
    pub position: StreamPosition,
}

/// A boxed future that owns what it needs.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Appends a publication, assigning the next offset of the channel's stream (starting at 1
    /// and increasing by exactly one), and trims the stream to the options' size and TTL.
    /// The future resolves to the publication's position once it is stored.
    ///
    /// The publication's place in the channel's order is fixed when `add` is *called*, not
    /// when the future is polled: two `add` calls for a channel get offsets in call order.
    /// That lets a store batch many publications into one write (group commit) while the
    /// node still delivers them in order.
    fn add(
        &self,
        channel: &str,
        publication: Publication,
        opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>>;

    /// Reads publications. A `since` with another epoch is `CoreError::UnrecoverablePosition`
    /// ([`HistoryFilter::check_epoch`]).
    async fn read(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryPage, CoreError>;

    /// Deletes the channel's publications; the stream position is kept.
    async fn remove(&self, channel: &str) -> Result<(), CoreError>;
}

#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Adds or refreshes a client's entry; entries not refreshed within `ttl` disappear.
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration) -> Result<(), CoreError>;
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), CoreError>;
    /// Every client in the channel, by client id.
    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError>;
    /// Number of clients and of distinct users.
    async fn stats(&self, channel: &str) -> Result<(u32, u32), CoreError>;
}

/// One revoked token, with its audit fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    pub jti: String,
    pub user: String,
    /// When the revoked token itself expires (Unix seconds); the entry may be dropped after it.
    /// 0 = keep until removed.
    pub expire_at: u64,
    pub revoked_at: u64,
    pub reason: String,
    pub actor: String,
    pub kicked: u32,
}

/// Filter for listing revocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationFilter {
    pub user: Option<String>,
    /// One token's entry.
    pub jti: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: usize,
    pub offset: usize,
}

#[async_trait]
pub trait RevocationStore: Send + Sync {
    async fn revoke(&self, entry: RevokedToken) -> Result<(), CoreError>;
    /// Every entry still in force at `now`, to build the in-memory check set.
    async fn active(&self, now: u64) -> Result<Vec<RevokedToken>, CoreError>;
    /// Newest first.
    async fn list(&self, filter: &RevocationFilter) -> Result<Vec<RevokedToken>, CoreError>;
    /// Deletes entries whose token expired before `now` (both kinds); returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, CoreError>;
    /// Records that every token of a user issued before a time is invalid (replacing an
    /// earlier invalidation of the same user and channel).
    async fn invalidate_user(&self, entry: UserInvalidation) -> Result<(), CoreError>;
    /// Every user invalidation still in force at `now`.
    async fn active_invalidations(&self, now: u64) -> Result<Vec<UserInvalidation>, CoreError>;
}

/// All tokens of `user` with `iat` before `issued_before` are invalid (optionally only
/// subscription tokens of one channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInvalidation {
    pub user: String,
    pub issued_before: u64,
    /// Empty: connection and subscription tokens; else subscription tokens of this channel.
    pub channel: String,
    /// When the entry may be dropped (Unix seconds); 0 = keep.
    pub expire_at: u64,
    pub invalidated_at: u64,
    pub reason: String,
    pub actor: String,
    pub kicked: u32,
}

/// What [`IdempotencyStore::claim`] found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No publish with this key within its window: the caller publishes, then settles (or
    /// releases) the claim.
    First,
    /// A publish with this key is on its way (another request, maybe on another node).
    InProgress,
    /// A publish with this key is done: its result.
    Done(StreamPosition),
}

/// Results of publishes made with an idempotency key, per channel, shared by every node
/// that shares the store: a repeat within the window gets the first result and publishes
/// nothing.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` of `channel` for one publish, atomically: only one caller gets
    /// [`Claim::First`]. A claim neither settled nor released lapses after `pending`.
    async fn claim(&self, channel: &str, key: &str, pending: Duration) -> Result<Claim, CoreError>;
    /// Records the claimed publish's result, kept for `ttl`.
    async fn settle(
        &self,
        channel: &str,
        key: &str,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<(), CoreError>;
    /// Gives a claim up (its publish failed), so that a retry publishes.
    async fn release(&self, channel: &str, key: &str) -> Result<(), CoreError>;
}

/// The storage a node uses.
#[derive(Clone)]
pub struct Storage {
    pub history: std::sync::Arc<dyn HistoryStore>,
    pub presence: std::sync::Arc<dyn PresenceStore>,
    pub revocations: std::sync::Arc<dyn RevocationStore>,
    pub idempotency: std::sync::Arc<dyn IdempotencyStore>,
}

//! The node: configuration, token verifiers, storage, broker and hub, and the operations the
//! server API and sessions share (publish, presence, history, node-wide commands).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rotor_auth::TokenVerifier;
use rotor_protocol::{
    ClientInfo, Disconnect, Publication, Push, Raw, StreamPosition, UnsubscribeCode,
};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerHandler, Control, NodeInfo, NodeMessageHandler};
use crate::channels::ChannelRules;
use crate::config::{ChannelOptions, CoreConfig};
use crate::hub::Hub;
use crate::storage::{HistoryFilter, HistoryOptions, HistoryPage, Storage};
use crate::CoreError;

/// Unix time derived from tokio's clock, so that tests with a paused clock move token time too.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_unix_ms: unix,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn unix_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }

    pub fn unix(&self) -> u64 {
        self.unix_ms() / 1000
    }

    /// The tokio instant at which Unix time reaches `unix` seconds.
    pub fn instant_at(&self, unix: u64) -> tokio::time::Instant {
        let target_ms = unix.saturating_mul(1000);
        self.base + Duration::from_millis(target_ms.saturating_sub(self.base_unix_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Options of a server-side publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub skip_history: bool,
    pub tags: BTreeMap<String, String>,
    pub info: Option<ClientInfo>,
}

pub(crate) struct NodeInner {
    pub(crate) config: CoreConfig,
    pub(crate) rules: ChannelRules,
    pub(crate) verifier: TokenVerifier,
    pub(crate) sub_verifier: TokenVerifier,
    pub(crate) storage: Storage,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) hub: Hub,
    pub(crate) observer: Arc<dyn crate::events::Observer>,
    pub(crate) revocations: crate::revocation::RevocationSet,
    pub(crate) clock: Clock,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    uid: String,
    started_at: tokio::time::Instant,
    order: crate::order::Sequencer,
    /// Where messages other nodes address to this one go (set by the server).
    node_messages: std::sync::OnceLock<Arc<dyn NodeMessageHandler>>,
}

/// A rotor node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl Node {
    /// Builds a node; fails with a message naming the bad setting.
    pub fn new(
        config: CoreConfig,
        storage: Storage,
        broker: Arc<dyn Broker>,
        observer: Arc<dyn crate::events::Observer>,
    ) -> Result<Node, CoreError> {
        let rules = ChannelRules::new(&config.channel).map_err(CoreError::BadRequest)?;
        let verifier = TokenVerifier::new(&config.client.token)
            .map_err(|e| CoreError::BadRequest(format!("client.token: {e}")))?;
        let sub_config = config
            .client
            .subscription_token
            .token_config(&config.client.token);
        let sub_verifier = TokenVerifier::new(&sub_config)
            .map_err(|e| CoreError::BadRequest(format!("client.subscription_token: {e}")))?;
        let uid = if config.node_uid.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.node_uid.clone()
        };
        let inner = Arc::new(NodeInner {
            config,
            rules,
            verifier,
            sub_verifier,
            storage,
            broker: broker.clone(),
            hub: Hub::default(),
            observer,
            revocations: Default::default(),
            clock: Clock::new(),
            shutdown: CancellationToken::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            uid,
            started_at: tokio::time::Instant::now(),
            order: Default::default(),
            node_messages: std::sync::OnceLock::new(),
        });
        broker.set_handler(Arc::new(Handler(Arc::downgrade(&inner))));
        Ok(Node { inner })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Cancelled when the node shuts down. A child of the node's own token: only
    /// [`Node::shutdown`] cancels, after setting the flag sessions check first.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    /// Whether `shutdown` has begun (an atomic read, for hot loops).
    pub fn stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Options of a channel, after checking its name.
    pub fn channel_options(&self, channel: &str) -> Result<Arc<ChannelOptions>, CoreError> {
        self.inner.rules.check_name(channel)?;
        self.inner.rules.options(channel).cloned()
    }

    pub(crate) fn history_options(&self, opts: &ChannelOptions) -> HistoryOptions {
        HistoryOptions {
            size: opts.history_size as usize,
            ttl: opts.history_ttl,
            meta_ttl: self.inner.config.channel.history_meta_ttl,
        }
    }

    /// Excludes publishing on this node: held by a subscriber while it joins the hub and reads
    /// its recovery position, so it neither misses nor repeats a publication. Waits for
    /// publications already in flight to be delivered.
    pub(crate) async fn lock_channel(
        &self,
        channel: &str,
    ) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.inner.order.exclusive(channel).await
    }

    /// Publishes to a channel: stores it in history when the channel keeps history, then fans
    /// it out through the broker. Returns the position (offset 0 and no epoch without history).
    pub async fn publish(
        &self,
        channel: &str,
        data: Raw,
        options: PublishOptions,
    ) -> Result<StreamPosition, CoreError> {
        let opts = self.channel_options(channel)?;
        let mut publication = Publication {
            data,
            info: options.info,
            offset: 0,
            tags: options.tags,
            time: self.inner.clock.unix_ms(),
        };
        // The ticket fixes this publication's place when it enters the history store; it is
        // handed to the broker only after every earlier one, while the store is free to
        // commit many at once (group commit).
        let history =
            (opts.history_enabled() && !options.skip_history).then(|| self.history_options(&opts));
        let (ticket, stored) = self
            .inner
            .order
            .submit(channel, || {
                history.map(|h| {
                    self.inner
                        .storage
                        .history
                        .add(channel, publication.clone(), &h)
                })
            })
            .await;
        let mut position = StreamPosition::default();
        if let Some(stored) = stored {
            position = stored.await?;
            publication.offset = position.offset;
        }
        ticket.turn().await;
        let sent = std::time::Instant::now();
        self.inner.broker.publish(channel, &publication).await?;
        self.inner
            .observer
            .published(publication.offset > 0, sent.elapsed());
        Ok(position)
    }

    /// Presence of a channel (no permission check: callers check).
    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.presence {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.presence.get(channel).await
    }

    /// Number of clients and users in a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.presence {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.presence.stats(channel).await
    }

    /// Reads history. `limit` < 0 means as many as allowed; it is capped by
    /// `client.history_max_publication_limit`.
    pub async fn history(
        &self,
        channel: &str,
        limit: i64,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryPage, CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.history_enabled() {
            return Err(CoreError::NotAvailable);
        }
        let max = self.inner.config.client.history_max_publication_limit;
        let limit = if limit < 0 {
            max
        } else {
            (limit as usize).min(max)
        };
        let filter = HistoryFilter {
            since,
            limit,
            reverse,
        };
        self.inner
            .storage
            .history
            .read(channel, &filter, &self.history_options(&opts))
            .await
    }

    pub async fn history_remove(&self, channel: &str) -> Result<(), CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.history_enabled() {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.history.remove(channel).await
    }

    /// Sends a node-wide command through the broker (it reaches every node, this one included).
    pub async fn control(&self, control: Control) -> Result<(), CoreError> {
        self.inner.broker.publish_control(&control).await
    }

    /// This node's numbers now.
    pub fn info(&self) -> NodeInfo {
        self.inner.info()
    }

    /// Every node that is up, this one (with its numbers now) included, sorted by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, CoreError> {
        let me = self.info();
        let mut nodes = self.inner.broker.nodes().await?;
        nodes.retain(|n| n.uid != me.uid);
        nodes.push(me);
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }

    /// Hands `payload` to node `uid`'s [`NodeMessageHandler`]; `Ok(false)` when no such node
    /// is up (always on a single node).
    pub async fn send_to_node(&self, uid: &str, payload: &str) -> Result<bool, CoreError> {
        self.inner.broker.send_to_node(uid, payload).await
    }

    /// Where messages other nodes address to this one go. Set once, before serving.
    pub fn set_node_message_handler(&self, handler: Arc<dyn NodeMessageHandler>) {
        if self.inner.node_messages.set(handler).is_err() {
            tracing::warn!("node message handler set twice; keeping the first");
        }
    }

    /// Revokes a token by its `jti`: refused from now on by this node (at once) and every
    /// other (through the broker, and through storage within their sync interval); live
    /// connections that use it are closed with 3500 "token revoked". The audit entry is
    /// stored; if storage fails the revocation still holds on this node and the error says so.
    pub async fn revoke_token(
        &self,
        jti: &str,
        expire_at: u64,
        user: &str,
        reason: &str,
        actor: &str,
    ) -> Result<crate::storage::RevokedToken, CoreError> {
        if jti.is_empty() {
            return Err(CoreError::BadRequest(
                "uid (the token's jti) required".into(),
            ));
        }
        let inner = &self.inner;
        inner.revocations.add_jti(jti, expire_at);
        inner.observer.revoked("token");
        let kicked = kick(inner, |c| c.creds().0.as_deref() == Some(jti));
        let user = if user.is_empty() {
            kicked
                .first()
                .map(|c| c.user().to_string())
                .unwrap_or_default()
        } else {
            user.to_string()
        };
        let entry = crate::storage::RevokedToken {
            jti: jti.to_string(),
            user,
            expire_at,
            revoked_at: inner.clock.unix(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            kicked: kicked.len() as u32,
        };
        inner.storage.revocations.revoke(entry.clone()).await?;
        inner
            .broker
            .publish_control(&Control::Revoke {
                jti: jti.to_string(),
                expire_at,
            })
            .await?;
        Ok(entry)
    }

    /// Invalidates every token of `user` issued before `issued_before` (all tokens, or the
    /// subscription tokens of `channel`), closing matching live connections.
    pub async fn invalidate_user_tokens(
        &self,
        user: &str,
        issued_before: u64,
        channel: &str,
        expire_at: u64,
        reason: &str,
        actor: &str,
    ) -> Result<crate::storage::UserInvalidation, CoreError> {
        if user.is_empty() {
            return Err(CoreError::BadRequest("user required".into()));
        }
        let inner = &self.inner;
        inner
            .revocations
            .add_user(user, channel, issued_before, expire_at);
        inner.observer.revoked("user");
        let kicked = if channel.is_empty() {
            kick(inner, |c| c.user() == user).len()
        } else {
            0
        };
        let entry = crate::storage::UserInvalidation {
            user: user.to_string(),
            issued_before,
            channel: channel.to_string(),
            expire_at,
            invalidated_at: inner.clock.unix(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            kicked: kicked as u32,
        };
        inner
            .storage
            .revocations
            .invalidate_user(entry.clone())
            .await?;
        let control = Control::InvalidateUser {
            user: user.to_string(),
            channel: channel.to_string(),
            issued_before,
            expire_at,
        };
        inner.broker.publish_control(&control).await?;
        Ok(entry)
    }

    /// Reloads the revocation set from storage (done at startup and every sync interval, so
    /// revocations made on other nodes sharing the storage apply here too) and closes local
    /// connections it now refuses. Returns the number of entries in force.
    pub async fn sync_revocations(&self) -> Result<usize, CoreError> {
        let inner = &self.inner;
        let now = inner.clock.unix();
        // Entries for tokens that expired go even when storage cannot be read.
        inner.revocations.purge(now);
        let tokens = inner.storage.revocations.active(now).await?;
        let users = inner.storage.revocations.active_invalidations(now).await?;
        inner.revocations.replace(&tokens, &users);
        kick(inner, |_| true);
        Ok(inner.revocations.len())
    }

    /// The revocation check the hot path uses (in memory).
    pub fn token_refusal(
        &self,
        jti: Option<&str>,
        user: &str,
        iat: Option<u64>,
        channel: Option<&str>,
    ) -> Option<crate::revocation::Refusal> {
        self.inner.revocations.check(jti, user, iat, channel)
    }

    /// Closes every session with 3001 (shutdown) and waits until they are gone, at most
    /// `timeout`. Returns the number of connections still open when it gave up.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + timeout;
        let left = loop {
            let left = self.inner.hub.num_clients();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Other nodes stop listing this one (and routing to it).
        let rest = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(rest, self.inner.broker.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the broker did not leave the cluster in time");
        }
        left
    }
}

impl NodeInner {
    fn info(&self) -> NodeInfo {
        let hub = &self.hub;
        NodeInfo {
            uid: self.uid.clone(),
            name: self.config.node_name.clone(),
            version: self.config.version.clone(),
            num_clients: hub.num_clients(),
            num_users: hub.num_users(),
            num_channels: hub.num_channels(),
            num_subs: hub.num_subscriptions(),
            uptime: self.started_at.elapsed().as_secs(),
        }
    }
}

/// Receives from the broker and delivers to local connections.
struct Handler(std::sync::Weak<NodeInner>);

impl BrokerHandler for Handler {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        let Some(node) = self.0.upgrade() else { return };
        if publication.time > 0 {
            let lag = node.clock.unix_ms().saturating_sub(publication.time);
            node.observer.delivered(Duration::from_millis(lag));
        }
        let push = Push {
            channel: channel.to_string(),
            publication: Some(publication.clone()),
            ..Push::default()
        };
        node.hub
            .broadcast(channel, crate::hub::wrap_push(&push), false);
    }

    fn on_join(&self, channel: &str, info: &ClientInfo) {
        let Some(node) = self.0.upgrade() else { return };
        let push = Push {
            channel: channel.to_string(),
            join: Some(rotor_protocol::Join { info: info.clone() }),
            ..Push::default()
        };
        node.hub
            .broadcast(channel, crate::hub::wrap_push(&push), true);
    }

    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        let Some(node) = self.0.upgrade() else { return };
        let push = Push {
            channel: channel.to_string(),
            leave: Some(rotor_protocol::Leave { info: info.clone() }),
            ..Push::default()
        };
        node.hub
            .broadcast(channel, crate::hub::wrap_push(&push), true);
    }

    fn on_control(&self, control: &Control) {
        let Some(node) = self.0.upgrade() else { return };
        match control {
            Control::Disconnect {
                user,
                client,
                session,
                whitelist,
                code,
                reason,
            } => {
                for c in node
                    .hub
                    .user_connections(user, client.as_deref(), session.as_deref())
                {
                    if !whitelist.iter().any(|w| w == c.id()) {
                        c.close(Disconnect::custom(*code, reason.clone()));
                    }
                }
            }
            Control::Revoke { jti, expire_at } => {
                node.revocations.add_jti(jti, *expire_at);
                kick(&node, |_| true);
            }
            Control::InvalidateUser {
                user,
                channel,
                issued_before,
                expire_at,
            } => {
                node.revocations
                    .add_user(user, channel, *issued_before, *expire_at);
                kick(&node, |c| c.user() == user);
            }
            Control::Unsubscribe {
                user,
                client,
                session,
                ..
            }
            | Control::Subscribe {
                user,
                client,
                session,
                ..
            }
            | Control::Refresh {
                user,
                client,
                session,
                ..
            } => {
                for c in node
                    .hub
                    .user_connections(user, client.as_deref(), session.as_deref())
                {
                    c.send_control(control.clone());
                }
            }
        }
    }

    fn on_node_message(&self, payload: &str) {
        let Some(node) = self.0.upgrade() else { return };
        match node.node_messages.get() {
            Some(h) => h.on_node_message(payload),
            None => tracing::debug!("a node message arrived before anything listens for them"),
        }
    }

    fn node_info(&self) -> Option<NodeInfo> {
        self.0.upgrade().map(|node| node.info())
    }
}

/// The disconnect for a connection whose token was revoked: terminal, so SDKs do not
/// reconnect with the same token.
pub(crate) fn revoked_disconnect() -> Disconnect {
    Disconnect::INVALID_TOKEN.with_reason("token revoked")
}

/// Closes local connections (among those `candidate` selects) whose connection token the
/// revocation set now refuses; returns them.
fn kick(
    node: &NodeInner,
    candidate: impl Fn(&crate::hub::ClientHandle) -> bool,
) -> Vec<Arc<crate::hub::ClientHandle>> {
    let mut kicked = Vec::new();
    for c in node.hub.all_connections() {
        if c.closing() || !candidate(&c) {
            continue;
        }
        let (jti, iat) = c.creds();
        if node
            .revocations
            .check(jti.as_deref(), c.user(), iat, None)
            .is_some()
        {
            tracing::info!(client = %c.id(), user = %c.user(), "closing a connection whose token was revoked");
            c.close(revoked_disconnect());
            kicked.push(c);
        }
    }
    if !kicked.is_empty() {
        node.observer.kicked(kicked.len());
    }
    kicked
}

/// The default unsubscribe push for server-side unsubscribes.
pub(crate) fn server_unsubscribe() -> rotor_protocol::UnsubscribePush {
    rotor_protocol::UnsubscribePush {
        code: UnsubscribeCode::Server.code(),
        reason: UnsubscribeCode::Server.reason().into(),
    }
}

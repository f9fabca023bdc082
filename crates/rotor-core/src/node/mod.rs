//! The node: configuration, token verifiers, storage, broker and hub, and the operations the
//! server API and sessions share. It is the only way into them: sessions, the server API and
//! background tasks call [`Node`]'s methods, never the parts.
//!
//! - `channel`: publishing and channel membership (the per-channel order), presence, history;
//! - `revoke`: token revocation and the connections it closes;
//! - `cluster`: what arrives from the broker (publications, controls, node messages).

mod channel;
mod cluster;
mod revoke;
mod survey;

pub use crate::broker::ConnectionsQuery;
pub use survey::{ConnectionInfo, Connections, SURVEY_TIMEOUT};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rotor_auth::TokenVerifier;
use rotor_protocol::ClientInfo;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, NodeInfo, NodeMessageHandler};
use crate::channels::ChannelRules;
use crate::clock::Clock;
use crate::config::{ChannelOptions, CoreConfig};
use crate::events::Observer;
use crate::hub::Hub;
use crate::proxy::{ForwardedHeaders, Proxies};
use crate::revocation::RevocationSet;
use crate::storage::Storage;
use crate::CoreError;

pub(crate) use channel::Membership;
pub(crate) use revoke::revoked_disconnect;

/// Options of a server-side publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub skip_history: bool,
    pub tags: BTreeMap<String, String>,
    pub info: Option<ClientInfo>,
    /// A repeat with the same key within [`IDEMPOTENT_RESULT_TTL`] publishes nothing and
    /// gets the first publish's result.
    pub idempotency_key: Option<String>,
    /// Subscribers that negotiated delta compression get a fossil delta against the
    /// previous publication when it is smaller (also forced by the channel's `delta_publish`).
    pub delta: bool,
}

/// How long the result of a publish with an idempotency key is kept (Centrifugo's 5
/// minutes).
pub const IDEMPOTENT_RESULT_TTL: Duration = Duration::from_secs(300);

/// Everything a node is made of. Its fields are private to this module and its children:
/// the rest of the core goes through [`Node`]'s methods.
struct NodeInner {
    config: CoreConfig,
    /// Channel and namespace options, and the token keys: what [`Node::reload`] replaces
    /// (read once per connect, subscribe or refresh; never on the fan-out path).
    rules: RwLock<Arc<ChannelRules>>,
    /// Connection tokens.
    verifier: RwLock<Arc<TokenVerifier>>,
    /// Subscription tokens (their own keys, or the connection's).
    sub_verifier: RwLock<Arc<TokenVerifier>>,
    storage: Storage,
    broker: Arc<dyn Broker>,
    hub: Hub,
    observer: Arc<dyn Observer>,
    revocations: RevocationSet,
    clock: Clock,
    /// Cancelled by [`Node::shutdown`]; every session and background task holds a child.
    shutdown: CancellationToken,
    /// Set before `shutdown` is cancelled: an atomic read for the session loop.
    stopping: AtomicBool,
    uid: String,
    started_at: tokio::time::Instant,
    order: crate::order::Sequencer,
    /// Where messages other nodes address to this one go (set by the server).
    node_messages: OnceLock<Arc<dyn NodeMessageHandler>>,
    /// The application backend's proxies (none: tokens and options decide).
    proxies: Proxies,
    /// Surveys of the other nodes this node waits on.
    surveys: survey::Surveys,
}

/// A rotor node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl Node {
    /// Builds a node without proxies; fails with a message naming the bad setting.
    pub fn new(
        config: CoreConfig,
        storage: Storage,
        broker: Arc<dyn Broker>,
        observer: Arc<dyn Observer>,
    ) -> Result<Node, CoreError> {
        Node::with_proxies(config, storage, broker, observer, Proxies::none())
    }

    /// Builds a node that asks the application backend through `proxies` (see
    /// [`Proxies::from_config`]).
    pub fn with_proxies(
        config: CoreConfig,
        storage: Storage,
        broker: Arc<dyn Broker>,
        observer: Arc<dyn Observer>,
        proxies: Proxies,
    ) -> Result<Node, CoreError> {
        let (rules, verifier, sub_verifier) = reloadable(&config)?;
        let uid = if config.node_uid.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.node_uid.clone()
        };
        let inner = Arc::new(NodeInner {
            config,
            rules: RwLock::new(Arc::new(rules)),
            verifier: RwLock::new(Arc::new(verifier)),
            sub_verifier: RwLock::new(Arc::new(sub_verifier)),
            storage,
            broker: broker.clone(),
            hub: Hub::default(),
            observer,
            revocations: Default::default(),
            clock: Clock::new(),
            shutdown: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            uid,
            started_at: tokio::time::Instant::now(),
            order: Default::default(),
            node_messages: OnceLock::new(),
            proxies,
            surveys: Default::default(),
        });
        broker.set_handler(Arc::new(cluster::Handler(Arc::downgrade(&inner))));
        Ok(Node { inner })
    }

    #[inline]
    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    #[inline]
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    #[inline]
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
    #[inline]
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Options of a channel, after checking its name.
    pub fn channel_options(&self, channel: &str) -> Result<Arc<ChannelOptions>, CoreError> {
        let rules = self.inner.rules();
        rules.check_name(channel)?;
        rules.options(channel).cloned()
    }

    /// Replaces the token keys (connection and subscription) and the channel and namespace
    /// options with `config`'s, as `SIGHUP` asks. Connections stay; tokens are checked with
    /// the new keys from their next connect, refresh or subscribe on, and channels get the
    /// new options from their next subscribe. A configuration that does not build changes
    /// nothing and says why. The rest of `config` (client limits, proxies, history meta
    /// TTL) is read at start only.
    pub fn reload(&self, config: &CoreConfig) -> Result<(), CoreError> {
        let (rules, verifier, sub_verifier) = reloadable(config)?;
        // Proxies are built at start: a namespace that would turn on one not built then
        // would be served without asking the backend, so such a reload is refused.
        let proxies = &self.inner.proxies;
        for (key, o) in config.channel.all_options() {
            for (on, built, what) in [
                (
                    o.subscribe_proxy_enabled,
                    proxies.subscribe_for(&o).is_some(),
                    "subscribe",
                ),
                (
                    o.publish_proxy_enabled,
                    proxies.publish_for(&o).is_some(),
                    "publish",
                ),
                (
                    o.sub_refresh_proxy_enabled,
                    proxies.sub_refresh_for(&o).is_some(),
                    "sub_refresh",
                ),
            ] {
                if on && !built {
                    return Err(CoreError::BadRequest(format!(
                        "{key}: its {what} proxy was not in use at start; restart rotor to turn it on"
                    )));
                }
            }
        }
        *write(&self.inner.rules) = Arc::new(rules);
        *write(&self.inner.verifier) = Arc::new(verifier);
        *write(&self.inner.sub_verifier) = Arc::new(sub_verifier);
        Ok(())
    }

    /// Where the core reports what happens (metrics).
    #[inline]
    pub(crate) fn observer(&self) -> &dyn Observer {
        &*self.inner.observer
    }

    /// The application backend's proxies.
    pub(crate) fn proxies(&self) -> &Proxies {
        &self.inner.proxies
    }

    /// The headers of a connection request that some proxy passes on to the backend (names in
    /// lower case, values that are text); nothing, at no cost, when no proxy passes any on.
    pub fn forwarded_headers<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<Arc<ForwardedHeaders>> {
        let names = self.inner.proxies.http_headers();
        if names.is_empty() {
            return None;
        }
        let text = headers
            .into_iter()
            .filter_map(|(n, v)| Some((n, std::str::from_utf8(v).ok()?)));
        let http = crate::proxy::listed(names, text);
        (!http.is_empty()).then(|| {
            Arc::new(ForwardedHeaders {
                http,
                emulated: Vec::new(),
            })
        })
    }

    /// Verifies connection tokens (the keys of the moment: see [`Node::reload`]).
    pub(crate) fn verifier(&self) -> Arc<TokenVerifier> {
        read(&self.inner.verifier)
    }

    /// Verifies subscription tokens.
    pub(crate) fn sub_verifier(&self) -> Arc<TokenVerifier> {
        read(&self.inner.sub_verifier)
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

    /// Closes every session with 3001 (shutdown), leaves the cluster, and waits until the
    /// sessions are gone, all within `timeout`. Returns the number of connections still open
    /// when it gave up.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + timeout;
        // Other nodes stop listing this one (and routing to it) while its sessions close;
        // the broker goes on carrying publications and controls until the node is dropped.
        if tokio::time::timeout(timeout, self.inner.broker.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the broker did not leave the cluster in time");
        }
        loop {
            let left = self.inner.hub.num_clients();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// What [`Node::reload`] replaces, built from a configuration (or the reason it cannot be).
fn reloadable(
    config: &CoreConfig,
) -> Result<(ChannelRules, TokenVerifier, TokenVerifier), CoreError> {
    let rules = ChannelRules::new(&config.channel).map_err(CoreError::BadRequest)?;
    let verifier = TokenVerifier::new(&config.client.token)
        .map_err(|e| CoreError::BadRequest(format!("client.token: {e}")))?;
    let sub_config = config
        .client
        .subscription_token
        .token_config(&config.client.token);
    let sub_verifier = TokenVerifier::new(&sub_config)
        .map_err(|e| CoreError::BadRequest(format!("client.subscription_token: {e}")))?;
    Ok((rules, verifier, sub_verifier))
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(lock: &RwLock<Arc<T>>) -> std::sync::RwLockWriteGuard<'_, Arc<T>> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl NodeInner {
    /// The channel rules of the moment.
    fn rules(&self) -> Arc<ChannelRules> {
        read(&self.rules)
    }
}

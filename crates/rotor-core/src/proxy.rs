//! The application backend as the core asks it: connect, refresh, subscribe, publish,
//! sub_refresh and RPC decided by the backend instead of by tokens and namespace options
//! (Centrifugo's proxies).
//!
//! The core decides *when* to ask and what an answer means for the client (codes, expiry,
//! retries); a [`Proxy`] only carries the question to the backend and brings the answer
//! back. The HTTP implementation lives in its own crate (`rotor-proxy`); nothing here does
//! IO, and nothing here knows how a question is encoded on the wire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use rotor_auth::{ChannelOverride, SubscriptionClaim};
use rotor_protocol::{Disconnect, Error, Protocol, Raw};

use crate::config::{ChannelOptions, CoreConfig, ProxyName, DEFAULT_PROXY};
use crate::CoreError;

/// What a proxy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    SubRefresh,
    Rpc,
}

impl ProxyKind {
    /// Centrifugo's name for it (metrics label `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Connect => "connect",
            ProxyKind::Refresh => "refresh",
            ProxyKind::Subscribe => "subscribe",
            ProxyKind::Publish => "publish",
            ProxyKind::SubRefresh => "sub_refresh",
            ProxyKind::Rpc => "rpc",
        }
    }
}

/// The connection a question is about.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: Arc<str>,
    /// `websocket`, `http_stream`, `sse`, `uni_websocket`, ...
    pub transport: &'static str,
    pub protocol: Protocol,
    /// Empty for an anonymous connection (and before connect).
    pub user: Arc<str>,
    /// The connection's `meta` (from its token or the connect proxy).
    pub meta: Option<Raw>,
    /// What the client's connection request carried, for the proxies that pass it on.
    pub headers: Option<Arc<ForwardedHeaders>>,
}

/// Headers a connection brought, kept (only the names some proxy passes on) from connect
/// to its end, so that every call about the connection carries the same ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedHeaders {
    /// From the HTTP request that opened the connection; names in lower case.
    pub http: Vec<(String, String)>,
    /// From the `headers` of the client's connect command; names in lower case.
    pub emulated: Vec<(String, String)>,
}

impl ForwardedHeaders {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.emulated.is_empty()
    }
}

/// The headers whose names are in `names` (lower case), compared without case, with their
/// names in lower case: what a connection keeps for its proxies.
pub(crate) fn listed<'a>(
    names: &[String],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(n, _)| names.iter().any(|k| k.eq_ignore_ascii_case(n)))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect()
}

/// A connect without a token.
#[derive(Debug, Clone, Default)]
pub struct ConnectCall {
    /// The connect command's `data`.
    pub data: Option<Raw>,
    /// The SDK's name and version.
    pub name: String,
    pub version: String,
    /// Server-side subscriptions the client asks to recover (`subs` of the connect command).
    pub channels: Vec<String>,
}

/// The backend accepted a connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectGrant {
    /// Empty: anonymous.
    pub user: String,
    /// Unix seconds; `None` (0 on the wire) never expires.
    pub expire_at: Option<u64>,
    pub info: Option<Raw>,
    /// Sent to the client in its connect reply.
    pub data: Option<Raw>,
    /// Server-side subscriptions (namespace defaults), and with options (`subs` wins).
    pub channels: Vec<String>,
    pub subs: BTreeMap<String, SubscriptionClaim>,
    /// Kept on the connection, never sent to the client.
    pub meta: Option<Raw>,
}

/// The backend's word on a connection or subscription that expires.
#[derive(Debug, Clone, Default)]
pub struct RefreshGrant {
    /// End it now (3005 for a connection, 2501 / 3006 for a subscription).
    pub expired: bool,
    /// The new expiry (Unix seconds); 0 or a time past ends it as `expired` does.
    pub expire_at: u64,
    /// Replaces the connection's (or the subscription's channel) info.
    pub info: Option<Raw>,
    /// Replaces the connection's meta (connections only).
    pub meta: Option<Raw>,
}

/// A subscribe decided by the backend.
#[derive(Debug, Clone, Default)]
pub struct SubscribeCall {
    pub channel: String,
    pub data: Option<Raw>,
}

/// The backend allowed a subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeGrant {
    /// Channel info (presence, join/leave, publications of this client).
    pub info: Option<Raw>,
    /// Sent to the client in its subscribe reply.
    pub data: Option<Raw>,
    pub override_: ChannelOverride,
    /// Unix seconds; 0: the subscription does not expire.
    pub expire_at: u64,
}

/// The backend accepted a publication.
#[derive(Debug, Clone, Default)]
pub struct PublishGrant {
    /// Replaces the publication's data.
    pub data: Option<Raw>,
    /// Publish without keeping it in history.
    pub skip_history: bool,
    /// A repeat with this key within the window publishes nothing (idempotent publish).
    pub idempotency_key: Option<String>,
    /// Delta subscribers get a delta against the previous publication.
    pub delta: bool,
}

/// What the backend answered.
#[derive(Debug, Clone)]
pub enum Answer<T> {
    /// A `result`.
    Granted(T),
    /// An answer with none of `result`, `error`, `disconnect` (`{}`).
    Empty,
    /// An error for the client's command (the backend's code and message).
    Error(Error),
    /// End the connection with this code.
    Disconnect(Disconnect),
}

/// The backend could not be asked or did not answer usably: unreachable, too slow, a status
/// other than 200, an answer that is not what the protocol says.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ProxyError(pub String);

/// What a call ends in.
pub type ProxyResult<T> = Result<Answer<T>, ProxyError>;

impl<T> Answer<T> {
    /// The grant (`None` for an empty answer), or what the client gets instead: the
    /// backend's error reply or disconnect.
    pub fn into_result(self) -> Result<Option<T>, CoreError> {
        match self {
            Answer::Granted(g) => Ok(Some(g)),
            Answer::Empty => Ok(None),
            Answer::Error(e) => Err(CoreError::Backend(e)),
            Answer::Disconnect(d) => Err(CoreError::Disconnect(d)),
        }
    }
}

/// A backend that cannot be asked is a temporary error (100): the client retries.
impl From<ProxyError> for CoreError {
    fn from(e: ProxyError) -> CoreError {
        CoreError::Unavailable(format!("proxy: {e}"))
    }
}

/// One backend endpoint. A proxy may be asked any kind of question (a named proxy can serve
/// several kinds); it must bound every call in time and never panic on what the backend says.
#[async_trait]
pub trait Proxy: Send + Sync {
    async fn connect(&self, caller: &Caller, call: &ConnectCall) -> ProxyResult<ConnectGrant>;
    async fn refresh(&self, caller: &Caller) -> ProxyResult<RefreshGrant>;
    async fn subscribe(&self, caller: &Caller, call: &SubscribeCall)
        -> ProxyResult<SubscribeGrant>;
    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &Raw,
    ) -> ProxyResult<PublishGrant>;
    async fn sub_refresh(&self, caller: &Caller, channel: &str) -> ProxyResult<RefreshGrant>;
    /// The backend's `data` for the client (none: an empty result).
    async fn rpc(
        &self,
        caller: &Caller,
        method: &str,
        data: Option<&Raw>,
    ) -> ProxyResult<Option<Raw>>;
}

/// A proxy with the name it is known by (metrics, logs).
#[derive(Clone)]
pub struct NamedProxy {
    pub name: Arc<str>,
    pub proxy: Arc<dyn Proxy>,
}

impl std::fmt::Debug for NamedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedProxy")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every proxy the node may ask, by kind and name, and the headers they pass on.
#[derive(Clone, Default, Debug)]
pub struct Proxies {
    connect: Option<NamedProxy>,
    refresh: Option<NamedProxy>,
    /// The kinds' own proxies (`channel.proxy.*`, `rpc.proxy`) under `default`, and the named
    /// ones under their names.
    by_name: HashMap<ProxyKind, HashMap<String, NamedProxy>>,
    /// Lower-case names of the HTTP headers some proxy passes on.
    http_headers: Vec<String>,
    /// Lower-case names of the connect command's headers some proxy passes on.
    emulated_headers: Vec<String>,
}

/// Builds the proxy for one section of the configuration.
pub type ProxyFactory<'a> =
    dyn FnMut(&str, &crate::config::ProxyConfig) -> Result<Arc<dyn Proxy>, String> + 'a;

impl Proxies {
    /// No proxies: tokens and namespace options decide everything.
    pub fn none() -> Proxies {
        Proxies::default()
    }

    /// The proxies `config` asks for, built with `make` (given the proxy's name and section).
    /// Fails with a message naming the key when a proxy is used but has no endpoint, a name
    /// is not known, or `proxies` names one twice.
    pub fn from_config(
        config: &CoreConfig,
        make: &mut ProxyFactory<'_>,
    ) -> Result<Proxies, String> {
        let mut out = Proxies::default();
        let headers = |p: &crate::config::ProxyConfig, out: &mut Proxies| {
            for h in &p.http_headers {
                push_unique(&mut out.http_headers, h.to_ascii_lowercase());
            }
            for h in &p.emulated_headers {
                push_unique(&mut out.emulated_headers, h.to_ascii_lowercase());
            }
        };
        let mut build = |key: &str,
                         name: &str,
                         p: &crate::config::ProxyConfig,
                         out: &mut Proxies|
         -> Result<NamedProxy, String> {
            if p.endpoint.is_empty() {
                return Err(format!("{key}.endpoint is not set"));
            }
            if p.timeout.is_zero() {
                return Err(format!("{key}.timeout must be above 0"));
            }
            if p.max_in_flight == 0 {
                return Err(format!("{key}.max_in_flight must be above 0"));
            }
            headers(p, out);
            let proxy = make(name, p).map_err(|e| format!("{key}: {e}"))?;
            Ok(NamedProxy {
                name: Arc::from(name),
                proxy,
            })
        };
        let client = &config.client.proxy;
        if client.connect.enabled {
            let p = client.connect.proxy();
            out.connect = Some(build("client.proxy.connect", DEFAULT_PROXY, &p, &mut out)?);
        }
        if client.refresh.enabled {
            let p = client.refresh.proxy();
            out.refresh = Some(build("client.proxy.refresh", DEFAULT_PROXY, &p, &mut out)?);
        }
        // Which (kind, name) pairs are used.
        let mut used: Vec<(ProxyKind, ProxyName)> = Vec::new();
        let channel = &config.channel;
        for (key, o) in channel.all_options() {
            for (kind, enabled, name, field) in [
                (
                    ProxyKind::Subscribe,
                    o.subscribe_proxy_enabled,
                    &o.subscribe_proxy_name,
                    "subscribe_proxy_name",
                ),
                (
                    ProxyKind::Publish,
                    o.publish_proxy_enabled,
                    &o.publish_proxy_name,
                    "publish_proxy_name",
                ),
                (
                    ProxyKind::SubRefresh,
                    o.sub_refresh_proxy_enabled,
                    &o.sub_refresh_proxy_name,
                    "sub_refresh_proxy_name",
                ),
            ] {
                check_name_known(config, name, &format!("{key}.{field}"))?;
                if enabled {
                    used.push((kind, name.clone()));
                }
            }
        }
        let rpc = &config.rpc;
        let mut rpc_names = std::collections::HashSet::new();
        for n in &rpc.namespaces {
            if !valid_name(&n.name) {
                return Err(format!(
                    "rpc.namespaces: name {:?} must match ^[-a-zA-Z0-9_.]{{2,}}$",
                    n.name
                ));
            }
            if !rpc_names.insert(n.name.as_str()) {
                return Err(format!("rpc.namespaces: name {} appears twice", n.name));
            }
        }
        for o in std::iter::once(&rpc.without_namespace).chain(rpc.namespaces.iter()) {
            let key = if o.name.is_empty() {
                "rpc.without_namespace".to_string()
            } else {
                format!("rpc.namespaces[{}]", o.name)
            };
            check_name_known(config, &o.proxy_name, &format!("{key}.proxy_name"))?;
            if o.proxy_enabled {
                used.push((ProxyKind::Rpc, o.proxy_name.clone()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &config.proxies {
            if !valid_name(&p.name) {
                return Err(format!(
                    "proxies: name {:?} must match ^[-a-zA-Z0-9_.]{{2,}}$",
                    p.name
                ));
            }
            if p.name == DEFAULT_PROXY {
                return Err("proxies: the name default is reserved".into());
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("proxies: name {} appears twice", p.name));
            }
        }
        for (kind, name) in used {
            let name_key = if name.is_default() {
                DEFAULT_PROXY.to_string()
            } else {
                name.0.clone()
            };
            if out
                .by_name
                .get(&kind)
                .is_some_and(|m| m.contains_key(&name_key))
            {
                continue;
            }
            let built = if name.is_default() {
                let (key, section) = match kind {
                    ProxyKind::Subscribe => ("channel.proxy.subscribe", &channel.proxy.subscribe),
                    ProxyKind::Publish => ("channel.proxy.publish", &channel.proxy.publish),
                    ProxyKind::SubRefresh => {
                        ("channel.proxy.sub_refresh", &channel.proxy.sub_refresh)
                    }
                    ProxyKind::Rpc => ("rpc.proxy", &rpc.proxy),
                    ProxyKind::Connect | ProxyKind::Refresh => unreachable!("not named"),
                };
                build(key, DEFAULT_PROXY, section, &mut out)?
            } else {
                let p = config
                    .proxies
                    .iter()
                    .find(|p| p.name == name.0)
                    .expect("checked above");
                // One backend client per named proxy, whatever it is asked.
                match out.by_name.values().find_map(|m| m.get(&name.0)) {
                    Some(existing) => existing.clone(),
                    None => build(
                        &format!("proxies[{}]", p.name),
                        &p.name,
                        &p.proxy(),
                        &mut out,
                    )?,
                }
            };
            out.by_name.entry(kind).or_default().insert(name_key, built);
        }
        Ok(out)
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.connect.is_none() && self.refresh.is_none() && self.by_name.is_empty()
    }

    pub fn connect(&self) -> Option<&NamedProxy> {
        self.connect.as_ref()
    }

    /// The refresh proxy: when set, every connection's expiry is extended by the backend.
    pub fn refresh(&self) -> Option<&NamedProxy> {
        self.refresh.as_ref()
    }

    /// The proxy of `kind` a namespace (or RPC namespace) names.
    pub fn named(&self, kind: ProxyKind, name: &ProxyName) -> Option<&NamedProxy> {
        let key = if name.is_default() {
            DEFAULT_PROXY
        } else {
            name.0.as_str()
        };
        self.by_name.get(&kind)?.get(key)
    }

    /// The subscribe proxy of a namespace, when it asks the backend.
    pub fn subscribe_for(&self, opts: &ChannelOptions) -> Option<&NamedProxy> {
        opts.subscribe_proxy_enabled
            .then(|| self.named(ProxyKind::Subscribe, &opts.subscribe_proxy_name))
            .flatten()
    }

    /// The publish proxy of a namespace, when it asks the backend.
    pub fn publish_for(&self, opts: &ChannelOptions) -> Option<&NamedProxy> {
        opts.publish_proxy_enabled
            .then(|| self.named(ProxyKind::Publish, &opts.publish_proxy_name))
            .flatten()
    }

    /// The sub_refresh proxy of a namespace, when the backend extends its subscriptions.
    pub fn sub_refresh_for(&self, opts: &ChannelOptions) -> Option<&NamedProxy> {
        opts.sub_refresh_proxy_enabled
            .then(|| self.named(ProxyKind::SubRefresh, &opts.sub_refresh_proxy_name))
            .flatten()
    }

    /// Whether any RPC may reach a backend (without one, every RPC is answered 108).
    pub fn any_rpc(&self) -> bool {
        self.by_name.contains_key(&ProxyKind::Rpc)
    }

    /// Lower-case names of the HTTP headers to keep from a connection request.
    pub fn http_headers(&self) -> &[String] {
        &self.http_headers
    }

    /// Lower-case names of the connect command's headers to keep.
    pub fn emulated_headers(&self) -> &[String] {
        &self.emulated_headers
    }
}

fn push_unique(list: &mut Vec<String>, name: String) {
    if !list.contains(&name) {
        list.push(name);
    }
}

/// Centrifugo's rule for proxy and RPC namespace names.
fn valid_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_name_known(config: &CoreConfig, name: &ProxyName, key: &str) -> Result<(), String> {
    if name.is_default() || config.proxies.iter().any(|p| p.name == name.0) {
        Ok(())
    } else {
        Err(format!("{key}: no proxy named {:?} in proxies", name.0))
    }
}

//! Settings the core acts on, with Centrifugo v6 key names and defaults.

use std::time::Duration;

use rotor_auth::TokenConfig;
use serde::{Deserialize, Serialize};

macro_rules! channel_options {
    ($(#[$outer:meta])* $name:ident { $($(#[$extra_meta:meta])* $extra:ident: $extra_ty:ty,)* }) => {
        $(#[$outer])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$extra_meta])* pub $extra: $extra_ty,)*
            /// Keep a presence set for the channel (who is subscribed).
            pub presence: bool,
            /// Send join/leave pushes to subscribers that ask for them.
            pub join_leave: bool,
            /// Send join/leave pushes to every subscriber, asked or not.
            pub force_push_join_leave: bool,
            /// Publications kept per channel (history is on when this and `history_ttl` are > 0).
            pub history_size: u32,
            /// How long publications stay in history.
            #[serde(with = "crate::duration")]
            pub history_ttl: Duration,
            /// Make every subscription recoverable, whether the client asks or not.
            pub force_recovery: bool,
            /// Let clients ask for recovery (`recoverable: true`).
            pub allow_recovery: bool,
            /// How a recovering subscription catches up: `stream` (every missed
            /// publication, or none and `recovered: false`) or `cache` (only the latest
            /// publication: the channel holds a state, not a log).
            pub force_recovery_mode: RecoveryMode,
            /// In `cache` mode, every subscription gets the latest publication when it
            /// subscribes, whether the client asks to recover or not (server-side ones too).
            /// Needs `force_recovery` and `force_recovery_mode = "cache"`.
            pub auto_cache_recover: bool,
            /// Make every subscription positioned.
            pub force_positioning: bool,
            /// Let clients ask for positioning.
            pub allow_positioning: bool,
            /// Delta compression subscribers may ask for (`delta: "fossil"` in the SDKs);
            /// empty: none. Deltas need history and a positioned or recovering subscription.
            pub allowed_delta_types: Vec<DeltaType>,
            /// Every publication of the channel asks for deltas, as if published with
            /// `delta: true`.
            pub delta_publish: bool,
            /// Let subscribers filter publications by their tags (the SDKs' `tagsFilter` /
            /// `tags_filter`); without it a subscription with a filter is refused (107).
            pub allow_tags_filter: bool,
            /// Any authenticated connection may subscribe.
            pub allow_subscribe_for_client: bool,
            /// Anonymous connections may subscribe too (with `allow_subscribe_for_client`).
            pub allow_subscribe_for_anonymous: bool,
            /// Subscribers may publish from the client side.
            pub allow_publish_for_subscriber: bool,
            /// Any authenticated connection may publish from the client side.
            pub allow_publish_for_client: bool,
            /// Anonymous connections may publish too (with one of the two above).
            pub allow_publish_for_anonymous: bool,
            /// Subscribers may read presence.
            pub allow_presence_for_subscriber: bool,
            /// Any authenticated connection may read presence.
            pub allow_presence_for_client: bool,
            /// Anonymous connections may read presence too.
            pub allow_presence_for_anonymous: bool,
            /// Subscribers may read history.
            pub allow_history_for_subscriber: bool,
            /// Any authenticated connection may read history.
            pub allow_history_for_client: bool,
            /// Anonymous connections may read history too.
            pub allow_history_for_anonymous: bool,
            /// Channels like `dialog#42,43` may be subscribed by the users listed after `#`.
            pub allow_user_limited_channels: bool,
            /// Ask the application backend (the subscribe proxy) whether a client may
            /// subscribe, instead of the `allow_subscribe_*` options (a subscription token
            /// and user-limited channels still come first).
            pub subscribe_proxy_enabled: bool,
            /// Which proxy: `default` is `channel.proxy.subscribe`, any other name one of
            /// `proxies`.
            pub subscribe_proxy_name: ProxyName,
            /// Send client publications to the backend (the publish proxy), which may refuse
            /// them or replace their data, instead of the `allow_publish_*` options.
            pub publish_proxy_enabled: bool,
            /// `default` is `channel.proxy.publish`.
            pub publish_proxy_name: ProxyName,
            /// Subscriptions that expire are extended by the backend (the sub_refresh
            /// proxy) instead of by the client with a new subscription token.
            pub sub_refresh_proxy_enabled: bool,
            /// `default` is `channel.proxy.sub_refresh`.
            pub sub_refresh_proxy_name: ProxyName,
        }
    };
}

channel_options!(
    /// Options of the channels without a namespace (`channel.without_namespace`).
    ChannelOptions {}
);

channel_options!(
    /// A namespace (`channel.namespaces[]`): its name plus the channel options.
    NamespaceConfig {
        /// The part of channel names before `:`; matches `^[-a-zA-Z0-9_]{2,}$`.
        name: String,
    }
);

impl NamespaceConfig {
    /// The channel options of this namespace, without its name.
    pub fn options(&self) -> ChannelOptions {
        let json = serde_json::to_value(self).expect("config serializes");
        let mut map = json.as_object().cloned().unwrap_or_default();
        map.remove("name");
        serde_json::from_value(serde_json::Value::Object(map)).expect("same fields")
    }
}

/// A delta compression format (`allowed_delta_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaType {
    /// Fossil SCM's delta format, which every SDK applies.
    Fossil,
}

/// How a recovering subscription catches up (`force_recovery_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryMode {
    /// Every missed publication (Centrifugo's default, also written `""`).
    #[default]
    #[serde(rename = "stream", alias = "")]
    Stream,
    /// The latest publication only.
    #[serde(rename = "cache")]
    Cache,
}

impl ChannelOptions {
    /// What is wrong with these options together, if anything (`where_` names them).
    pub fn check(&self, where_: &str) -> Result<(), String> {
        if self.auto_cache_recover
            && !(self.force_recovery && self.force_recovery_mode == RecoveryMode::Cache)
        {
            return Err(format!(
                "{where_}: auto_cache_recover requires force_recovery = true and force_recovery_mode = \"cache\""
            ));
        }
        Ok(())
    }

    /// History is on when both size and TTL are set.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// The name of a proxy a namespace (or an RPC namespace) uses: `default` means the proxy of
/// that kind's own section (`channel.proxy.subscribe`, `rpc.proxy`, ...), any other name one
/// of the top-level `proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProxyName(pub String);

impl Default for ProxyName {
    fn default() -> Self {
        ProxyName(DEFAULT_PROXY.into())
    }
}

impl ProxyName {
    /// Whether this is the kind's own proxy (`default`, or left empty).
    pub fn is_default(&self) -> bool {
        self.0.is_empty() || self.0 == DEFAULT_PROXY
    }
}

/// The reserved name of each kind's own proxy.
pub const DEFAULT_PROXY: &str = "default";

macro_rules! proxy_config {
    ($(#[$outer:meta])* $name:ident { $($(#[$extra_meta:meta])* $extra:ident: $extra_ty:ty = $extra_default:expr,)* }) => {
        $(#[$outer])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$extra_meta])* pub $extra: $extra_ty,)*
            /// Where the backend listens: an `http://` or `https://` URL that takes a JSON
            /// POST (gRPC proxies are not supported).
            pub endpoint: String,
            /// How long one call may take, the whole exchange included; past it the call
            /// fails (a temporary error 100 for the client, or a retry for refreshes).
            #[serde(with = "crate::duration")]
            pub timeout: Duration,
            /// Headers of the client's connection request (WebSocket upgrade, SSE or HTTP
            /// stream request) passed on to the backend, e.g. `Cookie`, `Authorization`.
            /// Case-insensitive. None by default.
            pub http_headers: Vec<String>,
            /// Headers the client sent inside its connect command (`headers`, what SDKs do
            /// where they cannot set HTTP headers) passed on to the backend.
            pub emulated_headers: Vec<String>,
            /// Payloads go to the backend as base64 (`b64data`; `encoding` is `binary`), for
            /// Protobuf clients that publish bytes that are not JSON.
            pub binary_encoding: bool,
            /// Add the connection's `meta` (from its token or the connect proxy) to calls.
            pub include_connection_meta: bool,
            /// Most calls to this backend in flight at once (rotor-specific); a call that
            /// finds none free within its timeout fails as if the backend timed out.
            pub max_in_flight: usize,
            pub http: ProxyHttpConfig,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($extra: $extra_default,)*
                    endpoint: String::new(),
                    timeout: Duration::from_secs(1),
                    http_headers: Vec::new(),
                    emulated_headers: Vec::new(),
                    binary_encoding: false,
                    include_connection_meta: false,
                    max_in_flight: 256,
                    http: ProxyHttpConfig::default(),
                }
            }
        }

        impl $name {
            /// The proxy part of this section.
            pub fn proxy(&self) -> ProxyConfig {
                ProxyConfig {
                    endpoint: self.endpoint.clone(),
                    timeout: self.timeout,
                    http_headers: self.http_headers.clone(),
                    emulated_headers: self.emulated_headers.clone(),
                    binary_encoding: self.binary_encoding,
                    include_connection_meta: self.include_connection_meta,
                    max_in_flight: self.max_in_flight,
                    http: self.http.clone(),
                }
            }
        }
    };
}

proxy_config!(
    /// A proxy to the application backend: `channel.proxy.*`, `rpc.proxy`.
    ProxyConfig {}
);

proxy_config!(
    /// `client.proxy.connect` and `client.proxy.refresh`: a proxy that is used only when
    /// enabled.
    ToggledProxyConfig {
        /// Use this proxy.
        enabled: bool = false,
    }
);

proxy_config!(
    /// One of `proxies`: a proxy namespaces and RPC namespaces name with `*_proxy_name`.
    NamedProxyConfig {
        /// Matches `^[-a-zA-Z0-9_.]{2,}$`; `default` is reserved.
        name: String = String::new(),
    }
);

/// `*.http`: HTTP details of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyHttpConfig {
    /// Headers added to every call (the client's forwarded headers win over them).
    pub static_headers: std::collections::BTreeMap<String, String>,
    /// HTTP statuses other than 200 the backend answers with on purpose, turned into an
    /// error or a disconnect for the client (any other status is a failed call: error 100).
    pub status_to_code_transforms: Vec<StatusTransform>,
}

/// One of `http.status_to_code_transforms`: exactly one of `to_error` and `to_disconnect`
/// has a code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusTransform {
    pub status_code: u16,
    pub to_error: TransformError,
    pub to_disconnect: TransformDisconnect,
}

/// The error a status becomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

/// The disconnect a status becomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformDisconnect {
    pub code: u16,
    pub reason: String,
}

/// `client.proxy`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientProxyConfig {
    /// Connects without a token are decided by the backend.
    pub connect: ToggledProxyConfig,
    /// Connections that expire are extended by the backend (server-side refresh, for every
    /// connection: clients are not told to refresh).
    pub refresh: ToggledProxyConfig,
}

/// `channel.proxy`: the proxies namespaces use when their `*_proxy_name` is `default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelProxyConfig {
    pub subscribe: ProxyConfig,
    pub publish: ProxyConfig,
    pub sub_refresh: ProxyConfig,
}

/// `rpc.without_namespace` and `rpc.namespaces[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcOptions {
    /// The namespace's name (the part of a method before `rpc.namespace_boundary`); empty
    /// for `without_namespace`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Send the namespace's RPCs to the backend.
    pub proxy_enabled: bool,
    /// `default` is `rpc.proxy`.
    pub proxy_name: ProxyName,
}

/// `rpc.*`: what a client's `rpc` command does. Without a proxy an RPC is answered 108.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    pub proxy: ProxyConfig,
    /// Methods without a namespace.
    pub without_namespace: RpcOptions,
    pub namespaces: Vec<RpcOptions>,
    /// Separates a method's namespace from the rest of its name.
    pub namespace_boundary: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            proxy: ProxyConfig::default(),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            namespace_boundary: ":".into(),
        }
    }
}

/// `channel.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    pub without_namespace: ChannelOptions,
    pub namespaces: Vec<NamespaceConfig>,
    /// The proxies namespaces use by default.
    pub proxy: ChannelProxyConfig,
    /// How long a channel's stream position (offset and epoch) outlives its last publication.
    #[serde(with = "crate::duration")]
    pub history_meta_ttl: Duration,
    /// Longest channel name accepted.
    pub max_length: usize,
}

impl ChannelConfig {
    /// The options of channels without a namespace and of every namespace, each with the
    /// key that names it in messages (`channel.namespaces[chat]`).
    pub fn all_options(&self) -> impl Iterator<Item = (String, ChannelOptions)> + '_ {
        std::iter::once((
            "channel.without_namespace".to_string(),
            self.without_namespace.clone(),
        ))
        .chain(
            self.namespaces
                .iter()
                .map(|n| (format!("channel.namespaces[{}]", n.name), n.options())),
        )
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            proxy: ChannelProxyConfig::default(),
            history_meta_ttl: Duration::from_secs(720 * 3600),
            max_length: 255,
        }
    }
}

/// `client.subscription_token`: separate keys for subscription tokens. When `enabled` is false,
/// subscription tokens are verified with the connection token keys (`client.token`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionTokenConfig {
    pub enabled: bool,
    pub hmac_secret_key: String,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub audience: String,
    pub issuer: String,
    pub jwks_public_endpoint: String,
}

impl SubscriptionTokenConfig {
    /// The key settings to verify subscription tokens with.
    pub fn token_config(&self, connection: &TokenConfig) -> TokenConfig {
        if !self.enabled {
            return connection.clone();
        }
        TokenConfig {
            hmac_secret_key: self.hmac_secret_key.clone(),
            rsa_public_key: self.rsa_public_key.clone(),
            ecdsa_public_key: self.ecdsa_public_key.clone(),
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            jwks_public_endpoint: self.jwks_public_endpoint.clone(),
            ..TokenConfig::default()
        }
    }
}

/// `client.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Keys and checks for connection tokens.
    pub token: TokenConfig,
    /// Keys for subscription tokens (see [`SubscriptionTokenConfig`]).
    pub subscription_token: SubscriptionTokenConfig,
    /// The application backend deciding connects and refreshes (see docs/proxy.md).
    pub proxy: ClientProxyConfig,
    /// Browser origins allowed to connect (glob patterns, `*` for any). Empty: requests that
    /// carry an `Origin` header are refused; requests without one are allowed.
    pub allowed_origins: Vec<String>,
    /// How often the server pings each connection (`{}`); 0 turns pings off.
    #[serde(with = "crate::duration")]
    pub ping_interval: Duration,
    /// How long a bidirectional client has to answer a ping before it is closed with 3012.
    #[serde(with = "crate::duration")]
    pub pong_timeout: Duration,
    /// Grace after a connection's expiry before it is closed with 3005.
    #[serde(with = "crate::duration")]
    pub expired_close_delay: Duration,
    /// Grace after a subscription's expiry before it is unsubscribed with 2501.
    #[serde(with = "crate::duration")]
    pub expired_sub_close_delay: Duration,
    /// How long a connection may stay without a successful connect before it is closed (3502).
    #[serde(with = "crate::duration")]
    pub stale_close_delay: Duration,
    /// How often a connection refreshes its presence entries (they expire after about twice
    /// this, so a crashed node's entries disappear).
    #[serde(with = "crate::duration")]
    pub presence_update_interval: Duration,
    /// Bytes queued for one connection before it is closed as slow (3008).
    pub queue_max_size: usize,
    /// Client-side subscriptions per connection (error 106 beyond it); a connection token
    /// naming more server-side channels than this is refused with 3505.
    pub channel_limit: usize,
    /// Connections one user may hold on this node (3504 beyond it); 0: no limit. Anonymous
    /// connections are not counted per user.
    pub user_connection_limit: usize,
    /// Connections this node accepts in all (3504 beyond it); 0: no limit.
    pub connection_limit: usize,
    /// Commands per second one connection may send (token bucket); a command over the rate
    /// gets error 111, and a connection that goes on sending `command_rate_burst` more
    /// commands while refused is closed with 3013. 0: no limit.
    pub command_rate_limit: u32,
    /// Commands a connection may send at once above the steady rate (0: one second's worth).
    pub command_rate_burst: u32,
    /// Largest publication `data` (bytes of JSON) a client may publish (error 107 beyond it).
    pub publication_max_size: usize,
    /// Connect without a token as an anonymous user.
    pub allow_anonymous_connect_without_token: bool,
    /// Refuse tokens with an empty `sub` (3507).
    pub disallow_anonymous_connection_tokens: bool,
    /// Most publications one history call returns.
    pub history_max_publication_limit: usize,
    /// Most publications one recovery returns; beyond that the client is told it did not recover.
    pub recovery_max_publication_limit: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            proxy: ClientProxyConfig::default(),
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            stale_close_delay: Duration::from_secs(10),
            presence_update_interval: Duration::from_secs(27),
            queue_max_size: 1024 * 1024,
            channel_limit: 128,
            user_connection_limit: 0,
            connection_limit: 0,
            command_rate_limit: 0,
            command_rate_burst: 0,
            publication_max_size: 65536,
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}

/// Everything the core needs: `client` and `channel` sections plus the node's identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreConfig {
    pub client: ClientConfig,
    pub channel: ChannelConfig,
    pub rpc: RpcConfig,
    /// Named proxies (`*_proxy_name`).
    pub proxies: Vec<NamedProxyConfig>,
    /// Node name shown in the `info` API and in emulation connect replies.
    pub node_name: String,
    /// Version string sent in connect replies.
    pub version: String,
    /// The node's unique id (connect replies, emulation routing); empty: a random one.
    pub node_uid: String,
}

impl std::fmt::Debug for SubscriptionTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTokenConfig")
            .field("enabled", &self.enabled)
            .field(
                "hmac_secret_key",
                &if self.hmac_secret_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

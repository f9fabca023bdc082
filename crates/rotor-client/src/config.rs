//! How a client is set up: the server address and transport, credentials (a token or a
//! provider), timeouts and backoff, and per-subscription options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rotor_protocol::{Raw, StreamPosition};

use crate::token::TokenProvider;

/// How the client talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `ws://…/connection/websocket` (or `wss://`): one socket both ways.
    WebSocket,
    /// `http://…/connection/http_stream`: a streamed POST response carries replies and pushes;
    /// commands go to the emulation endpoint.
    HttpStream,
    /// `http://…/connection/sse`: an event stream carries replies and pushes; commands go to
    /// the emulation endpoint.
    Sse,
}

impl Transport {
    /// The name servers use for it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }
}

/// Client settings. Start from [`ClientConfig::new`]; every other field has a default that
/// suits a service talking to a nearby server.
#[derive(Clone)]
pub struct ClientConfig {
    pub transport: Transport,
    /// The transport's URL.
    pub endpoint: String,
    /// Where emulated transports POST commands. Default: `/emulation` on the endpoint's origin.
    pub emulation_endpoint: Option<String>,
    /// The connection token to start with. Without one, the token provider is asked; without
    /// either, the client connects anonymously.
    pub token: Option<String>,
    pub token_provider: Option<Arc<dyn TokenProvider>>,
    /// `data` of the connect command.
    pub data: Option<Raw>,
    /// Client name and version, sent on connect (the server shows them in logs).
    pub name: String,
    pub version: String,
    /// How long to wait for a reply (and for the transport to open).
    pub timeout: Duration,
    /// Reconnect backoff: exponential from `min_reconnect_delay` up to `max_reconnect_delay`,
    /// with jitter.
    pub min_reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// How late a server ping may be before the connection is considered dead (on top of the
    /// interval the server announced).
    pub max_server_ping_delay: Duration,
    /// Automatic re-authentications after "token expired" before [`crate::Error::AuthExpired`]
    /// is surfaced. The default, 1, retries once with a fresh token from the provider.
    pub max_reauth_attempts: u32,
    /// How long before expiry a token is refreshed: this fraction of the server's `ttl`, at
    /// most `max_refresh_margin`.
    pub refresh_margin: f64,
    pub max_refresh_margin: Duration,
    /// A token from the provider must stay valid at least this long (by its `exp`); one
    /// that expires sooner is not used: the provider is asked again once it has expired, up
    /// to three times, then reported as stale. `None` sends whatever the provider returns.
    pub min_token_validity: Option<Duration>,
}

impl ClientConfig {
    pub fn new(transport: Transport, endpoint: impl Into<String>) -> ClientConfig {
        ClientConfig {
            transport,
            endpoint: endpoint.into(),
            emulation_endpoint: None,
            token: None,
            token_provider: None,
            data: None,
            name: "rotor-client".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            timeout: Duration::from_secs(5),
            min_reconnect_delay: Duration::from_millis(200),
            max_reconnect_delay: Duration::from_secs(20),
            max_server_ping_delay: Duration::from_secs(10),
            max_reauth_attempts: 1,
            refresh_margin: 0.2,
            max_refresh_margin: Duration::from_secs(10),
            min_token_validity: Some(Duration::from_secs(1)),
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(token.into());
        self
    }

    pub fn with_token_provider(mut self, provider: impl TokenProvider + 'static) -> ClientConfig {
        self.token_provider = Some(Arc::new(provider));
        self
    }

    pub fn with_emulation_endpoint(mut self, url: impl Into<String>) -> ClientConfig {
        self.emulation_endpoint = Some(url.into());
        self
    }

    /// The emulation endpoint in use.
    pub fn emulation_url(&self) -> String {
        if let Some(u) = &self.emulation_endpoint {
            return u.clone();
        }
        let rest = self
            .endpoint
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.endpoint);
        let host = rest.split('/').next().unwrap_or(rest);
        let scheme = if self.endpoint.starts_with("https") || self.endpoint.starts_with("wss") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}/emulation")
    }

    /// When to refresh a token that the server says lives `ttl` more seconds.
    pub(crate) fn refresh_after(&self, ttl: u32) -> Duration {
        let ttl = Duration::from_secs(u64::from(ttl));
        let margin = ttl.mul_f64(self.refresh_margin.clamp(0.0, 0.9));
        ttl.saturating_sub(margin.min(self.max_refresh_margin))
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are secrets: never printed.
        f.debug_struct("ClientConfig")
            .field("transport", &self.transport)
            .field("endpoint", &self.endpoint)
            .field("emulation_endpoint", &self.emulation_endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_provider", &self.token_provider.is_some())
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("min_reconnect_delay", &self.min_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("max_reauth_attempts", &self.max_reauth_attempts)
            .finish_non_exhaustive()
    }
}

/// How to subscribe to a channel.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionOptions {
    /// A subscription token to start with.
    pub token: Option<String>,
    /// Ask the token provider for a subscription token (before subscribing when there is none,
    /// and before each refresh).
    pub token_required: bool,
    /// `data` of the subscribe command.
    pub data: Option<Raw>,
    /// Ask for recovery (the server may force it per namespace anyway).
    pub recoverable: bool,
    pub positioned: bool,
    pub join_leave: bool,
    /// Start from this position: publications after it are recovered on the first subscribe.
    pub since: Option<StreamPosition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_endpoint_follows_the_origin() {
        let c = ClientConfig::new(Transport::Sse, "http://127.0.0.1:9/connection/sse");
        assert_eq!(c.emulation_url(), "http://127.0.0.1:9/emulation");
        let c = ClientConfig::new(
            Transport::WebSocket,
            "wss://example.com/connection/websocket",
        );
        assert_eq!(c.emulation_url(), "https://example.com/emulation");
        let c = c.with_emulation_endpoint("http://x/e");
        assert_eq!(c.emulation_url(), "http://x/e");
    }

    #[test]
    fn refresh_happens_before_expiry() {
        let c = ClientConfig::new(Transport::WebSocket, "ws://x");
        assert_eq!(c.refresh_after(10), Duration::from_secs(8));
        assert_eq!(c.refresh_after(3600), Duration::from_secs(3590));
        assert_eq!(c.refresh_after(0), Duration::ZERO);
    }

    #[test]
    fn debug_hides_the_token() {
        let c = ClientConfig::new(Transport::WebSocket, "ws://x").with_token("secret-jwt");
        assert!(!format!("{c:?}").contains("secret-jwt"));
    }
}

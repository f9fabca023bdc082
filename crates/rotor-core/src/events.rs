//! Hooks for metrics: the core reports what happens to connections and tokens through an
//! [`Observer`]; the server implements it with Prometheus counters. Calls are made on the
//! session's task and must be cheap and must not block.

/// Which token a refresh was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Connection,
    Subscription,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Connection => "connection",
            TokenKind::Subscription => "subscription",
        }
    }
}

/// How a refresh (`refresh` or `sub_refresh`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshOutcome {
    /// Extended.
    Ok,
    /// The new token had already expired (3005 / 3006).
    Expired,
    /// Bad signature, malformed, wrong audience... (3500).
    Invalid,
    /// A valid token for another user or channel (3500).
    Mismatch,
    /// No token in the request (3501).
    Empty,
    /// Keys could not be fetched (error 100, the client retries).
    Unavailable,
    /// The new token was revoked (3500).
    Revoked,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::Expired => "expired",
            RefreshOutcome::Invalid => "invalid",
            RefreshOutcome::Mismatch => "mismatch",
            RefreshOutcome::Empty => "empty",
            RefreshOutcome::Unavailable => "unavailable",
            RefreshOutcome::Revoked => "revoked",
        }
    }
}

/// Receives core events. Every method has an empty default.
pub trait Observer: Send + Sync {
    /// A connect succeeded; `expires_in` is the seconds until the connection's expiry.
    fn connected(&self, _transport: &'static str, _expires_in: Option<u64>) {}
    /// A connect was refused; `reason` is one of `token_expired`, `invalid_token`, `revoked`,
    /// `bad_request`, `permission_denied`, `unknown_channel`, `unavailable` (keys or the
    /// backend could not be reached), `backend` (the connect proxy refused), `other`.
    fn connect_refused(&self, _transport: &'static str, _reason: &'static str) {}
    /// A connection ended with this code (`None`: the client went away).
    fn disconnected(&self, _transport: &'static str, _code: Option<u16>) {}
    /// A connection was closed with 3005 because its expiry plus grace passed.
    fn connection_expired(&self, _transport: &'static str) {}
    /// A subscription was ended (2501 or 3006) because its token expired.
    fn subscription_expired(&self) {}
    /// A refresh ended. `lag` is seconds from the old expiry to the refresh (negative when
    /// the client refreshed ahead of expiry), when the old token had an expiry.
    fn refresh(&self, _kind: TokenKind, _outcome: RefreshOutcome, _lag: Option<f64>) {}
    /// A token (`"token"`) or a user's tokens (`"user"`) were revoked on this node's API.
    fn revoked(&self, _kind: &'static str) {}
    /// A revoked or invalidated token was refused.
    fn rejected(&self, _stage: Stage, _reason: crate::revocation::Refusal) {}
    /// Live connections closed because their token was revoked.
    fn kicked(&self, _n: usize) {}
    /// A client command was handled; `error` is the error code it was answered with.
    fn command(&self, _method: &'static str, _duration: std::time::Duration, _error: Option<u32>) {}
    /// Messages and bytes written to a client in one transport write.
    fn sent(&self, _transport: &'static str, _messages: usize, _bytes: usize) {}
    /// A frame (bytes) read from a client.
    fn received(&self, _transport: &'static str, _bytes: usize) {}
    /// A publication went out to the broker (`history`: it was stored first) in `took`.
    fn published(&self, _history: bool, _took: std::time::Duration) {}
    /// The broker delivered a publication to this node `lag` after it was accepted.
    fn delivered(&self, _lag: std::time::Duration) {}
    /// A client ran into a limit (see [`crate::limits::Limit`] for what it got).
    fn limit_hit(&self, _limit: crate::limits::Limit) {}
    /// A proxy call to the application backend ended after `took`; `failed` when the
    /// backend could not be asked or gave no usable answer (an error or disconnect it
    /// answered with is not a failure).
    fn proxy_call(
        &self,
        _kind: crate::proxy::ProxyKind,
        _name: &str,
        _took: std::time::Duration,
        _failed: bool,
    ) {
    }
}

/// Where a token was refused by the revocation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Refresh,
    Subscribe,
    SubRefresh,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Refresh => "refresh",
            Stage::Subscribe => "subscribe",
            Stage::SubRefresh => "sub_refresh",
        }
    }
}

/// Observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Sends every event to several observers.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Fanout {
    fn connected(&self, t: &'static str, e: Option<u64>) {
        self.0.iter().for_each(|o| o.connected(t, e));
    }
    fn connect_refused(&self, t: &'static str, r: &'static str) {
        self.0.iter().for_each(|o| o.connect_refused(t, r));
    }
    fn disconnected(&self, t: &'static str, c: Option<u16>) {
        self.0.iter().for_each(|o| o.disconnected(t, c));
    }
    fn connection_expired(&self, t: &'static str) {
        self.0.iter().for_each(|o| o.connection_expired(t));
    }
    fn subscription_expired(&self) {
        self.0.iter().for_each(|o| o.subscription_expired());
    }
    fn refresh(&self, k: TokenKind, r: RefreshOutcome, l: Option<f64>) {
        self.0.iter().for_each(|o| o.refresh(k, r, l));
    }
    fn revoked(&self, k: &'static str) {
        self.0.iter().for_each(|o| o.revoked(k));
    }
    fn rejected(&self, s: Stage, r: crate::revocation::Refusal) {
        self.0.iter().for_each(|o| o.rejected(s, r));
    }
    fn kicked(&self, n: usize) {
        self.0.iter().for_each(|o| o.kicked(n));
    }
    fn command(&self, m: &'static str, d: std::time::Duration, e: Option<u32>) {
        self.0.iter().for_each(|o| o.command(m, d, e));
    }
    fn sent(&self, t: &'static str, m: usize, b: usize) {
        self.0.iter().for_each(|o| o.sent(t, m, b));
    }
    fn received(&self, t: &'static str, b: usize) {
        self.0.iter().for_each(|o| o.received(t, b));
    }
    fn published(&self, h: bool, t: std::time::Duration) {
        self.0.iter().for_each(|o| o.published(h, t));
    }
    fn delivered(&self, l: std::time::Duration) {
        self.0.iter().for_each(|o| o.delivered(l));
    }
    fn limit_hit(&self, l: crate::limits::Limit) {
        self.0.iter().for_each(|o| o.limit_hit(l));
    }
    fn proxy_call(&self, k: crate::proxy::ProxyKind, n: &str, t: std::time::Duration, f: bool) {
        self.0.iter().for_each(|o| o.proxy_call(k, n, t, f));
    }
}

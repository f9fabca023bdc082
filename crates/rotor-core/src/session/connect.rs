//! Connect and refresh: the token checked (signature, expiry, revocation), the connection
//! registered within the limits, its server-side subscriptions made, and later its
//! credentials replaced in place. Unidirectional connects arrive with the HTTP request or as
//! the first frame and answer with a push (or a disconnect) instead of a reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use rotor_auth::{AuthError, SubscriptionClaim};
use rotor_protocol::{
    ConnectRequest, ConnectResult, Disconnect, Push, Raw, RefreshResult, Reply, SubscribeRequest,
};
use tokio::time::Instant;

use super::{ttl, Addr, CommandResult, Session, State, TransportKind};
use crate::channels;
use crate::events::{RefreshOutcome, Stage, TokenKind};
use crate::limits::Limit;
use crate::node::revoked_disconnect;
use crate::proxy::{ConnectCall, ConnectGrant, ForwardedHeaders, ProxyKind};
use crate::CoreError;

/// Parses the connect request of a unidirectional transport (`{"token":…,"data":…}`; empty
/// text means `{}`); `fallback_token` (from an `Authorization` header or a cookie) fills in
/// when the request carries no token.
pub fn uni_connect_request(
    text: &str,
    fallback_token: Option<String>,
) -> Result<ConnectRequest, String> {
    let mut req: ConnectRequest = if text.trim().is_empty() {
        ConnectRequest::default()
    } else {
        serde_json::from_str(text).map_err(|e| format!("connect request is not valid JSON: {e}"))?
    };
    if req.token.is_empty() {
        if let Some(t) = fallback_token {
            req.token = t;
        }
    }
    Ok(req)
}

impl Session {
    /// The connect of a unidirectional transport from its request's text: 3501 when it is
    /// not a connect request.
    pub(super) async fn uni_connect_text(
        &mut self,
        text: &str,
        fallback_token: Option<String>,
    ) -> Option<Disconnect> {
        match uni_connect_request(text, fallback_token) {
            Ok(req) => self.uni_connect(req).await,
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, transport = self.transport.name, "bad connect request, disconnecting with 3501");
                Some(Disconnect::BAD_REQUEST)
            }
        }
    }

    /// The connect of a unidirectional transport: the result goes out as a bare `connect`
    /// push, and an error becomes a disconnect (there is no reply to carry it).
    pub(super) async fn uni_connect(&mut self, req: ConnectRequest) -> Option<Disconnect> {
        self.connect_seen = true;
        match self.connect(req).await {
            Ok(Some(reply)) => {
                self.emit_push(Push {
                    connect: reply.connect,
                    ..Push::default()
                });
                None
            }
            Ok(None) => None,
            Err(CoreError::Disconnect(d)) => Some(d),
            Err(e) => {
                let d = e.to_disconnect();
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, code = d.code, "unidirectional connect refused");
                Some(d)
            }
        }
    }

    /// `connect`: a refusal is counted by its reason.
    pub(super) async fn connect(&mut self, req: ConnectRequest) -> CommandResult {
        let result = self.connect_inner(req).await;
        if let Err(e) = &result {
            self.node
                .observer()
                .connect_refused(self.transport.name, refusal_reason(e));
        }
        result
    }

    async fn connect_inner(&mut self, req: ConnectRequest) -> CommandResult {
        if self.state == State::Connected {
            return Err(Disconnect::BAD_REQUEST
                .with_reason("already connected")
                .into());
        }
        let now = self.now();
        self.keep_emulated_headers(&req);
        let creds = if !req.token.is_empty() {
            let token = match self.node.verifier().verify_connect(&req.token, now).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "connect refused");
                    return Err(CoreError::from_connect_token(e));
                }
            };
            if token.user.is_empty() && self.cfg().disallow_anonymous_connection_tokens {
                return Err(Disconnect::PERMISSION_DENIED.into());
            }
            if let Some(r) = self.refusal(
                Stage::Connect,
                token.jti.as_deref(),
                &token.user,
                token.iat,
                None,
            ) {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %token.user, reason = r.as_str(), "connect with a revoked token, disconnecting with 3500");
                return Err(revoked_disconnect().into());
            }
            self.client.set_creds(token.jti.as_deref(), token.iat);
            self.client.set_meta(token.meta);
            Credentials {
                subs: server_subs(token.channels, token.subs),
                user: token.user,
                expire_at: token.expire_at,
                info: token.info,
                data: None,
            }
        } else if let Some(proxy) = self.node.proxies().connect().cloned() {
            let call = ConnectCall {
                data: req.data.clone(),
                name: req.name.clone(),
                version: req.version.clone(),
                channels: req.subs.keys().cloned().collect(),
            };
            let caller = self.caller();
            let answer = self
                .ask(
                    ProxyKind::Connect,
                    &proxy,
                    proxy.proxy.connect(&caller, &call),
                )
                .await?;
            match answer.into_result() {
                Ok(Some(grant)) => self.proxy_grant(grant, now)?,
                Ok(None) => self.anonymous("the connect proxy gave no credentials")?,
                Err(e) => {
                    tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "connect refused by the backend");
                    return Err(e);
                }
            }
        } else {
            self.anonymous("connect without a token")?
        };
        let Credentials {
            user,
            expire_at,
            info,
            data,
            subs: mut server_subs,
        } = creds;
        // Server-side channels must all be known before the connection is accepted.
        for ch in server_subs.keys() {
            self.node.channel_options(ch)?;
        }
        let node = self.node.clone();
        let cfg = &node.config().client;
        if server_subs.len() > cfg.channel_limit {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %user, channels = server_subs.len(), limit = cfg.channel_limit, "token names more channels than client.channel_limit, disconnecting with 3505");
            self.limit_hit(Limit::Channels);
            return Err(Disconnect::CHANNEL_LIMIT.into());
        }
        self.user = Arc::from(user.as_str());
        let _ = self.client.user.set(self.user.clone());
        if let Err(limit) = node.hub().add_connection(
            &self.client,
            cfg.connection_limit,
            cfg.user_connection_limit,
        ) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, limit = limit.as_str(), "connection limit reached, disconnecting with 3504");
            self.limit_hit(limit);
            return Err(Disconnect::CONNECTION_LIMIT.into());
        }
        self.conn_info = info;
        self.expire_at = expire_at;
        self.client.set_expire_at(expire_at);
        self.client.set_origin(crate::hub::Origin {
            transport: self.transport.name,
            remote: self.remote,
            connected_at: self.node.clock().unix(),
        });
        self.state = State::Connected;
        self.stale_deadline = None;
        // The wire counts whole seconds: a sub-second interval is announced as 1 s, so the
        // client still knows to answer (announcing 0 would mean "no pings, no pongs" while the
        // server goes on expecting pongs).
        let ping = cfg.ping_interval.as_secs_f64().ceil() as u32;
        if !cfg.ping_interval.is_zero() {
            self.next_ping = Some(Instant::now() + cfg.ping_interval);
        }
        let mut result = ConnectResult {
            client: self.client.id().to_string(),
            version: self.node.config().version.clone(),
            ping,
            pong: ping > 0 && self.expects_pong(),
            ..ConnectResult::default()
        };
        // With the refresh proxy the server extends connections: the client is not told.
        if let Some(at) = expire_at.filter(|_| !self.refreshed_by_proxy()) {
            result.expires = true;
            result.ttl = ttl(at, now);
        }
        result.data = data;
        if let Some(session) = self.client.session() {
            result.session = session.to_string();
        }
        if self.transport.kind == TransportKind::Emulation {
            result.node = self.node.uid().to_string();
        }
        for (ch, claim) in std::mem::take(&mut server_subs) {
            let recover = req.subs.get(&ch).cloned().unwrap_or_default();
            let opts = channels::with_override(&*self.node.channel_options(&ch)?, &claim.override_);
            let (chan_info, data) = (claim.info, claim.data);
            let want = SubscribeRequest {
                channel: ch.clone(),
                ..recover
            };
            let mut sub_result = self.join(&ch, &opts, &want, chan_info, true, None).await?;
            sub_result.data = data;
            result.subs.insert(ch, sub_result);
        }
        tracing::debug!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, transport = self.transport.name, "connected");
        self.node.observer().connected(
            self.transport.name,
            expire_at.map(|at| at.saturating_sub(now)),
        );
        Ok(Some(Reply {
            connect: Some(result),
            ..Reply::default()
        }))
    }

    pub(super) async fn refresh(&mut self, token: String) -> CommandResult {
        let now = self.now();
        let lag = self.lag_after(self.expire_at);
        let outcome = self.refresh_inner(token, now).await;
        self.report_refresh(TokenKind::Connection, lag, outcome)
    }

    /// Seconds from `expire_at` to now (negative before it).
    pub(super) fn lag_after(&self, expire_at: Option<u64>) -> Option<f64> {
        expire_at.map(|at| self.node.clock().unix_ms() as f64 / 1000.0 - at as f64)
    }

    /// Reports a refresh's outcome and lag to the observer, then drops the outcome kind.
    pub(super) fn report_refresh(
        &self,
        kind: TokenKind,
        lag: Option<f64>,
        outcome: Result<Option<Reply>, (RefreshOutcome, CoreError)>,
    ) -> CommandResult {
        let result = match &outcome {
            Ok(_) => RefreshOutcome::Ok,
            Err((r, _)) => *r,
        };
        self.node.observer().refresh(kind, result, lag);
        outcome.map_err(|(_, e)| e)
    }

    async fn refresh_inner(
        &mut self,
        token: String,
        now: u64,
    ) -> Result<Option<Reply>, (RefreshOutcome, CoreError)> {
        if token.is_empty() {
            let d = Disconnect::BAD_REQUEST.with_reason("refresh without a token");
            return Err((RefreshOutcome::Empty, d.into()));
        }
        if self.refreshed_by_proxy() {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "refresh command while the refresh proxy extends connections, disconnecting with 3501");
            let d = Disconnect::BAD_REQUEST.with_reason("server-side refresh expected");
            return Err((RefreshOutcome::Invalid, d.into()));
        }
        let t = match self.node.verifier().verify_connect(&token, now).await {
            Ok(t) => t,
            Err(AuthError::Expired) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "refresh with an expired token, disconnecting with 3005");
                return Err((RefreshOutcome::Expired, Disconnect::EXPIRED.into()));
            }
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(client = %self.client.id(), error = %e, "refresh: token keys unavailable, answering 100");
                return Err((RefreshOutcome::Unavailable, CoreError::Unavailable(e)));
            }
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "refresh with an invalid token, disconnecting with 3500");
                return Err((RefreshOutcome::Invalid, Disconnect::INVALID_TOKEN.into()));
            }
        };
        if t.user != *self.user {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "refresh token is for another user, disconnecting with 3500");
            return Err((RefreshOutcome::Mismatch, Disconnect::INVALID_TOKEN.into()));
        }
        if let Some(r) = self.refusal(Stage::Refresh, t.jti.as_deref(), &t.user, t.iat, None) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), reason = r.as_str(), "refresh with a revoked token, disconnecting with 3500");
            return Err((RefreshOutcome::Revoked, revoked_disconnect().into()));
        }
        self.client.set_creds(t.jti.as_deref(), t.iat);
        if t.meta.is_some() {
            self.client.set_meta(t.meta);
        }
        self.expire_at = t.expire_at;
        self.client.set_expire_at(t.expire_at);
        if t.info.is_some() {
            self.conn_info = t.info;
        }
        let mut result = RefreshResult {
            client: self.client.id().to_string(),
            version: self.node.config().version.clone(),
            ..RefreshResult::default()
        };
        if let Some(at) = t.expire_at {
            result.expires = true;
            result.ttl = ttl(at, now);
        }
        Ok(Some(Reply {
            refresh: Some(result),
            ..Reply::default()
        }))
    }
}

/// Server-side subscriptions: `channels` with the namespace's options, `subs` with their
/// own (a channel in both takes its `subs` entry).
fn server_subs(
    channels: Vec<String>,
    subs: BTreeMap<String, SubscriptionClaim>,
) -> BTreeMap<String, SubscriptionClaim> {
    let mut out: BTreeMap<String, SubscriptionClaim> = channels
        .into_iter()
        .map(|ch| (ch, SubscriptionClaim::default()))
        .collect();
    out.extend(subs);
    out
}

/// Who a connect makes the connection, from a token, the backend, or neither (anonymous).
#[derive(Default)]
struct Credentials {
    /// Empty: anonymous.
    user: String,
    expire_at: Option<u64>,
    info: Option<Raw>,
    /// For the connect reply (the backend's `data`).
    data: Option<Raw>,
    /// Server-side subscriptions.
    subs: BTreeMap<String, SubscriptionClaim>,
}

impl Session {
    /// Whether connections are extended by the refresh proxy rather than by their clients.
    pub(super) fn refreshed_by_proxy(&self) -> bool {
        self.node.proxies().refresh().is_some()
    }

    /// Keeps the connect command's headers that some proxy passes on (this connect's only:
    /// a connect after a refused one does not keep the earlier one's).
    fn keep_emulated_headers(&mut self, req: &ConnectRequest) {
        let names = self.node.proxies().emulated_headers();
        if names.is_empty() {
            return;
        }
        let emulated = crate::proxy::listed(
            names,
            req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        let http = match self.proxy.as_ref().and_then(|p| p.headers.as_ref()) {
            Some(h) if h.emulated == emulated => return,
            Some(h) => h.http.clone(),
            None if emulated.is_empty() => return,
            None => Vec::new(),
        };
        self.proxy_state().headers = Some(Arc::new(ForwardedHeaders { http, emulated }));
    }

    /// A connect the backend accepted. The connection counts as holding a token issued now
    /// (no `jti`): `invalidate_user_tokens` closes it like any token of its user, and an
    /// invalidation reaching into the future keeps the user out even when the backend says
    /// yes.
    fn proxy_grant(&mut self, grant: ConnectGrant, now: u64) -> Result<Credentials, CoreError> {
        if let Some(at) = grant.expire_at {
            if at <= now {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %grant.user, "the connect proxy gave an expiry in the past, error 110");
                return Err(CoreError::Expired);
            }
        }
        if let Some(r) = self.refusal(Stage::Connect, None, &grant.user, Some(now), None) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %grant.user, reason = r.as_str(), "connect of an invalidated user, disconnecting with 3500");
            return Err(revoked_disconnect().into());
        }
        self.client.set_creds(None, Some(now));
        self.client.set_meta(grant.meta);
        Ok(Credentials {
            subs: server_subs(grant.channels, grant.subs),
            user: grant.user,
            expire_at: grant.expire_at,
            info: grant.info,
            data: grant.data,
        })
    }

    /// A connect with no credentials: anonymous when
    /// `client.allow_anonymous_connect_without_token`, else 3501.
    fn anonymous(&self, why: &str) -> Result<Credentials, CoreError> {
        if self.cfg().allow_anonymous_connect_without_token {
            return Ok(Credentials::default());
        }
        tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "{why}, disconnecting with 3501");
        Err(Disconnect::BAD_REQUEST
            .with_reason("client credentials not found")
            .into())
    }
}

/// How a refused connect is counted.
fn refusal_reason(e: &CoreError) -> &'static str {
    match e {
        CoreError::TokenExpired => "token_expired",
        CoreError::UnknownChannel => "unknown_channel",
        CoreError::Unavailable(_) => "unavailable",
        CoreError::Backend(_) | CoreError::Expired => "backend",
        CoreError::Disconnect(d) if d.code >= 4000 => "backend",
        CoreError::Disconnect(d) if *d == revoked_disconnect() => "revoked",
        CoreError::Disconnect(d) if d.code == Disconnect::INVALID_TOKEN.code => "invalid_token",
        CoreError::Disconnect(d) if d.code == Disconnect::BAD_REQUEST.code => "bad_request",
        CoreError::Disconnect(d) if d.code == Disconnect::PERMISSION_DENIED.code => {
            "permission_denied"
        }
        _ => "other",
    }
}

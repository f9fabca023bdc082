//! Subscriptions a client asks for: permission or subscription token, the channel limit,
//! then membership through [`Node::join`](crate::Node) (which keeps the channel's order);
//! unsubscribe, and sub_refresh for channels whose subscription token expires.

use std::sync::Arc;

use rotor_auth::AuthError;
use rotor_protocol::{
    Disconnect, Raw, Reply, SubRefreshRequest, SubRefreshResult, SubscribeRequest, SubscribeResult,
};
use tokio::time::Instant;

use super::{ttl, Addr, CommandResult, Session, Sub};
use crate::channels::{self, Asker};
use crate::config::ChannelOptions;
use crate::events::{RefreshOutcome, Stage, TokenKind};
use crate::limits::Limit;
use crate::node::{revoked_disconnect, Membership};
use crate::proxy::{ProxyKind, SubscribeCall};
use crate::CoreError;

impl Session {
    pub(super) async fn subscribe(&mut self, req: SubscribeRequest) -> CommandResult {
        let channel = req.channel.clone();
        let opts = self.node.channel_options(&channel)?;
        if self.subs.contains_key(channel.as_str()) {
            return Err(CoreError::AlreadySubscribed);
        }
        if self.subs.values().filter(|s| !s.server_side).count() >= self.cfg().channel_limit {
            self.limit_hit(Limit::Channels);
            return Err(CoreError::LimitExceeded);
        }
        // The backend decides only what a token and the channel's name do not.
        let proxy = self.node.proxies().subscribe_for(&opts).filter(|_| {
            req.token.is_empty() && channels::proxy_decides(&opts, &channel, &self.user)
        });
        let proxy = proxy.cloned();
        let (chan_info, expire_at, data, opts) = if let Some(proxy) = proxy {
            // The backend decides instead of the allow_subscribe_* options.
            let call = SubscribeCall {
                channel: channel.clone(),
                data: req.data.clone(),
            };
            let caller = self.caller();
            let answer = self
                .ask(
                    ProxyKind::Subscribe,
                    &proxy,
                    proxy.proxy.subscribe(&caller, &call),
                )
                .await?;
            match answer.into_result()? {
                None => (None, None, None, (*opts).clone()),
                Some(g) => {
                    if g.expire_at > 0 && g.expire_at <= self.now() {
                        return Err(CoreError::Expired);
                    }
                    let expire_at = (g.expire_at > 0).then_some(g.expire_at);
                    let opts = channels::with_override(&opts, &g.override_);
                    (g.info, expire_at, g.data, opts)
                }
            }
        } else if req.token.is_empty() {
            channels::check_subscribe(
                &opts,
                &channel,
                Asker {
                    user: &self.user,
                    subscribed: false,
                },
            )?;
            (None, None, None, (*opts).clone())
        } else {
            let t = self
                .node
                .sub_verifier()
                .verify_subscribe(&req.token, self.now())
                .await
                .map_err(CoreError::from_subscribe_token)?;
            if t.user != *self.user
                || t.channel != channel
                || (!t.client.is_empty() && t.client != self.client.id())
            {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "subscription token for another user or channel, disconnecting with 3500");
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            if let Some(r) = self.refusal(
                Stage::Subscribe,
                t.jti.as_deref(),
                &t.user,
                t.iat,
                Some(&channel),
            ) {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, reason = r.as_str(), "subscription token revoked");
                return Err(CoreError::PermissionDenied);
            }
            let opts = channels::with_override(&opts, &t.claim.override_);
            (t.claim.info, t.expire_at, t.claim.data, opts)
        };
        let mut result = self
            .join(&channel, &opts, &req, chan_info, false, expire_at)
            .await?;
        result.data = data;
        Ok(Some(Reply {
            subscribe: Some(result),
            ..Reply::default()
        }))
    }

    /// Makes this connection a member of `channel` and remembers the subscription.
    pub(super) async fn join(
        &mut self,
        channel: &str,
        opts: &ChannelOptions,
        want: &SubscribeRequest,
        chan_info: Option<Raw>,
        server_side: bool,
        expire_at: Option<u64>,
    ) -> Result<SubscribeResult, CoreError> {
        let now = self.now();
        let info = self.info(chan_info.clone());
        let membership = Membership {
            client: &self.client,
            info: &info,
            opts,
            want,
            server_side,
        };
        let mut result = self.node.join(channel, membership).await?;
        // Subscriptions the backend extends (sub_refresh proxy) are not the client's to refresh.
        let refreshed_by_proxy = self.node.proxies().sub_refresh_for(opts).is_some();
        if let Some(at) = expire_at.filter(|_| !refreshed_by_proxy) {
            result.expires = true;
            result.ttl = ttl(at, now);
        }
        if opts.presence && self.next_presence.is_none() {
            self.next_presence = Some(Instant::now() + self.cfg().presence_update_interval);
        }
        let name: Arc<str> = Arc::from(channel);
        if result.positioned && result.offset > 0 {
            self.caught_up
                .get_or_insert_with(Default::default)
                .start(name.clone(), result.offset);
        }
        self.subs.insert(
            name,
            Sub {
                server_side,
                presence: opts.presence,
                join_leave: opts.join_leave,
                chan_info,
                expire_at,
                refreshed_by_proxy,
            },
        );
        Ok(result)
    }

    /// Ends a subscription (a no-op when there is none): hub, presence, leave push.
    pub(super) async fn leave(&mut self, channel: &str) -> bool {
        self.delivering = None;
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        if let Some(c) = self.caught_up.as_mut() {
            c.0.remove(channel);
            if c.is_empty() {
                self.caught_up = None;
            }
        }
        if let Some(p) = self.proxy.as_mut() {
            p.sub_retries.remove(channel);
        }
        let leave_push = sub.join_leave.then(|| self.info(sub.chan_info));
        self.node
            .leave(channel, &self.client, sub.presence, leave_push.as_ref())
            .await;
        true
    }

    pub(super) async fn sub_refresh(&mut self, req: SubRefreshRequest) -> CommandResult {
        let lag = self.lag_after(
            self.subs
                .get(req.channel.as_str())
                .and_then(|s| s.expire_at),
        );
        let outcome = self.sub_refresh_inner(req).await;
        self.report_refresh(TokenKind::Subscription, lag, outcome)
    }

    async fn sub_refresh_inner(
        &mut self,
        req: SubRefreshRequest,
    ) -> Result<Option<Reply>, (RefreshOutcome, CoreError)> {
        if req.channel.is_empty() || req.token.is_empty() {
            let d = Disconnect::BAD_REQUEST.with_reason("sub_refresh needs channel and token");
            return Err((RefreshOutcome::Empty, d.into()));
        }
        let Some(sub) = self.subs.get(req.channel.as_str()) else {
            return Err((RefreshOutcome::Mismatch, CoreError::PermissionDenied));
        };
        if sub.refreshed_by_proxy {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, "sub_refresh command while the sub_refresh proxy extends the subscription, disconnecting with 3501");
            let d = Disconnect::BAD_REQUEST.with_reason("server-side sub refresh expected");
            return Err((RefreshOutcome::Invalid, d.into()));
        }
        let now = self.now();
        let t = match self
            .node
            .sub_verifier()
            .verify_subscribe(&req.token, now)
            .await
        {
            Ok(t) => t,
            // An expired token never extends a subscription.
            Err(AuthError::Expired) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, "sub_refresh with an expired token, disconnecting with 3006");
                return Err((
                    RefreshOutcome::Expired,
                    Disconnect::SUBSCRIPTION_EXPIRED.into(),
                ));
            }
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(client = %self.client.id(), error = %e, "sub_refresh: token keys unavailable, answering 100");
                return Err((RefreshOutcome::Unavailable, CoreError::Unavailable(e)));
            }
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, "sub_refresh with an invalid token, disconnecting with 3500");
                return Err((RefreshOutcome::Invalid, Disconnect::INVALID_TOKEN.into()));
            }
        };
        if t.user != *self.user || t.channel != req.channel {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, "sub_refresh token for another user or channel, disconnecting with 3500");
            return Err((RefreshOutcome::Mismatch, Disconnect::INVALID_TOKEN.into()));
        }
        if let Some(r) = self.refusal(
            Stage::SubRefresh,
            t.jti.as_deref(),
            &t.user,
            t.iat,
            Some(&req.channel),
        ) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %req.channel, reason = r.as_str(), "sub_refresh with a revoked token, disconnecting with 3500");
            return Err((RefreshOutcome::Revoked, revoked_disconnect().into()));
        }
        let sub = self
            .subs
            .get_mut(req.channel.as_str())
            .expect("checked above");
        sub.expire_at = t.expire_at;
        if t.claim.info.is_some() {
            sub.chan_info = t.claim.info;
        }
        let mut result = SubRefreshResult::default();
        if let Some(at) = t.expire_at {
            result.expires = true;
            result.ttl = ttl(at, now);
        }
        Ok(Some(Reply {
            sub_refresh: Some(result),
            ..Reply::default()
        }))
    }
}

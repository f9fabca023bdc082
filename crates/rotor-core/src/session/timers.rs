//! The session's one timer: it is armed for the earliest of its deadlines (no connect yet,
//! the next ping, a missing pong, the presence refresh, the connection's and its
//! subscriptions' expiry), and whatever is due runs when it fires.

use std::sync::Arc;

use bytes::Bytes;
use rotor_protocol::{Disconnect, Protocol, Push, Raw, UnsubscribeCode};
use tokio::time::Instant;

use super::{Addr, Retry, Session};
use crate::events::{RefreshOutcome, TokenKind};
use crate::proxy::{Answer, ProxyKind};

impl Session {
    /// Re-adds this connection's presence entries so they do not expire while it lives.
    async fn refresh_presence(&mut self) {
        let mut any = false;
        let subs: Vec<(Arc<str>, Option<Raw>)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.presence)
            .map(|(c, s)| (c.clone(), s.chan_info.clone()))
            .collect();
        for (channel, chan_info) in subs {
            any = true;
            let info = self.info(chan_info);
            self.node.refresh_presence(&channel, &info).await;
        }
        self.next_presence = any.then(|| Instant::now() + self.cfg().presence_update_interval);
    }

    /// The earliest deadline: the one the timer is armed for.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let clock = self.node.clock();
        let cfg = self.cfg();
        let expiry = self
            .expire_at
            .map(|at| clock.instant_at(at) + cfg.expired_close_delay);
        // The refresh proxy is asked at the expiry (again after a failure).
        let server_refresh = self
            .expire_at
            .filter(|_| self.refreshed_by_proxy())
            .map(|at| self.refresh_retry().unwrap_or(clock.instant_at(at)));
        let sub_expiry = self
            .subs
            .iter()
            .filter_map(|(ch, s)| {
                let at = s.expire_at?;
                let end = clock.instant_at(at) + cfg.expired_sub_close_delay;
                Some(if s.refreshed_by_proxy {
                    self.sub_refresh_at(ch, at).min(end)
                } else {
                    end
                })
            })
            .min();
        [
            self.stale_deadline,
            self.next_ping,
            self.pong_deadline,
            self.next_presence,
            expiry,
            server_refresh,
            sub_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) async fn on_timer(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        if self.stale_deadline.is_some_and(|d| d <= now) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "no connect in time, disconnecting with 3502");
            return Some(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "no pong, disconnecting with 3012");
            return Some(Disconnect::NO_PONG);
        }
        let clock = self.node.clock();
        // A handle to the node (an Arc) keeps the config borrowed while `self` changes.
        let node = self.node.clone();
        let cfg = &node.config().client;
        if let Some(at) = self.expire_at.filter(|_| self.refreshed_by_proxy()) {
            if self.refresh_retry().unwrap_or(clock.instant_at(at)) <= now {
                if let Some(d) = self.server_refresh().await {
                    return Some(d);
                }
            }
        }
        if let Some(at) = self.expire_at {
            if clock.instant_at(at) + cfg.expired_close_delay <= now {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "connection expired, disconnecting with 3005");
                self.node.observer().connection_expired(self.transport.name);
                return Some(Disconnect::EXPIRED);
            }
        }
        if self.next_ping.is_some_and(|d| d <= now) {
            // An empty reply: `{}` in JSON, an empty message (one 0x00 byte once framed) in
            // Protobuf.
            self.out.push(match self.protocol {
                Protocol::Json => Bytes::from_static(b"{}"),
                Protocol::Protobuf => Bytes::new(),
            });
            self.next_ping = Some(now + cfg.ping_interval);
            if self.expects_pong() && self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + cfg.pong_timeout);
            }
        }
        if self.next_presence.is_some_and(|d| d <= now) {
            self.refresh_presence().await;
        }
        let due: Vec<Arc<str>> = self
            .subs
            .iter()
            .filter(|(ch, s)| {
                s.refreshed_by_proxy
                    && s.expire_at
                        .is_some_and(|at| self.sub_refresh_at(ch, at) <= now)
            })
            .map(|(ch, _)| ch.clone())
            .collect();
        // One failed call means the backend is down for the rest of this turn too: the other
        // due subscriptions are asked again with it, not one timeout after another now.
        let mut down = false;
        for channel in due {
            if down {
                let state = self.proxy_state();
                let previous = state.sub_retries.get(&channel).copied();
                state.sub_retries.insert(channel, Retry::after(previous));
                continue;
            }
            match self.server_sub_refresh(&channel).await {
                Ok(Some(d)) => return Some(d),
                Ok(None) => {}
                Err(()) => down = true,
            }
        }
        let expired: Vec<(Arc<str>, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.expire_at
                    .is_some_and(|at| clock.instant_at(at) + cfg.expired_sub_close_delay <= now)
            })
            .map(|(ch, s)| (ch.clone(), s.server_side))
            .collect();
        for (channel, server_side) in expired {
            if let Some(d) = self.sub_expired(&channel, server_side).await {
                return Some(d);
            }
        }
        None
    }

    /// A subscription's expiry passed with nobody extending it: a client-side subscription
    /// is unsubscribed with 2501 (the SDK subscribes again), a server-side one ends the
    /// connection with 3006.
    async fn sub_expired(&mut self, channel: &Arc<str>, server_side: bool) -> Option<Disconnect> {
        self.node.observer().subscription_expired();
        if server_side {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "server-side subscription expired, disconnecting with 3006");
            return Some(Disconnect::SUBSCRIPTION_EXPIRED);
        }
        tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "subscription expired, unsubscribing with 2501");
        self.leave(channel).await;
        self.emit_push(Push {
            channel: channel.to_string(),
            unsubscribe: Some(UnsubscribeCode::Expired.push()),
            ..Push::default()
        });
        None
    }

    /// The refresh proxy is asked about a connection at its expiry. A new expiry extends it
    /// in place; `expired`, no expiry in the future, or any answer without a result closes
    /// it with 3005. A backend that cannot be asked is asked again ([`Retry`]: 1, 2, 4,
    /// then every 8 seconds after the failed call) until `client.expired_close_delay` after
    /// the expiry, and then the connection closes with 3005 as an unrefreshed one does.
    async fn server_refresh(&mut self) -> Option<Disconnect> {
        let proxy = self.node.proxies().refresh()?.clone();
        let lag = self.lag_after(self.expire_at);
        let caller = self.caller();
        let answer = self
            .ask(ProxyKind::Refresh, &proxy, proxy.proxy.refresh(&caller))
            .await;
        let observer = self.node.clone();
        let observer = |o| observer.observer().refresh(TokenKind::Connection, o, lag);
        match answer {
            Ok(Answer::Granted(g)) if !g.expired && g.expire_at > self.now() => {
                observer(RefreshOutcome::Ok);
                self.expire_at = Some(g.expire_at);
                self.client.set_expire_at(self.expire_at);
                if g.info.is_some() {
                    self.conn_info = g.info;
                }
                if g.meta.is_some() {
                    self.client.set_meta(g.meta);
                }
                if let Some(p) = self.proxy.as_mut() {
                    p.refresh_retry = None;
                }
                None
            }
            Ok(_) => {
                observer(RefreshOutcome::Expired);
                self.node.observer().connection_expired(self.transport.name);
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "the refresh proxy did not extend the connection, disconnecting with 3005");
                Some(Disconnect::EXPIRED)
            }
            Err(_) => {
                observer(RefreshOutcome::Unavailable);
                let state = self.proxy_state();
                state.refresh_retry = Some(Retry::after(state.refresh_retry));
                None
            }
        }
    }

    /// The sub_refresh proxy is asked about a subscription at its expiry: as
    /// [`server_refresh`](Self::server_refresh), with 2501 / 3006 for the end and
    /// `client.expired_sub_close_delay` for the grace. `Err` when the backend could not be
    /// asked (the subscription waits for its retry).
    async fn server_sub_refresh(&mut self, channel: &Arc<str>) -> Result<Option<Disconnect>, ()> {
        let Some(sub) = self.subs.get(channel) else {
            return Ok(None);
        };
        let (server_side, lag) = (sub.server_side, self.lag_after(sub.expire_at));
        let proxy = self
            .node
            .channel_options(channel)
            .ok()
            .and_then(|opts| self.node.proxies().sub_refresh_for(&opts).cloned());
        let Some(proxy) = proxy else {
            // Nobody to ask any more: it ends as an expiry nobody extended.
            return Ok(self.sub_expired(channel, server_side).await);
        };
        let caller = self.caller();
        let answer = self
            .ask(
                ProxyKind::SubRefresh,
                &proxy,
                proxy.proxy.sub_refresh(&caller, channel),
            )
            .await;
        let observer = self.node.clone();
        let observer = |o| observer.observer().refresh(TokenKind::Subscription, o, lag);
        match answer {
            Ok(Answer::Granted(g)) if !g.expired && g.expire_at > self.now() => {
                observer(RefreshOutcome::Ok);
                if let Some(p) = self.proxy.as_mut() {
                    p.sub_retries.remove(channel);
                }
                if let Some(sub) = self.subs.get_mut(channel) {
                    sub.expire_at = Some(g.expire_at);
                    if g.info.is_some() {
                        sub.chan_info = g.info;
                    }
                }
                Ok(None)
            }
            Ok(_) => {
                observer(RefreshOutcome::Expired);
                Ok(self.sub_expired(channel, server_side).await)
            }
            Err(_) => {
                observer(RefreshOutcome::Unavailable);
                let state = self.proxy_state();
                let previous = state.sub_retries.get(channel).copied();
                state
                    .sub_retries
                    .insert(channel.clone(), Retry::after(previous));
                Err(())
            }
        }
    }
}

//! The session's one timer: it is armed for the earliest of its deadlines (no connect yet,
//! the next ping, a missing pong, the presence refresh, the connection's and its
//! subscriptions' expiry), and whatever is due runs when it fires.

use std::sync::Arc;

use bytes::Bytes;
use rotor_protocol::{Disconnect, Protocol, Push, Raw, UnsubscribeCode, UnsubscribePush};
use tokio::time::Instant;

use super::{Addr, Session};

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
        let sub_expiry = self
            .subs
            .values()
            .filter_map(|s| s.expire_at)
            .min()
            .map(|at| clock.instant_at(at) + cfg.expired_sub_close_delay);
        [
            self.stale_deadline,
            self.next_ping,
            self.pong_deadline,
            self.next_presence,
            expiry,
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
            self.node.observer().subscription_expired();
            if server_side {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "server-side subscription expired, disconnecting with 3006");
                return Some(Disconnect::SUBSCRIPTION_EXPIRED);
            }
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), channel = %channel, "subscription expired, unsubscribing with 2501");
            self.leave(&channel).await;
            self.emit_push(Push {
                channel: channel.to_string(),
                unsubscribe: Some(UnsubscribePush {
                    code: UnsubscribeCode::Expired.code(),
                    reason: UnsubscribeCode::Expired.reason().into(),
                }),
                ..Push::default()
            });
        }
        None
    }
}

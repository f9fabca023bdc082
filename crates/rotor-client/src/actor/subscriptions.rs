//! Subscriptions: subscribe (with a subscription token when the channel needs one),
//! resubscribe with recovery after a reconnect, sub refresh, and their replies.

use super::*;

impl Actor {
    pub(super) fn server_subscribed(&mut self, channel: &str, r: SubscribeResult) {
        let recoverable = r.recoverable;
        let position = self.announce_subscribed(channel, r);
        if recoverable {
            self.server_subs.insert(channel.to_string(), position);
        }
    }

    /// Emits `Subscribed` and then the publications the reply carried (recovered ones), in
    /// order; returns the stream position after them.
    pub(super) fn announce_subscribed(
        &mut self,
        channel: &str,
        r: SubscribeResult,
    ) -> (u64, String) {
        let offset = r
            .publications
            .iter()
            .map(|p| p.offset)
            .fold(r.offset, u64::max);
        let position = (offset, r.epoch.clone());
        self.emit(Event::Subscribed {
            channel: channel.to_string(),
            recoverable: r.recoverable,
            recovered: r.recovered,
            was_recovering: r.was_recovering,
            epoch: r.epoch,
            offset: r.offset,
            data: r.data,
        });
        for p in r.publications {
            self.emit(Event::Publication {
                channel: channel.to_string(),
                publication: p,
            });
        }
        position
    }

    pub(super) fn mark_subs_subscribing(&mut self, code: u32, reason: &str) {
        let mut changed = Vec::new();
        for (ch, sub) in self.subs.iter_mut() {
            sub.refresh_at = None;
            sub.retry_at = None;
            if sub.state == SubscriptionState::Subscribed {
                sub.state = SubscriptionState::Subscribing;
                changed.push(ch.clone());
            }
        }
        for ch in changed {
            self.set_sub_state(&ch, Some(SubscriptionState::Subscribing), None);
            self.emit(Event::Subscribing {
                channel: ch,
                code,
                reason: reason.to_string(),
            });
        }
    }

    // ----- subscriptions -----

    pub(super) fn send_subscribe(&mut self, channel: &str) {
        if !matches!(self.phase, Phase::Connected) {
            return;
        }
        let gen = self.gen;
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.busy {
            return;
        }
        sub.retry_at = None;
        if sub.opts.token_required && sub.token.is_none() {
            let Some(provider) = self.cfg.token_provider.clone() else {
                let e = Error::Token("token_required without a token provider".into());
                sub.state = SubscriptionState::Unsubscribed;
                self.set_sub_state(
                    channel,
                    Some(SubscriptionState::Unsubscribed),
                    Some(e.clone()),
                );
                self.emit(Event::SubscriptionError {
                    channel: channel.to_string(),
                    error: e,
                });
                return;
            };
            sub.busy = true;
            spawn_sub_token(
                provider,
                self.cfg.min_token_validity,
                self.internal_tx.clone(),
                gen,
                channel,
                false,
            );
            return;
        }
        sub.busy = true;
        let (recover, offset, epoch) = match &sub.position {
            Some((o, e)) => (true, *o, e.clone()),
            None => (false, 0, String::new()),
        };
        let cmd = Command {
            subscribe: Some(SubscribeRequest {
                channel: channel.to_string(),
                token: sub.token.clone().unwrap_or_default(),
                recover,
                epoch,
                offset,
                data: sub.opts.data.clone(),
                positioned: sub.opts.positioned,
                recoverable: sub.opts.recoverable,
                join_leave: sub.opts.join_leave,
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        };
        self.command(cmd, Kind::Subscribe(channel.to_string()));
    }

    pub(super) fn on_subscribe_reply(&mut self, channel: String, reply: Reply) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return; // unsubscribed meanwhile
        };
        sub.busy = false;
        if let Some(e) = reply.error {
            let code = e.code;
            if code == ErrorCode::TokenExpired.code() && sub.opts.token_required {
                self.sub_token_expired(&channel);
            } else if code == ErrorCode::UnrecoverablePosition.code() {
                sub.position = None;
                self.emit(Event::SubscriptionError {
                    channel: channel.clone(),
                    error: Error::from_reply(e),
                });
                self.send_subscribe(&channel);
            } else if e.temporary || code < 100 {
                let attempt = sub.auth_failures; // a small, bounded backoff
                sub.retry_at = Some(
                    Instant::now()
                        + backoff::delay(
                            attempt.max(1),
                            self.cfg.min_reconnect_delay,
                            self.cfg.max_reconnect_delay,
                        ),
                );
                self.emit(Event::SubscriptionError {
                    channel,
                    error: Error::from_reply(e),
                });
            } else {
                self.sub_failed(&channel, Error::from_reply(e));
            }
            return;
        }
        let Some(r) = reply.subscribe else {
            self.schedule_reconnect(2, "subscribe reply without a result".into());
            return;
        };
        sub.state = SubscriptionState::Subscribed;
        sub.auth_failures = 0;
        sub.refresh_at =
            (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        let recoverable = r.recoverable;
        self.set_sub_state(&channel, Some(SubscriptionState::Subscribed), None);
        let position = self.announce_subscribed(&channel, r);
        if let (true, Some(sub)) = (recoverable, self.subs.get_mut(&channel)) {
            sub.position = Some(position);
        }
    }

    /// A subscription's token expired (the server's 109 to subscribe, or a provider that
    /// serves only stale tokens): one more failure in a row; within the budget subscribe
    /// again with a fresh token, beyond it AuthExpired for the channel.
    pub(super) fn sub_token_expired(&mut self, channel: &str) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        sub.auth_failures += 1;
        sub.token = None;
        if sub.auth_failures > self.cfg.max_reauth_attempts {
            self.sub_failed(
                channel,
                Error::AuthExpired {
                    channel: Some(channel.to_string()),
                },
            );
        } else {
            self.send_subscribe(channel);
        }
    }

    pub(super) fn sub_failed(&mut self, channel: &str, error: Error) {
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.state = SubscriptionState::Unsubscribed;
            sub.refresh_at = None;
            sub.retry_at = None;
        }
        let code = error.code().unwrap_or(0);
        self.set_sub_state(
            channel,
            Some(SubscriptionState::Unsubscribed),
            Some(error.clone()),
        );
        self.emit(Event::SubscriptionError {
            channel: channel.to_string(),
            error: error.clone(),
        });
        self.emit(Event::Unsubscribed {
            channel: channel.to_string(),
            code,
            reason: error.to_string(),
        });
    }

    pub(super) fn on_sub_refresh_reply(&mut self, channel: String, reply: Reply) {
        let gen = self.gen;
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if let Some(e) = reply.error {
            if e.code == ErrorCode::TokenExpired.code() {
                sub.auth_failures += 1;
                if sub.auth_failures > self.cfg.max_reauth_attempts {
                    self.sub_failed(
                        &channel,
                        Error::AuthExpired {
                            channel: Some(channel.clone()),
                        },
                    );
                } else if let Some(p) = self.cfg.token_provider.clone() {
                    spawn_sub_token(
                        p,
                        self.cfg.min_token_validity,
                        self.internal_tx.clone(),
                        gen,
                        &channel,
                        true,
                    );
                }
            } else if e.temporary {
                sub.refresh_at = Some(Instant::now() + Duration::from_secs(1));
            } else {
                self.emit(Event::SubscriptionError {
                    channel,
                    error: Error::from_reply(e),
                });
            }
            return;
        }
        let r = reply.sub_refresh.unwrap_or_default();
        sub.auth_failures = 0;
        sub.refresh_at =
            (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        self.emit(Event::SubscriptionRefreshed {
            channel,
            ttl: r.expires.then_some(r.ttl),
        });
    }

    // ----- incoming -----
}

//! Connecting and staying connected: the token and transport fetched on tasks of their own,
//! the connect reply, refresh in place, the reconnect backoff, and stopping for good.

use super::*;
use crate::token::{fetch_fresh, Fetched};

impl Actor {
    pub(super) fn start_connect(&mut self) {
        self.gen += 1;
        self.conn = None;
        self.live = None;
        self.fail_pending(Error::ConnectionLost);
        self.set_state(ClientState::Connecting, None);
        let need_token = self.token.is_none() || self.token_stale;
        match (&self.cfg.token_provider, need_token) {
            (Some(provider), true) => {
                self.phase = Phase::Fetching;
                let provider = provider.clone();
                let tx = self.internal_tx.clone();
                let gen = self.gen;
                let min = self.cfg.min_token_validity;
                tokio::spawn(async move {
                    let r = fetch_fresh(|| provider.connection_token(), min).await;
                    let _ = tx.send(Internal::ConnectToken(gen, r));
                });
            }
            _ => self.open(),
        }
    }

    pub(super) fn open(&mut self) {
        self.phase = Phase::Opening;
        let id = self.id();
        let cmd = Command {
            id,
            connect: Some(ConnectRequest {
                token: self.token.clone().unwrap_or_default(),
                data: self.cfg.data.clone(),
                subs: self
                    .server_subs
                    .iter()
                    .map(|(ch, (offset, epoch))| {
                        (
                            ch.clone(),
                            SubscribeRequest {
                                recover: true,
                                offset: *offset,
                                epoch: epoch.clone(),
                                ..SubscribeRequest::default()
                            },
                        )
                    })
                    .collect(),
                name: self.cfg.name.clone(),
                version: self.cfg.version.clone(),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        };
        self.pending.insert(
            id,
            Pending {
                kind: Kind::Connect,
                deadline: Instant::now() + self.cfg.timeout * 2,
            },
        );
        let frame = encode_frame(&[&cmd]);
        let cfg = self.cfg.clone();
        let http = self.http.clone();
        let tx = self.internal_tx.clone();
        let gen = self.gen;
        tokio::spawn(async move {
            let r = match tokio::time::timeout(cfg.timeout, transport::open(&cfg, &http, frame))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Transport(format!(
                    "{} did not open within {:?}",
                    cfg.transport.name(),
                    cfg.timeout
                ))),
            };
            let _ = tx.send(Internal::Opened(gen, r));
        });
    }

    pub(super) fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::ConnectToken(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Fetching) {
                    return;
                }
                match r {
                    Fetched::Fresh(t) => {
                        self.token = Some(t).filter(|t| !t.is_empty());
                        self.token_stale = false;
                        self.open();
                    }
                    Fetched::Failed(e) => {
                        tracing::warn!(error = %e, "token provider failed; retrying with backoff");
                        self.emit(Event::Error(Error::Token(e.0)));
                        self.schedule_reconnect(1, "token provider failed".into());
                    }
                    // A provider that serves only stale tokens counts as credentials that
                    // expired: one more try, then AuthExpired, not a loop.
                    Fetched::Stale(e) => {
                        tracing::warn!(error = %e, "token provider serves stale tokens");
                        self.emit(Event::Error(Error::Token(e.0)));
                        self.auth_failed(
                            ErrorCode::TokenExpired.code(),
                            "token provider serves stale tokens".into(),
                        );
                    }
                }
            }
            Internal::Opened(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Opening) {
                    return;
                }
                match r {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        self.phase = Phase::Handshake;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "transport failed to open");
                        self.pending.clear();
                        self.emit(Event::Error(e.clone()));
                        self.schedule_reconnect(1, e.to_string());
                    }
                }
            }
            Internal::RefreshToken(gen, r) => {
                if gen != self.gen || !matches!(self.phase, Phase::Connected) {
                    return;
                }
                match r {
                    Fetched::Fresh(t) => {
                        self.token = Some(t.clone());
                        let cmd = Command {
                            refresh: Some(RefreshRequest { token: t }),
                            ..Command::default()
                        };
                        self.command(cmd, Kind::Refresh);
                    }
                    // The connection stays until the server expires it (3005), which
                    // re-authenticates; meanwhile the refresh is tried again.
                    Fetched::Failed(e) | Fetched::Stale(e) => {
                        tracing::warn!(error = %e, "token provider failed at refresh; retrying");
                        self.emit(Event::Error(Error::Token(e.0)));
                        if let Some(l) = &mut self.live {
                            l.refresh_at = Some(
                                Instant::now()
                                    + self.cfg.min_reconnect_delay.max(Duration::from_secs(1)),
                            );
                        }
                    }
                }
            }
            Internal::SubToken {
                gen,
                channel,
                refresh,
                result,
            } => {
                if gen != self.gen || !matches!(self.phase, Phase::Connected) {
                    return;
                }
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                sub.busy = false;
                let result = match result {
                    // Only stale tokens for a subscribe: as if the server had said the
                    // token expired (109): one more try, then AuthExpired for the channel.
                    Fetched::Stale(e) if !refresh && sub.opts.token_required => {
                        tracing::warn!(channel = %channel, error = %e, "subscription token provider serves stale tokens");
                        self.emit(Event::SubscriptionError {
                            channel: channel.clone(),
                            error: Error::Token(e.0),
                        });
                        self.sub_token_expired(&channel);
                        return;
                    }
                    Fetched::Fresh(t) => Ok(t),
                    Fetched::Failed(e) | Fetched::Stale(e) => Err(e),
                };
                match result {
                    Ok(t) => {
                        sub.token = Some(t.clone());
                        if refresh {
                            let cmd = Command {
                                sub_refresh: Some(SubRefreshRequest {
                                    channel: channel.clone(),
                                    token: t,
                                }),
                                ..Command::default()
                            };
                            self.command(cmd, Kind::SubRefresh(channel));
                        } else {
                            self.send_subscribe(&channel);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "subscription token provider failed; retrying");
                        let retry = Instant::now()
                            + self.cfg.min_reconnect_delay.max(Duration::from_secs(1));
                        if refresh {
                            sub.refresh_at = Some(retry);
                        } else {
                            sub.retry_at = Some(retry);
                        }
                        self.emit(Event::SubscriptionError {
                            channel,
                            error: Error::Token(e.0),
                        });
                    }
                }
            }
        }
    }

    pub(super) fn on_connect_reply(&mut self, reply: Reply) {
        if let Some(e) = reply.error {
            self.conn = None;
            self.pending.clear();
            if e.code == ErrorCode::TokenExpired.code() {
                self.auth_failed(e.code, e.message);
            } else if e.temporary || e.code < 100 {
                self.emit(Event::Error(Error::from_reply(e.clone())));
                self.schedule_reconnect(e.code, e.message);
            } else {
                let (code, reason) = (e.code, e.message.clone());
                self.stop(code, reason, Some(Error::from_reply(e)));
            }
            return;
        }
        let Some(result) = reply.connect else {
            self.schedule_reconnect(2, "connect reply without a result".into());
            return;
        };
        self.connected(result);
    }

    pub(super) fn connected(&mut self, r: ConnectResult) {
        let now = Instant::now();
        self.phase = Phase::Connected;
        self.attempt = 0;
        self.auth_failures = 0;
        if let Some(conn) = &self.conn {
            if self.cfg.transport != Transport::WebSocket {
                conn.set_session(r.session.clone(), r.node.clone());
            }
        }
        self.live = Some(Live {
            ping: (r.ping > 0).then(|| Duration::from_secs(u64::from(r.ping))),
            pong: r.pong,
            last_rx: now,
            refresh_at: (r.expires && r.ttl > 0).then(|| now + self.cfg.refresh_after(r.ttl)),
        });
        self.status.send_modify(|s| {
            s.state = ClientState::Connected;
            s.error = None;
            s.client = Some(r.client.clone());
        });
        tracing::debug!(client = %r.client, transport = self.cfg.transport.name(), "connected");
        self.emit(Event::Connected {
            client: r.client.clone(),
            data: r.data.clone(),
        });
        for (channel, sub) in r.subs {
            self.server_subscribed(&channel, sub);
        }
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for (cmd, tx) in std::mem::take(&mut self.queued) {
            if !tx.is_closed() {
                self.command(cmd, Kind::User(tx));
            }
        }
    }

    /// "Token expired" for the connection (at connect, at refresh, or a 3005 close): one more
    /// failure in a row. Within the budget, get a fresh token and try again at once; beyond it,
    /// surface [`Error::AuthExpired`] and stop.
    pub(super) fn auth_failed(&mut self, code: u32, reason: String) {
        self.auth_failures += 1;
        if self.cfg.token_provider.is_none() || self.auth_failures > self.cfg.max_reauth_attempts {
            tracing::warn!(
                failures = self.auth_failures,
                "credentials expired again after re-authentication; stopping"
            );
            self.stop(
                ErrorCode::TokenExpired.code(),
                "authentication expired".into(),
                Some(Error::AuthExpired { channel: None }),
            );
            return;
        }
        tracing::info!(reason = %reason, "credentials expired; re-authenticating once");
        self.token_stale = true;
        self.conn = None;
        self.live = None;
        self.mark_subs_subscribing(code, &reason);
        self.emit(Event::Connecting { code, reason });
        self.start_connect();
    }

    pub(super) fn schedule_reconnect(&mut self, code: u32, reason: String) {
        self.conn = None;
        self.live = None;
        self.fail_pending(Error::ConnectionLost);
        if !self.want {
            self.phase = Phase::Idle;
            return;
        }
        self.mark_subs_subscribing(code, &reason);
        let delay = backoff::delay(
            self.attempt,
            self.cfg.min_reconnect_delay,
            self.cfg.max_reconnect_delay,
        );
        self.attempt = self.attempt.saturating_add(1);
        tracing::debug!(code, reason = %reason, ?delay, "reconnecting");
        self.emit(Event::Connecting { code, reason });
        self.set_state(ClientState::Connecting, None);
        self.phase = Phase::Waiting(Instant::now() + delay);
    }

    /// Stops for good (until `connect` is called again).
    pub(super) fn stop(&mut self, code: u32, reason: String, error: Option<Error>) {
        self.want = false;
        self.gen += 1;
        self.conn = None;
        self.live = None;
        self.phase = Phase::Idle;
        let failure = error.clone().unwrap_or(Error::Closed);
        self.fail_pending(failure.clone());
        for (_, tx) in self.queued.drain(..) {
            let _ = tx.send(Err(failure.clone()));
        }
        self.mark_subs_subscribing(code, &reason);
        if let Some(e) = &error {
            self.emit(Event::Error(e.clone()));
        }
        self.emit(Event::Disconnected { code, reason });
        self.set_state(ClientState::Disconnected, error);
    }

    pub(super) fn fail_pending(&mut self, error: Error) {
        for (_, p) in self.pending.drain() {
            if let Kind::User(tx) = p.kind {
                let _ = tx.send(Err(error.clone()));
            }
        }
        for sub in self.subs.values_mut() {
            sub.busy = false;
        }
    }

    /// The connection ended with a close code (or without one: `code` 0).
    pub(super) fn closed(&mut self, code: u32, reason: String) {
        if matches!(self.phase, Phase::Idle) {
            return;
        }
        if code == u32::from(Disconnect::EXPIRED.code) {
            self.auth_failed(code, reason);
        } else if !Disconnect::reconnects(code) {
            tracing::info!(code, reason = %reason, "terminal disconnect; not reconnecting");
            self.stop(
                code,
                reason.clone(),
                Some(Error::Disconnected { code, reason }),
            );
        } else {
            let code = if code == 0 { 1 } else { code };
            self.schedule_reconnect(code, reason);
        }
    }

    pub(super) fn on_refresh_reply(&mut self, reply: Reply) {
        if let Some(e) = reply.error {
            if e.code == ErrorCode::TokenExpired.code() {
                self.auth_failures += 1;
                if self.auth_failures > self.cfg.max_reauth_attempts {
                    self.stop(
                        e.code,
                        "authentication expired".into(),
                        Some(Error::AuthExpired { channel: None }),
                    );
                } else {
                    self.spawn_refresh_token();
                }
            } else if e.temporary {
                if let Some(l) = &mut self.live {
                    l.refresh_at = Some(Instant::now() + Duration::from_secs(1));
                }
            } else {
                self.emit(Event::Error(Error::from_reply(e.clone())));
                self.token_stale = true;
                self.schedule_reconnect(e.code, e.message);
            }
            return;
        }
        let r = reply.refresh.unwrap_or_default();
        self.auth_failures = 0;
        self.token_stale = false;
        if let Some(l) = &mut self.live {
            l.refresh_at =
                (r.expires && r.ttl > 0).then(|| Instant::now() + self.cfg.refresh_after(r.ttl));
        }
        self.emit(Event::Refreshed {
            ttl: r.expires.then_some(r.ttl),
        });
    }

    pub(super) fn spawn_refresh_token(&mut self) {
        let Some(provider) = self.cfg.token_provider.clone() else {
            return;
        };
        let tx = self.internal_tx.clone();
        let gen = self.gen;
        let min = self.cfg.min_token_validity;
        tokio::spawn(async move {
            let r = fetch_fresh(|| provider.connection_token(), min).await;
            let _ = tx.send(Internal::RefreshToken(gen, r));
        });
    }
}

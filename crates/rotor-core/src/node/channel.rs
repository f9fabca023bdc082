//! A channel's publications and members, kept in one order. A publication takes a ticket of
//! its channel (`order::Sequencer`) when it enters the history store, and is handed to the
//! broker only after every earlier ticket was (not confirmed: many may be on their way to
//! other nodes at once, in order); a subscriber joins (hub, broker, stream position,
//! recovered publications) holding the channel's gate exclusively, so no publication is
//! missed or repeated between its position and its first push. This file is where that
//! invariant lives: nothing else subscribes a connection or publishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rotor_protocol::{
    ClientInfo, Publication, Raw, StreamPosition, SubscribeRequest, SubscribeResult,
};

use super::{Node, PublishOptions, IDEMPOTENT_RESULT_TTL};
use crate::config::{ChannelOptions, DeltaType, RecoveryMode};
use crate::filter::TagsFilter;
use crate::hub::ClientHandle;
use crate::storage::{Claim, HistoryFilter, HistoryOptions, HistoryPage};
use crate::CoreError;

/// A subscribe `flag` bit: fail with 112 rather than subscribe without the publications it
/// missed (bit 1 is channel-id compaction, not supported).
const REJECT_UNRECOVERED: i32 = 2;

/// How long a publish with an idempotency key may take before its claim lapses, and how
/// long a repeat waits for it.
const IDEMPOTENT_PENDING: Duration = Duration::from_secs(10);

/// A connection joining a channel: who it is, what it asked for, and what the channel
/// (after any token override) allows.
pub(crate) struct Membership<'a> {
    pub client: &'a Arc<ClientHandle>,
    /// Its presence entry and the `info` of its join and leave pushes.
    pub info: &'a ClientInfo,
    pub opts: &'a ChannelOptions,
    pub want: &'a SubscribeRequest,
    /// A subscription the server made (token claims, server API), not the client.
    pub server_side: bool,
}

impl Node {
    /// Publishes to a channel: stores it in history when the channel keeps history, then fans
    /// it out through the broker. Returns the position (offset 0 and no epoch without history).
    /// With an idempotency key, a repeat within the window (on any node sharing the storage)
    /// publishes nothing and returns the first publish's position.
    pub async fn publish(
        &self,
        channel: &str,
        data: Raw,
        mut options: PublishOptions,
    ) -> Result<StreamPosition, CoreError> {
        let Some(key) = options.idempotency_key.take() else {
            return self.publish_once(channel, data, options).await;
        };
        self.channel_options(channel)?;
        let store = &self.inner.storage.idempotency;
        let waiting_since = tokio::time::Instant::now();
        loop {
            match store.claim(channel, &key, IDEMPOTENT_PENDING).await? {
                Claim::First => break,
                Claim::Done(position) => return Ok(position),
                // The first publish with this key is on its way: its result is this one's.
                Claim::InProgress if waiting_since.elapsed() < IDEMPOTENT_PENDING => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Claim::InProgress => {
                    return Err(CoreError::Unavailable(
                        "a publish with this idempotency key is still in progress".into(),
                    ))
                }
            }
        }
        let published = self.publish_once(channel, data, options).await;
        let kept = match &published {
            Ok(position) => {
                store
                    .settle(channel, &key, position, IDEMPOTENT_RESULT_TTL)
                    .await
            }
            Err(_) => store.release(channel, &key).await,
        };
        if let Err(e) = kept {
            // The publication went out (or failed) all the same; a repeat may publish again.
            tracing::warn!(channel, error = %e, "idempotent publish: result not kept");
        }
        published
    }

    async fn publish_once(
        &self,
        channel: &str,
        data: Raw,
        options: PublishOptions,
    ) -> Result<StreamPosition, CoreError> {
        let opts = self.channel_options(channel)?;
        let mut publication = Publication {
            data,
            info: options.info,
            offset: 0,
            tags: options.tags,
            delta: false,
            time: self.inner.clock.unix_ms(),
        };
        // The ticket fixes this publication's place when it enters the history store; it is
        // handed to the broker only after every earlier one, while the store is free to
        // commit many at once (group commit).
        let history =
            (opts.history_enabled() && !options.skip_history).then(|| self.history_options(&opts));
        let (mut ticket, stored) = self
            .inner
            .order
            .submit(channel, || {
                history.map(|h| {
                    self.inner
                        .storage
                        .history
                        .add(channel, publication.clone(), &h)
                })
            })
            .await;
        let mut position = StreamPosition::default();
        if let Some(stored) = stored {
            position = stored.await?;
            publication.offset = position.offset;
        }
        ticket.turn().await;
        // What history keeps has no delta flag; the nodes are told the publisher asked.
        publication.delta = options.delta || opts.delta_publish;
        let started = std::time::Instant::now();
        let sent = self.inner.broker.publish(channel, &publication);
        // Its place is fixed: the channel's next publication may go (while it still keeps
        // a subscriber's exclusive join waiting until it is confirmed).
        ticket.pass();
        sent.confirmed().await?;
        drop(ticket);
        self.inner
            .observer
            .published(publication.offset > 0, started.elapsed());
        Ok(position)
    }

    /// Presence of a channel (no permission check: callers check).
    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.presence {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.presence.get(channel).await
    }

    /// Number of clients and users in a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<(u32, u32), CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.presence {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.presence.stats(channel).await
    }

    /// Reads history (centrifuge's rules): `limit` 0 reads only the stream position, < 0
    /// as many as allowed; `capped` (a client's `history`) caps it at
    /// `client.history_max_publication_limit`, the server API is not capped. Newest first
    /// (`reverse`) from a `since` at offset 0 is a bad request; a `since` with an empty
    /// epoch matches any epoch.
    pub async fn history(
        &self,
        channel: &str,
        limit: i64,
        since: Option<StreamPosition>,
        reverse: bool,
        capped: bool,
    ) -> Result<HistoryPage, CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.history_enabled() {
            return Err(CoreError::NotAvailable);
        }
        if reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(CoreError::BadRequest(
                "history: reverse from offset 0 (since.offset must be above 0)".into(),
            ));
        }
        let max = if capped {
            self.inner.config.client.history_max_publication_limit
        } else {
            usize::MAX
        };
        let limit = if limit < 0 {
            max
        } else {
            usize::try_from(limit).unwrap_or(usize::MAX).min(max)
        };
        let filter = HistoryFilter {
            since,
            limit,
            reverse,
        };
        self.inner
            .storage
            .history
            .read(channel, &filter, &self.history_options(&opts))
            .await
    }

    pub async fn history_remove(&self, channel: &str) -> Result<(), CoreError> {
        let opts = self.channel_options(channel)?;
        if !opts.history_enabled() {
            return Err(CoreError::NotAvailable);
        }
        self.inner.storage.history.remove(channel).await
    }

    fn history_options(&self, opts: &ChannelOptions) -> HistoryOptions {
        HistoryOptions {
            size: opts.history_size as usize,
            ttl: opts.history_ttl,
            meta_ttl: self.inner.config.channel.history_meta_ttl,
        }
    }

    /// How long a presence entry lives without a refresh: two refresh intervals and a margin.
    pub(crate) fn presence_ttl(&self) -> Duration {
        self.inner.config.client.presence_update_interval * 2 + Duration::from_secs(6)
    }

    /// Subscribes a connection: the hub (and the broker, for the node's first subscriber),
    /// the stream position and, when it recovers, the publications it missed (all under the
    /// channel's gate), then its presence entry and the join push. The result tells the
    /// client what it got; a failure leaves no trace of the subscription.
    pub(crate) async fn join(
        &self,
        channel: &str,
        m: Membership<'_>,
    ) -> Result<SubscribeResult, CoreError> {
        let (opts, want) = (m.opts, m.want);
        let history_allowed = opts.allow_history_for_client || opts.allow_history_for_subscriber;
        let recoverable = opts.history_enabled()
            && (opts.force_recovery
                || (want.recoverable && (opts.allow_recovery || history_allowed))
                || (m.server_side && want.recover));
        let positioned = recoverable
            || (opts.history_enabled()
                && (opts.force_positioning
                    || (want.positioned && (opts.allow_positioning || history_allowed))));
        let join_leave = opts.force_push_join_leave || (want.join_leave && opts.join_leave);
        let filter = match &want.tf {
            None => None,
            Some(_) if !opts.allow_tags_filter => {
                return Err(CoreError::BadRequest(
                    "tags filter not allowed in this channel (allow_tags_filter)".into(),
                ))
            }
            Some(tf) => Some(Arc::new(
                TagsFilter::compile(tf).map_err(CoreError::BadRequest)?,
            )),
        };
        // Deltas: asked for, allowed, and not for a filtered subscription (the SDKs refuse
        // the two together, and a filter would break the chain of bases).
        let delta = want.delta == "fossil"
            && opts.allowed_delta_types.contains(&DeltaType::Fossil)
            && filter.is_none()
            && !m.server_side;
        let mut result = SubscribeResult {
            recoverable,
            positioned,
            delta,
            // Whether the client asked, recovery enabled or not (centrifuge's rule).
            was_recovering: want.recover,
            ..SubscribeResult::default()
        };
        {
            let _gate = self.inner.order.exclusive(channel).await;
            let first = self.inner.hub.subscribe(
                channel,
                m.client,
                join_leave,
                result.delta,
                filter.clone(),
            );
            if first {
                if let Err(e) = self.inner.broker.subscribe(channel).await {
                    self.inner.hub.unsubscribe(channel, m.client);
                    return Err(e);
                }
            }
            if positioned {
                if let Err(e) = self
                    .position(
                        channel,
                        opts,
                        want,
                        recoverable,
                        filter.as_deref(),
                        &mut result,
                    )
                    .await
                {
                    drop(_gate);
                    self.unsubscribe_hub(channel, m.client).await;
                    return Err(e);
                }
                // A client that would rather start over from its own state than go on
                // without what it missed (centrifuge-js with `getState`) gets 112.
                let stream = opts.force_recovery_mode == RecoveryMode::Stream;
                if want.recover
                    && want.flag & REJECT_UNRECOVERED != 0
                    && recoverable
                    && stream
                    && !result.recovered
                {
                    drop(_gate);
                    self.unsubscribe_hub(channel, m.client).await;
                    return Err(CoreError::UnrecoverablePosition);
                }
            }
        }
        // Recovered publications pass the same filter as live ones (whether the position
        // was recovered was decided on all of them).
        if let Some(f) = &filter {
            result.publications.retain(|p| f.matches(&p.tags));
        }
        if result.delta && result.recovered {
            // The client has the channel's latest publication now (recovered, or its own
            // when none was missed): the next may be a delta against it, and this node
            // knows that base even when it had no delta subscriber before.
            let base = match result.publications.last() {
                Some(p) => Some((p.offset, p.data.as_bytes().to_vec())),
                None => self.latest(channel, opts, result.offset).await,
            };
            crate::hub::deltas::recovered(&mut result.publications, m.client.protocol());
            self.inner
                .hub
                .delta_position(channel, m.client, result.offset, Some(base));
        } else if result.delta {
            // Its first full publication past this position starts its base.
            self.inner
                .hub
                .delta_position(channel, m.client, result.offset, None);
        }
        if opts.presence {
            let added = self
                .inner
                .storage
                .presence
                .add(channel, m.info, self.presence_ttl());
            if let Err(e) = added.await {
                tracing::warn!(channel, error = %e, "presence add failed");
            }
        }
        if opts.join_leave {
            if let Err(e) = self.inner.broker.publish_join(channel, m.info).await {
                tracing::warn!(channel, error = %e, "join push failed");
            }
        }
        Ok(result)
    }

    /// Fills the stream position and, when the client recovers, the missed publications
    /// (in `cache` mode the latest one only, the one `filter` passes).
    async fn position(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        want: &SubscribeRequest,
        recoverable: bool,
        filter: Option<&TagsFilter>,
        result: &mut SubscribeResult,
    ) -> Result<(), CoreError> {
        let store = &self.inner.storage.history;
        let hopts = self.history_options(opts);
        let cache = opts.force_recovery_mode == RecoveryMode::Cache;
        if recoverable && cache && (want.recover || opts.auto_cache_recover) {
            result.was_recovering = true;
            // The newest publication is the channel's state; with a filter, the newest
            // that passes it among as many as a recovery may read.
            let limit = match filter {
                None => 1,
                Some(_) => self.inner.config.client.recovery_max_publication_limit,
            };
            let page = self.newest(channel, opts, limit).await?;
            let top = page.position.offset;
            // The client already has the state it would be sent.
            let same = want.offset > 0 && want.offset == top && want.epoch == page.position.epoch;
            result.epoch = page.position.epoch;
            result.offset = top;
            // The state: the newest publication (that passes the filter), when history
            // still has the stream's top.
            let has_top = page.publications.first().is_some_and(|p| p.offset == top);
            let state = page
                .publications
                .into_iter()
                .find(|p| filter.is_none_or(|f| f.matches(&p.tags)))
                .filter(|_| has_top);
            result.recovered = same || state.is_some();
            if !same {
                result.publications = state.into_iter().collect();
            }
            return Ok(());
        }
        if recoverable && want.recover {
            let max = self.inner.config.client.recovery_max_publication_limit;
            let filter = HistoryFilter {
                since: Some(StreamPosition {
                    offset: want.offset,
                    epoch: want.epoch.clone(),
                }),
                limit: max + 1,
                reverse: false,
            };
            match store.read(channel, &filter, &hopts).await {
                Ok(page) => {
                    // An empty epoch matches any stream (centrifuge's rule): a client that
                    // knows only an offset recovers when the stream still holds what
                    // follows it.
                    let complete = (want.epoch.is_empty() || page.position.epoch == want.epoch)
                        && page.publications.len() <= max
                        && match page.publications.first() {
                            Some(first) => first.offset == want.offset + 1,
                            None => page.position.offset == want.offset,
                        };
                    result.epoch = page.position.epoch;
                    result.offset = page.position.offset;
                    if complete {
                        result.recovered = true;
                        result.publications = page.publications;
                    }
                    return Ok(());
                }
                Err(CoreError::UnrecoverablePosition) => {}
                Err(e) => return Err(e),
            }
        }
        let page = store
            .read(channel, &HistoryFilter::default(), &hopts)
            .await?;
        result.epoch = page.position.epoch;
        result.offset = page.position.offset;
        Ok(())
    }

    /// The stream's newest `limit` publications, newest first, and its position.
    async fn newest(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        limit: usize,
    ) -> Result<HistoryPage, CoreError> {
        let newest = HistoryFilter {
            since: None,
            limit,
            reverse: true,
        };
        let hopts = self.history_options(opts);
        self.inner
            .storage
            .history
            .read(channel, &newest, &hopts)
            .await
    }

    /// The data of the stream's publication at `top`, if history still has it.
    async fn latest(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        top: u64,
    ) -> Option<(u64, Vec<u8>)> {
        let page = self.newest(channel, opts, 1).await.ok()?;
        let p = page.publications.into_iter().next()?;
        (p.offset == top).then(|| (p.offset, p.data.as_bytes().to_vec()))
    }

    /// Takes the connection out of the channel's subscribers (and the broker's, when it was
    /// the node's last), under the channel's gate.
    async fn unsubscribe_hub(&self, channel: &str, client: &Arc<ClientHandle>) {
        let _gate = self.inner.order.exclusive(channel).await;
        if self.inner.hub.unsubscribe(channel, client) {
            if let Err(e) = self.inner.broker.unsubscribe(channel).await {
                tracing::warn!(channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    /// Ends a subscription [`Node::join`] made: the hub, then the presence entry (when it had
    /// one) and the leave push (with this info, when it announces one).
    pub(crate) async fn leave(
        &self,
        channel: &str,
        client: &Arc<ClientHandle>,
        presence: bool,
        leave_push: Option<&ClientInfo>,
    ) {
        self.unsubscribe_hub(channel, client).await;
        if presence {
            let removed = self.inner.storage.presence.remove(channel, client.id());
            if let Err(e) = removed.await {
                tracing::warn!(channel, error = %e, "presence remove failed");
            }
        }
        if let Some(info) = leave_push {
            if let Err(e) = self.inner.broker.publish_leave(channel, info).await {
                tracing::warn!(channel, error = %e, "leave push failed");
            }
        }
    }

    /// Re-adds a connection's presence entry so it does not expire while the connection
    /// lives.
    pub(crate) async fn refresh_presence(&self, channel: &str, info: &ClientInfo) {
        let ttl = self.presence_ttl();
        if let Err(e) = self.inner.storage.presence.add(channel, info, ttl).await {
            tracing::warn!(channel, error = %e, "presence refresh failed");
        }
    }
}

//! The client's frames: commands decoded and run in order, one reply per command id (or
//! the disconnect an error calls for), the command rate limit, and the commands that only
//! read or publish: publish, presence, presence_stats, history, ping, rpc and send.

use rotor_protocol::{
    Command, Disconnect, Empty, HistoryRequest, HistoryResult, MethodKind, PresenceResult,
    PresenceStatsResult, Protocol, ProtocolError, PublishRequest, Reply, RpcRequest, RpcResult,
};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

use super::{rate_burst, Addr, CommandResult, Session, State, TransportKind};
use crate::channels::{self, Asker};
use crate::limits::{Limit, Verdict};
use crate::node::PublishOptions;
use crate::proxy::ProxyKind;
use crate::CoreError;

/// At most this many publishes of one connection are on their way at once; the next waits
/// for the oldest to finish.
const PUBLISHES_IN_FLIGHT: usize = 64;

/// A publish on its way (to the history store and the broker).
pub(super) type Publishing = Pin<Box<dyn Future<Output = Published> + Send>>;

/// The publishes of a connection on their way. In a mutex only so that the session stays
/// `Sync` (its methods hold `&Session` across awaits); the session reaches them through
/// `&mut` and never locks.
#[derive(Default)]
pub(super) struct InFlight(std::sync::Mutex<Vec<Publishing>>);

impl InFlight {
    pub(super) fn get(&mut self) -> &mut Vec<Publishing> {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_empty(&mut self) -> bool {
        self.get().is_empty()
    }
}

/// A publish that finished: the command it answers and how it went.
pub(super) struct Published {
    id: u32,
    started: Instant,
    result: Result<rotor_protocol::StreamPosition, CoreError>,
}

fn publish_reply() -> Option<Reply> {
    Some(Reply {
        publish: Some(Empty {}),
        ..Reply::default()
    })
}

/// Polls the publishes on their way; ready with those that finished (at least one).
pub(super) fn poll_publishes(
    publishing: &mut InFlight,
    cx: &mut Context<'_>,
) -> Poll<Vec<Published>> {
    let mut done = Vec::new();
    publishing.get().retain_mut(|p| match p.as_mut().poll(cx) {
        Poll::Ready(out) => {
            done.push(out);
            false
        }
        Poll::Pending => true,
    });
    if done.is_empty() {
        Poll::Pending
    } else {
        Poll::Ready(done)
    }
}

impl Session {
    /// One frame from the client (`kind`: a text frame is JSON, a binary one Protobuf): its
    /// commands in order, until one ends the connection.
    pub(super) async fn on_frame(&mut self, frame: &[u8], kind: Protocol) -> Option<Disconnect> {
        if kind != self.protocol {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), protocol = self.protocol.name(), frame = kind.name(), transport = self.transport.name, "frame of the other protocol, disconnecting with 3501");
            return Some(Disconnect::BAD_REQUEST.with_reason(match kind {
                Protocol::Protobuf => "binary frames are not supported",
                Protocol::Json => "text frames are not supported",
            }));
        }
        if self.transport.kind == TransportKind::Unidirectional {
            if let Some(fallback_token) = self.first_frame.take() {
                // A text frame: the transport checked it is UTF-8.
                let text = String::from_utf8_lossy(frame);
                return self.uni_connect_text(&text, fallback_token).await;
            }
            tracing::debug!(client = %self.client.id(), "ignoring a frame on a unidirectional transport");
            return None;
        }
        let commands = match self.protocol.decode_commands(frame) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), error = %e, transport = self.transport.name, "malformed frame, disconnecting with 3501");
                return Some(Disconnect::BAD_REQUEST);
            }
        };
        for cmd in commands {
            if let Err(d) = self.on_command(cmd).await {
                return Some(d);
            }
        }
        None
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        let method = cmd.method();
        let id = cmd.id;
        if id == 0 && !matches!(method, MethodKind::Pong | MethodKind::Send) {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), method = method.name(), "command without id, disconnecting with 3501");
            return Err(Disconnect::BAD_REQUEST);
        }
        if self.state == State::Connecting && method != MethodKind::Connect {
            tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), method = method.name(), "command before connect, disconnecting with 3501");
            return Err(Disconnect::BAD_REQUEST);
        }
        // Publishes may be on their way while later publishes start; anything else waits
        // until they are done, so it sees them as the client sent them.
        if !matches!(method, MethodKind::Publish | MethodKind::Pong) {
            self.finish_publishes().await?;
        }
        let started = Instant::now();
        if let Err(e) = self.rate_check(method) {
            return self.answer_error(id, &e);
        }
        let result: CommandResult = match method {
            MethodKind::Connect => self.connect(cmd.connect.unwrap_or_default()).await,
            MethodKind::Subscribe => self.subscribe(cmd.subscribe.unwrap_or_default()).await,
            MethodKind::Unsubscribe => {
                let channel = cmd.unsubscribe.unwrap_or_default().channel;
                self.leave(&channel).await;
                Ok(Some(Reply {
                    unsubscribe: Some(Empty {}),
                    ..Reply::default()
                }))
            }
            MethodKind::Publish => match cmd.publish {
                Some(p) => match self.start_publish(id, started, p).await? {
                    Some(result) => result,
                    // On its way: answered when it is done.
                    None => return Ok(()),
                },
                None => Err(CoreError::BadRequest("publish without data".into())),
            },
            MethodKind::Presence => {
                self.presence(cmd.presence.unwrap_or_default().channel)
                    .await
            }
            MethodKind::PresenceStats => {
                self.presence_stats(cmd.presence_stats.unwrap_or_default().channel)
                    .await
            }
            MethodKind::History => self.history(cmd.history.unwrap_or_default()).await,
            MethodKind::Ping => Ok(Some(Reply {
                ping: Some(Empty {}),
                ..Reply::default()
            })),
            // As Centrifugo v6: there is no handler for asynchronous messages.
            MethodKind::Send => {
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), "send: asynchronous messages are not handled, disconnecting with 3508");
                Err(Disconnect::NOT_AVAILABLE.into())
            }
            MethodKind::Rpc => self.rpc(cmd.rpc.unwrap_or_default()).await,
            MethodKind::Refresh => self.refresh(cmd.refresh.unwrap_or_default().token).await,
            MethodKind::SubRefresh => self.sub_refresh(cmd.sub_refresh.unwrap_or_default()).await,
            MethodKind::Pong => {
                self.pong_deadline = None;
                Ok(None)
            }
            MethodKind::Unknown => Err(CoreError::MethodNotFound),
        };
        self.finish_command(method, id, started, result)
    }

    /// Counts a command that finished and answers it (its reply, its error, or the
    /// disconnect the error calls for).
    fn finish_command(
        &mut self,
        method: MethodKind,
        id: u32,
        started: Instant,
        result: CommandResult,
    ) -> Result<(), Disconnect> {
        let error = match &result {
            Ok(_) => None,
            Err(e) => Some(e.reply_code()),
        };
        if method != MethodKind::Pong {
            self.node
                .observer()
                .command(method.name(), started.elapsed(), error);
        }
        match result {
            Ok(Some(mut reply)) => {
                reply.id = id;
                self.emit(&reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(client = %self.client.id(), method = method.name(), error = %e, "command error");
                self.answer_error(id, &e)
            }
        }
    }

    /// Answers command `id` with the error (commands without an id get no reply), or ends
    /// the connection when the error is a disconnect.
    fn answer_error(&mut self, id: u32, e: &CoreError) -> Result<(), Disconnect> {
        match e.to_protocol() {
            ProtocolError::Disconnect(d) => Err(d),
            ProtocolError::Reply(error) => {
                if id > 0 {
                    self.emit(&Reply::error(id, error));
                }
                Ok(())
            }
        }
    }

    /// Applies `client.command_rate_limit` to one command.
    fn rate_check(&mut self, method: MethodKind) -> Result<(), CoreError> {
        let Some(bucket) = self.bucket.as_mut() else {
            return Ok(());
        };
        if method == MethodKind::Pong {
            return Ok(());
        }
        let cfg = &self.node.config().client;
        match bucket.take(cfg.command_rate_limit, rate_burst(cfg), Instant::now()) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse => {
                self.limit_hit(Limit::CommandRate);
                tracing::debug!(client = %self.client.id(), user = %self.user, method = method.name(), "command over client.command_rate_limit, error 111");
                Err(CoreError::TooManyRequests)
            }
            Verdict::Disconnect => {
                self.limit_hit(Limit::CommandRate);
                tracing::info!(client = %self.client.id(), addr = %Addr(self.remote), user = %self.user, "client keeps sending over client.command_rate_limit, disconnecting with 3013");
                Err(Disconnect::TOO_MANY_REQUESTS.into())
            }
        }
    }

    fn asker(&self, channel: &str) -> Asker<'_> {
        Asker {
            user: &self.user,
            subscribed: self.subs.contains_key(channel),
        }
    }

    /// Starts a publish without a publish proxy and answers it now when it is done at once
    /// (in memory it always is) or fails its checks; otherwise it goes on while the next
    /// commands are read (the channel's order is fixed by now) and is answered from
    /// [`poll_publishes`]. With a publish proxy the backend is asked first, in order.
    async fn start_publish(
        &mut self,
        id: u32,
        started: Instant,
        req: PublishRequest,
    ) -> Result<Option<CommandResult>, Disconnect> {
        let opts = match self.node.channel_options(&req.channel) {
            Ok(o) => o,
            Err(e) => return Ok(Some(Err(e))),
        };
        if self.node.proxies().publish_for(&opts).is_some() {
            self.finish_publishes().await?;
            return Ok(Some(self.publish(req).await));
        }
        if self.publishing.get().len() >= PUBLISHES_IN_FLIGHT {
            let done = poll_fn(|cx| poll_publishes(&mut self.publishing, cx)).await;
            self.finish_published(done)?;
        }
        let checked = channels::check_publish(&opts, self.asker(&req.channel))
            .and_then(|()| self.publication_size_ok(&req.data));
        if let Err(e) = checked {
            return Ok(Some(Err(e)));
        }
        let options = self.publish_options(&req.channel, false);
        let node = self.node.clone();
        let PublishRequest { channel, data } = req;
        let mut publishing: Publishing = Box::pin(async move {
            let result = node.publish(&channel, data, options).await;
            Published {
                id,
                started,
                result,
            }
        });
        // Polled once now, in command order: a publication takes its channel's ticket on
        // its first poll, so the channel's order is the order the client sent them in.
        Ok(
            match poll_fn(|cx| Poll::Ready(publishing.as_mut().poll(cx))).await {
                Poll::Ready(done) => Some(done.result.map(|_| publish_reply())),
                Poll::Pending => {
                    self.publishing.get().push(publishing);
                    None
                }
            },
        )
    }

    /// Waits for every publish on its way and answers each.
    pub(super) async fn finish_publishes(&mut self) -> Result<(), Disconnect> {
        while !self.publishing.is_empty() {
            let done = poll_fn(|cx| poll_publishes(&mut self.publishing, cx)).await;
            self.finish_published(done)?;
        }
        Ok(())
    }

    /// Answers publishes that are done.
    pub(super) fn finish_published(&mut self, done: Vec<Published>) -> Result<(), Disconnect> {
        if self.publishing.is_empty() {
            // A burst is over: an idle publisher keeps no buffer.
            *self.publishing.get() = Vec::new();
        }
        for p in done {
            self.finish_command(
                MethodKind::Publish,
                p.id,
                p.started,
                p.result.map(|_| publish_reply()),
            )?;
        }
        Ok(())
    }

    fn publication_size_ok(&mut self, data: &rotor_protocol::Raw) -> Result<(), CoreError> {
        let max = self.cfg().publication_max_size;
        if data.get().len() > max {
            self.limit_hit(Limit::PublicationSize);
            return Err(CoreError::BadRequest(format!(
                "publication data larger than {max} bytes"
            )));
        }
        Ok(())
    }

    /// The publisher's info (with its channel info when it is subscribed).
    fn publish_options(&self, channel: &str, skip_history: bool) -> PublishOptions {
        let chan_info = self.subs.get(channel).and_then(|s| s.chan_info.clone());
        PublishOptions {
            info: Some(self.info(chan_info)),
            skip_history,
            ..PublishOptions::default()
        }
    }

    /// A publish with a publish proxy: the backend decides instead of the allow_publish_*
    /// options and may replace the data, keep the publication out of history, give it an
    /// idempotency key or ask for deltas.
    async fn publish(&mut self, req: PublishRequest) -> CommandResult {
        let opts = self.node.channel_options(&req.channel)?;
        let proxy = self.node.proxies().publish_for(&opts).cloned();
        if proxy.is_none() {
            channels::check_publish(&opts, self.asker(&req.channel))?;
        }
        self.publication_size_ok(&req.data)?;
        let mut data = req.data;
        let mut options = self.publish_options(&req.channel, false);
        if let Some(proxy) = proxy {
            let caller = self.caller();
            let answer = self
                .ask(
                    ProxyKind::Publish,
                    &proxy,
                    proxy.proxy.publish(&caller, &req.channel, &data),
                )
                .await?;
            if let Some(grant) = answer.into_result()? {
                if let Some(d) = grant.data {
                    data = d;
                }
                options.skip_history = grant.skip_history;
                options.idempotency_key = grant.idempotency_key;
                options.delta = grant.delta;
            }
        }
        self.node.publish(&req.channel, data, options).await?;
        Ok(publish_reply())
    }

    /// `rpc`: to the backend of the method's namespace (the part before
    /// `rpc.namespace_boundary`). Without any RPC proxy: 108; an unknown namespace: 104; a
    /// namespace without its proxy enabled: 108.
    async fn rpc(&mut self, req: RpcRequest) -> CommandResult {
        let node = self.node.clone();
        if !node.proxies().any_rpc() {
            return Err(CoreError::NotAvailable);
        }
        let rpc = &node.config().rpc;
        let boundary = rpc.namespace_boundary.as_str();
        let ns = match req
            .method
            .split_once(boundary)
            .filter(|_| !boundary.is_empty())
        {
            Some((name, _)) => rpc
                .namespaces
                .iter()
                .find(|n| n.name == name)
                .ok_or(CoreError::MethodNotFound)?,
            None => &rpc.without_namespace,
        };
        if !ns.proxy_enabled {
            return Err(CoreError::NotAvailable);
        }
        let proxy = node
            .proxies()
            .named(ProxyKind::Rpc, &ns.proxy_name)
            .ok_or(CoreError::NotAvailable)?;
        let caller = self.caller();
        let answer = self
            .ask(
                ProxyKind::Rpc,
                proxy,
                proxy.proxy.rpc(&caller, &req.method, req.data.as_ref()),
            )
            .await?;
        let data = answer.into_result()?.flatten();
        Ok(Some(Reply {
            rpc: Some(RpcResult { data }),
            ..Reply::default()
        }))
    }

    async fn presence(&mut self, channel: String) -> CommandResult {
        let opts = self.node.channel_options(&channel)?;
        channels::check_presence(&opts, self.asker(&channel))?;
        let presence = self.node.presence(&channel).await?;
        Ok(Some(Reply {
            presence: Some(PresenceResult { presence }),
            ..Reply::default()
        }))
    }

    async fn presence_stats(&mut self, channel: String) -> CommandResult {
        let opts = self.node.channel_options(&channel)?;
        channels::check_presence(&opts, self.asker(&channel))?;
        let (num_clients, num_users) = self.node.presence_stats(&channel).await?;
        Ok(Some(Reply {
            presence_stats: Some(PresenceStatsResult {
                num_clients,
                num_users,
            }),
            ..Reply::default()
        }))
    }

    async fn history(&mut self, req: HistoryRequest) -> CommandResult {
        let opts = self.node.channel_options(&req.channel)?;
        channels::check_history(&opts, self.asker(&req.channel))?;
        if req.limit as i64 > self.cfg().history_max_publication_limit as i64 {
            self.limit_hit(Limit::HistoryLimit);
        }
        let page = self
            .node
            .history(&req.channel, req.limit as i64, req.since, req.reverse, true)
            .await?;
        Ok(Some(Reply {
            history: Some(HistoryResult {
                publications: page.publications,
                epoch: page.position.epoch,
                offset: page.position.offset,
            }),
            ..Reply::default()
        }))
    }
}

//! The client's frames: commands decoded and run in order, one reply per command id (or
//! the disconnect an error calls for), the command rate limit, and the commands that only
//! read or publish: publish, presence, presence_stats, history, ping, rpc and send.

use rotor_protocol::{
    Command, Disconnect, Empty, HistoryRequest, HistoryResult, MethodKind, PresenceResult,
    PresenceStatsResult, Protocol, ProtocolError, PublishRequest, Reply, RpcRequest, RpcResult,
};
use tokio::time::Instant;

use super::{rate_burst, Addr, CommandResult, Session, State, TransportKind};
use crate::channels::{self, Asker};
use crate::limits::{Limit, Verdict};
use crate::node::PublishOptions;
use crate::proxy::ProxyKind;
use crate::CoreError;

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
                Some(p) => self.publish(p).await,
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

    async fn publish(&mut self, req: PublishRequest) -> CommandResult {
        let opts = self.node.channel_options(&req.channel)?;
        let proxy = self.node.proxies().publish_for(&opts).cloned();
        if proxy.is_none() {
            channels::check_publish(&opts, self.asker(&req.channel))?;
        }
        let max = self.cfg().publication_max_size;
        if req.data.get().len() > max {
            self.limit_hit(Limit::PublicationSize);
            return Err(CoreError::BadRequest(format!(
                "publication data larger than {max} bytes"
            )));
        }
        let mut data = req.data;
        let mut skip_history = false;
        // The backend decides instead of the allow_publish_* options; it may replace the
        // data or keep the publication out of history.
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
                skip_history = grant.skip_history;
            }
        }
        let chan_info = self
            .subs
            .get(req.channel.as_str())
            .and_then(|s| s.chan_info.clone());
        let options = PublishOptions {
            info: Some(self.info(chan_info)),
            skip_history,
            ..PublishOptions::default()
        };
        self.node.publish(&req.channel, data, options).await?;
        Ok(Some(Reply {
            publish: Some(Empty {}),
            ..Reply::default()
        }))
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
            .history(&req.channel, req.limit as i64, req.since, req.reverse)
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

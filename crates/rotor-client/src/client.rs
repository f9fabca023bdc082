//! The public handles: [`Client`], [`Subscription`] and the [`Events`] stream. A handle is
//! cheap: it sends operations to the one task that owns the connection (`crate::actor`) and
//! reads its state from a watch; nothing here touches the network.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rotor_protocol::{
    ClientInfo, Command, HistoryRequest, HistoryResult, PresenceRequest, PresenceStatsRequest,
    PresenceStatsResult, PublishRequest, Raw, Reply, RpcRequest, StreamPosition,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::{self, Op, Status};
use crate::config::{ClientConfig, SubscriptionOptions};
use crate::error::Error;
use crate::event::{ClientState, Event, SubscriptionState};

/// A connection to a rotor server. Cheap to clone; the connection lives as long as any clone.
/// Needs a Tokio runtime.
#[derive(Clone)]
pub struct Client {
    ops: mpsc::UnboundedSender<Op>,
    status: Arc<watch::Sender<Status>>,
    timeout: Duration,
}

/// The client's events, in order. Keep polling it: events are buffered until read. Dropping it
/// is allowed (events are then discarded).
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl futures_util::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Events {
    /// The next event, or `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Hands every event to `callback` on a task of its own, for applications that prefer
    /// callbacks to a stream.
    pub fn on_event(mut self, mut callback: impl FnMut(Event) + Send + 'static) {
        tokio::spawn(async move {
            while let Some(e) = self.rx.recv().await {
                callback(e);
            }
        });
    }
}

/// A subscription's handle: a channel name and a way to the client.
#[derive(Clone)]
pub struct Subscription {
    channel: String,
    client: Client,
}

impl Client {
    /// Creates a client (not yet connecting: call [`Client::connect`]) and its event stream.
    pub fn new(config: ClientConfig) -> (Client, Events) {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let status = Arc::new(watch::Sender::new(Status {
            state: ClientState::Disconnected,
            client: None,
            error: None,
            subs: HashMap::new(),
        }));
        let timeout = config.timeout;
        actor::start(config, ops_rx, ev_tx, status.clone());
        (
            Client {
                ops: ops_tx,
                status,
                timeout,
            },
            Events { rx: ev_rx },
        )
    }

    /// Starts connecting (and keeps the connection up, reconnecting as needed).
    pub fn connect(&self) {
        self.status.send_modify(|s| {
            if s.state == ClientState::Disconnected {
                s.state = ClientState::Connecting;
                s.error = None;
            }
        });
        let _ = self.ops.send(Op::Connect);
    }

    /// Closes the connection and stops reconnecting. Subscriptions are kept and come back on
    /// the next [`Client::connect`].
    pub fn disconnect(&self) {
        let _ = self.ops.send(Op::Disconnect);
    }

    pub fn state(&self) -> ClientState {
        self.status.borrow().state
    }

    /// The client id the server gave the current connection.
    pub fn client_id(&self) -> Option<String> {
        self.status.borrow().client.clone()
    }

    /// Waits until connected. Fails when the client stopped: with the reason it stopped for
    /// ([`Error::AuthExpired`], [`Error::Disconnected`], …) or [`Error::Closed`].
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.status.subscribe();
        let s = rx
            .wait_for(|s| s.state != ClientState::Connecting)
            .await
            .map_err(|_| Error::Closed)?;
        match s.state {
            ClientState::Connected => Ok(()),
            _ => Err(s.error.clone().unwrap_or(Error::Closed)),
        }
    }

    /// Subscribes to `channel` (now if connected, else as soon as the client connects) and
    /// keeps the subscription across reconnects.
    pub fn subscribe(&self, channel: &str, options: SubscriptionOptions) -> Subscription {
        self.status.send_modify(|s| {
            s.subs
                .insert(channel.to_string(), (SubscriptionState::Subscribing, None));
        });
        let _ = self.ops.send(Op::Subscribe(channel.to_string(), options));
        self.subscription(channel)
    }

    /// A handle to an existing subscription (or server-side channel).
    pub fn subscription(&self, channel: &str) -> Subscription {
        Subscription {
            channel: channel.to_string(),
            client: self.clone(),
        }
    }

    /// Sends a command and waits for its reply; requests made while connecting wait for the
    /// connection (within the same timeout).
    async fn request(&self, cmd: Command) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Request(Box::new(cmd), tx))
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(r)) => r,
        }
    }

    pub async fn publish(&self, channel: &str, data: impl serde::Serialize) -> Result<(), Error> {
        let cmd = Command {
            publish: Some(PublishRequest {
                channel: channel.to_string(),
                data: Raw::from_value(&data),
            }),
            ..Command::default()
        };
        self.request(cmd).await.map(|_| ())
    }

    /// Calls an RPC method; returns the result's data (`null` when there is none).
    pub async fn rpc(&self, method: &str, data: impl serde::Serialize) -> Result<Raw, Error> {
        let cmd = Command {
            rpc: Some(RpcRequest {
                method: method.to_string(),
                data: Some(Raw::from_value(&data)),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply
            .rpc
            .and_then(|r| r.data)
            .unwrap_or_else(|| Raw::from_json("null").expect("valid JSON")))
    }

    /// Sends an asynchronous message to the server (no reply). Fails when not connected.
    pub fn send(&self, data: impl serde::Serialize) -> Result<(), Error> {
        if self.state() != ClientState::Connected {
            return Err(Error::Transport("not connected".into()));
        }
        self.ops
            .send(Op::Send(Raw::from_value(&data)))
            .map_err(|_| Error::Closed)
    }

    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, Error> {
        let cmd = Command {
            presence: Some(PresenceRequest {
                channel: channel.to_string(),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.presence.map(|p| p.presence).unwrap_or_default())
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, Error> {
        let cmd = Command {
            presence_stats: Some(PresenceStatsRequest {
                channel: channel.to_string(),
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.presence_stats.unwrap_or_default())
    }

    /// A channel's history: up to `limit` publications (`-1`: as many as the server allows;
    /// 0: only the stream position), after `since` when given, newest first when `reverse`.
    pub async fn history(
        &self,
        channel: &str,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryResult, Error> {
        let cmd = Command {
            history: Some(HistoryRequest {
                channel: channel.to_string(),
                limit,
                since,
                reverse,
            }),
            ..Command::default()
        };
        let reply = self.request(cmd).await?;
        Ok(reply.history.unwrap_or_default())
    }
}

impl Subscription {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn state(&self) -> SubscriptionState {
        self.client
            .status
            .borrow()
            .subs
            .get(&self.channel)
            .map(|s| s.0)
            .unwrap_or(SubscriptionState::Unsubscribed)
    }

    /// Waits until subscribed. Fails when the subscription ended (with its error) or the client
    /// stopped.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.client.status.subscribe();
        let s = rx
            .wait_for(|s| {
                let sub = s.subs.get(&self.channel).map(|x| x.0);
                sub != Some(SubscriptionState::Subscribing)
                    || (s.state == ClientState::Disconnected && s.error.is_some())
            })
            .await
            .map_err(|_| Error::Closed)?;
        match s.subs.get(&self.channel) {
            Some((SubscriptionState::Subscribed, _)) => Ok(()),
            Some((_, Some(e))) => Err(e.clone()),
            _ => Err(s
                .error
                .clone()
                .unwrap_or_else(|| Error::NotSubscribed(self.channel.clone()))),
        }
    }

    /// Unsubscribes and forgets the subscription.
    pub fn unsubscribe(&self) {
        let _ = self.client.ops.send(Op::Unsubscribe(self.channel.clone()));
    }

    pub async fn publish(&self, data: impl serde::Serialize) -> Result<(), Error> {
        self.client.publish(&self.channel, data).await
    }

    pub async fn presence(&self) -> Result<BTreeMap<String, ClientInfo>, Error> {
        self.client.presence(&self.channel).await
    }

    pub async fn presence_stats(&self) -> Result<PresenceStatsResult, Error> {
        self.client.presence_stats(&self.channel).await
    }

    pub async fn history(
        &self,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryResult, Error> {
        self.client
            .history(&self.channel, limit, since, reverse)
            .await
    }
}

//! The broker moves publications, join/leave events and control messages between nodes, and
//! is the node's view of the cluster: which nodes are up, and messages addressed to one of
//! them. A single node uses [`LocalBroker`], which hands everything straight back to its own
//! hub and knows no other node; `rotor-broker-redis` implements the same trait across nodes.
//!
//! Nothing above the core names a broker implementation: transports and the server API ask
//! the [`crate::Node`] (`nodes`, `send_to_node`), which asks its broker.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use rotor_protocol::{ClientInfo, Publication};

use crate::CoreError;

/// Node statistics for the `info` API and the cluster's node registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: usize,
    pub num_users: usize,
    pub num_channels: usize,
    pub num_subs: usize,
    pub uptime: u64,
}

/// Receives messages other nodes address to this one (see [`crate::Node::send_to_node`]);
/// the server routes emulation requests for sessions on this node through it.
pub trait NodeMessageHandler: Send + Sync {
    fn on_node_message(&self, payload: &str);
}

/// Which connections a `connections` survey asks for.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionsQuery {
    /// Only this user's connections ("" for every user).
    #[serde(default)]
    pub user: String,
    /// Only connections subscribed to this channel ("" for any).
    #[serde(default)]
    pub channel: String,
    /// At most this many connections listed (the counts cover them all).
    #[serde(default)]
    pub limit: usize,
    /// Also count the matching connections whose token expires within each of these many
    /// seconds from now.
    #[serde(default)]
    pub expiring_within: Vec<u64>,
}

/// Node-wide commands that must reach every node (the connection may live on any of them).
/// Serializable so that brokers can carry them between processes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Disconnect a user's connections (all, or one client / session), sparing `whitelist`.
    Disconnect {
        user: String,
        client: Option<String>,
        session: Option<String>,
        whitelist: Vec<String>,
        code: u16,
        reason: String,
    },
    /// Unsubscribe a user's connections from a channel.
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
        session: Option<String>,
    },
    /// Subscribe a user's connections to a channel (server-side subscription).
    Subscribe {
        user: String,
        channel: String,
        client: Option<String>,
        session: Option<String>,
        info: Option<rotor_protocol::Raw>,
        data: Option<rotor_protocol::Raw>,
    },
    /// A token was revoked by its jti: refuse it and close connections using it.
    Revoke { jti: String, expire_at: u64 },
    /// A user's tokens issued before a time were invalidated.
    InvalidateUser {
        user: String,
        channel: String,
        issued_before: u64,
        expire_at: u64,
    },
    /// This node may have missed publications of a channel (its broker lost and regained
    /// the connection that brings them): the channel's local subscribers are told their
    /// state is insufficient, so that they recover from history. Node-local.
    InsufficientState { channel: String },
    /// Every node answers `reply_to` with its channels that match `pattern` (the server
    /// API's `channels`).
    ChannelsSurvey {
        id: String,
        reply_to: String,
        pattern: String,
    },
    /// Every node answers `reply_to` with its connections that match `query` (the server
    /// API's `connections`).
    ConnectionsSurvey {
        id: String,
        reply_to: String,
        query: ConnectionsQuery,
    },
    /// Extend (or expire) a user's connections.
    Refresh {
        user: String,
        client: Option<String>,
        session: Option<String>,
        expired: bool,
        expire_at: Option<u64>,
    },
}

/// What a broker delivers to its node, and what it may ask of it.
pub trait BrokerHandler: Send + Sync {
    fn on_publication(&self, channel: &str, publication: &Publication);
    fn on_join(&self, channel: &str, info: &ClientInfo);
    fn on_leave(&self, channel: &str, info: &ClientInfo);
    fn on_control(&self, control: &Control);
    /// Publications of `channel` may have been lost on their way to this node (the broker's
    /// connection dropped and is back).
    fn on_missed(&self, channel: &str);
    /// A message another node addressed to this one.
    fn on_node_message(&self, payload: &str);
    /// This node's numbers now, for the other nodes (`None` once the node is gone).
    fn node_info(&self) -> Option<NodeInfo>;
}

/// A publication handed to a broker: its place among the channel's publications was fixed
/// by the call that returned it; [`Sent::confirmed`] says whether the broker took it.
/// Waiting for that is not needed to keep the order, so the node lets the channel's next
/// publication through at once and many can be on their way to the other nodes together.
#[must_use = "a publication is only known to be sent once confirmed"]
pub struct Sent(SentState);

enum SentState {
    Done(Result<(), CoreError>),
    Waiting(tokio::sync::oneshot::Receiver<Result<(), CoreError>>),
}

impl Sent {
    /// Already taken (or refused).
    pub fn done(result: Result<(), CoreError>) -> Sent {
        Sent(SentState::Done(result))
    }

    /// Taken once the sender half answers; a sender dropped unanswered (the broker
    /// stopped) counts as unavailable.
    pub fn waiting(answer: tokio::sync::oneshot::Receiver<Result<(), CoreError>>) -> Sent {
        Sent(SentState::Waiting(answer))
    }

    /// Whether the broker took the publication.
    pub async fn confirmed(self) -> Result<(), CoreError> {
        match self.0 {
            SentState::Done(result) => result,
            SentState::Waiting(answer) => answer.await.unwrap_or_else(|_| {
                Err(CoreError::Unavailable(
                    "the broker stopped before it confirmed the publication".into(),
                ))
            }),
        }
    }
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Called once by the node before any other method.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);
    /// Hands a publication to every node subscribed to `channel`. Publications of a channel
    /// reach every node in the order of these calls, whenever each is confirmed.
    fn publish(&self, channel: &str, publication: &Publication) -> Sent;
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError>;
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError>;
    async fn publish_control(&self, control: &Control) -> Result<(), CoreError>;
    /// This node now has a local subscriber of `channel` (called on the first one).
    async fn subscribe(&self, channel: &str) -> Result<(), CoreError>;
    /// This node no longer has local subscribers of `channel`.
    async fn unsubscribe(&self, channel: &str) -> Result<(), CoreError>;

    // The cluster.

    /// The other nodes that are up, with the numbers they last reported (this node's own
    /// entry may be among them, older).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, CoreError>;
    /// Hands `payload` to node `uid` (its handler's `on_node_message`); `Ok(false)` when no
    /// such node listens.
    async fn send_to_node(&self, uid: &str, payload: &str) -> Result<bool, CoreError>;
    /// The node is stopping: leave the cluster (other nodes stop listing it). Bounded by the
    /// broker's own timeouts.
    async fn shutdown(&self);
}

/// A single node's broker: everything is delivered to the local hub at once.
#[derive(Default)]
pub struct LocalBroker {
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl LocalBroker {
    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, CoreError> {
        self.handler
            .get()
            .ok_or_else(|| CoreError::Internal("broker used before the node attached".into()))
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }
    fn publish(&self, channel: &str, publication: &Publication) -> Sent {
        Sent::done(
            self.handler()
                .map(|h| h.on_publication(channel, publication)),
        )
    }
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError> {
        self.handler()?.on_join(channel, info);
        Ok(())
    }
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError> {
        self.handler()?.on_leave(channel, info);
        Ok(())
    }
    async fn publish_control(&self, control: &Control) -> Result<(), CoreError> {
        self.handler()?.on_control(control);
        Ok(())
    }
    async fn subscribe(&self, _channel: &str) -> Result<(), CoreError> {
        Ok(())
    }
    async fn unsubscribe(&self, _channel: &str) -> Result<(), CoreError> {
        Ok(())
    }
    /// A single node knows no other.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, CoreError> {
        Ok(Vec::new())
    }
    /// There is no other node to reach.
    async fn send_to_node(&self, _uid: &str, _payload: &str) -> Result<bool, CoreError> {
        Ok(false)
    }
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-node broker: one node, nothing to reach beyond it.
    async fn local(_test: &'static str, uids: &[&str]) -> Option<Vec<Arc<dyn Broker>>> {
        assert_eq!(uids.len(), 1, "a LocalBroker is one node");
        Some(vec![Arc::new(LocalBroker::default())])
    }

    crate::broker_suite!(local);
}

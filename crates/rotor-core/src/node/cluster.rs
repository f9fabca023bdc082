//! What the broker delivers to this node: publications and join/leave events for local
//! subscribers (encoded once, queued to each), node-wide controls (applied to the local
//! connections they name), messages addressed to this node, and the numbers other nodes see.

use std::sync::Weak;
use std::time::Duration;

use rotor_protocol::{ClientInfo, Disconnect, Publication, Push};

use super::revoke::kick;
use super::{Node, NodeInner};
use crate::broker::{BrokerHandler, Control, NodeInfo};
use crate::CoreError;

impl Node {
    /// Sends a node-wide command through the broker (it reaches every node, this one included).
    pub async fn control(&self, control: Control) -> Result<(), CoreError> {
        self.inner.broker.publish_control(&control).await
    }
}

/// Receives from the broker and delivers to local connections.
pub(super) struct Handler(pub(super) Weak<NodeInner>);

impl BrokerHandler for Handler {
    fn on_publication(&self, channel: &str, publication: &Publication) {
        let Some(node) = self.0.upgrade() else { return };
        if publication.time > 0 {
            let lag = node.clock.unix_ms().saturating_sub(publication.time);
            node.observer.delivered(Duration::from_millis(lag));
        }
        // Whether the publisher asked for deltas travels in the flag; subscribers read it
        // as "this data is a delta", set only where it is one.
        let mut publication = publication.clone();
        let use_delta = std::mem::take(&mut publication.delta);
        let push = Push {
            channel: channel.to_string(),
            publication: Some(publication),
            ..Push::default()
        };
        node.hub.broadcast_publication(channel, &push, use_delta);
    }

    fn on_join(&self, channel: &str, info: &ClientInfo) {
        let Some(node) = self.0.upgrade() else { return };
        let push = Push {
            channel: channel.to_string(),
            join: Some(rotor_protocol::Join { info: info.clone() }),
            ..Push::default()
        };
        node.hub.broadcast(channel, &push, true);
    }

    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        let Some(node) = self.0.upgrade() else { return };
        let push = Push {
            channel: channel.to_string(),
            leave: Some(rotor_protocol::Leave { info: info.clone() }),
            ..Push::default()
        };
        node.hub.broadcast(channel, &push, true);
    }

    fn on_control(&self, control: &Control) {
        let Some(node) = self.0.upgrade() else { return };
        match control {
            Control::Disconnect {
                user,
                client,
                session,
                whitelist,
                code,
                reason,
            } => {
                for c in node
                    .hub
                    .user_connections(user, client.as_deref(), session.as_deref())
                {
                    if !whitelist.iter().any(|w| w == c.id()) {
                        c.close(Disconnect::custom(*code, reason.clone()));
                    }
                }
            }
            // Node-local (see on_missed); another node's says nothing about this one.
            Control::InsufficientState { .. } => {}
            Control::ChannelsSurvey {
                id,
                reply_to,
                pattern,
            } => {
                let question = super::survey::Question::Channels {
                    pattern: pattern.clone(),
                };
                super::survey::answer(&node, id, reply_to, &question);
            }
            Control::ConnectionsSurvey {
                id,
                reply_to,
                query,
            } => {
                let question = super::survey::Question::Connections(query.clone());
                super::survey::answer(&node, id, reply_to, &question);
            }
            Control::Revoke { jti, expire_at } => {
                node.revocations.add_jti(jti, *expire_at);
                kick(&node, |_| true);
            }
            Control::InvalidateUser {
                user,
                channel,
                issued_before,
                expire_at,
            } => {
                node.revocations
                    .add_user(user, channel, *issued_before, *expire_at);
                kick(&node, |c| c.user() == user);
            }
            Control::Unsubscribe {
                user,
                client,
                session,
                ..
            }
            | Control::Subscribe {
                user,
                client,
                session,
                ..
            }
            | Control::Refresh {
                user,
                client,
                session,
                ..
            } => {
                for c in node
                    .hub
                    .user_connections(user, client.as_deref(), session.as_deref())
                {
                    c.send_control(control.clone());
                }
            }
        }
    }

    fn on_missed(&self, channel: &str) {
        let Some(node) = self.0.upgrade() else { return };
        // Without history there is nothing to recover from.
        let with_history = node
            .rules()
            .options(channel)
            .is_ok_and(|o| o.history_enabled());
        if !with_history {
            return;
        }
        let subscribers = node.hub.subscribers(channel);
        if !subscribers.is_empty() {
            tracing::info!(
                channel,
                subscribers = subscribers.len(),
                "publications may have been missed: subscribers recover from history"
            );
        }
        for c in subscribers {
            c.send_control(Control::InsufficientState {
                channel: channel.to_string(),
            });
        }
    }

    fn on_node_message(&self, payload: &str) {
        let Some(node) = self.0.upgrade() else { return };
        if super::survey::take_answer(&node, payload) {
            return;
        }
        match node.node_messages.get() {
            Some(h) => h.on_node_message(payload),
            None => tracing::debug!("a node message arrived before anything listens for them"),
        }
    }

    fn node_info(&self) -> Option<NodeInfo> {
        self.0.upgrade().map(|node| node.info())
    }
}

//! What the node sends a session: pushes of its channels (taken off the queue and written
//! as they are, the hot path), and server-side commands for this connection (subscribe,
//! unsubscribe, refresh from the server API or another node).

use std::sync::Arc;

use rotor_protocol::{
    Disconnect, Push, RefreshPush, SubscribePush, SubscribeRequest, UnsubscribeCode,
};

use super::{Session, State, TransportKind};
use crate::broker::Control;
use crate::hub::{bare_push, Taken};

impl Session {
    /// Takes messages off the queue (a bounded number per turn), queueing pushes
    /// for the client, until the queue is empty or a node command comes up, which is
    /// returned to be run.
    pub(super) fn take_pushes(&mut self) -> Option<Box<Control>> {
        let Session {
            client,
            subs,
            out,
            delivering,
            transport,
            caught_up,
            ..
        } = self;
        let bare = transport.kind == TransportKind::Unidirectional;
        let mut control = None;
        client.take(|taken| match taken {
            Taken::Push {
                channel,
                bytes,
                offset,
            } => {
                // Just after a positioned subscribe, a publication from another node can
                // come live although the subscribe's position (or its recovered
                // publications) already had it: it goes once.
                if let Some(c) = caught_up.as_mut() {
                    if offset > 0 && c.already_had(channel, offset) {
                        return true;
                    }
                    if c.is_empty() {
                        *caught_up = None;
                    }
                }
                // The hub hands every push of a channel the same name, so the channel of
                // the previous push is recognised without a lookup.
                let subscribed = delivering.as_ref().is_some_and(|d| Arc::ptr_eq(d, channel))
                    || subs.contains_key(channel) && {
                        *delivering = Some(channel.clone());
                        true
                    };
                // Not subscribed: unsubscribed while the push was queued.
                if subscribed {
                    out.push(if bare {
                        bare_push(bytes)
                    } else {
                        bytes.clone()
                    });
                }
                true
            }
            Taken::Control(c) => {
                control = Some(c);
                false
            }
        });
        control
    }

    pub(super) async fn on_control(&mut self, control: Control) -> Option<Disconnect> {
        if self.state != State::Connected {
            return None;
        }
        match control {
            Control::InsufficientState { channel } => {
                let sub = self.subs.get(channel.as_str())?;
                // A server-side subscription is only restored by connecting again; the
                // client's own one by subscribing again, which the SDK does at once.
                if sub.server_side {
                    return Some(Disconnect::INSUFFICIENT_STATE);
                }
                if self.leave(&channel).await {
                    self.emit_push(Push {
                        channel,
                        unsubscribe: Some(UnsubscribeCode::InsufficientState.push()),
                        ..Push::default()
                    });
                }
            }
            Control::Unsubscribe { channel, .. } => {
                if self.leave(&channel).await {
                    self.emit_push(Push {
                        channel,
                        unsubscribe: Some(UnsubscribeCode::Server.push()),
                        ..Push::default()
                    });
                }
            }
            Control::Subscribe {
                channel,
                info,
                data,
                ..
            } => {
                if self.subs.contains_key(channel.as_str()) {
                    return None;
                }
                let opts = match self.node.channel_options(&channel) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "server-side subscribe refused");
                        return None;
                    }
                };
                let want = SubscribeRequest {
                    channel: channel.clone(),
                    ..SubscribeRequest::default()
                };
                match self.join(&channel, &opts, &want, info, true, None).await {
                    Ok(r) => self.emit_push(Push {
                        channel,
                        subscribe: Some(SubscribePush {
                            recoverable: r.recoverable,
                            epoch: r.epoch,
                            offset: r.offset,
                            positioned: r.positioned,
                            data,
                        }),
                        ..Push::default()
                    }),
                    Err(e) => tracing::warn!(channel, error = %e, "server-side subscribe failed"),
                }
            }
            Control::Refresh {
                expired, expire_at, ..
            } => {
                if expired {
                    return Some(Disconnect::EXPIRED);
                }
                self.expire_at = expire_at.filter(|at| *at > 0);
                self.client.set_expire_at(self.expire_at);
                let mut push = RefreshPush::default();
                if let Some(at) = self.expire_at {
                    push.expires = true;
                    push.ttl = at.saturating_sub(self.now()).max(1) as u32;
                }
                self.emit_push(Push {
                    refresh: Some(push),
                    ..Push::default()
                });
            }
            // Applied by the node to every connection (see `node::kick`), or answered by
            // the node itself.
            Control::Disconnect { .. }
            | Control::Revoke { .. }
            | Control::InvalidateUser { .. }
            | Control::ChannelsSurvey { .. }
            | Control::ConnectionsSurvey { .. } => {}
        }
        None
    }
}

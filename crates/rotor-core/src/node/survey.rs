//! Questions every node answers. The `channels` survey: each node lists its channels with
//! local subscribers that match a pattern, and the asking node sums them. Asked with a
//! control message (it reaches every node), answered with a message addressed to the asking
//! node; a survey that not every node answers within [`SURVEY_TIMEOUT`] fails with 100
//! (temporary), as Centrifugo's does. One node answers itself without the broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Node, NodeInner};
use crate::broker::Control;
use crate::channels::glob_match;
use crate::CoreError;

/// How long a survey waits for every node's answer.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(10);

/// What starts a node message that answers a survey: `survey <id> <json>`.
const ANSWER: &str = "survey ";

/// One node's channels: name -> local subscribers.
type Counts = BTreeMap<String, usize>;

/// Surveys this node is waiting on, by id.
#[derive(Default)]
pub(super) struct Surveys(Mutex<HashMap<String, mpsc::UnboundedSender<Counts>>>);

impl Surveys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Counts>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a survey's waiter however the survey ends.
struct Waiting<'a>(&'a Surveys, String);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl Node {
    /// Channels with subscribers on any node whose name matches `pattern` (a glob: `*` and
    /// `?`; empty matches all), with their number of subscribers on all nodes.
    pub async fn channels(&self, pattern: &str) -> Result<Counts, CoreError> {
        let nodes = self.nodes().await?.len();
        if nodes <= 1 {
            return Ok(local(&self.inner, pattern));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.inner.surveys.lock().insert(id.clone(), tx);
        let _waiting = Waiting(&self.inner.surveys, id.clone());
        self.control(Control::ChannelsSurvey {
            id,
            reply_to: self.uid().to_string(),
            pattern: pattern.to_string(),
        })
        .await?;
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        let mut total = Counts::new();
        for answered in 0..nodes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(counts)) => {
                    for (channel, n) in counts {
                        *total.entry(channel).or_default() += n;
                    }
                }
                _ => {
                    tracing::warn!(
                        answered,
                        nodes,
                        "channels survey: not every node answered in time"
                    );
                    return Err(CoreError::Unavailable(format!(
                        "channels: {answered} of {nodes} nodes answered within {SURVEY_TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(total)
    }
}

/// This node's channels that match `pattern`.
fn local(node: &NodeInner, pattern: &str) -> Counts {
    node.hub
        .channels()
        .into_iter()
        .filter(|(name, _)| pattern.is_empty() || glob_match(pattern, name))
        .collect()
}

/// Answers a survey another node (or this one) asked.
pub(super) fn answer(node: &Arc<NodeInner>, id: &str, reply_to: &str, pattern: &str) {
    let counts = local(node, pattern);
    if reply_to == node.uid {
        deliver(node, id, counts);
        return;
    }
    let payload = format!(
        "{ANSWER}{id} {}",
        serde_json::to_string(&counts).expect("counts serialize")
    );
    let (broker, reply_to) = (node.broker.clone(), reply_to.to_string());
    tokio::spawn(async move {
        if let Err(e) = broker.send_to_node(&reply_to, &payload).await {
            tracing::warn!(error = %e, node = %reply_to, "channels survey: answer not sent");
        }
    });
}

/// Takes a node message if it answers a survey; false when it is something else.
pub(super) fn take_answer(node: &NodeInner, payload: &str) -> bool {
    let Some(rest) = payload.strip_prefix(ANSWER) else {
        return false;
    };
    let Some((id, json)) = rest.split_once(' ') else {
        tracing::warn!("channels survey: malformed answer dropped");
        return true;
    };
    match serde_json::from_str::<Counts>(json) {
        Ok(counts) => deliver(node, id, counts),
        Err(e) => tracing::warn!(error = %e, "channels survey: unreadable answer dropped"),
    }
    true
}

fn deliver(node: &NodeInner, id: &str, counts: Counts) {
    // A survey that gave up is no longer waiting: its late answers are dropped.
    if let Some(tx) = node.surveys.lock().get(id) {
        let _ = tx.send(counts);
    }
}

//! Questions every node answers: the `channels` survey (each node lists its channels with
//! local subscribers that match a pattern, and the asking node sums them) and the
//! `connections` survey (each node lists its connections, by user or channel, and the asking
//! node merges them). Asked with a control message (it reaches every node), answered with a
//! message addressed to the asking node; a survey that not every node answers within
//! [`SURVEY_TIMEOUT`] fails with 100 (temporary), as Centrifugo's does. One node answers
//! itself without the broker. Nothing here runs on the fan-out path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Node, NodeInner};
use crate::broker::{ConnectionsQuery, Control};
use crate::channels::glob_match;
use crate::hub::ClientHandle;
use crate::CoreError;

/// How long a survey waits for every node's answer.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(10);

/// What starts a node message that answers a survey: `survey <id> <json>`.
const ANSWER: &str = "survey ";

/// One node's channels: name -> local subscribers.
type Counts = BTreeMap<String, usize>;

/// One connection as the connections API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub client: String,
    pub user: String,
    /// `websocket`, `http_stream`, `sse`, `uni_websocket`, ...
    pub transport: String,
    /// `json` or `protobuf`.
    pub protocol: String,
    /// The name of the node that holds it.
    pub node: String,
    /// The client's address as the transport saw it (a trusted proxy's header, else the
    /// socket's peer).
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// Unix milliseconds (whole seconds: a connection keeps its connect time in seconds).
    pub connected_at_ms: u64,
    /// When its token expires (Unix seconds); 0: never.
    pub expire_at: u64,
    /// The connection token's `jti` and `iat`, when it has them.
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub issued_at: Option<u64>,
    /// Channels it is subscribed to on its node.
    pub channels: Vec<String>,
    /// The token's `meta` claim (never sent to clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<rotor_protocol::Raw>,
}

/// What a `connections` survey found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    /// At most the query's limit, oldest first.
    pub connections: Vec<ConnectionInfo>,
    /// How many connections match on all nodes.
    pub total: usize,
    /// How many of those use each transport.
    pub by_transport: BTreeMap<String, usize>,
    /// How many of those have a token that expires at all.
    pub with_expiry: usize,
    /// How many of those expire within each of the query's `expiring_within`.
    pub expiring: Vec<usize>,
}

/// Surveys this node is waiting on, by id: each answer as its JSON text.
#[derive(Default)]
pub(super) struct Surveys(Mutex<HashMap<String, mpsc::UnboundedSender<String>>>);

impl Surveys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<String>>> {
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

/// What a survey asks every node.
pub(super) enum Question {
    Channels { pattern: String },
    Connections(ConnectionsQuery),
}

impl Node {
    /// Channels with subscribers on any node whose name matches `pattern` (a glob: `*` and
    /// `?`; empty matches all), with their number of subscribers on all nodes.
    pub async fn channels(&self, pattern: &str) -> Result<Counts, CoreError> {
        let question = Question::Channels {
            pattern: pattern.to_string(),
        };
        let mut total = Counts::new();
        for answer in self.survey("channels", question).await? {
            let counts: Counts = serde_json::from_str(&answer)
                .map_err(|e| CoreError::Unavailable(format!("channels: unreadable answer: {e}")))?;
            for (channel, n) in counts {
                *total.entry(channel).or_default() += n;
            }
        }
        Ok(total)
    }

    /// Connections on every node that match `query` (by user, by channel), at most
    /// `query.limit` of them listed (oldest first), with how many match in all and by
    /// transport.
    pub async fn connections(&self, query: ConnectionsQuery) -> Result<Connections, CoreError> {
        let limit = query.limit;
        let mut all = Connections::default();
        for answer in self
            .survey("connections", Question::Connections(query))
            .await?
        {
            let part: Connections = serde_json::from_str(&answer).map_err(|e| {
                CoreError::Unavailable(format!("connections: unreadable answer: {e}"))
            })?;
            all.total += part.total;
            all.with_expiry += part.with_expiry;
            all.expiring
                .resize(part.expiring.len().max(all.expiring.len()), 0);
            for (sum, n) in all.expiring.iter_mut().zip(&part.expiring) {
                *sum += n;
            }
            for (t, n) in part.by_transport {
                *all.by_transport.entry(t).or_default() += n;
            }
            all.connections.extend(part.connections);
        }
        all.connections
            .sort_by(|a, b| (a.connected_at_ms, &a.client).cmp(&(b.connected_at_ms, &b.client)));
        all.connections.truncate(limit);
        Ok(all)
    }

    /// Asks every node `question`; their answers as JSON texts (one node answers itself).
    async fn survey(&self, what: &str, question: Question) -> Result<Vec<String>, CoreError> {
        let nodes = self.nodes().await?.len();
        if nodes <= 1 {
            return Ok(vec![local(&self.inner, &question)]);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.inner.surveys.lock().insert(id.clone(), tx);
        let _waiting = Waiting(&self.inner.surveys, id.clone());
        let reply_to = self.uid().to_string();
        self.control(match question {
            Question::Channels { pattern } => Control::ChannelsSurvey {
                id,
                reply_to,
                pattern,
            },
            Question::Connections(query) => Control::ConnectionsSurvey {
                id,
                reply_to,
                query,
            },
        })
        .await?;
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        let mut answers = Vec::with_capacity(nodes);
        for answered in 0..nodes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => {
                    tracing::warn!(
                        answered,
                        nodes,
                        "{what} survey: not every node answered in time"
                    );
                    return Err(CoreError::Unavailable(format!(
                        "{what}: {answered} of {nodes} nodes answered within {SURVEY_TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(answers)
    }
}

/// This node's answer to `question`, as JSON.
fn local(node: &NodeInner, question: &Question) -> String {
    let answer = match question {
        Question::Channels { pattern } => {
            let counts: Counts = node
                .hub
                .channels()
                .into_iter()
                .filter(|(name, _)| pattern.is_empty() || glob_match(pattern, name))
                .collect();
            serde_json::to_string(&counts)
        }
        Question::Connections(query) => serde_json::to_string(&local_connections(node, query)),
    };
    answer.expect("answers serialize")
}

/// This node's connections that match `query`.
fn local_connections(node: &NodeInner, query: &ConnectionsQuery) -> Connections {
    let mut clients: Vec<Arc<ClientHandle>> = if !query.channel.is_empty() {
        let mut subs = node.hub.subscribers(&query.channel);
        if !query.user.is_empty() {
            subs.retain(|c| c.user() == query.user);
        }
        subs
    } else if !query.user.is_empty() {
        node.hub.user_connections(&query.user, None, None)
    } else {
        node.hub.all_connections()
    };
    // Connections still connecting have no origin yet: they are not listed.
    let mut found: Vec<(Arc<ClientHandle>, crate::hub::Snapshot)> = clients
        .drain(..)
        .filter_map(|c| {
            let snap = c.snapshot();
            snap.origin.is_some().then_some((c, snap))
        })
        .collect();
    let mut out = Connections {
        total: found.len(),
        expiring: vec![0; query.expiring_within.len()],
        ..Connections::default()
    };
    let now = node.clock.unix();
    for (_, snap) in &found {
        let transport = snap.origin.map_or("", |o| o.transport);
        *out.by_transport.entry(transport.to_string()).or_default() += 1;
        if snap.expire_at > 0 {
            out.with_expiry += 1;
            for (n, within) in out.expiring.iter_mut().zip(&query.expiring_within) {
                if snap.expire_at <= now.saturating_add(*within) {
                    *n += 1;
                }
            }
        }
    }
    if query.limit == 0 {
        return out;
    }
    // Oldest first, by client id among equals: the first `limit` chosen without sorting all.
    type Found = (Arc<ClientHandle>, crate::hub::Snapshot);
    let order = |a: &Found, b: &Found| {
        let at = |f: &Found| f.1.origin.map_or(0, |o| o.connected_at);
        at(a).cmp(&at(b)).then_with(|| a.0.id().cmp(b.0.id()))
    };
    if found.len() > query.limit {
        found.select_nth_unstable_by(query.limit, order);
        found.truncate(query.limit);
    }
    found.sort_unstable_by(order);
    let handles: Vec<Arc<ClientHandle>> = found.iter().map(|(c, _)| c.clone()).collect();
    let channels = node.hub.channels_of(&handles);
    out.connections = found
        .into_iter()
        .zip(channels)
        .map(|((c, snap), channels)| {
            let origin = snap.origin.expect("kept only with an origin");
            ConnectionInfo {
                client: c.id().to_string(),
                user: c.user().to_string(),
                transport: origin.transport.to_string(),
                protocol: c.protocol().name().to_string(),
                node: node.config.node_name.clone(),
                remote_addr: origin.remote.map(|a| a.to_string()),
                connected_at_ms: origin.connected_at * 1000,
                expire_at: snap.expire_at,
                jti: snap.jti.map(|j| j.to_string()),
                issued_at: snap.iat,
                channels,
                meta: snap.meta,
            }
        })
        .collect();
    out
}

/// Answers a survey another node (or this one) asked.
pub(super) fn answer(node: &Arc<NodeInner>, id: &str, reply_to: &str, question: &Question) {
    let answer = local(node, question);
    if reply_to == node.uid {
        deliver(node, id, answer);
        return;
    }
    let payload = format!("{ANSWER}{id} {answer}");
    let (broker, reply_to) = (node.broker.clone(), reply_to.to_string());
    tokio::spawn(async move {
        if let Err(e) = broker.send_to_node(&reply_to, &payload).await {
            tracing::warn!(error = %e, node = %reply_to, "survey: answer not sent");
        }
    });
}

/// Takes a node message if it answers a survey; false when it is something else.
pub(super) fn take_answer(node: &NodeInner, payload: &str) -> bool {
    let Some(rest) = payload.strip_prefix(ANSWER) else {
        return false;
    };
    let Some((id, json)) = rest.split_once(' ') else {
        tracing::warn!("survey: malformed answer dropped");
        return true;
    };
    deliver(node, id, json.to_string());
    true
}

fn deliver(node: &NodeInner, id: &str, answer: String) {
    // A survey that gave up is no longer waiting: its late answers are dropped.
    if let Some(tx) = node.surveys.lock().get(id) {
        let _ = tx.send(answer);
    }
}

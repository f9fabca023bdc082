//! The broker over Redis pub/sub, and the cluster on it: a node registry (every node writes
//! its numbers into one hash every [`HEARTBEAT_INTERVAL`]) and node-addressed messages (each
//! node listens on a pub/sub channel of its own).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use rotor_core::broker::{Broker, BrokerHandler, Control, Sent};
use rotor_core::stored::{StoredInfo, StoredPublication};
use rotor_core::{CoreError, NodeInfo};
use rotor_protocol::{ClientInfo, Publication};
use serde::{Deserialize, Serialize};

use crate::shard::Shards;
use crate::RedisError;

/// How often a node reports itself in the registry, and how old a report may be before the
/// node counts as gone.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(10);

/// What travels on a channel's Redis pub/sub channel. A struct rather than a tagged enum so
/// that raw JSON payloads deserialize without buffering.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// `p` publication, `j` join, `l` leave.
    k: char,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<StoredPublication>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<StoredInfo>,
}

/// A registry entry: a node's stats and when it last reported.
#[derive(Serialize, Deserialize)]
struct Heartbeat {
    info: NodeInfo,
    at_ms: u64,
}

impl Heartbeat {
    /// The node an entry describes, if the entry reads and is at most `max_age` old.
    fn fresh(text: &str, max_age: Duration) -> Option<NodeInfo> {
        let h: Heartbeat = serde_json::from_str(text).ok()?;
        (now_ms().saturating_sub(h.at_ms) <= max_age.as_millis() as u64).then_some(h.info)
    }
}

/// Pub/sub state of one Redis instance.
#[derive(Default)]
struct PubSubState {
    /// Redis channel names this node wants (kept across reconnects).
    desired: Mutex<HashSet<String>>,
    /// The live subscription connection, when there is one.
    sink: Mutex<Option<PubSubSink>>,
}

/// A live subscription connection: classic pub/sub, or the sharded one.
enum PubSubConn {
    Classic(PubSubSink),
    Sharded(redis::cluster_async::ClusterConnection),
}

/// A publication on its way to Redis: the pub/sub channel, the message, and who waits for
/// Redis's answer.
struct Outgoing {
    channel: String,
    payload: String,
    answer: tokio::sync::oneshot::Sender<Result<(), CoreError>>,
}

/// How often a pub/sub connection behind Sentinels checks that it is on the master.
const MASTER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many publications go to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;

/// Fan-out, join/leave and control messages across every node on the same Redis.
pub struct RedisBroker {
    shards: Shards,
    node_uid: String,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    pubsub: Vec<Arc<PubSubState>>,
    /// Publications to each instance, in the order they were handed over (one writer per
    /// instance sends them).
    outgoing: Vec<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
    /// With sharded pub/sub: the channels' Redis pub/sub channels this node listens to,
    /// and the connection, once up.
    sharded_desired: Mutex<HashSet<String>>,
    sharded_conn: Mutex<Option<redis::cluster_async::ClusterConnection>>,
    /// The pub/sub loops (one per instance); aborted on drop.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The heartbeat, from the node's attachment to its shutdown (or the broker's drop). It
    /// is stopped and awaited before the node leaves the registry, so that no report still
    /// on its way puts it back.
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This broker, for the tasks it starts later (they must not keep it alive).
    weak: std::sync::Weak<RedisBroker>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisBroker {
    /// Starts the subscription connections (one per instance). `node_uid` addresses this node.
    pub fn start(shards: Shards, node_uid: &str) -> Arc<RedisBroker> {
        let mut outgoing = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..shards.shards.len() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            outgoing.push(tx);
            tasks.push(tokio::spawn(publish_loop(shards.clone(), index, rx)));
        }
        let broker = Arc::new_cyclic(|weak| RedisBroker {
            outgoing,
            sharded_desired: Mutex::new(HashSet::new()),
            sharded_conn: Mutex::new(None),
            weak: weak.clone(),
            pubsub: shards
                .shards
                .iter()
                .map(|_| Arc::new(PubSubState::default()))
                .collect(),
            shards,
            node_uid: node_uid.to_string(),
            handler: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
            heartbeat: Mutex::new(None),
        });
        {
            let mut first = broker.pubsub[0].desired.lock().unwrap();
            first.insert(broker.control_channel());
            first.insert(broker.node_channel(node_uid));
        }
        for i in 0..broker.pubsub.len() {
            tasks.push(tokio::spawn(pubsub_loop(Arc::downgrade(&broker), i)));
        }
        if let Some(sharded) = broker.shards.sharded.clone() {
            tasks.push(tokio::spawn(sharded_loop(Arc::downgrade(&broker), sharded)));
        }
        *broker.tasks.lock().unwrap() = tasks;
        broker
    }

    fn control_channel(&self) -> String {
        format!("{}.control", self.shards.prefix)
    }

    fn node_channel(&self, uid: &str) -> String {
        format!("{}.node.{uid}", self.shards.prefix)
    }

    fn channel_prefix(&self) -> String {
        format!("{}.c.", self.shards.prefix)
    }

    /// The Redis pub/sub channel of a channel: `{prefix}.c.{channel}`, or with sharded
    /// pub/sub `{prefix}.c.{<partition>}.{channel}` (the partition is the hash tag, so a
    /// partition's channels share a slot).
    fn redis_channel(&self, channel: &str) -> String {
        match &self.shards.sharded {
            Some(s) => format!(
                "{}{{{}}}.{channel}",
                self.channel_prefix(),
                crate::shard::fnv1a(channel.as_bytes()) % u64::from(s.partitions)
            ),
            None => format!("{}{channel}", self.channel_prefix()),
        }
    }

    /// The channel a Redis pub/sub channel carries, if it is one of a channel.
    fn channel_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name.strip_prefix(&self.channel_prefix())?;
        match &self.shards.sharded {
            Some(_) => rest.strip_prefix('{')?.split_once("}.").map(|(_, c)| c),
            None => Some(rest),
        }
    }

    /// Whether every subscription connection is up.
    pub fn connected(&self) -> bool {
        self.pubsub.iter().all(|p| p.sink.lock().unwrap().is_some())
            && (self.shards.sharded.is_none() || self.sharded_conn.lock().unwrap().is_some())
    }

    /// The Redis channels this node wants from the connection that carries `channel`.
    fn desired(&self, channel: &str) -> &Mutex<HashSet<String>> {
        match &self.shards.sharded {
            Some(_) => &self.sharded_desired,
            None => &self.pubsub[self.shards.index_for(channel)].desired,
        }
    }

    /// The connection that carries `channel`, when it is up.
    fn connection(&self, channel: &str) -> Option<PubSubConn> {
        match &self.shards.sharded {
            Some(_) => self
                .sharded_conn
                .lock()
                .unwrap()
                .clone()
                .map(PubSubConn::Sharded),
            None => self.pubsub[self.shards.index_for(channel)]
                .sink
                .lock()
                .unwrap()
                .clone()
                .map(PubSubConn::Classic),
        }
    }

    /// A (un)subscribe with the reply timeout.
    async fn bounded(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> Result<(), String> {
        match tokio::time::timeout(self.shards.timeout, request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RedisError::from(e).to_string()),
            Err(_) => Err(RedisError::Timeout(self.shards.timeout).to_string()),
        }
    }

    /// Subscribes the sharded connection to every channel wanted (after it came back, or
    /// came up late); true when all went through.
    async fn sharded_resubscribe(&self, conn: &redis::cluster_async::ClusterConnection) -> bool {
        let names: Vec<String> = self
            .sharded_desired
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        for name in &names {
            let mut conn = conn.clone();
            match tokio::time::timeout(self.shards.timeout, conn.ssubscribe(name)).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
        true
    }

    fn registry_key(&self) -> String {
        format!("{}.nodes", self.shards.prefix)
    }

    /// Records a node's stats in the registry.
    pub(crate) async fn heartbeat(&self, info: &NodeInfo) -> Result<(), CoreError> {
        let entry = serde_json::to_string(&Heartbeat {
            info: info.clone(),
            at_ms: now_ms(),
        })
        .map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.registry_key()).arg(&info.uid).arg(entry);
        self.shards.run::<()>(self.shards.first(), &cmd).await?;
        Ok(())
    }

    /// Removes this node from the registry (at shutdown).
    async fn leave_registry(&self) -> Result<(), CoreError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.registry_key()).arg(&self.node_uid);
        self.shards.run::<()>(self.shards.first(), &cmd).await?;
        Ok(())
    }

    /// Every node that reported within `max_age`; older entries are removed.
    pub(crate) async fn nodes_within(&self, max_age: Duration) -> Result<Vec<NodeInfo>, CoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.registry_key());
        let all: Vec<(String, String)> = self.shards.run(self.shards.first(), &cmd).await?;
        let mut nodes = Vec::new();
        for (uid, text) in all {
            match Heartbeat::fresh(&text, max_age) {
                Some(info) => nodes.push(info),
                None => {
                    let mut del = redis::cmd("HDEL");
                    del.arg(self.registry_key()).arg(uid);
                    let _ = self.shards.run::<()>(self.shards.first(), &del).await;
                }
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }

    /// Whether node `uid` reported within [`HEARTBEAT_MAX_AGE`].
    async fn is_listed(&self, uid: &str) -> Result<bool, CoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.registry_key()).arg(uid);
        let entry: Option<String> = self.shards.run(self.shards.first(), &cmd).await?;
        Ok(entry.is_some_and(|text| Heartbeat::fresh(&text, HEARTBEAT_MAX_AGE).is_some()))
    }

    /// Queues a publication for its instance's writer: the order of these calls is the
    /// order in which Redis gets them.
    fn send_publication(&self, channel: &str, publication: &Publication) -> Sent {
        let env = Envelope {
            k: 'p',
            p: Some(StoredPublication::from(publication)),
            i: None,
        };
        let payload = match serde_json::to_string(&env) {
            Ok(p) => p,
            Err(e) => return Sent::done(Err(CoreError::Internal(e.to_string()))),
        };
        let (answer, confirmed) = tokio::sync::oneshot::channel();
        let outgoing = Outgoing {
            channel: self.redis_channel(channel),
            payload,
            answer,
        };
        // The writer lives as long as the broker; a send fails only while it is dropped,
        // and the dropped answer then reads as unavailable.
        let _ = self.outgoing[self.shards.index_for(channel)].send(outgoing);
        Sent::waiting(confirmed)
    }

    async fn publish_envelope(&self, channel: &str, env: &Envelope) -> Result<(), CoreError> {
        let payload = serde_json::to_string(env).map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut cmd = redis::cmd(publish_command(&self.shards));
        cmd.arg(self.redis_channel(channel)).arg(payload);
        self.shards
            .run::<()>(self.shards.for_channel(channel), &cmd)
            .await?;
        Ok(())
    }

    fn dispatch(&self, name: &str, payload: &[u8]) {
        if let Some(channel) = self.channel_of(name) {
            let Some(handler) = self.handler.get() else {
                return;
            };
            let env = match serde_json::from_slice::<Envelope>(payload) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "undecodable message from Redis; ignored");
                    return;
                }
            };
            let undecodable = |e: String| tracing::warn!(channel, error = %e, "undecodable message from Redis; ignored");
            match env {
                Envelope {
                    k: 'p', p: Some(p), ..
                } => match Publication::try_from(p) {
                    Ok(p) => handler.on_publication(channel, &p),
                    Err(e) => undecodable(e),
                },
                Envelope {
                    k: k @ ('j' | 'l'),
                    i: Some(i),
                    ..
                } => match ClientInfo::try_from(i) {
                    Ok(i) if k == 'j' => handler.on_join(channel, &i),
                    Ok(i) => handler.on_leave(channel, &i),
                    Err(e) => undecodable(e),
                },
                _ => tracing::warn!(channel, "unknown message kind from Redis; ignored"),
            }
        } else if name == self.control_channel() {
            let Some(handler) = self.handler.get() else {
                return;
            };
            match serde_json::from_slice::<Control>(payload) {
                Ok(c) => handler.on_control(&c),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable control message from Redis; ignored")
                }
            }
        } else if name == self.node_channel(&self.node_uid) {
            match (self.handler.get(), std::str::from_utf8(payload)) {
                (Some(h), Ok(text)) => h.on_node_message(text),
                (None, _) => {}
                (_, Err(_)) => tracing::warn!("node message from Redis is not UTF-8; ignored"),
            }
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
        if let Some(t) = self.heartbeat.lock().unwrap().as_ref() {
            t.abort();
        }
    }
}

/// Reports this node in the registry every [`HEARTBEAT_INTERVAL`], the first time at once
/// (the node is attached), until the broker shuts down or is dropped.
async fn heartbeat_loop(broker: std::sync::Weak<RedisBroker>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        let Some(info) = b.handler.get().and_then(|h| h.node_info()) else {
            continue;
        };
        match b.heartbeat(&info).await {
            Ok(()) => failing = false,
            // Said once per outage: the next success is silent, as is every retry.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "node heartbeat to Redis failed; other nodes may not list this one");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Sends one instance's publications in the order they were queued: whatever queued while
/// the previous pipeline was on its way goes as the next one (up to [`PUBLISH_BATCH`]), so
/// a busy channel costs Redis one round trip per batch, not per publication, and the other
/// nodes receive its publications in bursts they fan out together. Every publication of a
/// batch gets the batch's outcome.
async fn publish_loop(
    shards: Shards,
    index: usize,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
) {
    let command = publish_command(&shards);
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        // On a Redis Cluster a pipeline may not cross hash slots: one per channel (in
        // order within it), all on their way at once.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<&str, usize> = Default::default();
        for (i, o) in batch.iter().enumerate() {
            let key = if shards.cluster {
                o.channel.as_str()
            } else {
                ""
            };
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let sends = groups.iter().map(|(_, members)| {
            let mut pipe = redis::pipe();
            for &i in members {
                pipe.cmd(command)
                    .arg(&batch[i].channel)
                    .arg(&batch[i].payload)
                    .ignore();
            }
            let shards = &shards;
            async move {
                shards
                    .pipeline::<()>(&shards.shards[index], &pipe)
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        let outcomes = futures_util::future::join_all(sends).await;
        let mut answers: Vec<Option<Result<(), String>>> = vec![None; batch.len()];
        for ((_, members), outcome) in groups.iter().zip(outcomes) {
            for &i in members {
                answers[i] = Some(outcome.clone());
            }
        }
        for (o, outcome) in batch.drain(..).zip(answers) {
            let outcome = outcome.unwrap_or_else(|| Err("not sent".into()));
            let _ = o.answer.send(outcome.map_err(CoreError::Unavailable));
        }
    }
}

/// `PUBLISH`, or `SPUBLISH` with sharded pub/sub.
fn publish_command(shards: &Shards) -> &'static str {
    if shards.sharded.is_some() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// Opens this node's sharded pub/sub connection (retrying with backoff) and delivers what
/// it brings. When its connection to a Redis node drops, redis-rs reconnects and restores
/// the subscriptions; every channel is then subscribed again here (which also makes the
/// reconnect happen when nothing else is being sent) and reported as possibly missed.
async fn sharded_loop(
    broker: std::sync::Weak<RedisBroker>,
    sharded: Arc<crate::shard::ShardedPubSub>,
) {
    let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let mut delay = Duration::from_millis(100);
    loop {
        match sharded.connect(tx.clone()).await {
            Ok(conn) => {
                let Some(b) = broker.upgrade() else { return };
                *b.sharded_conn.lock().unwrap() = Some(conn);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the Redis Cluster sharded pub/sub connection; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    drop(tx);
    while let Some(push) = pushes.recv().await {
        let Some(b) = broker.upgrade() else { return };
        match push.kind {
            redis::PushKind::SMessage => {
                if let [redis::Value::BulkString(name), redis::Value::BulkString(payload), ..] =
                    push.data.as_slice()
                {
                    match std::str::from_utf8(name) {
                        Ok(name) => b.dispatch(name, payload),
                        Err(_) => tracing::warn!(
                            "sharded message on a channel name that is not UTF-8; ignored"
                        ),
                    }
                }
            }
            redis::PushKind::Disconnection => {
                tracing::warn!(
                    "a Redis Cluster node's sharded pub/sub connection dropped; subscribing again"
                );
                let Some(conn) = b.sharded_conn.lock().unwrap().clone() else {
                    continue;
                };
                let mut delay = Duration::from_millis(100);
                while !b.sharded_resubscribe(&conn).await {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                let names: Vec<String> =
                    b.sharded_desired.lock().unwrap().iter().cloned().collect();
                if let Some(h) = b.handler.get() {
                    for channel in names.iter().filter_map(|n| b.channel_of(n)) {
                        h.on_missed(channel);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Keeps one instance's subscription connection up: connects, subscribes to every desired
/// channel, delivers messages until the connection drops, then starts over with backoff.
async fn pubsub_loop(broker: std::sync::Weak<RedisBroker>, index: usize) {
    let mut delay = Duration::from_millis(100);
    let mut lost_before = false;
    // Which of the shard's clients to try (a cluster's seed nodes, in turn).
    let mut attempt = 0usize;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let shard = b.shards.shards[index].clone();
        let state = b.pubsub[index].clone();
        let timeout = b.shards.timeout;
        drop(b);
        let conn = tokio::time::timeout(timeout * 3, async {
            let client = shard.pubsub_client(attempt).await?;
            let at = client.get_connection_info().addr.to_string();
            Ok::<_, RedisError>((at, client.get_async_pubsub().await?))
        })
        .await;
        if let Ok(Ok((connected_to, ps))) = conn {
            let (mut sink, mut stream) = ps.split();
            let names: Vec<String> = state.desired.lock().unwrap().iter().cloned().collect();
            let mut ok = true;
            for chunk in names.chunks(512) {
                if let Err(e) = sink.subscribe(chunk).await {
                    tracing::warn!(address = %shard.address, error = %e, "Redis subscribe failed");
                    ok = false;
                    break;
                }
            }
            if ok {
                *state.sink.lock().unwrap() = Some(sink);
                delay = Duration::from_millis(100);
                if lost_before {
                    tracing::info!(address = %shard.address, channels = names.len(), "Redis pub/sub reconnected and resubscribed");
                    // Whatever was published while the connection was down never came:
                    // subscribers recover it from history.
                    if let Some(b) = broker.upgrade() {
                        if let Some(h) = b.handler.get() {
                            for channel in names.iter().filter_map(|n| b.channel_of(n)) {
                                h.on_missed(channel);
                            }
                        }
                    }
                }
                // Behind Sentinels, a demoted master keeps its pub/sub clients (and still
                // gets publications, as a replica): the connection moves when the
                // Sentinels name another master.
                let mut check = tokio::time::interval(MASTER_CHECK_INTERVAL);
                check.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else {
                                tracing::warn!(address = %shard.address, "Redis pub/sub connection lost; reconnecting");
                                break;
                            };
                            let Some(b) = broker.upgrade() else { return };
                            b.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
                        }
                        _ = check.tick(), if shard.discovery.is_some() => {
                            let Some(d) = &shard.discovery else { continue };
                            if let Ok(master) = d.master().await {
                                let now = master.get_connection_info().addr.to_string();
                                if now != connected_to {
                                    tracing::warn!(from = %connected_to, to = %now, "the Sentinels name a new Redis master; moving pub/sub there");
                                    break;
                                }
                            }
                        }
                    }
                }
                *state.sink.lock().unwrap() = None;
                lost_before = true;
            }
        } else if !lost_before {
            tracing::warn!(address = %shard.address, "cannot reach Redis for pub/sub; retrying");
            lost_before = true;
        }
        attempt += 1;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        if self.handler.set(handler).is_err() {
            return;
        }
        // The node is attached: it can be reported from now on.
        let heartbeat = tokio::spawn(heartbeat_loop(self.weak.clone()));
        *self.heartbeat.lock().unwrap() = Some(heartbeat);
    }

    fn publish(&self, channel: &str, publication: &Publication) -> Sent {
        self.send_publication(channel, publication)
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError> {
        let env = Envelope {
            k: 'j',
            p: None,
            i: Some(StoredInfo::from(info)),
        };
        self.publish_envelope(channel, &env).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), CoreError> {
        let env = Envelope {
            k: 'l',
            p: None,
            i: Some(StoredInfo::from(info)),
        };
        self.publish_envelope(channel, &env).await
    }

    async fn publish_control(&self, control: &Control) -> Result<(), CoreError> {
        let payload =
            serde_json::to_string(control).map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.control_channel()).arg(payload);
        self.shards.run::<()>(self.shards.first(), &cmd).await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), CoreError> {
        let name = self.redis_channel(channel);
        // Wanted first: a connection that comes back meanwhile subscribes it too.
        let desired = self.desired(channel);
        desired.lock().unwrap().insert(name.clone());
        let result = match self.connection(channel) {
            Some(PubSubConn::Classic(mut sink)) => self.bounded(sink.subscribe(&name)).await,
            Some(PubSubConn::Sharded(mut conn)) => self.bounded(conn.ssubscribe(&name)).await,
            None => Err("Redis pub/sub is reconnecting".to_string()),
        };
        result.map_err(|msg| {
            desired.lock().unwrap().remove(&name);
            CoreError::Unavailable(msg)
        })
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), CoreError> {
        let name = self.redis_channel(channel);
        self.desired(channel).lock().unwrap().remove(&name);
        // A failure leaves a stale Redis subscription at worst: its messages find no local
        // subscriber and are dropped; the next reconnect forgets it.
        let _ = match self.connection(channel) {
            Some(PubSubConn::Classic(mut sink)) => self.bounded(sink.unsubscribe(&name)).await,
            Some(PubSubConn::Sharded(mut conn)) => self.bounded(conn.sunsubscribe(&name)).await,
            None => Ok(()),
        };
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, CoreError> {
        self.nodes_within(HEARTBEAT_MAX_AGE).await
    }

    async fn send_to_node(&self, uid: &str, payload: &str) -> Result<bool, CoreError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.node_channel(uid)).arg(payload);
        let receivers: u64 = self.shards.run(self.shards.first(), &cmd).await?;
        if receivers > 0 || !self.shards.cluster {
            return Ok(receivers > 0);
        }
        // In a Redis Cluster, PUBLISH reaches the subscribers on every node but counts only
        // those on the node that ran it: whether `uid` listens is the registry's to say.
        Ok(self.is_listed(uid).await?)
    }

    async fn shutdown(&self) {
        let heartbeat = self.heartbeat.lock().unwrap().take();
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
            // Until it has stopped, a report it already started could still land after
            // the entry is removed.
            let _ = heartbeat.await;
        }
        if let Err(e) = self.leave_registry().await {
            tracing::warn!(error = %e, "could not leave the Redis node registry; the entry ages out");
        }
    }
}

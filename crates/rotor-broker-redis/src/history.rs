//! History on Redis: per channel a stream (entry id = offset, fields: the publication and the
//! time it was added) and a meta hash (top offset `s`, epoch `e`). Adds go through one writer
//! task per store that sends them in call order, many per round trip (a pipeline of scripts),
//! so a channel's offsets follow the order in which the node called `add`.

use std::sync::Arc;

use async_trait::async_trait;
use rotor_core::storage::{BoxFuture, HistoryFilter, HistoryOptions, HistoryPage, HistoryStore};
use rotor_core::CoreError;
use rotor_protocol::{Publication, StreamPosition};
use tokio::sync::{mpsc, oneshot};

use crate::shard::Shards;

const ADD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1], 't', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {offset, epoch}
"#;

const READ: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', KEYS[2], 's', 'e')
local top = tonumber(meta[1]) or 0
local epoch = meta[2]
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local ttl = tonumber(ARGV[3])
while true do
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 64)
  if #head == 0 then break end
  local done = false
  for _, e in ipairs(head) do
    if tonumber(e[2][4]) + ttl < now then
      redis.call('XDEL', KEYS[1], e[1])
    else
      done = true
      break
    end
  end
  if done then break end
end
local limit = tonumber(ARGV[6])
local out = {}
if limit > 0 then
  local entries = {}
  local since = tonumber(ARGV[5])
  if ARGV[4] == '1' then
    if ARGV[7] == '1' then
      if since > 1 then
        entries = redis.call('XREVRANGE', KEYS[1], (since - 1) .. '-0', '-', 'COUNT', limit)
      end
    else
      entries = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', limit)
    end
  elseif ARGV[7] == '1' then
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)
  end
  for _, e in ipairs(entries) do
    out[#out + 1] = e[1]
    out[#out + 1] = e[2][2]
  end
end
return {top, epoch, out}
"#;

struct Add {
    channel: String,
    publication: Publication,
    opts: HistoryOptions,
    done: oneshot::Sender<Result<StreamPosition, CoreError>>,
}

/// History shared by every node on the same Redis.
pub struct RedisHistory {
    shards: Shards,
    read: redis::Script,
    adds: mpsc::UnboundedSender<Add>,
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn ms(d: std::time::Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl RedisHistory {
    pub fn new(shards: Shards) -> Arc<RedisHistory> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(shards.clone(), rx));
        Arc::new(RedisHistory {
            shards,
            read: redis::Script::new(READ),
            adds: tx,
        })
    }
}

/// Sends queued adds in order, up to 256 per round trip per instance.
async fn writer(shards: Shards, mut rx: mpsc::UnboundedReceiver<Add>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        // Keep call order within each instance; instances are independent. On a Redis
        // Cluster a pipeline must stay in one hash slot: one group per channel.
        let mut groups: Vec<(usize, Vec<Add>)> = Vec::new();
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        for add in batch.drain(..) {
            let shard = shards.index_for(&add.channel);
            let key = if shards.cluster {
                add.channel.clone()
            } else {
                shard.to_string()
            };
            let g = *by_key.entry(key).or_insert_with(|| {
                groups.push((shard, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(add);
        }
        // Groups are independent of each other: write them concurrently.
        futures_util::future::join_all(
            groups
                .into_iter()
                .map(|(i, adds)| write_group(&shards, i, adds)),
        )
        .await;
    }
}

/// Writes one group of adds (one instance, or one channel on a cluster) in one pipeline.
async fn write_group(shards: &Shards, i: usize, adds: Vec<Add>) {
    let mut pipe = redis::pipe();
    for a in &adds {
        // Stored without its offset: the stream entry's id is the offset.
        let mut p = a.publication.clone();
        p.offset = 0;
        let json = rotor_core::stored::publication_to_json(&p);
        pipe.cmd("EVAL")
            .arg(ADD)
            .arg(2)
            .arg(shards.key("h", &a.channel))
            .arg(shards.key("hm", &a.channel))
            .arg(json)
            .arg(a.opts.size.max(1))
            .arg(ms(a.opts.ttl))
            .arg(ms(a.opts.meta_ttl.max(a.opts.ttl)))
            .arg(new_epoch());
    }
    let result = shards
        .pipeline::<Vec<(u64, String)>>(&shards.shards[i], &pipe)
        .await;
    match result {
        Ok(positions) if positions.len() == adds.len() => {
            for (a, (offset, epoch)) in adds.into_iter().zip(positions) {
                let _ = a.done.send(Ok(StreamPosition { offset, epoch }));
            }
        }
        other => {
            let msg = match other {
                Err(e) => e.to_string(),
                Ok(_) => "redis: short pipeline reply".into(),
            };
            tracing::warn!(error = %msg, n = adds.len(), "history write failed");
            for a in adds {
                let _ = a.done.send(Err(CoreError::Unavailable(msg.clone())));
            }
        }
    }
}

#[async_trait]
impl HistoryStore for RedisHistory {
    fn add(
        &self,
        channel: &str,
        publication: Publication,
        opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.adds.send(Add {
            channel: channel.to_string(),
            publication,
            opts: *opts,
            done: tx,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(CoreError::Internal("history writer stopped".into()));
            }
            rx.await
                .unwrap_or_else(|_| Err(CoreError::Internal("history writer stopped".into())))
        })
    }

    async fn read(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        opts: &HistoryOptions,
    ) -> Result<HistoryPage, CoreError> {
        let mut inv = self.read.prepare_invoke();
        inv.key(self.shards.key("h", channel))
            .key(self.shards.key("hm", channel))
            .arg(new_epoch())
            .arg(ms(opts.meta_ttl.max(opts.ttl)))
            .arg(ms(opts.ttl))
            .arg(if filter.since.is_some() { "1" } else { "0" })
            .arg(filter.since.as_ref().map(|s| s.offset).unwrap_or(0))
            .arg(filter.limit.min(1_000_000_000))
            .arg(if filter.reverse { "1" } else { "0" });
        let (top, epoch, entries): (u64, String, Vec<String>) =
            self.shards.script(channel, inv).await?;
        filter.check_epoch(&epoch)?;
        let mut publications = Vec::with_capacity(entries.len() / 2);
        for pair in entries.chunks_exact(2) {
            let bad = |e: String| CoreError::Internal(format!("bad history entry in Redis: {e}"));
            let mut p = rotor_core::stored::publication_from_json(&pair[1]).map_err(bad)?;
            p.offset = pair[0]
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| bad(format!("entry id {}", pair[0])))?;
            publications.push(p);
        }
        Ok(HistoryPage {
            publications,
            position: StreamPosition { offset: top, epoch },
        })
    }

    async fn remove(&self, channel: &str) -> Result<(), CoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.shards.key("h", channel));
        self.shards
            .run::<()>(self.shards.for_channel(channel), &cmd)
            .await?;
        Ok(())
    }
}

//! History in Postgres: a stream per channel (offset, epoch) and its publications, written
//! by batching writers (a channel always by the same one) so that concurrent publications
//! commit in groups with gap-free offsets, across every node sharing the database.

use std::collections::HashMap;

use rand::Rng;
use rotor_core::storage::{BoxFuture, HistoryFilter, HistoryOptions, HistoryPage, HistoryStore};
use rotor_core::CoreError;
use rotor_protocol::{Publication, StreamPosition};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{ms, unavailable};

fn new_epoch() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

struct Job {
    channel: String,
    publication: Publication,
    opts: HistoryOptions,
    reply: oneshot::Sender<Result<StreamPosition, CoreError>>,
}

/// Channel history in Postgres, written in batches by background writers. A channel always
/// goes to the same writer, so its offsets follow its queue order; the writers'
/// transactions are in flight together (on different connections), so one slow commit
/// does not hold up every channel and Postgres flushes concurrent commits together.
pub struct PgHistory {
    pool: PgPool,
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    /// Picks a channel's writer (stable for the life of the store, which is all the order
    /// of a channel's offsets needs).
    hasher: std::collections::hash_map::RandomState,
}

/// Writers per store: transactions in flight at once (measured in docs/benchmarks.md: four
/// writers take ~13 % more than one when 256 publishers wait for their commits).
const LANES: usize = 4;

impl PgHistory {
    pub fn new(pool: PgPool, batch_max_size: usize) -> PgHistory {
        let lanes = (0..LANES)
            .map(|_| {
                let (jobs, rx) = mpsc::unbounded_channel();
                tokio::spawn(batcher(pool.clone(), rx, batch_max_size.max(1)));
                jobs
            })
            .collect();
        PgHistory {
            pool,
            lanes,
            hasher: Default::default(),
        }
    }

    /// The writer of `channel`.
    fn lane(&self, channel: &str) -> &mpsc::UnboundedSender<Job> {
        use std::hash::BuildHasher;
        &self.lanes[self.hasher.hash_one(channel) as usize % self.lanes.len()]
    }
}

/// Writes everything queued since the last batch in one transaction. Jobs are answered in
/// the order they were queued; a failed batch fails all of its jobs (nothing was committed).
async fn batcher(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Job>, max: usize) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = match write_batch(&pool, &batch).await {
            Ok(positions) => positions.into_iter().map(Ok).collect(),
            Err(e) => {
                let err = unavailable(e);
                batch.iter().map(|_| Err(err.clone())).collect::<Vec<_>>()
            }
        };
        tracing::trace!(size = batch.len(), "history batch written");
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

const APPEND: &str = r#"
WITH s AS (
    INSERT INTO rotor_streams AS st (channel, epoch, top_offset, meta_expires_at)
    VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
    ON CONFLICT (channel) DO UPDATE SET
        epoch = CASE WHEN st.meta_expires_at <= now() THEN EXCLUDED.epoch ELSE st.epoch END,
        top_offset = CASE WHEN st.meta_expires_at <= now() THEN EXCLUDED.top_offset
                          ELSE st.top_offset + EXCLUDED.top_offset END,
        meta_expires_at = EXCLUDED.meta_expires_at
    RETURNING top_offset, epoch
), ins AS (
    INSERT INTO rotor_publications (channel, "offset", data, info, tags, time_ms, expires_at)
    SELECT $1, s.top_offset - $3 + u.ord, u.data, u.info, u.tags, u.time_ms,
           now() + $5 * interval '1 millisecond'
    FROM s, UNNEST($6::text[], $7::text[], $8::text[], $9::bigint[])
         WITH ORDINALITY AS u(data, info, tags, time_ms, ord)
    ON CONFLICT (channel, "offset") DO UPDATE SET
        data = EXCLUDED.data, info = EXCLUDED.info, tags = EXCLUDED.tags,
        time_ms = EXCLUDED.time_ms, expires_at = EXCLUDED.expires_at
), del AS (
    DELETE FROM rotor_publications p USING s
    WHERE p.channel = $1 AND p."offset" <= s.top_offset - $10
)
SELECT top_offset, epoch FROM s
"#;

async fn write_batch(pool: &PgPool, batch: &[Job]) -> Result<Vec<StreamPosition>, sqlx::Error> {
    // Group by channel, keeping each channel's jobs in queue order.
    let mut order: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, job) in batch.iter().enumerate() {
        let slot = *index.entry(job.channel.as_str()).or_insert_with(|| {
            order.push((job.channel.as_str(), Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(i);
    }
    // Stream rows are locked in name order, the same on every node sharing the database,
    // so two nodes' batches over the same channels wait for each other instead of
    // deadlocking.
    order.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut positions = vec![StreamPosition::default(); batch.len()];
    let mut tx = pool.begin().await?;
    for (channel, jobs) in &order {
        let opts = &batch[jobs[0]].opts;
        let k = jobs.len() as i64;
        let mut data = Vec::with_capacity(jobs.len());
        let mut info = Vec::with_capacity(jobs.len());
        let mut tags = Vec::with_capacity(jobs.len());
        let mut time = Vec::with_capacity(jobs.len());
        for &i in jobs {
            let p = &batch[i].publication;
            data.push(rotor_core::stored::payload_to_text(&p.data));
            info.push(p.info.as_ref().map(rotor_core::stored::info_to_json));
            tags.push(
                (!p.tags.is_empty()).then(|| serde_json::to_string(&p.tags).expect("serializes")),
            );
            time.push(p.time as i64);
        }
        let row = sqlx::query(APPEND)
            .bind(*channel)
            .bind(new_epoch())
            .bind(k)
            .bind(ms(opts.meta_ttl))
            .bind(ms(opts.ttl))
            .bind(&data)
            .bind(&info)
            .bind(&tags)
            .bind(&time)
            .bind(opts.size as i64)
            .fetch_one(&mut *tx)
            .await?;
        let top: i64 = row.get(0);
        let epoch: String = row.get(1);
        for (n, &i) in jobs.iter().enumerate() {
            positions[i] = StreamPosition {
                offset: (top - k + 1 + n as i64) as u64,
                epoch: epoch.clone(),
            };
        }
    }
    tx.commit().await?;
    Ok(positions)
}

fn publication_from(
    offset: i64,
    data: String,
    info: Option<String>,
    tags: Option<String>,
    time_ms: i64,
) -> Result<Publication, CoreError> {
    let bad = |what: &str| CoreError::Internal(format!("stored publication has invalid {what}"));
    Ok(Publication {
        delta: false,
        data: rotor_core::stored::payload_from_text(&data).map_err(|_| bad("data"))?,
        info: match info {
            Some(i) => Some(rotor_core::stored::info_from_json(&i).map_err(|_| bad("info"))?),
            None => None,
        },
        offset: offset as u64,
        tags: match tags {
            Some(t) => serde_json::from_str(&t).map_err(|_| bad("tags"))?,
            None => Default::default(),
        },
        time: time_ms as u64,
    })
}

#[async_trait::async_trait]
impl HistoryStore for PgHistory {
    fn add(
        &self,
        channel: &str,
        publication: Publication,
        opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            channel: channel.to_string(),
            publication,
            opts: *opts,
            reply,
        };
        let queued = self.lane(channel).send(job).is_ok();
        Box::pin(async move {
            if !queued {
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
        let (cmp, order, bound) = match (filter.reverse, &filter.since) {
            (false, since) => (
                ">",
                "ASC",
                since.as_ref().map(|s| s.offset as i64).unwrap_or(0),
            ),
            (true, Some(since)) => ("<", "DESC", since.offset as i64),
            (true, None) => ("<", "DESC", i64::MAX),
        };
        let sql = format!(
            r#"SELECT s.top_offset, s.epoch, s.meta_expires_at <= now() AS forgotten,
                      p."offset", p.data, p.info, p.tags, p.time_ms
               FROM rotor_streams s
               LEFT JOIN LATERAL (
                   SELECT "offset", data, info, tags, time_ms FROM rotor_publications
                   WHERE channel = s.channel AND expires_at > now()
                     AND "offset" > s.top_offset - $2 AND "offset" {cmp} $3
                   ORDER BY "offset" {order} LIMIT $4
               ) p ON true
               WHERE s.channel = $1"#
        );
        let rows = sqlx::query(&sql)
            .bind(channel)
            .bind(opts.size as i64)
            .bind(bound)
            .bind(filter.limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let position = match rows.first() {
            Some(r) if !r.get::<bool, _>(2) => StreamPosition {
                offset: r.get::<i64, _>(0) as u64,
                epoch: r.get(1),
            },
            _ => {
                // A new (or forgotten) stream: give it an epoch now, so positions handed to
                // subscribers stay valid until the first publication.
                let row = sqlx::query(
                    r#"INSERT INTO rotor_streams AS st (channel, epoch, top_offset, meta_expires_at)
                       VALUES ($1, $2, 0, now() + $3 * interval '1 millisecond')
                       ON CONFLICT (channel) DO UPDATE SET
                           epoch = CASE WHEN st.meta_expires_at <= now() THEN EXCLUDED.epoch ELSE st.epoch END,
                           top_offset = CASE WHEN st.meta_expires_at <= now() THEN 0 ELSE st.top_offset END,
                           meta_expires_at = CASE WHEN st.meta_expires_at <= now() THEN EXCLUDED.meta_expires_at
                                                  ELSE st.meta_expires_at END
                       RETURNING top_offset, epoch"#,
                )
                .bind(channel)
                .bind(new_epoch())
                .bind(ms(opts.meta_ttl))
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
                let position = StreamPosition {
                    offset: row.get::<i64, _>(0) as u64,
                    epoch: row.get(1),
                };
                filter.check_epoch(&position.epoch)?;
                return Ok(HistoryPage {
                    publications: Vec::new(),
                    position,
                });
            }
        };
        filter.check_epoch(&position.epoch)?;
        let mut publications = Vec::new();
        for r in &rows {
            let Some(offset) = r.get::<Option<i64>, _>(3) else {
                continue;
            };
            publications.push(publication_from(
                offset,
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )?);
        }
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove(&self, channel: &str) -> Result<(), CoreError> {
        sqlx::query("DELETE FROM rotor_publications WHERE channel = $1")
            .bind(channel)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

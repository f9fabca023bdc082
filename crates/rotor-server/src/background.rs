//! The tasks a server runs beside its connections: the revocation sync, storage housekeeping
//! (the in-memory history sweep or the Postgres retention job) and the internal metrics
//! port. Each ends when the node shuts down; [`Background::join`] waits for them, bounded.

use std::sync::Arc;
use std::time::Duration;

use rotor_core::Node;
use tokio::task::JoinHandle;

/// Storage housekeeping the configured storage needs.
pub enum Housekeeping {
    /// Sweep in-memory history of expired publications and forgotten streams.
    Memory(Arc<rotor_store_memory::MemoryHistory>),
    /// Delete expired rows in bounded batches.
    Postgres {
        pool: rotor_store_postgres::PgPool,
        interval: Duration,
        batch: i64,
    },
}

/// The running background tasks.
#[derive(Default)]
pub struct Background {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    /// Starts the revocation sync and the storage housekeeping of `node`.
    pub fn start(node: &Node, revocation_sync: Duration, housekeeping: Housekeeping) -> Background {
        let mut bg = Background::default();
        bg.add(
            "revocation sync",
            tokio::spawn(revocation_sync_loop(node.clone(), revocation_sync)),
        );
        match housekeeping {
            Housekeeping::Memory(history) => bg.add(
                "history sweep",
                tokio::spawn(history_sweep_loop(node.clone(), history)),
            ),
            Housekeeping::Postgres {
                pool,
                interval,
                batch,
            } => {
                let stop = node.shutdown_token();
                bg.add(
                    "postgres retention",
                    rotor_store_postgres::spawn_retention(pool, interval, batch, async move {
                        stop.cancelled().await
                    }),
                );
            }
        }
        bg
    }

    /// Adds a task that ends by itself at shutdown.
    pub fn add(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    /// Waits for every task to end, at most `within`; the ones still running then are
    /// aborted, each with a warning.
    pub async fn join(self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    "background task still running at the end of shutdown; aborting it"
                );
                task.abort();
            }
        }
    }
}

/// Reloads the revocation list from storage every `interval` until shutdown.
async fn revocation_sync_loop(node: Node, interval: Duration) {
    let stop = node.shutdown_token();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => if let Err(e) = node.sync_revocations().await {
                tracing::warn!(error = %e, "revocation sync failed; keeping the list in memory");
            },
        }
    }
}

/// Drops expired publications and forgotten streams from in-memory history once a minute, so
/// channels nobody reads again do not keep memory.
async fn history_sweep_loop(node: Node, history: Arc<rotor_store_memory::MemoryHistory>) {
    let stop = node.shutdown_token();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let left = history.sweep(|ch| node.channel_options(ch).ok().map(|o| o.history_ttl));
                tracing::debug!(streams = left, "history sweep");
            }
        }
    }
}

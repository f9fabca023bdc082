//! The storage conformance suite on a real Postgres (each test in its own schema), plus
//! retention and the unavailable-database behaviour.
//!
//! Needs PostgreSQL at `TEST_PG_DSN` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Without it the tests skip loudly, except under `CI=true`, where they fail.

use std::sync::Arc;
use std::time::Duration;

use rotor_core::conformance::{self as suite, Subject};
use rotor_core::storage::{
    HistoryFilter, HistoryOptions, HistoryStore, IdempotencyStore, PresenceStore, RevocationStore,
    Storage,
};
use rotor_core::CoreError;
use rotor_protocol::{Publication, Raw};

use super::*;

fn dsn() -> String {
    std::env::var("TEST_PG_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated pool on a fresh schema, or `None` (skip) when Postgres is not reachable.
async fn fresh(test: &str) -> Option<(PgPool, PgOptions)> {
    let schema = format!("t_{}_{:08x}", test, rand::random::<u32>());
    let opts = PgOptions {
        dsn: dsn(),
        schema,
        pool_size: 8,
        acquire_timeout: Duration::from_secs(5),
        batch_max_size: 256,
    };
    let pool = match connect(&opts).await {
        Ok(p) => p,
        Err(e) => {
            suite::skip(test, &format!("Postgres at {}", dsn()), &e);
            return None;
        }
    };
    migrate(&pool).await.expect("migrations apply");
    Some((pool, opts))
}

async fn drop_schema(pool: &PgPool, opts: &PgOptions) {
    let _ = sqlx::query(&format!(
        "DROP SCHEMA {} CASCADE",
        quote_ident(&opts.schema)
    ))
    .execute(pool)
    .await;
}

/// One store of a fresh schema's storage; the schema is dropped when the test passed.
async fn part<T: ?Sized>(test: &'static str, pick: fn(Storage) -> Arc<T>) -> Option<Subject<T>> {
    let (pool, opts) = fresh(test).await?;
    let store = pick(storage(pool.clone(), &opts));
    Some(Subject::new(store).with_teardown(async move { drop_schema(&pool, &opts).await }))
}

async fn history_store(test: &'static str) -> Option<Subject<dyn HistoryStore>> {
    part(test, |s| s.history).await
}

async fn presence_store(test: &'static str) -> Option<Subject<dyn PresenceStore>> {
    part(test, |s| s.presence).await
}

async fn revocation_store(test: &'static str) -> Option<Subject<dyn RevocationStore>> {
    part(test, |s| s.revocations).await
}

async fn idempotency_store(test: &'static str) -> Option<Subject<dyn IdempotencyStore>> {
    part(test, |s| s.idempotency).await
}

rotor_core::storage_suite! {
    history: history_store,
    presence: presence_store,
    revocations: revocation_store,
    idempotency: idempotency_store,
}

fn publication(n: u64) -> Publication {
    Publication {
        delta: false,
        data: Raw::from_value(&n),
        info: None,
        offset: 0,
        tags: Default::default(),
        time: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_batched_into_few_transactions() {
    let Some((pool, opts)) = fresh("batching").await else {
        return;
    };
    let history = Arc::new(PgHistory::new(pool.clone(), 64));
    let o = HistoryOptions {
        size: 10_000,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    };
    let before: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // 500 publications submitted at once to two channels.
    let futures: Vec<_> = (0..500u64)
        .map(|n| history.add(if n % 2 == 0 { "even" } else { "odd" }, publication(n), &o))
        .collect();
    let mut offsets = (Vec::new(), Vec::new());
    for (n, f) in futures.into_iter().enumerate() {
        let p = f.await.unwrap();
        if n % 2 == 0 {
            offsets.0.push(p.offset)
        } else {
            offsets.1.push(p.offset)
        }
    }
    assert_eq!(
        offsets.0,
        (1..=250).collect::<Vec<_>>(),
        "in submission order, gap-free"
    );
    assert_eq!(offsets.1, (1..=250).collect::<Vec<_>>());
    let after: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Other sessions commit too, so allow slack; one transaction per publication would be 500.
    assert!(
        after - before < 100,
        "group commit: {} transactions for 500 publications",
        after - before
    );
    drop_schema(&pool, &opts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_rows_in_batches() {
    let Some((pool, opts)) = fresh("retention").await else {
        return;
    };
    let s = storage(pool.clone(), &opts);
    let short = HistoryOptions {
        size: 1000,
        ttl: Duration::from_millis(200),
        meta_ttl: Duration::from_secs(3600),
    };
    for n in 0..25 {
        s.history.add("r", publication(n), &short).await.unwrap();
    }
    let info = rotor_protocol::ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: None,
    };
    s.presence
        .add("r", &info, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let purged = purge(&pool, 10).await.unwrap();
    assert_eq!(
        (purged.publications, purged.presence),
        (25, 1),
        "{purged:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rotor_publications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // The stream position survives; the next publication continues the sequence.
    assert_eq!(
        s.history
            .add("r", publication(99), &short)
            .await
            .unwrap()
            .offset,
        26
    );
    drop_schema(&pool, &opts).await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_temporary_error() {
    // Nothing listens on port 1.
    let opts = PgOptions {
        dsn: "postgres://postgres@127.0.0.1:1/test".into(),
        schema: "public".into(),
        pool_size: 2,
        acquire_timeout: Duration::from_millis(500),
        batch_max_size: 16,
    };
    assert!(matches!(connect(&opts).await, Err(PgError::Connect(_))));
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&opts.dsn)
        .unwrap();
    let s = storage(pool, &opts);
    let o = HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(60),
    };
    let err = s.history.add("x", publication(1), &o).await.unwrap_err();
    assert!(matches!(err, CoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_error().temporary,
        "clients see a temporary error 100"
    );
    let err = s
        .history
        .read("x", &HistoryFilter::default(), &o)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Unavailable(_)));
}

/// Records what reaches the broker, in order.
#[derive(Default)]
struct Recording(std::sync::Mutex<Vec<u64>>);

#[async_trait::async_trait]
impl rotor_core::broker::Broker for Recording {
    fn set_handler(&self, _h: Arc<dyn rotor_core::broker::BrokerHandler>) {}
    fn publish(&self, _c: &str, p: &Publication) -> rotor_core::broker::Sent {
        self.0.lock().unwrap().push(p.offset);
        rotor_core::broker::Sent::done(Ok(()))
    }
    async fn publish_join(
        &self,
        _c: &str,
        _i: &rotor_protocol::ClientInfo,
    ) -> Result<(), CoreError> {
        Ok(())
    }
    async fn publish_leave(
        &self,
        _c: &str,
        _i: &rotor_protocol::ClientInfo,
    ) -> Result<(), CoreError> {
        Ok(())
    }
    async fn publish_control(&self, _c: &rotor_core::broker::Control) -> Result<(), CoreError> {
        Ok(())
    }
    async fn subscribe(&self, _c: &str) -> Result<(), CoreError> {
        Ok(())
    }
    async fn unsubscribe(&self, _c: &str) -> Result<(), CoreError> {
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<rotor_core::NodeInfo>, CoreError> {
        Ok(Vec::new())
    }
    async fn send_to_node(&self, _uid: &str, _payload: &str) -> Result<bool, CoreError> {
        Ok(false)
    }
    async fn shutdown(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_channel_is_committed_in_groups_and_delivered_in_order() {
    let Some((pool, opts)) = fresh("hot").await else {
        return;
    };
    let mut config = rotor_core::config::CoreConfig::default();
    config.channel.namespaces = vec![rotor_core::config::NamespaceConfig {
        name: "chat".into(),
        history_size: 1000,
        history_ttl: Duration::from_secs(60),
        ..Default::default()
    }];
    let broker = Arc::new(Recording::default());
    let node = rotor_core::Node::new(
        config,
        storage(pool.clone(), &opts),
        broker.clone(),
        Arc::new(rotor_core::events::NoObserver),
    )
    .unwrap();
    let xacts = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = xacts().await;
    let tasks: Vec<_> = (0..300u64)
        .map(|n| {
            let node = node.clone();
            tokio::spawn(async move {
                node.publish("chat:hot", Raw::from_value(&n), Default::default())
                    .await
                    .unwrap()
                    .offset
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=300).collect::<Vec<_>>());
    assert_eq!(
        *broker.0.lock().unwrap(),
        (1..=300).collect::<Vec<_>>(),
        "delivered in offset order"
    );
    let spent = xacts().await - before;
    assert!(
        spent < 100,
        "one channel, 300 concurrent publishes, {spent} transactions"
    );
    drop_schema(&pool, &opts).await;
}

//! Publications per second with history on Postgres, and single-publisher latency, for
//! several group-commit batch sizes (`storage.postgres.batch_max_size`).
//!
//! Run: `cargo build --release -p rotor-server && cargo bench -p rotor-bench --bench pg_publish`
//! Needs PostgreSQL at `$BENCH_PG_DSN` (default postgres://postgres@127.0.0.1:5432/test).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rotor_bench::{psql, ApiClient, RotorProcess};

const KEY: &str = "bench-key";
const PUBLISHERS: usize = 64;

fn config(dsn: &str, batch: usize) -> String {
    format!(
        r#"
[http_server]
address = "127.0.0.1"
port = 0
[http_api]
key = "{KEY}"
[log]
level = "warn"
[storage]
type = "postgres"
[storage.postgres]
dsn = "{dsn}"
schema = "rotor_bench"
batch_max_size = {batch}
pool_size = 8
[[channel.namespaces]]
name = "chat"
history_size = 1000
history_ttl = "10m"
"#
    )
}

async fn publish_n(client: &mut ApiClient, channel: &str, n: u64) {
    for i in 0..n {
        let r = client.call("publish", &format!(r#"{{"channel":"{channel}","data":{{"i":{i},"text":"benchmark payload of about a hundred bytes, like a chat message or a price tick"}}}}"#)).await;
        assert!(
            r["result"]["offset"].as_u64().is_some(),
            "publish failed: {r}"
        );
    }
}

fn bench(c: &mut Criterion) {
    let dsn = std::env::var("BENCH_PG_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if !psql(&dsn, "SELECT 1") {
        eprintln!("pg_publish: no Postgres at {dsn}; skipping");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pg_publish");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for batch in [1usize, 16, 128, 512] {
        psql(&dsn, "DROP SCHEMA IF EXISTS rotor_bench CASCADE");
        let server = rt.block_on(RotorProcess::start(
            &format!("pg{batch}"),
            &config(&dsn, batch),
        ));
        let mut clients: Vec<ApiClient> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..PUBLISHERS {
                v.push(ApiClient::connect(server.addr, KEY).await);
            }
            v
        });
        // 64 publishers on 8 channels: throughput when many publications wait to be written.
        group.bench_function(BenchmarkId::new("concurrent_64_publishers", batch), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let per = iters.div_ceil(PUBLISHERS as u64);
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for (i, mut c) in clients.drain(..).enumerate() {
                        tasks.push(tokio::spawn(async move {
                            publish_n(&mut c, &format!("chat:{}", i % 8), per).await;
                            c
                        }));
                    }
                    for t in tasks {
                        clients.push(t.await.unwrap());
                    }
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * PUBLISHERS as u64) as f64)
                })
            })
        });
        // One publisher: the latency of a single publish (one transaction each).
        group.bench_function(BenchmarkId::new("one_publisher_latency", batch), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    publish_n(&mut clients[0], "chat:solo", iters).await;
                    start.elapsed()
                })
            })
        });
        rt.block_on(server.stop());
    }
    group.finish();
    psql(&dsn, "DROP SCHEMA IF EXISTS rotor_bench CASCADE");
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Publications per second with history on Postgres, and single-publisher latency, for
//! several group-commit batch sizes (`storage.postgres.batch_max_size`); at the default
//! size also with 256 publishers, and the latency at a steady 5,000 publications/s.
//!
//! Run: `cargo build --release -p rotor-server && cargo bench -p rotor-bench --bench pg_publish`
//! Needs PostgreSQL at `$BENCH_PG_DSN` (default postgres://postgres@127.0.0.1:5432/test).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rotor_bench::{psql, ApiClient, RotorProcess};

const KEY: &str = "bench-key";
const PUBLISHERS: usize = 64;
/// With the default batch size, also this many publishers: how much the store takes when
/// more publications wait than 64 connections can keep waiting (each waits for its commit).
const MORE_PUBLISHERS: usize = 256;

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

/// Publishes at `rate` per second in all, spread over `clients` (each on its own schedule,
/// open loop: a publish's latency counts from when it was due), for `duration`. Returns
/// (publishes, p50 ms, p99 ms).
async fn latency_at_rate(
    clients: Vec<ApiClient>,
    rate: f64,
    duration: Duration,
) -> (Vec<ApiClient>, u64, f64, f64) {
    let n = clients.len();
    let period = Duration::from_secs_f64(n as f64 / rate);
    let count = (duration.as_secs_f64() * rate / n as f64).ceil() as u32;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        // Spread the clients' schedules over one period.
        let offset = period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            for k in 0..count {
                let due = start + offset + period * k;
                tokio::time::sleep_until(due).await;
                let r = c
                    .call("publish", &format!(r#"{{"channel":"chat:{}","data":{{"k":{k},"text":"benchmark payload of about a hundred bytes, like a chat message or a price tick"}}}}"#, i % 8))
                    .await;
                assert!(r["result"]["offset"].as_u64().is_some(), "publish failed: {r}");
                h.record(due.elapsed().as_micros() as u64).unwrap();
            }
            (c, h)
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut back = Vec::new();
    for t in tasks {
        let (c, h) = t.await.unwrap();
        all.add(h).unwrap();
        back.push(c);
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    (back, all.len(), ms(0.5), ms(0.99))
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
        let publishers: &[usize] = if batch == 512 {
            &[PUBLISHERS, MORE_PUBLISHERS]
        } else {
            &[PUBLISHERS]
        };
        let mut clients: Vec<ApiClient> = Vec::new();
        // n publishers on 8 channels: throughput when many publications wait to be written.
        for &n in publishers {
            // Connected right before they are used: the server closes keep-alive
            // connections that stay idle past http_server.header_read_timeout.
            rt.block_on(async {
                clients.clear();
                for _ in 0..n {
                    clients.push(ApiClient::connect(server.addr, KEY).await);
                }
            });
            let name = format!("concurrent_{n}_publishers");
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let per = iters.div_ceil(n as u64);
                        let start = Instant::now();
                        let mut tasks = Vec::new();
                        for (i, mut c) in clients.drain(..n).enumerate() {
                            tasks.push(tokio::spawn(async move {
                                publish_n(&mut c, &format!("chat:{}", i % 8), per).await;
                                c
                            }));
                        }
                        let mut back = Vec::new();
                        for t in tasks {
                            back.push(t.await.unwrap());
                        }
                        clients.splice(0..0, back);
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * n as u64) as f64)
                    })
                })
            });
        }
        // Latency under a steady load well below the ceiling: 5,000 publications/s from 64
        // publishers (printed beside criterion's lines).
        if batch == 512 {
            clients.truncate(PUBLISHERS);
            let some: Vec<ApiClient> = clients.drain(..PUBLISHERS).collect();
            let (back, n, p50, p99) =
                rt.block_on(latency_at_rate(some, 5000.0, Duration::from_secs(5)));
            clients.splice(0..0, back);
            println!(
                "pg_publish/latency_at_5000_per_s/{batch}: {n} publishes, p50 {p50:.2} ms, p99 {p99:.2} ms"
            );
        }
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

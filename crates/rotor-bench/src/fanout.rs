//! `fanout`: N subscribers (one channel, or one each), a publish rate rising step by step
//! until delivery falls behind or p99 passes the budget; losses and duplicates counted.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use rotor_bench::load::{self, Publisher};
use rotor_bench::tokens::Signer;
use serde_json::{json, Value};

use crate::cli::{Channels, FanoutArgs};
use crate::harness::{add_workers, ask_all, emit, hex_decode, Servers};

pub(crate) fn merge_histograms(reports: &[Value]) -> Histogram<u64> {
    let mut all = load::new_histogram();
    for r in reports {
        let bytes = hex_decode(r["hist"].as_str().expect("hist"));
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .expect("histogram");
        all.add(h).expect("merge");
    }
    all
}

pub(crate) fn sum(reports: &[Value], key: &str) -> u64 {
    reports.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum()
}

pub(crate) async fn fanout(args: FanoutArgs) {
    let FanoutArgs {
        common,
        subs: subs_list,
        channels,
        deliveries,
        duration,
        payload,
        p99_budget_ms: budget_ms,
        publishers,
    } = args;
    let signer = Signer::hs256();
    let token = signer.token("bench", None);
    let api = common.api_publish || common.tags_filter.is_some();
    let filter = common.tags_filter.map(|f| f.name());
    for subs in subs_list {
        let servers = if api {
            let allow = "allow_tags_filter = true\n";
            Servers::start_with(&common, &signer, allow, "[http_api]\nkey = \"bench\"\n").await
        } else {
            Servers::start(&common, &signer).await
        };
        let addrs = servers.addrs();
        let stride = if channels == Channels::Each {
            subs as u64
        } else {
            1
        };
        let (mut workers, connect_rate) =
            add_workers(&common, &addrs, 0, subs, stride, &token, false).await;
        let mut pubs = Vec::new();
        for _ in 0..publishers.max(1) {
            pubs.push(if api {
                let tags = filter.map_or("{}", |f| load::tags_filter(f).1);
                Publisher::connect_api(addrs[0], "bench", tags).await
            } else {
                Publisher::connect(common.target, addrs[0], &token).await
            });
        }
        let rss_idle = servers.rss_kib();
        println!(
            "# {} {} subscribers{}{} ({} node{}{}), {payload}-byte payload{}, {connect_rate:.0} connects/s, idle RSS {rss_idle} KiB",
            common.target.name(),
            subs,
            if stride > 1 { " each on its own channel" } else { " on one channel" },
            filter.map_or(String::new(), |f| format!(" with a {f} tags filter")),
            addrs.len(),
            if addrs.len() > 1 { "s" } else { "" },
            if common.redis_engine().is_some() { " on Redis" } else { "" },
            if api { " published through the server API" } else { "" },
        );
        println!(
            "{:>9} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>6} {:>9}",
            "pub/s",
            "expected/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost",
            "dup",
            "CPU %",
            "RSS KiB"
        );
        let mut next_seq = 0u64;
        for &d in &deliveries {
            let rate = if stride > 1 {
                d as f64
            } else {
                (d as f64 / subs as f64).max(1.0)
            };
            let count = (rate * duration).round().max(1.0) as u64;
            let first = next_seq;
            let end = first + count;
            next_seq = end;
            ask_all(&mut workers, &format!("reset {first}")).await;
            let errors_before: u64 = pubs.iter().map(|p| p.errors.load(Ordering::Relaxed)).sum();
            let (cpu0, t0, t0_ns) = (
                servers.cpu_seconds(),
                Instant::now(),
                rotor_bench::payload::now_ns(),
            );
            load::publish_open_loop(&mut pubs, first, count, rate, stride, payload).await;
            // Wait until everything arrived, or nothing more arrives for a second.
            let expected = sum(
                &ask_all(&mut workers, &format!("count {end}")).await,
                "expected",
            );
            let (mut last, mut still) = (0, Instant::now());
            loop {
                let got = sum(
                    &ask_all(&mut workers, &format!("count {end}")).await,
                    "received",
                );
                if got >= expected || still.elapsed() > Duration::from_secs(1) {
                    break;
                }
                if got != last {
                    (last, still) = (got, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let cpu = 100.0 * (servers.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
            let reports = ask_all(&mut workers, &format!("report {end}")).await;
            let hist = merge_histograms(&reports);
            let received = sum(&reports, "received");
            let lost = sum(&reports, "lost");
            let dup = sum(&reports, "dup");
            let disconnected = sum(&reports, "disconnected");
            let last_ns = reports
                .iter()
                .map(|r| r["last_ns"].as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0);
            let window = (last_ns.saturating_sub(t0_ns) as f64 / 1e9).max(duration);
            let delivered_rate = received as f64 / window;
            let expected_rate = expected as f64 / duration;
            let errors: u64 = pubs
                .iter()
                .map(|p| p.errors.load(Ordering::Relaxed))
                .sum::<u64>()
                - errors_before;
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            let rss = servers.rss_kib();
            println!(
                "{rate:>9.0} {expected_rate:>12.0} {delivered_rate:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {lost:>7} {dup:>5} {cpu:>6.0} {rss:>9}",
                ms(0.5), ms(0.99), ms(0.999), hist.max() as f64 / 1000.0
            );
            if errors > 0 || disconnected > 0 {
                println!(
                    "          publish errors: {errors}, subscribers disconnected: {disconnected}"
                );
            }
            emit(
                &common,
                json!({"scenario": if stride > 1 { "channels" } else { "fanout" },
                       "target": common.target.name(), "nodes": addrs.len(),
                       "engine": if common.redis_engine().is_some() { "redis" } else { "memory" },
                       "subscribers": subs,
                       "payload": payload, "publish_rate": rate, "expected_per_s": expected_rate,
                       "delivered_per_s": delivered_rate, "expected": expected,
                       "received": received, "lost": lost, "dup": dup,
                       "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                       "max_ms": hist.max() as f64 / 1000.0, "server_cpu_pct": cpu,
                       "server_rss_kib": rss, "publish_errors": errors,
                       "disconnected": disconnected, "connects_per_s": connect_rate,
                       "tags_filter": filter, "api_publish": api}),
            );
            let behind = received < expected || delivered_rate < 0.95 * expected_rate;
            if behind || ms(0.99) > budget_ms || disconnected > 0 || errors > 0 {
                println!("          saturated: stopping the ramp here");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ask_all(&mut workers, "quit").await;
        servers.stop().await;
    }
}

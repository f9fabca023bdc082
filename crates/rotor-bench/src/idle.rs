//! `idle`: server memory per idle subscribed connection (the slope of RSS over counts) and
//! the server's CPU while they are idle.

use std::time::{Duration, Instant};

use rotor_bench::procfs::slope;
use rotor_bench::tokens::Signer;
use serde_json::json;

use clap::ValueEnum;

use crate::cli::{Common, Shape};
use crate::harness::{add_workers, ask_all, emit, Servers};

pub(crate) async fn idle(common: Common, counts: Vec<usize>, shape: Shape, max_kib: Option<f64>) {
    let signer = Signer::hs256();
    let channel = match shape {
        Shape::Realistic => "presence = true\nhistory_size = 10\nhistory_ttl = \"300s\"\n",
        Shape::Shared | Shape::Own => "",
    };
    let servers = Servers::start_with(&common, &signer, channel, "").await;
    let token = signer.token("bench", None);
    let addrs = servers.addrs();
    let base = servers.rss_kib();
    // Shared: 100 channels; otherwise each connection its own channel and user.
    let (stride, personal) = match shape {
        Shape::Shared => (100, false),
        Shape::Own | Shape::Realistic => (counts.iter().max().map_or(1, |&m| m as u64), true),
    };
    let shape_name = shape
        .to_possible_value()
        .expect("named")
        .get_name()
        .to_string();
    println!(
        "# idle {} {shape_name} (server RSS by open subscribed connections)",
        common.target.name()
    );
    println!(
        "{:>11} {:>12} {:>14} {:>16}",
        "connections", "RSS KiB", "connects/s", "idle CPU %"
    );
    println!("{:>11} {:>12} {:>14} {:>16}", 0, base, "-", "-");
    let mut points = vec![(0.0, base as f64)];
    let mut workers = Vec::new();
    let mut open = 0usize;
    let mut cpu_pct = 0.0;
    for &target in &counts {
        let (mut more, rate) = add_workers(
            &common,
            &addrs,
            open as u64,
            target - open,
            stride,
            &token,
            personal,
        )
        .await;
        workers.append(&mut more);
        open = target;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = servers.rss_kib();
        let (c0, t0) = (servers.cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        cpu_pct = 100.0 * (servers.cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
        println!("{open:>11} {rss:>12} {rate:>14.0} {cpu_pct:>16.2}");
        points.push((open as f64, rss as f64));
        emit(
            &common,
            json!({"scenario": "idle", "target": common.target.name(), "shape": shape_name,
                   "connections": open,
                   "rss_kib": rss, "connects_per_s": rate, "idle_cpu_pct": cpu_pct}),
        );
    }
    let per = slope(&points);
    println!("memory per idle connection (slope): {per:.1} KiB");
    emit(
        &common,
        json!({"scenario": "idle-slope", "target": common.target.name(), "shape": shape_name,
               "kib_per_connection": per, "idle_cpu_pct_at_max": cpu_pct, "max": open}),
    );
    ask_all(&mut workers, "quit").await;
    servers.stop().await;
    if let Some(max) = max_kib {
        if per > max {
            eprintln!(
                "memory regression: {} {shape_name} holds {per:.1} KiB per idle connection, over its budget of {max} KiB",
                common.target.name()
            );
            std::process::exit(1);
        }
        println!("within the budget of {max} KiB per idle connection");
    }
}

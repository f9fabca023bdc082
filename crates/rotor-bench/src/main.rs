//! `rotor-bench`: the load tool. It starts the server under test (rotor, the minimal
//! broadcast ceiling, or nats-server), opens connections from worker processes (one process
//! may hold only ~20,000 open files here), publishes at a fixed open-loop rate and reports
//! what arrived. See `docs/benchmarks.md` and `scripts/bench.sh`.
//!
//! - `idle`: server memory per idle subscribed connection (slope of RSS over counts), CPU.
//! - `fanout`: one channel, N subscribers, rising publish rate until delivery falls behind
//!   or p99 exceeds the budget. `--channels each` gives every subscriber its own channel.
//! - `churn`: connects per second with HS256 or RS256 tokens, or refreshes of expiring
//!   tokens on long-lived connections.

mod backend;
mod churn;
mod cli;
mod delta;
mod fanout;
mod harness;
mod idle;
mod worker;

use clap::Parser;

use cli::{Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    let worker_mode = matches!(cli.command, Cmd::Worker { .. });
    let rt = if worker_mode {
        // A worker is one thread: several of them share the load's CPUs.
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    rt.block_on(async move {
        match cli.command {
            Cmd::Idle {
                common,
                counts,
                shape,
                max_kib,
            } => idle::idle(common, counts, shape, max_kib).await,
            Cmd::Fanout(args) => fanout::fanout(args).await,
            Cmd::Delta {
                common,
                sizes,
                publications,
            } => delta::delta(common, sizes, publications).await,
            Cmd::Churn {
                common,
                alg,
                duration,
                concurrency,
                refresh,
                ttl,
            } => churn::churn(common, alg, duration, concurrency, refresh, ttl).await,
            Cmd::Worker {
                target,
                addrs,
                from,
                count,
                stride,
                personal,
            } => worker::worker(target, addrs, from, count, stride, personal).await,
        }
    });
}

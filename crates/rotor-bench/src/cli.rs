//! The command line: the scenarios and the options they share.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};
use rotor_bench::load::Target;

#[derive(Parser)]
#[command(
    name = "rotor-bench",
    about = "Load and benchmark tool for rotor and its peers"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(clap::Args, Clone)]
pub(crate) struct Common {
    /// The server under test.
    #[arg(long, value_enum, default_value = "rotor-ws")]
    pub(crate) target: Target,
    /// Pin the server to these CPUs (`taskset -c` list); run rotor-bench itself under
    /// `taskset` on the others.
    #[arg(long)]
    pub(crate) server_cpus: Option<String>,
    /// Connections per worker process.
    #[arg(long, default_value_t = 5000)]
    pub(crate) per_worker: usize,
    /// rotor nodes sharing fan-out through Redis (subscribers spread over them round-robin,
    /// publishers on the first node).
    #[arg(long, default_value_t = 1)]
    pub(crate) nodes: usize,
    /// rotor's engine: `memory` (one node only) or `redis`. Default: memory for one node,
    /// redis for several.
    #[arg(long, value_enum)]
    pub(crate) engine: Option<Engine>,
    /// Redis for the redis engine.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub(crate) redis: String,
    /// Append one JSON object per result line to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// rotor-ws subscribers subscribe with this tags filter, and publications (then made
    /// through the server API, which takes tags) carry tags that pass it.
    #[arg(long, value_enum)]
    pub(crate) tags_filter: Option<TagsFilter>,
    /// Publish through the server API (as `--tags-filter` does), for a like-for-like
    /// baseline without filters.
    #[arg(long)]
    pub(crate) api_publish: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum TagsFilter {
    /// One comparison (`ticker eq BTC`).
    Simple,
    /// `and` of a set, a number and a negation.
    Complex,
}

impl TagsFilter {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TagsFilter::Simple => "simple",
            TagsFilter::Complex => "complex",
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Engine {
    Memory,
    Redis,
}

impl Common {
    /// The Redis address rotor's nodes share, when they run on the Redis engine.
    pub(crate) fn redis_engine(&self) -> Option<&str> {
        match self.engine {
            Some(Engine::Memory) if self.nodes > 1 => {
                panic!(
                    "--nodes {} needs --engine redis (nodes share nothing else)",
                    self.nodes
                )
            }
            Some(Engine::Memory) => None,
            Some(Engine::Redis) => Some(&self.redis),
            None => (self.nodes > 1).then_some(self.redis.as_str()),
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Channels {
    /// Every subscriber on one channel (fan-out).
    One,
    /// Every subscriber on its own channel.
    Each,
}

/// What the idle connections are subscribed to.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Shape {
    /// One user; 100 channels shared by all connections, no presence or history.
    Shared,
    /// Each connection its own user and its own channel, no presence or history.
    Own,
    /// Each connection its own user and its own channel with presence and history (10
    /// publications for 300 s): a personal channel or a small chat room, the shape most
    /// apps open. HTTP streaming and SSE connections are subscribed server-side (the
    /// token's `channels` claim); WebSocket ones subscribe themselves.
    Realistic,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum Alg {
    Hs256,
    Rs256,
    /// No token: every connect goes through the connect proxy to a local application
    /// backend (in this process, on its CPUs) that names the user.
    Proxy,
}

#[derive(clap::Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10000])]
    pub(crate) subs: Vec<usize>,
    #[arg(long, value_enum, default_value = "one")]
    pub(crate) channels: Channels,
    /// Target deliveries per second for each step (publish rate = this / subscribers
    /// for one channel, = this for `--channels each`).
    #[arg(long, value_delimiter = ',', default_values_t = [50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000])]
    pub(crate) deliveries: Vec<u64>,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) payload: usize,
    /// Stop the ramp when p99 exceeds this many milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) p99_budget_ms: f64,
    /// Publisher connections.
    #[arg(long, default_value_t = 2)]
    pub(crate) publishers: usize,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Server memory and CPU per idle subscribed connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 10000, 19000])]
        counts: Vec<usize>,
        #[arg(long, value_enum, default_value = "shared")]
        shape: Shape,
        /// A memory regression check: fail (exit status 1) when the memory per idle
        /// connection is over this many KiB.
        #[arg(long)]
        max_kib: Option<f64>,
    },
    /// Publish at rising rates to subscribers; report deliveries, latency, losses.
    Fanout(FanoutArgs),
    /// Bytes on the wire with and without fossil delta compression, for a slowly changing
    /// document of each size (every document rebuilt and checked).
    Delta {
        #[command(flatten)]
        common: Common,
        /// Document sizes (bytes, about).
        #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096, 16384])]
        sizes: Vec<usize>,
        /// Publications per size.
        #[arg(long, default_value_t = 500)]
        publications: u64,
    },
    /// Connection churn (connect, reply, close) or token refreshes on live connections.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "hs256")]
        alg: Alg,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Instead of churn: this many live connections whose tokens expire every `ttl`
        /// seconds and are refreshed in place.
        #[arg(long)]
        refresh: Option<usize>,
        #[arg(long, default_value_t = 5)]
        ttl: u64,
    },
    /// (internal) Holds subscriber connections for the coordinator; driven over stdin.
    #[command(hide = true)]
    Worker {
        #[arg(long, value_enum)]
        target: Target,
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<SocketAddr>,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        stride: u64,
        /// Each connection its own user `u<index>` (a token signed here with the bench's
        /// HS256 secret); HTTP streaming and SSE connections subscribed server-side, by
        /// the token's `channels` claim.
        #[arg(long)]
        personal: bool,
    },
}

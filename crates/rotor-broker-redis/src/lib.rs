//! rotor's Redis engine: the core's broker trait across nodes (publications, join/leave and
//! control messages over Redis pub/sub), presence, history and idempotent publish results on Redis (hashes, sorted
//! sets and streams, each change one Lua script so it is atomic), a node registry (heartbeats
//! in a hash), and node-addressed messages for routing emulation requests.
//!
//! Channels are spread over one or more Redis instances by consistent (jump) hashing of the
//! channel name, or over a Redis Cluster by hash slot (optionally with sharded pub/sub), or
//! live on one master found through Redis Sentinel; control messages and the registry live
//! on the first instance. This crate
//! must not know about HTTP, warp or SQL, and must not invent a cluster protocol: Redis is the
//! only thing nodes share.

mod broker;
mod history;
mod idempotency;
mod presence;
mod shard;

pub use broker::{RedisBroker, HEARTBEAT_INTERVAL, HEARTBEAT_MAX_AGE};
pub use history::RedisHistory;
pub use idempotency::RedisIdempotency;
pub use presence::RedisPresence;
pub use shard::{RedisOptions, SentinelOptions, Shards};

/// Errors of this crate. Redis being unreachable is temporary (error 100 to clients).
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error("redis: bad data: {0}")]
    Data(String),
    #[error("redis configuration: {0}")]
    Config(String),
}

impl From<RedisError> for rotor_core::CoreError {
    fn from(e: RedisError) -> rotor_core::CoreError {
        match e {
            RedisError::Data(m) | RedisError::Config(m) => rotor_core::CoreError::Internal(m),
            other => rotor_core::CoreError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;

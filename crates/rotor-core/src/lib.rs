//! rotor's session core: the client state machine every transport feeds, the hub of channels
//! and subscribers, namespaces and permissions, expiry and ping scheduling, and the storage
//! and broker traits.
//!
//! The core does no IO of its own: it knows nothing of warp, HTTP, sockets or SQL. Transports
//! implement [`session::Transport`] (frames in, messages out); storage and brokers are trait
//! objects implemented in other crates.

pub mod broker;
pub mod channels;
mod clock;
pub mod config;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod duration;
mod error;
pub mod events;
pub mod filter;
pub mod hub;
pub mod limits;
pub mod node;
mod order;
pub mod proxy;
pub mod revocation;
pub mod session;
pub mod storage;
pub mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use broker::NodeInfo;
pub use clock::Clock;
pub use error::CoreError;
pub use node::{Node, PublishOptions};

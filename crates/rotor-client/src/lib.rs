//! An async Rust client for rotor (and any server speaking the Centrifugo client protocol v2 in
//! its JSON form) over WebSocket, HTTP streaming and SSE with bidirectional emulation.
//!
//! It connects, subscribes with recovery (offset and epoch are tracked and sent again after a
//! reconnect), publishes, asks for presence and history, calls RPCs, answers server pings,
//! refreshes connection and subscription tokens in place before they expire, and reconnects
//! with exponential backoff and jitter. Expired credentials get exactly one automatic
//! re-authentication through the application's [`TokenProvider`]; a second expiry in a row is
//! surfaced as [`Error::AuthExpired`] and the client stops instead of looping.
//!
//! This crate is a client of the server: it is built on `rotor-protocol` and must never depend
//! on server internals (`rotor-core`, `rotor-server`), so it stays honest about the wire.
//!
//! ```no_run
//! use rotor_client::{Client, ClientConfig, Event, Transport};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), rotor_client::Error> {
//! let config = ClientConfig::new(Transport::WebSocket, "ws://127.0.0.1:8000/connection/websocket")
//!     .with_token("<jwt>");
//! let (client, mut events) = Client::new(config);
//! client.connect();
//! let chat = client.subscribe("chat:index", Default::default());
//! client.ready().await?;
//! chat.publish(serde_json::json!({"text": "hello"})).await?;
//! while let Some(event) = events.next().await {
//!     if let Event::Publication { channel, publication } = event {
//!         println!("{channel}: {}", publication.data.get());
//!     }
//! }
//! # Ok(()) }
//! ```

mod actor;
mod backoff;
mod client;
mod config;
mod error;
mod event;
mod token;
mod transport;

pub use client::{Client, Events, Subscription};
pub use config::{ClientConfig, SubscriptionOptions, Transport};
pub use error::Error;
pub use event::{ClientState, Event, SubscriptionState};
pub use rotor_protocol::{ClientInfo, HistoryResult, Publication, Raw, StreamPosition};
pub use token::{FnTokenProvider, TokenError, TokenProvider};

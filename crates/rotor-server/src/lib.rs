//! The rotor server: transports (thin adapters into the core's session), the server HTTP
//! API, health and metrics, configuration loading, and the `rotor` command line.
//!
//! Protocol logic belongs in `rotor-core`; this crate only moves bytes between HTTP/WebSocket
//! and the core, and must not decide protocol behaviour itself. Its modules, from the top:
//! `cli` runs `server`, which assembles the node (`config`, backends), serves `routes`
//! (`api`, `ws`, `stream`, `metrics`, the `admin` UI) through `listener`, and keeps
//! `background` tasks; all of them share `state`, `http` and `error`. `lifecycle` keeps the
//! last hour of token events for the admin UI, recorded by `metrics`.

mod admin;
mod api;
mod background;
pub mod cli;
pub mod config;
mod error;
mod http;
mod lifecycle;
mod listener;
mod metrics;
mod routes;
pub mod server;
mod socket;
mod state;
pub mod stream;
pub mod uni;
mod ws;
pub mod wsframe;

pub use config::Config;
pub use error::{report, ServerError};
pub use server::{RunningServer, Server};

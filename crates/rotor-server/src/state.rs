//! What every route handler shares: the node, the configuration, the metrics, and the
//! emulation sessions of this node (so that `POST /emulation` finds its session). Depends on
//! no other module of this crate but the configuration, metrics and lifecycle, so that every transport
//! and the API can use it without importing each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rotor_core::session::Inbound;
use rotor_core::Node;
use tokio::sync::mpsc;
use warp::http::StatusCode;

use crate::config::Config;
use crate::metrics::Metrics;

/// What every route handler gets. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub config: Arc<Config>,
    /// Emulation sessions on this node, for routing `/emulation` POSTs.
    pub sessions: Arc<Sessions>,
    /// Set when `prometheus.enabled`.
    pub metrics: Option<Arc<Metrics>>,
    /// The last hour of token events, set when `admin.enabled` (the admin UI's charts).
    pub timeline: Option<Arc<crate::lifecycle::Timeline>>,
    /// What the server API may hold of request bodies at once, in KiB permits
    /// (`http_api.max_body_bytes_in_flight`).
    pub api_budget: Arc<tokio::sync::Semaphore>,
}

/// The server API's body budget for `config`: one permit per KiB.
pub fn api_budget(config: &Config) -> Arc<tokio::sync::Semaphore> {
    let kib = config
        .http_api
        .max_body_bytes_in_flight
        .div_ceil(1024)
        .max(1);
    Arc::new(tokio::sync::Semaphore::new(
        kib.min(tokio::sync::Semaphore::MAX_PERMITS),
    ))
}

/// The client's address (see [`crate::listener::client_addr`]); `None` only where rotor did
/// not accept the connection itself (warp's test harness).
pub type Peer = Option<std::net::IpAddr>;

/// Largest server API request body (a `batch` of many commands fits).
pub const API_BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// Commands an emulation session may have waiting before `/emulation` POSTs are refused
/// with 503.
pub const COMMAND_BACKLOG: usize = 256;

/// The emulation sessions of this node: where the commands POSTed for each go, by session id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Inbound>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; returns where its commands arrive, with `first` already in it.
    pub fn open(&self, id: &str, first: Inbound) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(COMMAND_BACKLOG);
        tx.try_send(first).expect("a new channel has room");
        self.lock().insert(id.to_string(), tx);
        rx
    }

    /// Forgets a session that ended.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Hands `data` (one frame of commands: text for JSON, binary for Protobuf) to session
    /// `id`: 204, 404 for a session this node does not have (the client reconnects), 503 when
    /// its backlog is full.
    pub fn deliver(&self, id: &str, data: Inbound) -> StatusCode {
        let Some(tx) = self.lock().get(id).cloned() else {
            tracing::debug!(session = %id, "emulation request for an unknown session");
            return StatusCode::NOT_FOUND;
        };
        match tx.try_send(data) {
            Ok(()) => StatusCode::NO_CONTENT,
            Err(mpsc::error::TrySendError::Closed(_)) => StatusCode::NOT_FOUND,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(session = %id, "emulation session has {COMMAND_BACKLOG} commands waiting; refusing more");
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

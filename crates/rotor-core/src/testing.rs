//! Test machinery for the session core: an in-process transport (frames in through one
//! channel, what the session wrote out through another), so sessions run without sockets
//! (thousands of them, on tokio's paused clock), and a storage that is down. Behind the
//! `testing` feature; never part of a server build.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rotor_protocol::{ClientInfo, Disconnect, Publication, StreamPosition};
use tokio::sync::mpsc;

use crate::session::{
    ConnectFrom, Inbound, SessionParams, Transport, TransportInfo, TransportKind,
};
use crate::storage::{
    BoxFuture, Claim, HistoryFilter, HistoryOptions, HistoryPage, HistoryStore, IdempotencyStore,
    PresenceStore, RevocationFilter, RevocationStore, RevokedToken, Storage, UserInvalidation,
};
use crate::{CoreError, Node};

/// What the session sent.
#[derive(Debug)]
pub enum Out {
    /// One write: the messages of one turn.
    Messages(Vec<String>),
    /// The connection was closed with this code, at this time.
    Closed(Disconnect, tokio::time::Instant),
}

/// Frames in from one channel, what the session sent out to another.
pub struct MemTransport {
    pub frames: mpsc::UnboundedReceiver<String>,
    pub out: mpsc::UnboundedSender<Out>,
}

impl Transport for MemTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        self.frames
            .poll_recv(cx)
            .map(|f| f.map(Inbound::Frame).unwrap_or(Inbound::Closed))
    }

    async fn write(&mut self, messages: Vec<bytes::Bytes>) -> std::io::Result<()> {
        let messages = messages
            .iter()
            .map(|m| String::from_utf8(m.to_vec()).expect("the session writes UTF-8"))
            .collect();
        let _ = self.out.send(Out::Messages(messages));
        Ok(())
    }

    async fn close(&mut self, d: &Disconnect) {
        let _ = self
            .out
            .send(Out::Closed(d.clone(), tokio::time::Instant::now()));
    }
}

/// The parameters of a bidirectional in-memory connection (a WebSocket, as the session sees
/// it).
pub fn params() -> SessionParams {
    SessionParams {
        transport: TransportInfo {
            name: "memory",
            kind: TransportKind::WebSocket,
        },
        protocol: rotor_protocol::Protocol::Json,
        session_id: None,
        connect: ConnectFrom::Commands,
        remote: None,
        headers: None,
    }
}

/// Starts a session on `node` with `params`; returns the frame sender and the output
/// receiver. Dropping the sender is the client going away.
pub fn session_with(
    node: &Node,
    params: SessionParams,
) -> (mpsc::UnboundedSender<String>, mpsc::UnboundedReceiver<Out>) {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let transport = MemTransport {
        frames: in_rx,
        out: out_tx,
    };
    tokio::spawn(crate::session::run(node.clone(), params, transport));
    (in_tx, out_rx)
}

/// Starts a bidirectional session on `node` (see [`session_with`]).
pub fn session(node: &Node) -> (mpsc::UnboundedSender<String>, mpsc::UnboundedReceiver<Out>) {
    session_with(node, params())
}

/// Storage whose every operation fails as unavailable (error 100): for tests that need none,
/// and for what a session does when its storage is down.
pub fn storage_down() -> Storage {
    let down = Arc::new(Down);
    Storage {
        history: down.clone(),
        presence: down.clone(),
        revocations: down.clone(),
        idempotency: down,
    }
}

struct Down;

fn down<T>() -> Result<T, CoreError> {
    Err(CoreError::Unavailable("storage is down (test)".into()))
}

#[async_trait::async_trait]
impl HistoryStore for Down {
    fn add(
        &self,
        _channel: &str,
        _publication: Publication,
        _opts: &HistoryOptions,
    ) -> BoxFuture<Result<StreamPosition, CoreError>> {
        Box::pin(async { down() })
    }
    async fn read(
        &self,
        _channel: &str,
        _filter: &HistoryFilter,
        _opts: &HistoryOptions,
    ) -> Result<HistoryPage, CoreError> {
        down()
    }
    async fn remove(&self, _channel: &str) -> Result<(), CoreError> {
        down()
    }
}

#[async_trait::async_trait]
impl PresenceStore for Down {
    async fn add(
        &self,
        _channel: &str,
        _info: &ClientInfo,
        _ttl: Duration,
    ) -> Result<(), CoreError> {
        down()
    }
    async fn remove(&self, _channel: &str, _client: &str) -> Result<(), CoreError> {
        down()
    }
    async fn get(&self, _channel: &str) -> Result<BTreeMap<String, ClientInfo>, CoreError> {
        down()
    }
    async fn stats(&self, _channel: &str) -> Result<(u32, u32), CoreError> {
        down()
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for Down {
    async fn claim(
        &self,
        _channel: &str,
        _key: &str,
        _pending: Duration,
    ) -> Result<Claim, CoreError> {
        down()
    }
    async fn settle(
        &self,
        _channel: &str,
        _key: &str,
        _position: &StreamPosition,
        _ttl: Duration,
    ) -> Result<(), CoreError> {
        down()
    }
    async fn release(&self, _channel: &str, _key: &str) -> Result<(), CoreError> {
        down()
    }
}

#[async_trait::async_trait]
impl RevocationStore for Down {
    async fn revoke(&self, _entry: RevokedToken) -> Result<(), CoreError> {
        down()
    }
    async fn active(&self, _now: u64) -> Result<Vec<RevokedToken>, CoreError> {
        down()
    }
    async fn list(&self, _filter: &RevocationFilter) -> Result<Vec<RevokedToken>, CoreError> {
        down()
    }
    async fn invalidate_user(&self, _entry: UserInvalidation) -> Result<(), CoreError> {
        down()
    }
    async fn active_invalidations(&self, _now: u64) -> Result<Vec<UserInvalidation>, CoreError> {
        down()
    }
    async fn purge_expired(&self, _now: u64) -> Result<u64, CoreError> {
        down()
    }
}

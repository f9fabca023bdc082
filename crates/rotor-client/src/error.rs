//! The client's one error type: what a call or the event stream can report, and whether the
//! client goes on (reconnects) after it.

use std::time::Duration;

/// Everything a client call or the event stream can report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Credentials expired twice in a row: after the one automatic re-authentication through
    /// the token provider, the server still answered "token expired". The client (or, with
    /// `channel` set, the subscription) stopped; the application must act.
    #[error("authentication expired{}", channel.as_ref().map(|c| format!(" for channel {c}")).unwrap_or_default())]
    AuthExpired { channel: Option<String> },
    /// The server closed the connection with a terminal code (3500-3999, 4500-4999) or refused
    /// to connect with a permanent error: the client does not reconnect.
    #[error("disconnected by the server: {code} {reason}")]
    Disconnected { code: u32, reason: String },
    /// The server answered a command with an error.
    #[error("server error {code}: {message}")]
    Reply {
        code: u32,
        message: String,
        temporary: bool,
    },
    /// No reply within the configured timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection was lost before the reply came; the command may or may not have run.
    #[error("connection lost before the reply")]
    ConnectionLost,
    /// The client was closed with [`crate::Client::disconnect`] (or dropped).
    #[error("client closed")]
    Closed,
    /// The token provider failed.
    #[error("token provider: {0}")]
    Token(String),
    /// The transport could not be opened or failed.
    #[error("transport: {0}")]
    Transport(String),
    /// Bytes from the server that are not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The operation needs a subscribed subscription.
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
}

impl Error {
    pub(crate) fn from_reply(e: rotor_protocol::Error) -> Error {
        Error::Reply {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }
    }

    /// The protocol error code, for server errors.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Reply { code, .. } | Error::Disconnected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

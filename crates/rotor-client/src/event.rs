//! What the client reports: its state, its subscriptions' states, and the events of the
//! stream (connected, publications, joins, errors, ...).

use rotor_protocol::{ClientInfo, Publication, Raw};

use crate::error::Error;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Not connected and not trying (before [`crate::Client::connect`], or stopped).
    Disconnected,
    Connecting,
    Connected,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    Unsubscribed,
    Subscribing,
    Subscribed,
}

/// What happens to the client, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// (Re)connecting; `code` and `reason` say why (0 "connect called", or what closed the
    /// previous connection).
    Connecting {
        code: u32,
        reason: String,
    },
    /// Connected (again): a new client id on every connect.
    Connected {
        client: String,
        data: Option<Raw>,
    },
    /// Stopped: no more reconnects until [`crate::Client::connect`] is called.
    Disconnected {
        code: u32,
        reason: String,
    },
    /// The connection token was refreshed in place; `ttl` is the new lifetime in seconds.
    Refreshed {
        ttl: Option<u32>,
    },
    /// Something went wrong; the client may be recovering on its own (see the error).
    Error(Error),
    Subscribing {
        channel: String,
        code: u32,
        reason: String,
    },
    Subscribed {
        channel: String,
        /// The server keeps a stream for this channel and the client will recover from it.
        recoverable: bool,
        /// The client asked to recover and the server had everything missed.
        recovered: bool,
        was_recovering: bool,
        epoch: String,
        offset: u64,
        data: Option<Raw>,
    },
    Unsubscribed {
        channel: String,
        code: u32,
        reason: String,
    },
    /// A subscription token was refreshed in place.
    SubscriptionRefreshed {
        channel: String,
        ttl: Option<u32>,
    },
    SubscriptionError {
        channel: String,
        error: Error,
    },
    /// A publication in a channel (client-side or server-side subscription).
    Publication {
        channel: String,
        publication: Publication,
    },
    Join {
        channel: String,
        info: ClientInfo,
    },
    Leave {
        channel: String,
        info: ClientInfo,
    },
    /// An asynchronous message sent to this client.
    Message {
        data: Raw,
    },
}

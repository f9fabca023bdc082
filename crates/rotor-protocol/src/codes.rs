//! Error codes (replies), unsubscribe codes and disconnect codes, with the reconnect rules the
//! official SDKs apply to them.

use std::borrow::Cow;

use crate::types::Error;

/// Error codes sent in `{"error":{…}}` replies (client protocol and server API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Internal = 100,
    Unauthorized = 101,
    UnknownChannel = 102,
    PermissionDenied = 103,
    MethodNotFound = 104,
    AlreadySubscribed = 105,
    LimitExceeded = 106,
    BadRequest = 107,
    NotAvailable = 108,
    TokenExpired = 109,
    Expired = 110,
    TooManyRequests = 111,
    UnrecoverablePosition = 112,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownChannel,
        ErrorCode::PermissionDenied,
        ErrorCode::MethodNotFound,
        ErrorCode::AlreadySubscribed,
        ErrorCode::LimitExceeded,
        ErrorCode::BadRequest,
        ErrorCode::NotAvailable,
        ErrorCode::TokenExpired,
        ErrorCode::Expired,
        ErrorCode::TooManyRequests,
        ErrorCode::UnrecoverablePosition,
    ];

    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The standard message text.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal server error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::Expired => "expired",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Temporary errors are retried by the SDKs.
    pub fn temporary(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::TooManyRequests)
    }

    /// The wire form with the standard message.
    pub fn to_error(self) -> Error {
        Error {
            code: self.code(),
            message: self.message().to_string(),
            temporary: self.temporary(),
        }
    }
}

/// Unsubscribe push codes. Below 2500 the client stays unsubscribed; from 2500 it resubscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeCode {
    Server = 2000,
    InsufficientState = 2500,
    Expired = 2501,
}

impl UnsubscribeCode {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn reason(self) -> &'static str {
        match self {
            UnsubscribeCode::Server => "server unsubscribe",
            UnsubscribeCode::InsufficientState => "insufficient state",
            UnsubscribeCode::Expired => "subscription expired",
        }
    }

    /// Whether the SDK resubscribes on its own.
    pub fn resubscribe(code: u32) -> bool {
        code >= 2500
    }

    /// The unsubscribe push that carries this code and its reason.
    pub fn push(self) -> crate::types::UnsubscribePush {
        crate::types::UnsubscribePush {
            code: self.code(),
            reason: self.reason().into(),
        }
    }
}

/// A disconnect: the code and reason the client sees (close frame, disconnect push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

macro_rules! disconnects {
    ($($name:ident = $code:literal, $reason:literal;)*) => {
        impl Disconnect {
            $(pub const $name: Disconnect = Disconnect { code: $code, reason: Cow::Borrowed($reason) };)*

            /// Every code the server defines.
            pub const ALL: &'static [Disconnect] = &[$(Disconnect::$name,)*];
        }
    };
}

disconnects! {
    CONNECTION_CLOSED = 3000, "connection closed";
    SHUTDOWN = 3001, "shutdown";
    SERVER_ERROR = 3004, "internal server error";
    EXPIRED = 3005, "connection expired";
    SUBSCRIPTION_EXPIRED = 3006, "subscription expired";
    SLOW = 3008, "slow";
    WRITE_ERROR = 3009, "write error";
    INSUFFICIENT_STATE = 3010, "insufficient state";
    FORCE_RECONNECT = 3011, "force reconnect";
    NO_PONG = 3012, "no pong";
    TOO_MANY_REQUESTS = 3013, "too many requests";
    STATE_INVALIDATED = 3014, "state invalidated";
    INVALID_TOKEN = 3500, "invalid token";
    BAD_REQUEST = 3501, "bad request";
    STALE = 3502, "stale";
    FORCE_NO_RECONNECT = 3503, "force disconnect";
    CONNECTION_LIMIT = 3504, "connection limit";
    CHANNEL_LIMIT = 3505, "channel limit";
    INAPPROPRIATE_PROTOCOL = 3506, "inappropriate protocol";
    PERMISSION_DENIED = 3507, "permission denied";
    NOT_AVAILABLE = 3508, "not available";
    TOO_MANY_ERRORS = 3509, "too many errors";
}

impl Disconnect {
    /// WebSocket's own close code for a message over the size limit (RFC 6455: 1009), sent
    /// by the transport before the protocol sees the message. Not one of Centrifugo's codes,
    /// so not in [`Disconnect::ALL`] (centrifuge-js stops on it rather than reconnect).
    pub const MESSAGE_SIZE_LIMIT: Disconnect = Disconnect {
        code: 1009,
        reason: Cow::Borrowed("message size limit exceeded"),
    };

    /// WebSocket's close code for a text frame that is not UTF-8 (RFC 6455: 1007), sent by
    /// the transport; like 1009 not one of Centrifugo's codes.
    pub const INVALID_PAYLOAD: Disconnect = Disconnect {
        code: 1007,
        reason: Cow::Borrowed("invalid frame payload data"),
    };

    /// A disconnect with a custom code and reason (application codes are 4000-4999).
    pub fn custom(code: u16, reason: impl Into<Cow<'static, str>>) -> Disconnect {
        Disconnect {
            code,
            reason: reason.into(),
        }
    }

    /// The same code with another reason text.
    pub fn with_reason(&self, reason: impl Into<Cow<'static, str>>) -> Disconnect {
        Disconnect {
            code: self.code,
            reason: reason.into(),
        }
    }

    /// Whether an SDK reconnects after this code: 3000-3499, 4000-4499 and 5000+ reconnect;
    /// 3500-3999 and 4500-4999 are terminal.
    pub fn reconnect(&self) -> bool {
        Disconnect::reconnects(u32::from(self.code))
    }

    /// [`Disconnect::reconnect`] for a bare close code (what a client reads off the wire).
    pub fn reconnects(code: u32) -> bool {
        !matches!(code, 3500..=3999 | 4500..=4999)
    }

    /// The reason as it fits a WebSocket close frame (at most 123 bytes).
    pub fn close_reason(&self) -> &str {
        let r = self.reason.as_ref();
        if r.len() <= 123 {
            return r;
        }
        let mut end = 123;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        &r[..end]
    }
}

/// What a command can end in: an error reply to that command, or the end of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    Reply(Error),
    Disconnect(Disconnect),
}

impl From<ErrorCode> for ProtocolError {
    fn from(code: ErrorCode) -> ProtocolError {
        ProtocolError::Reply(code.to_error())
    }
}

impl From<Disconnect> for ProtocolError {
    fn from(d: Disconnect) -> ProtocolError {
        ProtocolError::Disconnect(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_rules_follow_the_code_ranges() {
        assert!(Disconnect::EXPIRED.reconnect());
        assert!(Disconnect::SHUTDOWN.reconnect());
        assert!(Disconnect::FORCE_RECONNECT.reconnect());
        assert!(!Disconnect::INVALID_TOKEN.reconnect());
        assert!(!Disconnect::BAD_REQUEST.reconnect());
        assert!(Disconnect::custom(4100, "app").reconnect());
        assert!(!Disconnect::custom(4600, "app").reconnect());
        for d in Disconnect::ALL {
            assert_eq!(d.reconnect(), d.code < 3500, "{d:?}");
            assert_eq!(Disconnect::reconnects(u32::from(d.code)), d.reconnect());
        }
        assert!(
            Disconnect::reconnects(0),
            "a connection lost without a code reconnects"
        );
    }

    #[test]
    fn error_codes_round_trip_and_temporary_flags() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
        }
        assert!(ErrorCode::Internal.to_error().temporary);
        assert!(!ErrorCode::TokenExpired.to_error().temporary);
        assert_eq!(ErrorCode::TokenExpired.code(), 109);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let d = Disconnect::custom(4000, "é".repeat(100));
        assert!(d.close_reason().len() <= 123);
        assert!(d.close_reason().chars().all(|c| c == 'é'));
    }
}

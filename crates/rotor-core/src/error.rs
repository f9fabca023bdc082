//! The core's one error type and the one mapping from it to what clients see: an error reply
//! (code and message), or a disconnect. Nothing else in rotor turns an error into a code.

use rotor_auth::AuthError;
use rotor_protocol::{Disconnect, Error, ErrorCode, ProtocolError};

/// Everything that can go wrong in the core. [`CoreError::to_protocol`] is the one place
/// where errors become the codes clients see.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("internal error: {0}")]
    Internal(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("unknown channel namespace")]
    UnknownChannel,
    #[error("permission denied")]
    PermissionDenied,
    #[error("method not found")]
    MethodNotFound,
    #[error("already subscribed")]
    AlreadySubscribed,
    #[error("limit exceeded")]
    LimitExceeded,
    #[error("too many requests")]
    TooManyRequests,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not available")]
    NotAvailable,
    #[error("token expired")]
    TokenExpired,
    #[error("expired")]
    Expired,
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// An error the application backend answered a proxied command with: its own code and
    /// message go to the client as they are.
    #[error("backend error {}: {}", .0.code, .0.message)]
    Backend(Error),
    /// The connection must end with this code.
    #[error("disconnect {}: {}", .0.code, .0.reason)]
    Disconnect(Disconnect),
}

impl CoreError {
    /// The error code of this error, if it is answered with an error reply.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            CoreError::Internal(_) | CoreError::Unavailable(_) => ErrorCode::Internal,
            CoreError::UnknownChannel => ErrorCode::UnknownChannel,
            CoreError::PermissionDenied => ErrorCode::PermissionDenied,
            CoreError::MethodNotFound => ErrorCode::MethodNotFound,
            CoreError::AlreadySubscribed => ErrorCode::AlreadySubscribed,
            CoreError::LimitExceeded => ErrorCode::LimitExceeded,
            CoreError::TooManyRequests => ErrorCode::TooManyRequests,
            CoreError::BadRequest(_) => ErrorCode::BadRequest,
            CoreError::NotAvailable => ErrorCode::NotAvailable,
            CoreError::TokenExpired => ErrorCode::TokenExpired,
            CoreError::Expired => ErrorCode::Expired,
            CoreError::UnrecoverablePosition => ErrorCode::UnrecoverablePosition,
            CoreError::Backend(_) | CoreError::Disconnect(_) => return None,
        })
    }

    /// The numeric code of the error reply (0 for a disconnect).
    pub fn reply_code(&self) -> u32 {
        match self {
            CoreError::Backend(e) => e.code,
            other => other.code().map(|c| c.code()).unwrap_or(0),
        }
    }

    /// The error reply or the disconnect the client gets.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            CoreError::Disconnect(d) => ProtocolError::Disconnect(d.clone()),
            other => ProtocolError::Reply(other.to_error()),
        }
    }

    /// The error object of a client reply, with the code's standard message. A disconnect
    /// maps to 100.
    pub fn to_error(&self) -> Error {
        if let CoreError::Backend(e) = self {
            return e.clone();
        }
        match self.code() {
            Some(code) => code.to_error(),
            None => ErrorCode::Internal.to_error(),
        }
    }

    /// The error object of a server API answer: as [`CoreError::to_error`], but a bad request
    /// says what is wrong with it (the caller is the application's backend, which can act
    /// on the detail).
    pub fn to_api_error(&self) -> Error {
        let mut err = self.to_error();
        if let CoreError::BadRequest(detail) = self {
            err.message = format!("{}: {detail}", err.message);
        }
        err
    }

    /// The disconnect for a connection that has no reply to carry this error (the connect
    /// of a unidirectional transport): expiry is 3005, a rate limit 3013, a refusal 3507,
    /// anything else 3004.
    pub fn to_disconnect(&self) -> Disconnect {
        match self {
            CoreError::Disconnect(d) => d.clone(),
            CoreError::TokenExpired | CoreError::Expired => Disconnect::EXPIRED,
            CoreError::TooManyRequests => Disconnect::TOO_MANY_REQUESTS,
            CoreError::PermissionDenied => Disconnect::PERMISSION_DENIED,
            _ => Disconnect::SERVER_ERROR,
        }
    }

    /// A connection token problem at connect: expired is error 109 (the SDK fetches a new
    /// token), keys that cannot be fetched are a temporary error 100 (the SDK retries),
    /// anything else ends the connection with 3500.
    pub fn from_connect_token(err: AuthError) -> CoreError {
        match err {
            AuthError::Expired => CoreError::TokenExpired,
            AuthError::Unavailable(e) => CoreError::Unavailable(e),
            AuthError::Invalid(_) | AuthError::Config(_) => {
                CoreError::Disconnect(Disconnect::INVALID_TOKEN)
            }
        }
    }

    /// A subscription token problem at subscribe: expired is 109, invalid is 103.
    pub fn from_subscribe_token(err: AuthError) -> CoreError {
        match err {
            AuthError::Expired => CoreError::TokenExpired,
            AuthError::Unavailable(e) => CoreError::Unavailable(e),
            AuthError::Invalid(_) | AuthError::Config(_) => CoreError::PermissionDenied,
        }
    }
}

impl From<Disconnect> for CoreError {
    fn from(d: Disconnect) -> CoreError {
        CoreError::Disconnect(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_disconnects_come_from_one_mapping() {
        assert_eq!(
            CoreError::UnknownChannel.to_protocol(),
            ProtocolError::Reply(ErrorCode::UnknownChannel.to_error())
        );
        let d = Disconnect::INVALID_TOKEN.with_reason("token revoked");
        assert_eq!(
            CoreError::from(d.clone()).to_protocol(),
            ProtocolError::Disconnect(d.clone())
        );
        assert_eq!(CoreError::from(d.clone()).to_disconnect(), d);
        assert_eq!(CoreError::TokenExpired.to_disconnect(), Disconnect::EXPIRED);
        assert_eq!(
            CoreError::Unavailable("db".into()).to_disconnect(),
            Disconnect::SERVER_ERROR
        );
        assert!(CoreError::Unavailable("db".into()).to_error().temporary);
    }

    #[test]
    fn only_the_api_hears_what_was_bad_about_a_request() {
        let e = CoreError::BadRequest("channel required".into());
        assert_eq!(e.to_error().message, "bad request");
        assert_eq!(e.to_api_error().message, "bad request: channel required");
        assert_eq!(e.to_api_error().code, 107);
        assert_eq!(
            CoreError::NotAvailable.to_api_error().message,
            "not available"
        );
    }
}

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
            CoreError::Disconnect(_) => return None,
        })
    }

    /// The error reply or the disconnect the client gets.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            CoreError::Disconnect(d) => ProtocolError::Disconnect(d.clone()),
            other => ProtocolError::Reply(other.to_error()),
        }
    }

    /// The error object (for replies and the server API). A disconnect maps to 100.
    pub fn to_error(&self) -> Error {
        match self.code() {
            Some(code) => code.to_error(),
            None => ErrorCode::Internal.to_error(),
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

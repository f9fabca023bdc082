//! JWT verification: turns connection and subscription tokens into typed credentials.
//!
//! Supports HS256/384/512 (with an optional previous secret for rotation), RS256/384/512 and
//! ES256/384/512 with keys given as PEM text or PEM files, or RSA/EC keys from a JWKS endpoint
//! (cached, looked up by `kid`), plus audience and issuer checks. Time is
//! passed in by the caller so expiry logic is testable. This crate must not know about
//! sessions, channels or transports, and must not decide protocol codes: it reports *what*
//! is wrong with a token (expired or invalid), the core decides what the client sees.

mod claims;
mod es512;
mod jwks;
mod verifier;

pub use claims::{BoolValue, ChannelOverride, ConnectToken, SubscribeToken, SubscriptionClaim};
pub use es512::sign_es512;
pub use verifier::{sign_hmac, TokenConfig, TokenVerifier};

/// The P-521 implementation behind ES512 (RustCrypto's `p521`), for callers that make keys.
pub use p521;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token is well-formed and correctly signed, but its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token cannot be trusted (bad signature, malformed, wrong audience, ...).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The keys cannot be obtained right now (JWKS endpoint down): a temporary condition.
    #[error("token keys unavailable: {0}")]
    Unavailable(String),
    /// The key configuration itself is unusable.
    #[error("token key configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod tests;

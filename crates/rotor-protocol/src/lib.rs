//! Wire types of the Centrifugo client protocol v2 in its JSON form, the codec for
//! newline-joined frames, and the error and disconnect codes with their reconnect semantics.
//!
//! This crate describes bytes on the wire and nothing else: it must not depend on tokio, do
//! any IO, or know about sessions, channels or storage. Both the server and Rust clients are
//! built on it.

mod codec;
mod codes;
mod raw;
mod types;

pub use codec::{decode_commands, decode_replies, encode_frame, DecodeError};
pub use codes::{Disconnect, ErrorCode, ProtocolError, UnsubscribeCode};
pub use raw::Raw;
pub use types::*;

#[cfg(test)]
mod tests;

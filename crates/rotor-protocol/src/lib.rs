//! Wire types of the Centrifugo client protocol v2, their JSON and Protobuf forms behind one
//! codec seam ([`Protocol`]), and the error and disconnect codes with their reconnect
//! semantics.
//!
//! This crate describes bytes on the wire and nothing else: it must not depend on tokio, do
//! any IO, or know about sessions, channels or storage. Both the server and Rust clients are
//! built on it.

mod codec;
mod codes;
pub mod fossil;
pub mod proto;
mod raw;
mod types;

pub use codec::{decode_commands, decode_replies, encode_frame, DecodeError, Protocol};
pub use codes::{Disconnect, ErrorCode, ProtocolError, UnsubscribeCode};
pub use proto::{EmulationRequest, ProtoError};
pub use raw::Raw;
pub use types::*;

#[cfg(test)]
mod tests;

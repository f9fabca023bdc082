//! The one codec seam: [`Protocol`] encodes messages and frames them, for JSON and Protobuf.
//!
//! - JSON frames: messages joined by `\n`. Blank lines are skipped on input; output never
//!   contains a blank line or a trailing newline (centrifuge-python splits on `\n` and parses
//!   every part). A stream (HTTP streaming) ends every message with `\n`.
//! - Protobuf frames and streams: every message prefixed with its length as a varint.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{self, ProtoError};
use crate::types::{Command, Reply};

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("message {index} of the frame is not a valid command: {source}")]
    Json {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("frame is not valid Protobuf: {0}")]
    Proto(#[from] ProtoError),
}

/// The client protocol a connection speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Json,
    Protobuf,
}

impl Protocol {
    /// `json` or `protobuf` (logs and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Protobuf => "protobuf",
        }
    }

    /// One reply or push, unframed.
    pub fn encode_reply(self, reply: &Reply) -> Vec<u8> {
        match self {
            Protocol::Json => to_json(reply),
            Protocol::Protobuf => proto::encode(reply),
        }
    }

    /// One command, unframed (clients).
    pub fn encode_command(self, command: &Command) -> Vec<u8> {
        match self {
            Protocol::Json => to_json(command),
            Protocol::Protobuf => proto::encode(command),
        }
    }

    /// The commands of one client frame, in order.
    pub fn decode_commands(self, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
        match self {
            Protocol::Json => {
                decode_lines(std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?)
            }
            Protocol::Protobuf => Ok(proto::decode_delimited(frame)?),
        }
    }

    /// The replies and pushes of one server frame (or a stream's bytes), in order.
    pub fn decode_replies(self, frame: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        match self {
            Protocol::Json => {
                decode_lines(std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?)
            }
            Protocol::Protobuf => Ok(proto::decode_delimited(frame)?),
        }
    }

    /// The length of `messages` as one frame.
    pub fn frame_len<M: AsRef<[u8]>>(self, messages: &[M]) -> usize {
        match self {
            Protocol::Json => messages
                .iter()
                .map(|m| m.as_ref().len() + 1)
                .sum::<usize>()
                .saturating_sub(1),
            Protocol::Protobuf => messages.iter().map(|m| delimited_len(m.as_ref())).sum(),
        }
    }

    /// Appends `messages` as one frame (several replies in one WebSocket message, as the SDKs
    /// read them).
    pub fn frame_into<M: AsRef<[u8]>>(self, buf: &mut Vec<u8>, messages: &[M]) {
        match self {
            Protocol::Json => {
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        buf.push(b'\n');
                    }
                    buf.extend_from_slice(m.as_ref());
                }
            }
            Protocol::Protobuf => {
                for m in messages {
                    delimit_into(buf, m.as_ref());
                }
            }
        }
    }

    /// Appends `messages` as they go on a stream (HTTP streaming): JSON messages each ended
    /// with `\n`, Protobuf ones length-delimited.
    pub fn stream_into<M: AsRef<[u8]>>(self, buf: &mut Vec<u8>, messages: &[M]) {
        match self {
            Protocol::Json => {
                for m in messages {
                    buf.extend_from_slice(m.as_ref());
                    buf.push(b'\n');
                }
            }
            Protocol::Protobuf => self.frame_into(buf, messages),
        }
    }
}

fn delimited_len(m: &[u8]) -> usize {
    proto::varint_len(m.len() as u64) + m.len()
}

fn delimit_into(buf: &mut Vec<u8>, m: &[u8]) {
    proto::put_varint(buf, m.len() as u64);
    buf.extend_from_slice(m);
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("protocol types always serialize")
}

fn decode_lines<T: DeserializeOwned>(frame: &str) -> Result<Vec<T>, DecodeError> {
    frame
        .split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|source| DecodeError::Json { index, source })
        })
        .collect()
}

/// Decodes the commands of one JSON client frame, in order.
pub fn decode_commands(frame: &str) -> Result<Vec<Command>, DecodeError> {
    decode_lines(frame)
}

/// Decodes the replies and pushes of one JSON server frame, in order.
pub fn decode_replies(frame: &str) -> Result<Vec<Reply>, DecodeError> {
    decode_lines(frame)
}

/// Encodes messages into one JSON frame: JSON texts joined by `\n`, no trailing newline.
pub fn encode_frame<T: Serialize>(messages: &[T]) -> String {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&serde_json::to_string(m).expect("protocol types always serialize"));
    }
    out
}

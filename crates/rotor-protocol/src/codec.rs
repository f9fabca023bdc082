//! Frames: one or more JSON messages joined by `\n`. Blank lines are skipped on input; output
//! never contains a blank line or a trailing newline (centrifuge-python splits on `\n` and
//! parses every part).

use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// Decodes the commands of one client frame, in order.
pub fn decode_commands(frame: &str) -> Result<Vec<Command>, DecodeError> {
    decode_lines(frame)
}

/// Decodes the replies and pushes of one server frame, in order.
pub fn decode_replies(frame: &str) -> Result<Vec<Reply>, DecodeError> {
    decode_lines(frame)
}

/// Encodes messages into one frame: JSON texts joined by `\n`, no trailing newline.
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

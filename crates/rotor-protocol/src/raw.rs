//! [`Raw`]: a payload carried verbatim (publication data, info, RPC payloads), shared. It is
//! JSON text or, from Protobuf clients and `b64` fields, arbitrary bytes.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A payload carried verbatim (publication data, client info, RPC payloads).
///
/// It is cheap to clone (shared) and keeps the bytes the client sent. Two kinds:
///
/// - **JSON**: a JSON value, written as-is into JSON frames and as its UTF-8 text into
///   Protobuf `bytes` fields. It never contains a raw line break, because `\n` separates
///   messages in a JSON frame: line breaks outside strings are insignificant whitespace and
///   are stripped on construction (inside JSON strings they are always escaped).
/// - **Binary**: bytes that are not JSON (from a Protobuf client, or `b64data`/`b64info`).
///   Protobuf clients get them unchanged. A JSON frame cannot carry them as they are, so JSON
///   clients get them as a JSON string holding their standard base64 (Centrifugo writes
///   them raw, which leaves JSON clients a frame they cannot parse); empty binary is `null`.
#[derive(Clone)]
pub struct Raw(Repr);

#[derive(Clone)]
enum Repr {
    Json(Arc<RawValue>),
    Binary(Arc<[u8]>),
}

impl Default for Raw {
    /// Empty binary: what an absent Protobuf `bytes` field holds.
    fn default() -> Raw {
        Raw(Repr::Binary(Arc::from(&[][..])))
    }
}

impl Raw {
    /// Parses `json` as one JSON value.
    pub fn from_json(json: &str) -> Result<Raw, serde_json::Error> {
        let cleaned;
        let text = if json.contains(['\n', '\r']) {
            cleaned = json.replace(['\n', '\r'], "");
            cleaned.as_str()
        } else {
            json
        };
        let boxed: Box<RawValue> = serde_json::from_str(text)?;
        Ok(Raw(Repr::Json(Arc::from(boxed))))
    }

    /// Encodes any serializable value.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Raw {
        let text = serde_json::to_string(value).expect("serializing to a string cannot fail");
        Raw::from_json(&text).expect("serde_json output is valid JSON")
    }

    /// Bytes from a Protobuf field or a decoded `b64` field: JSON when they are one JSON
    /// value (so JSON clients get it as JSON, as with Centrifugo), binary otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Raw {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(raw) = Raw::from_json(text) {
                return raw;
            }
        }
        Raw::binary(bytes)
    }

    /// Bytes kept as binary whatever they hold.
    pub fn binary(bytes: &[u8]) -> Raw {
        Raw(Repr::Binary(Arc::from(bytes)))
    }

    /// Decodes standard base64 (with or without padding) into a payload (see
    /// [`from_bytes`](Self::from_bytes)).
    pub fn from_base64(text: &str) -> Result<Raw, base64::DecodeError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))?;
        Ok(Raw::from_bytes(&bytes))
    }

    /// True for a JSON payload.
    pub fn is_json(&self) -> bool {
        matches!(self.0, Repr::Json(_))
    }

    /// The payload's bytes: the JSON text, or the binary bytes (what Protobuf clients get).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Json(v) => v.get().as_bytes(),
            Repr::Binary(b) => b,
        }
    }

    /// The JSON text of a JSON payload; `None` for binary.
    pub fn json(&self) -> Option<&str> {
        match &self.0 {
            Repr::Json(v) => Some(v.get()),
            Repr::Binary(_) => None,
        }
    }

    /// What JSON clients get: the JSON text, or for binary a JSON string of its base64
    /// (`null` when empty).
    pub fn get(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            Repr::Json(v) => std::borrow::Cow::Borrowed(v.get()),
            Repr::Binary(b) if b.is_empty() => std::borrow::Cow::Borrowed("null"),
            Repr::Binary(b) => std::borrow::Cow::Owned(format!("\"{}\"", base64_of(b))),
        }
    }

    /// The standard base64 of the payload's bytes.
    pub fn to_base64(&self) -> String {
        base64_of(self.as_bytes())
    }

    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty payload (only empty binary: JSON text is never empty).
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// Decodes a JSON payload into a typed value (binary payloads are an error).
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        match &self.0 {
            Repr::Json(v) => serde_json::from_str(v.get()),
            Repr::Binary(_) => Err(serde_json::Error::custom("the payload is binary, not JSON")),
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        self.is_json() == other.is_json() && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Raw {}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Json(v) => f.write_str(v.get()),
            Repr::Binary(b) => write!(f, "b64:{}", base64_of(b)),
        }
    }
}

impl Serialize for Raw {
    /// The JSON wire form (see the type's documentation for binary).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Json(v) => v.serialize(serializer),
            Repr::Binary(b) if b.is_empty() => serializer.serialize_unit(),
            Repr::Binary(b) => serializer.serialize_str(&base64_of(b)),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    /// Any JSON value, as a JSON payload.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        let boxed: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        if boxed.get().contains(['\n', '\r']) {
            return Raw::from_json(boxed.get()).map_err(D::Error::custom);
        }
        Ok(Raw(Repr::Json(Arc::from(boxed))))
    }
}

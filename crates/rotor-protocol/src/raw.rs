//! [`Raw`]: JSON carried verbatim (publication data, info, RPC payloads), shared, and never
//! with a line break outside a string.

use std::fmt;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value carried verbatim (publication data, client info, RPC payloads).
///
/// It is cheap to clone (shared), keeps the bytes the client sent, and never contains a raw
/// line break, because `\n` separates messages in a frame: line breaks outside strings are
/// insignificant whitespace and are stripped on construction (inside JSON strings they are
/// always escaped).
#[derive(Clone)]
pub struct Raw(Arc<RawValue>);

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
        Ok(Raw(Arc::from(boxed)))
    }

    /// Encodes any serializable value.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Raw {
        let text = serde_json::to_string(value).expect("serializing to a string cannot fail");
        Raw::from_json(&text).expect("serde_json output is valid JSON")
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// True for an empty text (never produced by the constructors).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// Decodes the JSON into a typed value.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Raw {}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        let boxed: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        if boxed.get().contains(['\n', '\r']) {
            return Raw::from_json(boxed.get()).map_err(D::Error::custom);
        }
        Ok(Raw(Arc::from(boxed)))
    }
}

//! Publications and client info at rest (Redis, Postgres, between nodes): their JSON form,
//! with binary payloads marked so that they come back binary, byte for byte.
//!
//! A payload's JSON wire form cannot tell binary from a JSON string (binary is written as its
//! base64, see [`Raw`]), so what is stored carries a flag for each binary payload. JSON
//! payloads are stored as they are: what was stored before binary payloads existed reads the
//! same. This module only converts; it must not know where the text goes.

use std::collections::BTreeMap;

use base64::Engine as _;
use rotor_protocol::{ClientInfo, Publication, Raw};
use serde::{Deserialize, Serialize};

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// A payload read back: a flagged one is the base64 of binary bytes, kept as a JSON string.
fn unflag(raw: Raw, binary: bool) -> Result<Raw, String> {
    if !binary {
        return Ok(raw);
    }
    // Empty binary is written as null.
    if raw.json() == Some("null") {
        return Ok(Raw::default());
    }
    let text: String = raw.parse().map_err(|e| e.to_string())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())?;
    Ok(Raw::binary(&bytes))
}

/// [`ClientInfo`] at rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredInfo {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn_info: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chan_info: Option<Raw>,
    /// Bit 0: `conn_info` is binary; bit 1: `chan_info` is.
    #[serde(default, skip_serializing_if = "is_zero")]
    bin: u8,
}

impl From<&ClientInfo> for StoredInfo {
    fn from(i: &ClientInfo) -> StoredInfo {
        let binary = |r: &Option<Raw>| r.as_ref().is_some_and(|r| !r.is_json());
        StoredInfo {
            user: i.user.clone(),
            client: i.client.clone(),
            conn_info: i.conn_info.clone(),
            chan_info: i.chan_info.clone(),
            bin: u8::from(binary(&i.conn_info)) | u8::from(binary(&i.chan_info)) << 1,
        }
    }
}

impl TryFrom<StoredInfo> for ClientInfo {
    type Error = String;
    fn try_from(s: StoredInfo) -> Result<ClientInfo, String> {
        Ok(ClientInfo {
            user: s.user,
            client: s.client,
            conn_info: s.conn_info.map(|r| unflag(r, s.bin & 1 != 0)).transpose()?,
            chan_info: s.chan_info.map(|r| unflag(r, s.bin & 2 != 0)).transpose()?,
        })
    }
}

/// [`Publication`] at rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPublication {
    data: Raw,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<StoredInfo>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    time: u64,
    /// Bit 0: `data` is binary.
    #[serde(default, skip_serializing_if = "is_zero")]
    bin: u8,
    /// On its way to the nodes: the publisher asked for deltas (never stored in history).
    #[serde(default, skip_serializing_if = "is_false")]
    delta: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl From<&Publication> for StoredPublication {
    fn from(p: &Publication) -> StoredPublication {
        StoredPublication {
            data: p.data.clone(),
            info: p.info.as_ref().map(StoredInfo::from),
            offset: p.offset,
            tags: p.tags.clone(),
            time: p.time,
            bin: u8::from(!p.data.is_json()),
            delta: p.delta,
        }
    }
}

impl TryFrom<StoredPublication> for Publication {
    type Error = String;
    fn try_from(s: StoredPublication) -> Result<Publication, String> {
        Ok(Publication {
            data: unflag(s.data, s.bin & 1 != 0)?,
            info: s.info.map(ClientInfo::try_from).transpose()?,
            offset: s.offset,
            tags: s.tags,
            delta: s.delta,
            time: s.time,
        })
    }
}

/// A publication as stored JSON text.
pub fn publication_to_json(p: &Publication) -> String {
    serde_json::to_string(&StoredPublication::from(p)).expect("publications serialize")
}

/// A publication back from [`publication_to_json`].
pub fn publication_from_json(text: &str) -> Result<Publication, String> {
    let s: StoredPublication = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Publication::try_from(s)
}

/// Client info as stored JSON text.
pub fn info_to_json(i: &ClientInfo) -> String {
    serde_json::to_string(&StoredInfo::from(i)).expect("client info serializes")
}

/// Client info back from [`info_to_json`].
pub fn info_from_json(text: &str) -> Result<ClientInfo, String> {
    let s: StoredInfo = serde_json::from_str(text).map_err(|e| e.to_string())?;
    ClientInfo::try_from(s)
}

/// Prefix of a binary payload stored alone as text ([`payload_to_text`]): no JSON text starts
/// with it.
const BINARY_TEXT: &str = "b64:";

/// A payload alone as text (a column of its own): the JSON text, or `b64:` and the base64 of
/// binary bytes.
pub fn payload_to_text(raw: &Raw) -> String {
    match raw.json() {
        Some(json) => json.to_string(),
        None => format!("{BINARY_TEXT}{}", raw.to_base64()),
    }
}

/// A payload back from [`payload_to_text`].
pub fn payload_from_text(text: &str) -> Result<Raw, String> {
    match text.strip_prefix(BINARY_TEXT) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|b| Raw::binary(&b))
            .map_err(|e| e.to_string()),
        None => Raw::from_json(text).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_publication() -> Publication {
        Publication {
            delta: false,
            data: Raw::binary(&[0, 1, 2, 0xff]),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: Some(Raw::binary(b"\x01info")),
                chan_info: Some(Raw::from_json(r#""a string""#).unwrap()),
            }),
            offset: 4,
            tags: BTreeMap::from([("k".into(), "v".into())]),
            time: 17,
        }
    }

    #[test]
    fn binary_payloads_come_back_binary_and_json_strings_stay_strings() {
        let p = binary_publication();
        let back = publication_from_json(&publication_to_json(&p)).unwrap();
        assert_eq!(back, p);
        let info = back.info.unwrap();
        assert!(!info.conn_info.unwrap().is_json());
        assert!(info.chan_info.unwrap().is_json());
    }

    #[test]
    fn json_payloads_are_stored_as_they_are_and_old_entries_read() {
        let p = Publication {
            data: Raw::from_json(r#"{"a":1}"#).unwrap(),
            ..Publication::default()
        };
        assert_eq!(publication_to_json(&p), r#"{"data":{"a":1}}"#);
        let old = r#"{"data":{"a":1},"info":{"user":"u","client":"c","conn_info":{"n":1}}}"#;
        let back = publication_from_json(old).unwrap();
        assert_eq!(
            back.info.unwrap().conn_info.unwrap().json(),
            Some(r#"{"n":1}"#)
        );
    }

    #[test]
    fn payloads_alone_as_text_round_trip() {
        for raw in [
            Raw::binary(b"\x00\x01"),
            Raw::from_json("[1,2]").unwrap(),
            Raw::from_json(r#""b64:not binary""#).unwrap(),
        ] {
            assert_eq!(payload_from_text(&payload_to_text(&raw)).unwrap(), raw);
        }
        assert!(payload_from_text("b64:!!").is_err());
    }
}

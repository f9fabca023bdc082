//! The JSON of Centrifugo's HTTP proxy protocol: what a call's body holds, and how the
//! backend's answer (`result`, `error` or `disconnect`) becomes the core's types. Nothing
//! here sends anything; a malformed answer is an error, never a default.

use std::collections::BTreeMap;

use rotor_auth::{ChannelOverride, SubscriptionClaim};
use rotor_core::proxy::{
    Answer, Caller, ConnectGrant, ProxyError, PublishGrant, RefreshGrant, SubscribeGrant,
};
use rotor_protocol::{Disconnect, Error, Protocol, Raw};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The fields every call starts with.
#[derive(Serialize)]
pub(crate) struct Common<'a> {
    client: &'a str,
    transport: &'a str,
    protocol: &'static str,
    encoding: &'static str,
    /// Absent in connect calls; present (even empty, for anonymous connections) in all others.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Raw>,
}

impl<'a> Common<'a> {
    /// `user` is `None` for connect; `meta` only when the proxy includes it.
    pub(crate) fn new(
        caller: &'a Caller,
        binary: bool,
        user: bool,
        include_meta: bool,
    ) -> Common<'a> {
        Common {
            client: &caller.client,
            transport: caller.transport,
            protocol: match caller.protocol {
                Protocol::Json => "json",
                Protocol::Protobuf => "protobuf",
            },
            encoding: if binary { "binary" } else { "json" },
            user: user.then_some(&*caller.user),
            meta: if include_meta {
                caller.meta.as_ref()
            } else {
                None
            },
        }
    }
}

/// A payload as the proxy's encoding sends it: JSON as it is (`data`), or base64 of its
/// bytes (`b64data`) with `binary_encoding`.
#[derive(Serialize, Default)]
pub(crate) struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Raw>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

impl<'a> Payload<'a> {
    pub(crate) fn new(data: Option<&'a Raw>, binary: bool) -> Result<Payload<'a>, ProxyError> {
        let Some(raw) = data else {
            return Ok(Payload::default());
        };
        if binary {
            return Ok(Payload {
                data: None,
                b64data: Some(raw.to_base64()),
            });
        }
        if !raw.is_json() {
            return Err(ProxyError(
                "the payload is not JSON and the proxy has no binary_encoding".into(),
            ));
        }
        Ok(Payload {
            data: Some(raw),
            b64data: None,
        })
    }
}

/// A call's body: the common fields, then the call's own.
#[derive(Serialize)]
pub(crate) struct Body<'a, T: Serialize> {
    #[serde(flatten)]
    pub common: Common<'a>,
    #[serde(flatten)]
    pub call: T,
}

#[derive(Serialize)]
pub(crate) struct ConnectBody<'a> {
    #[serde(flatten)]
    pub payload: Payload<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub channels: &'a [String],
}

#[derive(Serialize)]
pub(crate) struct ChannelBody<'a> {
    pub channel: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
}

#[derive(Serialize)]
pub(crate) struct RpcBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub method: &'a str,
    #[serde(flatten)]
    pub payload: Payload<'a>,
}

#[derive(Serialize)]
pub(crate) struct NoFields {}

/// `{"result": …, "error": …, "disconnect": …}`: a disconnect wins over an error, an error
/// over a result.
#[derive(Deserialize)]
struct Envelope<T> {
    result: Option<T>,
    error: Option<WireError>,
    disconnect: Option<WireDisconnect>,
}

#[derive(Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    #[serde(deserialize_with = "nullable")]
    message: String,
    #[serde(default)]
    #[serde(deserialize_with = "nullable")]
    temporary: bool,
}

#[derive(Deserialize)]
struct WireDisconnect {
    code: u16,
    #[serde(default)]
    #[serde(deserialize_with = "nullable")]
    reason: String,
}

/// Parses the backend's answer; `grant` turns a `result` into the core's type.
pub(crate) fn answer<W: DeserializeOwned, T>(
    body: &[u8],
    grant: impl FnOnce(W) -> Result<T, ProxyError>,
) -> Result<Answer<T>, ProxyError> {
    let env: Envelope<W> = serde_json::from_slice(body).map_err(|e| {
        ProxyError(format!(
            "the answer is not what the proxy protocol says: {e}"
        ))
    })?;
    if let Some(d) = env.disconnect {
        return Ok(Answer::Disconnect(Disconnect {
            code: d.code,
            reason: d.reason.into(),
        }));
    }
    if let Some(e) = env.error {
        return Ok(Answer::Error(Error {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }));
    }
    match env.result {
        Some(r) => grant(r).map(Answer::Granted),
        None => Ok(Answer::Empty),
    }
}

/// A payload given as JSON (`data`) and/or base64 (`b64data`): a non-empty base64 value
/// wins, as in Centrifugo.
fn pick(field: &str, json: Option<Raw>, b64: Option<String>) -> Result<Option<Raw>, ProxyError> {
    match b64.filter(|b| !b.is_empty()) {
        Some(b) => Raw::from_base64(&b)
            .map(Some)
            .map_err(|_| ProxyError(format!("{field} is not valid base64"))),
        None => Ok(json),
    }
}

/// A field a backend may send as `null` for "none" (Go's decoder reads `null` as the empty
/// value, so backends written for Centrifugo do): `null` is the type's default.
fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A Unix time: negative or absent is 0.
fn unix(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

/// A subscription the backend grants: the subscribe proxy's result, and each of the connect
/// proxy's `subs` (whose `expire_at` Centrifugo does not use either).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireSubscription {
    info: Option<Raw>,
    b64info: Option<String>,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    override_: Option<ChannelOverride>,
    expire_at: Option<i64>,
}

impl WireSubscription {
    fn claim(self) -> Result<SubscriptionClaim, ProxyError> {
        Ok(SubscriptionClaim {
            info: pick("b64info", self.info, self.b64info)?,
            data: pick("b64data", self.data, self.b64data)?,
            override_: self.override_.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireConnect {
    #[serde(deserialize_with = "nullable")]
    user: String,
    expire_at: Option<i64>,
    info: Option<Raw>,
    b64info: Option<String>,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(deserialize_with = "nullable")]
    channels: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    subs: BTreeMap<String, WireSubscription>,
    meta: Option<Raw>,
}

pub(crate) fn connect_grant(w: WireConnect) -> Result<ConnectGrant, ProxyError> {
    let subs = w
        .subs
        .into_iter()
        .map(|(ch, s)| s.claim().map(|c| (ch, c)))
        .collect::<Result<_, _>>()?;
    Ok(ConnectGrant {
        user: w.user,
        expire_at: Some(unix(w.expire_at)).filter(|at| *at > 0),
        info: pick("b64info", w.info, w.b64info)?,
        data: pick("b64data", w.data, w.b64data)?,
        channels: w.channels,
        subs,
        meta: w.meta,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireRefresh {
    #[serde(deserialize_with = "nullable")]
    expired: bool,
    expire_at: Option<i64>,
    info: Option<Raw>,
    b64info: Option<String>,
    meta: Option<Raw>,
}

pub(crate) fn refresh_grant(w: WireRefresh) -> Result<RefreshGrant, ProxyError> {
    Ok(RefreshGrant {
        expired: w.expired,
        expire_at: unix(w.expire_at),
        info: pick("b64info", w.info, w.b64info)?,
        meta: w.meta,
    })
}

pub(crate) fn subscribe_grant(w: WireSubscription) -> Result<SubscribeGrant, ProxyError> {
    let expire_at = unix(w.expire_at);
    let claim = w.claim()?;
    Ok(SubscribeGrant {
        info: claim.info,
        data: claim.data,
        override_: claim.override_,
        expire_at,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WirePublish {
    /// Present (even `null`) replaces the data; Centrifugo checks it before `b64data`.
    #[serde(deserialize_with = "present")]
    data: Option<Option<Raw>>,
    b64data: Option<String>,
    #[serde(deserialize_with = "nullable")]
    skip_history: bool,
    #[serde(deserialize_with = "nullable")]
    idempotency_key: String,
    #[serde(deserialize_with = "nullable")]
    delta: bool,
}

/// A field that is present, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Raw>>, D::Error> {
    let v: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    Raw::from_json(v.get())
        .map(|r| Some(Some(r)))
        .map_err(serde::de::Error::custom)
}

pub(crate) fn publish_grant(w: WirePublish) -> Result<PublishGrant, ProxyError> {
    let data = match w.data {
        Some(d) => d,
        None => pick("b64data", None, w.b64data)?,
    };
    Ok(PublishGrant {
        data,
        skip_history: w.skip_history,
        idempotency_key: Some(w.idempotency_key).filter(|k| !k.is_empty()),
        delta: w.delta,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireRpc {
    data: Option<Raw>,
    b64data: Option<String>,
}

pub(crate) fn rpc_grant(w: WireRpc) -> Result<Option<Raw>, ProxyError> {
    pick("b64data", w.data, w.b64data)
}

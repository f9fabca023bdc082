//! The claims of connection and subscription tokens as Centrifugo defines them (`sub`,
//! `exp`, `info`/`b64info`, `channels`, `subs`, `aud`, `iss`, ...), parsed strictly enough
//! that a malformed claim is a refusal, not a default.

use std::collections::BTreeMap;

use rotor_protocol::Raw;
use serde::{Deserialize, Deserializer};

use crate::AuthError;

/// `aud` is a string or an array of strings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Audience(pub Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum A {
            One(String),
            Many(Vec<String>),
        }
        Ok(match A::deserialize(d)? {
            A::One(s) => Audience(vec![s]),
            A::Many(v) => Audience(v),
        })
    }
}

/// A boolean override as Centrifugo writes it: `{"value": true}`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct BoolValue {
    pub value: bool,
}

/// Per-channel option overrides granted by a token. Centrifugo v6's names, and the older
/// `position` and `recover` of the same options (the seed documents use them); keys it does
/// not know are ignored, as Centrifugo's decoder ignores them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ChannelOverride {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
    #[serde(alias = "recover")]
    pub force_recovery: Option<BoolValue>,
    #[serde(alias = "position")]
    pub force_positioning: Option<BoolValue>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSubscriptionClaim {
    info: Option<Raw>,
    b64info: Option<String>,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    override_: Option<ChannelOverride>,
}

/// A server-side subscription granted by the `subs` claim of a connection token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionClaim {
    pub info: Option<Raw>,
    pub data: Option<Raw>,
    pub override_: ChannelOverride,
}

/// Common registered claims, checked by the verifier.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registered<'a> {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub aud: Option<&'a Audience>,
    pub iss: Option<&'a str>,
}

/// Claims both token kinds share and the verifier checks. (Written out in each struct rather
/// than flattened: serde's `flatten` cannot carry raw JSON values.)
pub(crate) trait HasRegistered {
    fn registered(&self) -> Registered<'_>;
}

macro_rules! registered {
    ($t:ty) => {
        impl HasRegistered for $t {
            fn registered(&self) -> Registered<'_> {
                Registered {
                    exp: self.exp,
                    nbf: self.nbf,
                    aud: self.aud.as_ref(),
                    iss: self.iss.as_deref(),
                }
            }
        }
    };
}
registered!(RawConnectClaims);
registered!(RawSubscribeClaims);

#[derive(Debug, Deserialize)]
pub(crate) struct RawConnectClaims {
    #[serde(default)]
    pub sub: String,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub aud: Option<Audience>,
    pub iss: Option<String>,
    pub jti: Option<String>,
    pub info: Option<Raw>,
    pub b64info: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub subs: BTreeMap<String, RawSubscriptionClaim>,
    pub meta: Option<Raw>,
    pub expire_at: Option<u64>,
    /// A connection token must not carry `channel` (that makes it a subscription token).
    pub channel: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSubscribeClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub client: String,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub aud: Option<Audience>,
    pub iss: Option<String>,
    pub jti: Option<String>,
    info: Option<Raw>,
    b64info: Option<String>,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    override_: Option<ChannelOverride>,
    pub expire_at: Option<u64>,
}

/// A verified connection token.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectToken {
    /// The user id; empty for an anonymous token.
    pub user: String,
    /// `exp`, if the token has one.
    pub exp: Option<u64>,
    /// When the connection expires (Unix seconds): `expire_at` when present (0 = never), else
    /// `exp`. `None` means the connection does not expire.
    pub expire_at: Option<u64>,
    pub iat: Option<u64>,
    pub jti: Option<String>,
    pub info: Option<Raw>,
    pub meta: Option<Raw>,
    pub channels: Vec<String>,
    pub subs: BTreeMap<String, SubscriptionClaim>,
}

/// A verified subscription token.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeToken {
    pub user: String,
    pub channel: String,
    /// Deprecated `client` claim; when set it must match the connection's client id.
    pub client: String,
    pub exp: Option<u64>,
    /// When the subscription expires; `None` = never.
    pub expire_at: Option<u64>,
    pub iat: Option<u64>,
    pub jti: Option<String>,
    pub claim: SubscriptionClaim,
}

/// A `b64` claim: any bytes ("custom bytes" for Protobuf clients; JSON clients get them as
/// JSON when they hold JSON, else as a base64 string).
fn b64_json(field: &str, text: &str) -> Result<Raw, AuthError> {
    Raw::from_base64(text).map_err(|_| AuthError::Invalid(format!("{field} is not valid base64")))
}

fn pick(field: &str, plain: Option<Raw>, b64: Option<String>) -> Result<Option<Raw>, AuthError> {
    match (plain, b64) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(b)) => b64_json(field, &b).map(Some),
        (None, None) => Ok(None),
    }
}

impl RawSubscriptionClaim {
    pub(crate) fn into_claim(self) -> Result<SubscriptionClaim, AuthError> {
        Ok(SubscriptionClaim {
            info: pick("b64info", self.info, self.b64info)?,
            data: pick("b64data", self.data, self.b64data)?,
            override_: self.override_.unwrap_or_default(),
        })
    }
}

/// `expire_at` wins over `exp`; `expire_at: 0` means never.
fn lifetime(exp: Option<u64>, expire_at: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => exp,
    }
}

impl RawConnectClaims {
    pub(crate) fn into_token(self) -> Result<ConnectToken, AuthError> {
        if self.channel.is_some() {
            return Err(AuthError::Invalid(
                "connection token has a channel claim".into(),
            ));
        }
        let subs = self
            .subs
            .into_iter()
            .map(|(ch, s)| s.into_claim().map(|c| (ch, c)))
            .collect::<Result<_, _>>()?;
        Ok(ConnectToken {
            user: self.sub,
            exp: self.exp,
            expire_at: lifetime(self.exp, self.expire_at),
            iat: self.iat,
            jti: self.jti,
            info: pick("b64info", self.info, self.b64info)?,
            meta: self.meta,
            channels: self.channels,
            subs,
        })
    }
}

impl RawSubscribeClaims {
    pub(crate) fn into_token(self) -> Result<SubscribeToken, AuthError> {
        if self.channel.is_empty() {
            return Err(AuthError::Invalid(
                "subscription token has no channel claim".into(),
            ));
        }
        Ok(SubscribeToken {
            user: self.sub,
            channel: self.channel,
            client: self.client,
            exp: self.exp,
            expire_at: lifetime(self.exp, self.expire_at),
            iat: self.iat,
            jti: self.jti,
            claim: RawSubscriptionClaim {
                info: self.info,
                b64info: self.b64info,
                data: self.data,
                b64data: self.b64data,
                override_: self.override_,
            }
            .into_claim()?,
        })
    }
}

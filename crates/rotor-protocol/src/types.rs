//! Commands, replies and pushes, mirroring `client.proto` field by field. Every field is
//! omitted when empty (false, 0, "", absent), as Centrifugo's JSON encoder does; result objects
//! themselves are always written, even when empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Raw;

fn is_false(v: &bool) -> bool {
    !*v
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

/// One command from a client. As in the protobuf schema there is no `oneof`: the method is the
/// first request field that is present (see [`Command::method`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Command {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// Which request a command carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    PresenceStats,
    History,
    Ping,
    Send,
    Rpc,
    Refresh,
    SubRefresh,
    /// An empty command `{}`: the client's answer to a server ping.
    Pong,
    /// A command with an id but no request this protocol knows.
    Unknown,
}

impl MethodKind {
    /// The method's name on the wire (and in metrics and logs).
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Connect => "connect",
            MethodKind::Subscribe => "subscribe",
            MethodKind::Unsubscribe => "unsubscribe",
            MethodKind::Publish => "publish",
            MethodKind::Presence => "presence",
            MethodKind::PresenceStats => "presence_stats",
            MethodKind::History => "history",
            MethodKind::Ping => "ping",
            MethodKind::Send => "send",
            MethodKind::Rpc => "rpc",
            MethodKind::Refresh => "refresh",
            MethodKind::SubRefresh => "sub_refresh",
            MethodKind::Pong => "pong",
            MethodKind::Unknown => "unknown",
        }
    }
}

impl Command {
    /// The first request present, in the schema's field order.
    pub fn method(&self) -> MethodKind {
        if self.connect.is_some() {
            MethodKind::Connect
        } else if self.subscribe.is_some() {
            MethodKind::Subscribe
        } else if self.unsubscribe.is_some() {
            MethodKind::Unsubscribe
        } else if self.publish.is_some() {
            MethodKind::Publish
        } else if self.presence.is_some() {
            MethodKind::Presence
        } else if self.presence_stats.is_some() {
            MethodKind::PresenceStats
        } else if self.history.is_some() {
            MethodKind::History
        } else if self.ping.is_some() {
            MethodKind::Ping
        } else if self.send.is_some() {
            MethodKind::Send
        } else if self.rpc.is_some() {
            MethodKind::Rpc
        } else if self.refresh.is_some() {
            MethodKind::Refresh
        } else if self.sub_refresh.is_some() {
            MethodKind::SubRefresh
        } else if self.id == 0 {
            MethodKind::Pong
        } else {
            MethodKind::Unknown
        }
    }
}

/// An empty message (`{}`), used where the schema has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recover: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(
        default,
        skip_serializing_if = "is_zero_u64",
        deserialize_with = "offset::deserialize"
    )]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub join_leave: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delta: String,
    /// The subscriber's filter on publication tags (`tf`): only matching publications are
    /// delivered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf: Option<FilterNode>,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub flag: i32,
}

/// A node of a publication tags filter: a comparison (`op` empty: `key`, `cmp`, and `val` or
/// `vals`) or a logical node (`op` is `and`, `or` or `not`, over `nodes`). The wire form
/// only; what the nodes mean is the core's (`rotor_core::filter`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterNode {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub val: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<FilterNode>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult {
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(
        default,
        skip_serializing_if = "is_zero_u64",
        deserialize_with = "offset::deserialize"
    )]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Delta compression was negotiated: publications of this subscription may carry fossil
    /// deltas (`Publication::delta`), and in JSON their data is a JSON string.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delta: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Raw,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult {
    #[serde(default)]
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceStatsRequest {
    #[serde(default)]
    pub channel: String,
}

/// Presence counters. Both fields are always written: `cent` and the SDKs read them as numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    #[serde(default)]
    pub num_clients: u32,
    #[serde(default)]
    pub num_users: u32,
}

/// A position in a channel's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    #[serde(default, deserialize_with = "offset::deserialize")]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub limit: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(
        default,
        skip_serializing_if = "is_zero_u64",
        deserialize_with = "offset::deserialize"
    )]
    pub offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    pub data: Raw,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshResult {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubRefreshResult {
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Who published or joined: the connection's user and client id, plus optional info.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Raw>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    pub data: Raw,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    #[serde(
        default,
        skip_serializing_if = "is_zero_u64",
        deserialize_with = "offset::deserialize"
    )]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `data` is a fossil delta against the subscription's previous publication. Between
    /// the nodes and into the hub it says instead that the publisher asked for deltas.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delta: bool,
    /// Milliseconds since the Unix epoch, when the server accepted it.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Join {
    pub info: ClientInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    pub info: ClientInfo,
}

/// Unsubscribe push. `code` and `reason` are always written: centrifuge-python reads both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnsubscribePush {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub data: Raw,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribePush {
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(
        default,
        skip_serializing_if = "is_zero_u64",
        deserialize_with = "offset::deserialize"
    )]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

/// Disconnect push. `code` and `reason` are always written: centrifuge-python reads both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DisconnectPush {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshPush {
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// An asynchronous message from the server. Bidirectional transports wrap it as
/// `{"push":{…}}`; unidirectional ones send it bare.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Push {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publication: Option<Publication>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<Leave>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribePush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribePush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshPush>,
}

/// An error in a reply. `message` is always written: centrifuge-python requires it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub temporary: bool,
}

/// One reply or push from the server. A reply carries the command's `id` and either `error` or
/// exactly one result; a push has no id. An empty object `{}` is a server ping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshResult>,
}

impl Reply {
    /// An error reply to command `id`.
    pub fn error(id: u32, error: Error) -> Reply {
        Reply {
            id,
            error: Some(error),
            ..Reply::default()
        }
    }

    /// A push (no id).
    pub fn push(push: Push) -> Reply {
        Reply {
            push: Some(push),
            ..Reply::default()
        }
    }

    /// True for the server ping `{}`.
    pub fn is_ping(&self) -> bool {
        *self == Reply::default()
    }
}

/// Offsets are uint64 and written as JSON numbers; numeric strings are accepted on input, as
/// both official SDKs do.
mod offset {
    use serde::de::{Error, Visitor};
    use serde::Deserializer;
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an offset (non-negative integer or numeric string)")
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom("negative offset"))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<u64, E> {
                v.parse().map_err(|_| E::custom("offset is not a number"))
            }
            fn visit_unit<E: Error>(self) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(V)
    }
}

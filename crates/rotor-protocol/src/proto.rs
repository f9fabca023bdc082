//! The Protobuf form of the protocol: the wire format written by hand (no protoc, no
//! generated code) for the types of [`crate::types`], with the field numbers of Centrifugo's
//! `client.proto`, and the varint-length-delimited framing the SDKs use.
//!
//! Decoding trusts nothing: every length is checked against the bytes that are there before
//! anything is read or allocated, varints longer than 10 bytes are refused, unknown fields are
//! skipped, and nesting only follows the schema (unknown fields are never descended into).

use std::collections::BTreeMap;

use crate::types::*;
use crate::Raw;

/// Bytes that are not valid Protobuf for the message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field {0} has an unexpected wire type {1}")]
    WireType(u32, u8),
    #[error("invalid field number")]
    FieldNumber,
    #[error("unsupported wire type {0}")]
    UnsupportedWireType(u8),
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    #[error("tags filter nested deeper than {MAX_FILTER_DEPTH} levels")]
    FilterTooDeep,
}

/// How deep a tags filter's nodes may nest on the wire (a bound on the decoder's recursion;
/// the core allows less).
pub const MAX_FILTER_DEPTH: u32 = 64;

thread_local! {
    /// The nesting of the filter node being decoded on this thread.
    static FILTER_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// Appends fields to a buffer.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

/// The bytes `v` takes as a varint.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 significant bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Writer<'_> {
    fn key(&mut self, field: u32, wire: u8) {
        put_varint(self.buf, (u64::from(field) << 3) | u64::from(wire));
    }

    fn varint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            put_varint(self.buf, v);
        }
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.key(field, LEN);
            put_varint(self.buf, b.len() as u64);
            self.buf.extend_from_slice(b);
        }
    }

    /// A nested message, always written (an empty one too: presence means something), in
    /// one pass: one byte is kept for the length, and the body moved on the rare occasion its
    /// length needs more.
    fn message<M: ProtoMessage>(&mut self, field: u32, m: &M) {
        self.nested(field, |w| m.encode(w));
    }

    /// A length-delimited field whose body `body` writes.
    fn nested(&mut self, field: u32, body: impl FnOnce(&mut Writer<'_>)) {
        self.key(field, LEN);
        let at = self.buf.len();
        self.buf.push(0);
        body(&mut Writer { buf: self.buf });
        let len = self.buf.len() - at - 1;
        let need = varint_len(len as u64);
        if need > 1 {
            self.buf
                .splice(at + 1..at + 1, std::iter::repeat_n(0, need - 1));
        }
        let mut v = len as u64;
        for b in &mut self.buf[at..at + need] {
            *b = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
            v >>= 7;
        }
    }
}

/// Reads fields from a message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(ProtoError::Truncated);
            };
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ProtoError::VarintTooLong)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint()?;
        // Checked against what is there before anything is taken or allocated.
        let len = usize::try_from(len).map_err(|_| ProtoError::Truncated)?;
        self.take(len)
    }

    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| ProtoError::FieldNumber)?;
        if field == 0 {
            return Err(ProtoError::FieldNumber);
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ProtoError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => self.take(4).map(drop),
            other => Err(ProtoError::UnsupportedWireType(other)),
        }
    }
}

/// A message of the schema: how it writes its fields and reads one. Implemented for the
/// protocol's own types only; use [`encode`] and [`decode`].
pub trait ProtoMessage: Default {
    fn encode(&self, w: &mut Writer<'_>);
    /// Reads field `field` (of wire type `wire`); false when the message has no such field.
    fn merge(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<bool, ProtoError>;
}

/// Decodes a whole message.
fn decode_message<M: ProtoMessage>(buf: &[u8]) -> Result<M, ProtoError> {
    let mut m = M::default();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        if !m.merge(field, wire, &mut r)? {
            r.skip(wire)?;
        }
    }
    Ok(m)
}

/// How a field of a Rust type is written and read.
pub trait Field {
    fn put(&self, field: u32, w: &mut Writer<'_>);
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError>;
}

fn expect(field: u32, wire: u8, want: u8) -> Result<(), ProtoError> {
    if wire == want {
        Ok(())
    } else {
        Err(ProtoError::WireType(field, wire))
    }
}

macro_rules! varint_field {
    ($t:ty, $to:expr, $from:expr) => {
        impl Field for $t {
            fn put(&self, field: u32, w: &mut Writer<'_>) {
                w.varint(field, $to(*self));
            }
            fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
                expect(field, wire, VARINT)?;
                *self = $from(r.varint()?);
                Ok(())
            }
        }
    };
}

// Truncating and sign-extending casts are what Protobuf specifies for these types.
varint_field!(u32, u64::from, |v: u64| v as u32);
varint_field!(u64, |v| v, |v| v);
varint_field!(i32, |v: i32| v as i64 as u64, |v: u64| v as i32);
varint_field!(i64, |v: i64| v as u64, |v: u64| v as i64);
varint_field!(bool, u64::from, |v: u64| v != 0);

impl Field for String {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        w.bytes(field, self.as_bytes());
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        let b = r.len_delimited()?;
        *self = std::str::from_utf8(b)
            .map_err(|_| ProtoError::NotUtf8)?
            .to_owned();
        Ok(())
    }
}

impl Field for Raw {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        w.bytes(field, self.as_bytes());
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        *self = Raw::from_bytes(r.len_delimited()?);
        Ok(())
    }
}

/// Plain `bytes` (kept as they are, never looked into).
impl Field for Vec<u8> {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        w.bytes(field, self);
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        *self = r.len_delimited()?.to_vec();
        Ok(())
    }
}

/// `bytes` fields that may be absent: empty bytes are absent, as in proto3.
impl Field for Option<Raw> {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        if let Some(raw) = self {
            w.bytes(field, raw.as_bytes());
        }
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        let b = r.len_delimited()?;
        *self = (!b.is_empty()).then(|| Raw::from_bytes(b));
        Ok(())
    }
}

/// Nested message fields. Later occurrences replace earlier ones (the schema's messages are
/// only ever sent once; Protobuf would merge them, which no SDK relies on).
impl<M: ProtoMessage> Field for Option<M> {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        if let Some(m) = self {
            w.message(field, m);
        }
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        *self = Some(decode_message(r.len_delimited()?)?);
        Ok(())
    }
}

/// A nested message that is always there in the Rust type (Join and Leave `info`).
impl Field for ClientInfo {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        w.message(field, self);
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        *self = decode_message(r.len_delimited()?)?;
        Ok(())
    }
}

impl<M: ProtoMessage> Field for Vec<M> {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        for m in self {
            w.message(field, m);
        }
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        self.push(decode_message(r.len_delimited()?)?);
        Ok(())
    }
}

/// Map values: strings and messages.
pub trait MapValue: Field + Default {
    /// Writes the value as field 2 of an entry; messages are written even when empty.
    fn put_value(&self, w: &mut Writer<'_>) {
        self.put(2, w);
    }
}

impl MapValue for String {}

impl<K: MapValue> Field for BTreeMap<String, K> {
    fn put(&self, field: u32, w: &mut Writer<'_>) {
        for (key, value) in self {
            w.nested(field, |w| {
                w.bytes(1, key.as_bytes());
                value.put_value(w);
            });
        }
    }
    fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
        expect(field, wire, LEN)?;
        let mut entry = Reader::new(r.len_delimited()?);
        let mut key = String::new();
        let mut value = K::default();
        while let Some((f, wt)) = entry.key()? {
            match f {
                1 => key.read(f, wt, &mut entry)?,
                2 => value.read(f, wt, &mut entry)?,
                _ => entry.skip(wt)?,
            }
        }
        self.insert(key, value);
        Ok(())
    }
}

/// Defines [`ProtoMessage`] for a type from its fields' numbers.
macro_rules! message {
    ($t:ty { $($num:literal => $name:ident),* $(,)? }) => {
        impl ProtoMessage for $t {
            #[allow(unused_variables)]
            fn encode(&self, w: &mut Writer<'_>) {
                $( Field::put(&self.$name, $num, w); )*
            }
            #[allow(unused_variables)]
            fn merge(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<bool, ProtoError> {
                match field {
                    $( $num => Field::read(&mut self.$name, field, wire, r).map(|()| true), )*
                    _ => Ok(false),
                }
            }
        }
    };
}

/// Message map values are written even when empty (an entry without its value would decode
/// the same, but the SDKs' generated code is not asked to agree).
macro_rules! message_map_value {
    ($($t:ty),*) => {
        $(
            impl MapValue for $t {
                fn put_value(&self, w: &mut Writer<'_>) {
                    w.message(2, self);
                }
            }
            impl Field for $t {
                fn put(&self, field: u32, w: &mut Writer<'_>) {
                    w.message(field, self);
                }
                fn read(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<(), ProtoError> {
                    expect(field, wire, LEN)?;
                    *self = decode_message(r.len_delimited()?)?;
                    Ok(())
                }
            }
        )*
    };
}

message_map_value!(SubscribeRequest, SubscribeResult);

/// ClientInfo as a map value (presence); its [`Field`] impl is above.
impl MapValue for ClientInfo {
    fn put_value(&self, w: &mut Writer<'_>) {
        w.message(2, self);
    }
}

message!(Empty {});
message!(Error { 1 => code, 2 => message, 3 => temporary });
message!(Command {
    1 => id, 4 => connect, 5 => subscribe, 6 => unsubscribe, 7 => publish, 8 => presence,
    9 => presence_stats, 10 => history, 11 => ping, 12 => send, 13 => rpc, 14 => refresh,
    15 => sub_refresh,
});
message!(Reply {
    1 => id, 2 => error, 4 => push, 5 => connect, 6 => subscribe, 7 => unsubscribe,
    8 => publish, 9 => presence, 10 => presence_stats, 11 => history, 12 => ping, 13 => rpc,
    14 => refresh, 15 => sub_refresh,
});
// Push.connect (field 10) is client.proto's `Connect`, numbered unlike `ConnectResult`; only
// unidirectional transports send it, and they speak JSON, so its Protobuf form is left out
// (skipped when read) rather than written with the wrong numbers.
message!(Push {
    2 => channel, 4 => publication, 5 => join, 6 => leave, 7 => unsubscribe, 8 => message,
    9 => subscribe, 11 => disconnect, 12 => refresh,
});
message!(ClientInfo { 1 => user, 2 => client, 3 => conn_info, 4 => chan_info });
message!(Publication { 4 => data, 5 => info, 6 => offset, 7 => tags, 8 => delta, 9 => time });
message!(Join { 1 => info });
message!(Leave { 1 => info });
message!(UnsubscribePush { 2 => code, 3 => reason });
message!(SubscribePush { 1 => recoverable, 4 => epoch, 5 => offset, 6 => positioned, 7 => data });
message!(Message { 1 => data });
message!(DisconnectPush { 1 => code, 2 => reason });
message!(RefreshPush { 1 => expires, 2 => ttl });
message!(ConnectRequest { 1 => token, 2 => data, 3 => subs, 4 => name, 5 => version, 6 => headers });
message!(ConnectResult {
    1 => client, 2 => version, 3 => expires, 4 => ttl, 5 => data, 6 => subs, 7 => ping,
    8 => pong, 9 => session, 10 => node, 11 => time,
});
message!(RefreshRequest { 1 => token });
message!(RefreshResult { 1 => client, 2 => version, 3 => expires, 4 => ttl });
message!(SubscribeRequest {
    1 => channel, 2 => token, 3 => recover, 6 => epoch, 7 => offset, 8 => data,
    9 => positioned, 10 => recoverable, 11 => join_leave, 12 => delta, 13 => tf, 14 => flag,
});

/// Written by hand, not with `message!`: it nests itself, and the decoder's recursion is
/// bounded ([`MAX_FILTER_DEPTH`]) so that a hostile frame cannot exhaust the stack.
impl ProtoMessage for FilterNode {
    fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(1, self.op.as_bytes());
        w.bytes(2, self.key.as_bytes());
        w.bytes(3, self.cmp.as_bytes());
        w.bytes(4, self.val.as_bytes());
        for v in &self.vals {
            // Repeated strings are written even when empty: the position counts.
            w.key(5, LEN);
            put_varint(w.buf, v.len() as u64);
            w.buf.extend_from_slice(v.as_bytes());
        }
        for n in &self.nodes {
            w.message(6, n);
        }
    }

    fn merge(&mut self, field: u32, wire: u8, r: &mut Reader<'_>) -> Result<bool, ProtoError> {
        match field {
            1 => self.op.read(field, wire, r)?,
            2 => self.key.read(field, wire, r)?,
            3 => self.cmp.read(field, wire, r)?,
            4 => self.val.read(field, wire, r)?,
            5 => {
                let mut v = String::new();
                v.read(field, wire, r)?;
                self.vals.push(v);
            }
            6 => {
                expect(field, wire, LEN)?;
                let body = r.len_delimited()?;
                let depth = FILTER_DEPTH.with(|d| d.get());
                if depth >= MAX_FILTER_DEPTH {
                    return Err(ProtoError::FilterTooDeep);
                }
                FILTER_DEPTH.with(|d| d.set(depth + 1));
                let node = decode_message(body);
                FILTER_DEPTH.with(|d| d.set(depth));
                self.nodes.push(node?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
message!(SubscribeResult {
    1 => expires, 2 => ttl, 3 => recoverable, 6 => epoch, 7 => publications, 8 => recovered,
    9 => offset, 10 => positioned, 11 => data, 12 => was_recovering, 13 => delta,
});
message!(SubRefreshRequest { 1 => channel, 2 => token });
message!(SubRefreshResult { 1 => expires, 2 => ttl });
message!(UnsubscribeRequest { 1 => channel });
message!(PublishRequest { 1 => channel, 2 => data });
message!(PresenceRequest { 1 => channel });
message!(PresenceResult { 1 => presence });
message!(PresenceStatsRequest { 1 => channel });
message!(PresenceStatsResult { 1 => num_clients, 2 => num_users });
message!(StreamPosition { 1 => offset, 2 => epoch });
message!(HistoryRequest { 1 => channel, 7 => limit, 8 => since, 9 => reverse });
message!(HistoryResult { 1 => publications, 2 => epoch, 3 => offset });
message!(SendRequest { 1 => data });
message!(RpcRequest { 1 => data, 2 => method });
message!(RpcResult { 1 => data });
message!(EmulationRequest { 1 => node, 2 => session, 3 => data });

/// The body of an emulation POST in the Protobuf protocol: the commands (`data`, delimited
/// as in a frame) for the stream of `session` on `node`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmulationRequest {
    pub node: String,
    pub session: String,
    pub data: Vec<u8>,
}

/// Encodes one message (no length prefix).
pub fn encode<M: ProtoMessage>(m: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    m.encode(&mut Writer { buf: &mut buf });
    buf
}

/// Encodes a reply that carries only `push` (as `Reply::push(push)` would, without a copy).
pub fn encode_push_reply(push: &Push) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    Writer { buf: &mut buf }.message(4, push);
    buf
}

/// Decodes one message (no length prefix).
pub fn decode<M: ProtoMessage>(buf: &[u8]) -> Result<M, ProtoError> {
    decode_message(buf)
}

/// Splits a frame of length-delimited messages and decodes each.
pub fn decode_delimited<M: ProtoMessage>(frame: &[u8]) -> Result<Vec<M>, ProtoError> {
    let mut r = Reader::new(frame);
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        out.push(decode_message(r.len_delimited()?)?);
    }
    Ok(out)
}

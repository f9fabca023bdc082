//! Delta compression at fan-out (subscribers that negotiated `delta: "fossil"`): a
//! publication goes to each of them as a fossil delta against the channel's previous
//! publication, when the publisher asked for deltas, the subscriber has that previous one
//! and the delta is smaller, else as the full data. In the JSON protocol both are JSON
//! strings (what the SDKs expect once deltas are negotiated). Each form is encoded once per
//! publication, whatever the number of subscribers. Channels without delta subscribers
//! never come here and keep no previous publication.

use std::sync::Arc;

use bytes::Bytes;
use rotor_protocol::{fossil, Protocol, Publication, Push, Raw};

use super::{wrap_push, DeltaBase, DeltaChannel, OwnPush, Subscribers};

/// Queues `p` (of `push`) to the channel's delta subscribers; returns how many.
pub(super) fn send(
    channel: &Arc<str>,
    subs: &mut Subscribers,
    d: &mut DeltaChannel,
    push: &Push,
    p: &Publication,
    use_delta: bool,
) -> usize {
    let data = p.data.as_bytes();
    let patch = match &d.prev {
        Some((offset, prev)) if use_delta && p.offset > 0 && offset + 1 == p.offset => {
            Some(fossil::delta(prev, data)).filter(|patch| patch.len() < data.len())
        }
        _ => None,
    };
    // Offsets tell which publication a subscriber has; without history there is no base.
    d.prev = (p.offset > 0).then(|| (p.offset, Bytes::copy_from_slice(data)));
    d.seen = true;
    // A JSON subscriber reads the data as a string: bytes that are not UTF-8 reach it
    // changed, so they are never its base.
    let text = std::str::from_utf8(data).is_ok();
    let mut forms = Forms {
        push,
        patch_is_text: patch
            .as_deref()
            .is_some_and(|d| std::str::from_utf8(d).is_ok()),
        patch,
        encoded: Default::default(),
    };
    let mut sent = 0;
    // A delta subscriber has no tags filter (`Node::join` negotiates deltas only without
    // one): every publication is for it.
    for (&key, sub) in subs.iter_mut() {
        if sub.delta == DeltaBase::Off {
            continue;
        }
        let protocol = sub.client.protocol();
        let has_base = sub.delta == DeltaBase::HasBase;
        let bytes = forms.get(protocol, has_base);
        // A delta keeps the base going; a full publication starts one, once it is past
        // the subscribe's position (the session drops those at or before it).
        let base = (has_base || d.full_counts(key, p.offset))
            && (text || protocol == Protocol::Protobuf)
            && p.offset > 0;
        sub.delta = if base {
            DeltaBase::HasBase
        } else {
            DeltaBase::NeedsFull
        };
        sub.client.send_own(OwnPush {
            channel: channel.clone(),
            bytes,
            offset: p.offset,
        });
        sent += 1;
    }
    sent
}

/// The forms of one publication for delta subscribers: full or delta, JSON or Protobuf.
struct Forms<'a> {
    push: &'a Push,
    patch: Option<Vec<u8>>,
    /// A delta goes into a JSON string only when it is UTF-8 (a literal insert may split a
    /// character); otherwise JSON subscribers get the full data.
    patch_is_text: bool,
    /// JSON full, JSON delta, Protobuf full, Protobuf delta.
    encoded: [Option<Bytes>; 4],
}

impl Forms<'_> {
    /// The push for a subscriber of `protocol` (`has_base`: it has the previous
    /// publication): a delta when there is one it can read.
    fn get(&mut self, protocol: Protocol, has_base: bool) -> Bytes {
        let json = protocol == Protocol::Json;
        let delta = has_base && self.patch.is_some() && (!json || self.patch_is_text);
        let slot = usize::from(!json) * 2 + usize::from(delta);
        if let Some(b) = &self.encoded[slot] {
            return b.clone();
        }
        let mut push = self.push.clone();
        if let Some(p) = push.publication.as_mut() {
            let bytes = match (&self.patch, delta) {
                (Some(patch), true) => patch.as_slice(),
                _ => p.data.as_bytes(),
            };
            p.data = form(bytes, protocol);
            p.delta = delta;
        }
        let b = if json {
            wrap_push(&push)
        } else {
            Bytes::from(rotor_protocol::proto::encode_push_reply(&push))
        };
        self.encoded[slot] = Some(b.clone());
        b
    }
}

/// Data as a delta subscriber reads it: in JSON a string holding the bytes (the payload's
/// JSON text, or a delta), in Protobuf the bytes themselves.
fn form(bytes: &[u8], protocol: Protocol) -> Raw {
    match protocol {
        Protocol::Json => Raw::from_value(&*String::from_utf8_lossy(bytes)),
        Protocol::Protobuf => Raw::binary(bytes),
    }
}

/// Publications recovered by a delta subscriber, as it reads them: the first full, each
/// later one a delta against the one before when that is smaller.
pub(crate) fn recovered(pubs: &mut [Publication], protocol: Protocol) {
    let mut prev: Option<Vec<u8>> = None;
    for p in pubs.iter_mut() {
        let data = p.data.as_bytes().to_vec();
        let patch = prev
            .as_deref()
            .map(|prev| fossil::delta(prev, &data))
            .filter(|d| d.len() < data.len())
            .filter(|d| protocol == Protocol::Protobuf || std::str::from_utf8(d).is_ok());
        p.delta = patch.is_some();
        p.data = form(patch.as_deref().unwrap_or(&data), protocol);
        prev = Some(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64, text: &str) -> Publication {
        Publication {
            data: Raw::from_json(text).unwrap(),
            offset,
            ..Publication::default()
        }
    }

    /// What a JSON delta subscriber does with what it reads: the data is a string; a delta
    /// applies to the previous data's bytes.
    fn read(base: &mut Vec<u8>, p: &Publication) -> String {
        let s: String = p.data.parse().unwrap();
        *base = if p.delta {
            fossil::apply(base, s.as_bytes()).unwrap()
        } else {
            s.into_bytes()
        };
        String::from_utf8(base.clone()).unwrap()
    }

    #[test]
    fn recovered_publications_chain_deltas_that_reapply() {
        let doc = |n: u32| {
            format!(
                r#"{{"title":"a fairly long document title","counter":{n},"tail":"the same text every time"}}"#
            )
        };
        let mut pubs: Vec<Publication> = (1..=3).map(|n| publication(n.into(), &doc(n))).collect();
        recovered(&mut pubs, Protocol::Json);
        assert!(!pubs[0].delta, "the first is full");
        assert!(pubs[1].delta && pubs[2].delta);
        let mut base = Vec::new();
        for (n, p) in (1..=3).zip(&pubs) {
            assert_eq!(read(&mut base, p), doc(n));
        }
        // Protobuf: raw bytes.
        let mut pubs: Vec<Publication> = (1..=2).map(|n| publication(n.into(), &doc(n))).collect();
        recovered(&mut pubs, Protocol::Protobuf);
        let patched = fossil::apply(doc(1).as_bytes(), pubs[1].data.as_bytes()).unwrap();
        assert_eq!(patched, doc(2).as_bytes());
    }

    #[test]
    fn a_delta_that_splits_a_character_is_not_sent_as_json() {
        // A target whose only change is inside a multi-byte character: the literal the
        // delta carries is half of one. JSON subscribers get the full data instead.
        let before = format!(r#""{}é{}""#, "x".repeat(40), "y".repeat(40));
        let after = format!(r#""{}è{}""#, "x".repeat(40), "y".repeat(40));
        let d = fossil::delta(before.as_bytes(), after.as_bytes());
        let mut pubs = vec![publication(1, &before), publication(2, &after)];
        recovered(&mut pubs, Protocol::Json);
        if std::str::from_utf8(&d).is_err() {
            assert!(!pubs[1].delta, "a non-UTF-8 delta goes full");
        }
        let mut base = Vec::new();
        read(&mut base, &pubs[0]);
        assert_eq!(read(&mut base, &pubs[1]), after);
    }
}

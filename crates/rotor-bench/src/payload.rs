//! The benchmark payload: a JSON object carrying a sequence number and the publication's
//! *intended* send time, padded to a fixed size. The same bytes go to every server under
//! test; subscribers find the two numbers with a byte scan, so no target pays for a full JSON
//! parse on the load side.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the same clock in every process on this machine).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// `{"s":<seq>,"t":<intended ns>,"p":"xxx…"}`, padded to at least `size` bytes.
pub fn make(seq: u64, intended_ns: u64, size: usize) -> String {
    let mut s = format!("{{\"s\":{seq},\"t\":{intended_ns},\"p\":\"");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold((0u64, 0usize), |(v, n), b| {
            (v.wrapping_mul(10).wrapping_add(u64::from(b - b'0')), n + 1)
        });
    (digits.1 > 0).then_some(digits.0)
}

/// The sequence number and intended send time of a payload found anywhere in `bytes`
/// (a bare payload, a rotor push, a NATS `MSG`).
pub fn scan(bytes: &[u8]) -> Option<(u64, u64)> {
    Some((
        number_after(bytes, b"\"s\":")?,
        number_after(bytes, b"\"t\":")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_for_and_scan_back() {
        let p = make(42, 1_700_000_000_123_456_789, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(scan(p.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
        let push =
            format!("{{\"push\":{{\"channel\":\"c\",\"pub\":{{\"data\":{p},\"offset\":3}}}}}}");
        assert_eq!(scan(push.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
        assert_eq!(scan(b"{\"id\":1,\"connect\":{}}"), None);
    }
}

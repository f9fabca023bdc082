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

/// The number right at the start of `bytes` (None when there is no digit).
fn number_at(bytes: &[u8]) -> Option<(u64, usize)> {
    let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let v = bytes[..n].iter().fold(0u64, |v, b| {
        v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
    });
    (n > 0).then_some((v, n))
}

/// The sequence number and intended send time of a payload found anywhere in `bytes`
/// (a bare payload, a rotor push, a NATS `MSG`). The load side runs this for every message
/// it receives, so it searches with memchr's SIMD substring search and reads `"t"` right
/// after the sequence number where [`make`] put it.
pub fn scan(bytes: &[u8]) -> Option<(u64, u64)> {
    static SEQ: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"{\"s\":"));
    let at = SEQ.find(bytes)? + 5;
    let (seq, n) = number_at(&bytes[at..])?;
    let rest = &bytes[at + n..];
    let t_at = match rest.strip_prefix(b",\"t\":") {
        Some(_) => 5,
        None => memchr::memmem::find(rest, b"\"t\":")? + 4,
    };
    Some((seq, number_at(&rest[t_at..])?.0))
}

/// The `\n`-separated lines of a frame, found with memchr.
pub fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', frame).chain(std::iter::once(frame.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let line = &frame[start..end];
        start = end + 1;
        Some(line)
    })
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
        // Keys in another order still scan (the slow path).
        assert_eq!(scan(b"x{\"s\":7,\"p\":\"\",\"t\":9}"), Some((7, 9)));
        assert_eq!(scan(b"{\"s\":,\"t\":9}"), None);
    }

    #[test]
    fn lines_split_a_frame_like_the_sdks() {
        let got: Vec<&[u8]> = lines(b"{}\n{\"id\":1}\n{\"push\":{}}").collect();
        assert_eq!(got, [&b"{}"[..], b"{\"id\":1}", b"{\"push\":{}}"]);
        assert_eq!(lines(b"{}").count(), 1);
        assert_eq!(lines(b"").collect::<Vec<_>>(), [&b""[..]]);
    }
}

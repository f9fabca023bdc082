//! Fossil deltas (the format of the Fossil SCM, which the SDKs apply to publications sent
//! with `delta: true`): [`delta`] makes one, [`apply`] checks and applies one.
//!
//! A delta is the target's length, a newline, then commands: `N@O,` copies N bytes from
//! offset O of the source, `N:` followed by N bytes inserts them, and `C;` ends it with a
//! checksum of the target. Numbers are written in base 64 (`0-9A-Z_a-z~`, most significant
//! digit first). The encoder finds copies as Fossil's does: the source is indexed by a
//! rolling hash of 16-byte blocks, and a match found through the index is extended both ways
//! byte by byte, so every copy is checked, never assumed. No IO.

/// Block size of the source index and of the rolling hash window.
const NHASH: usize = 16;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Why a delta did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FossilError {
    #[error("malformed fossil delta: {0}")]
    Malformed(&'static str),
    #[error("fossil delta copies past the end of its source")]
    CopyPastSource,
    #[error("fossil delta output does not match its size or checksum")]
    BadOutput,
}

/// A delta that turns `source` into `target`.
pub fn delta(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 4 + 32);
    put_int(&mut out, target.len() as u64);
    out.push(b'\n');
    if source.len() <= NHASH {
        literal(&mut out, target);
        return finish(out, target);
    }
    // Every NHASH-byte block of the source, by the hash of its bytes; a chain links blocks
    // whose hashes share a bucket.
    let blocks = source.len() / NHASH;
    let mut chain = vec![u32::MAX; blocks];
    let mut bucket = vec![u32::MAX; blocks];
    for b in 0..blocks {
        let hv = Rolling::new(&source[b * NHASH..]).value() as usize % blocks;
        chain[b] = bucket[hv];
        bucket[hv] = b as u32;
    }
    let mut base = 0;
    while base + NHASH < target.len() {
        let mut h = Rolling::new(&target[base..]);
        let mut i = 0;
        // The best copy found from this base: (length, source offset, literal before it).
        let mut best: Option<(usize, usize, usize)> = None;
        loop {
            let mut block = bucket[h.value() as usize % blocks];
            let mut tries = 250;
            while block != u32::MAX && tries > 0 {
                tries -= 1;
                let at = block as usize * NHASH;
                let here = base + i;
                let forward = source[at..]
                    .iter()
                    .zip(&target[here..])
                    .take_while(|(a, b)| a == b)
                    .count();
                let backward = (1..=at.min(i))
                    .take_while(|k| source[at - k] == target[here - k])
                    .count();
                let count = forward + backward;
                let offset = at - backward;
                let lit = i - backward;
                let cost = digits(lit as u64) + digits(count as u64) + digits(offset as u64) + 3;
                if count >= cost && best.is_none_or(|(c, _, _)| count > c) {
                    best = Some((count, offset, lit));
                }
                block = chain[block as usize];
            }
            if let Some((count, offset, lit)) = best {
                literal(&mut out, &target[base..base + lit]);
                base += lit + count;
                put_int(&mut out, count as u64);
                out.push(b'@');
                put_int(&mut out, offset as u64);
                out.push(b',');
                break;
            }
            if base + i + NHASH >= target.len() {
                literal(&mut out, &target[base..]);
                base = target.len();
                break;
            }
            h.roll(target[base + i + NHASH]);
            i += 1;
        }
    }
    literal(&mut out, &target[base..]);
    finish(out, target)
}

/// Applies a delta made for `source`, checking its size and checksum.
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, FossilError> {
    let mut r = delta;
    let size = usize::try_from(get_int(&mut r)?).map_err(|_| FossilError::BadOutput)?;
    if take(&mut r, 1)? != b"\n" {
        return Err(FossilError::Malformed("size not ended by a newline"));
    }
    let mut out = Vec::with_capacity(size.min(delta.len().saturating_mul(64)));
    while !r.is_empty() {
        let n = get_int(&mut r)?;
        match take(&mut r, 1)?[0] {
            b'@' => {
                let offset = get_int(&mut r)?;
                if take(&mut r, 1)? != b"," {
                    return Err(FossilError::Malformed("copy not ended by a comma"));
                }
                let too_big = |_| FossilError::CopyPastSource;
                let from = usize::try_from(offset).map_err(too_big)?;
                let len = usize::try_from(n).map_err(too_big)?;
                let end = from.checked_add(len).ok_or(FossilError::CopyPastSource)?;
                if end > source.len() {
                    return Err(FossilError::CopyPastSource);
                }
                if out.len() + len > size {
                    return Err(FossilError::BadOutput);
                }
                out.extend_from_slice(&source[from..end]);
            }
            b':' => {
                let len = usize::try_from(n).map_err(|_| FossilError::BadOutput)?;
                if out.len().saturating_add(len) > size {
                    return Err(FossilError::BadOutput);
                }
                out.extend_from_slice(take(&mut r, len)?);
            }
            b';' => {
                if out.len() != size || u64::from(checksum(&out)) != n {
                    return Err(FossilError::BadOutput);
                }
                return Ok(out);
            }
            _ => return Err(FossilError::Malformed("unknown command")),
        }
    }
    Err(FossilError::Malformed("no checksum at the end"))
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_int(out, bytes.len() as u64);
        out.push(b':');
        out.extend_from_slice(bytes);
    }
}

fn finish(mut out: Vec<u8>, target: &[u8]) -> Vec<u8> {
    put_int(&mut out, u64::from(checksum(target)));
    out.push(b';');
    out
}

fn put_int(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 11];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// How many base-64 digits `v` takes.
fn digits(v: u64) -> usize {
    let mut n = 1;
    let mut rest = v >> 6;
    while rest > 0 {
        n += 1;
        rest >>= 6;
    }
    n
}

fn get_int(r: &mut &[u8]) -> Result<u64, FossilError> {
    let mut v: u64 = 0;
    let mut n = 0;
    while let Some(&c) = r.first() {
        let Some(d) = DIGITS.iter().position(|&x| x == c) else {
            break;
        };
        v = v
            .checked_mul(64)
            .and_then(|v| v.checked_add(d as u64))
            .ok_or(FossilError::Malformed("number too large"))?;
        *r = &r[1..];
        n += 1;
    }
    if n == 0 {
        return Err(FossilError::Malformed("number expected"));
    }
    Ok(v)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], FossilError> {
    if r.len() < n {
        return Err(FossilError::Malformed("truncated"));
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Ok(head)
}

/// The sum of the bytes as big-endian 32-bit words, the last one padded with zeros.
fn checksum(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(4);
    let mut sum = 0u32;
    for w in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    sum.wrapping_add(u32::from_be_bytes(tail))
}

/// Fossil's rolling hash of an NHASH-byte window.
struct Rolling {
    a: u16,
    b: u16,
    i: usize,
    window: [u8; NHASH],
}

impl Rolling {
    fn new(bytes: &[u8]) -> Rolling {
        let mut h = Rolling {
            a: 0,
            b: 0,
            i: 0,
            window: [0; NHASH],
        };
        h.window.copy_from_slice(&bytes[..NHASH]);
        for (k, &c) in h.window.iter().enumerate() {
            h.a = h.a.wrapping_add(u16::from(c));
            h.b =
                h.b.wrapping_add(((NHASH - k) as u16).wrapping_mul(u16::from(c)));
        }
        h
    }

    fn roll(&mut self, c: u8) {
        let old = self.window[self.i];
        self.window[self.i] = c;
        self.i = (self.i + 1) % NHASH;
        self.a = self
            .a
            .wrapping_sub(u16::from(old))
            .wrapping_add(u16::from(c));
        self.b = self
            .b
            .wrapping_sub((NHASH as u16).wrapping_mul(u16::from(old)))
            .wrapping_add(self.a);
    }

    fn value(&self) -> u32 {
        u32::from(self.a) | (u32::from(self.b) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_small_change_to_a_document_is_a_small_delta() {
        let before = br#"{"title":"Quarterly report","rows":[{"region":"north","sales":1200},{"region":"south","sales":950},{"region":"east","sales":1730},{"region":"west","sales":880}],"updated":"2026-12-05T10:00:00Z"}"#;
        let after = br#"{"title":"Quarterly report","rows":[{"region":"north","sales":1200},{"region":"south","sales":951},{"region":"east","sales":1730},{"region":"west","sales":880}],"updated":"2026-12-05T10:00:05Z"}"#;
        let d = delta(before, after);
        assert!(
            d.len() * 4 < after.len(),
            "{} bytes for {}",
            d.len(),
            after.len()
        );
        assert_eq!(apply(before, &d).unwrap(), after);
    }

    #[test]
    fn the_format_is_fossils() {
        // A source too short to copy from: the whole target as one literal.
        assert_eq!(delta(b"abc", b"hello"), b"5\n5:hello3NPMmh;".to_vec());
        assert_eq!(checksum(b"hello"), 0x68656c6c + 0x6f000000);
        let mut out = Vec::new();
        put_int(&mut out, 64 * 64);
        assert_eq!(out, b"100");
        assert_eq!(digits(63), 1);
        assert_eq!(digits(64), 2);
    }

    #[test]
    fn bad_deltas_are_errors() {
        let source = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let good = delta(source, b"0123456789abcdefghijklmnopqrstuvwxyz!");
        assert!(apply(source, &good).is_ok());
        let mut bad_sum = good.clone();
        let n = bad_sum.len();
        bad_sum[n - 2] = if bad_sum[n - 2] == b'0' { b'1' } else { b'0' };
        assert_eq!(apply(source, &bad_sum), Err(FossilError::BadOutput));
        assert!(apply(b"short", &good).is_err(), "copies past the source");
        assert!(apply(source, b"").is_err());
        assert!(apply(source, b"3\n3:ab").is_err());
        assert!(apply(source, b"3\n3?abc0;").is_err());
        assert!(apply(source, b"~~~~~~~~~~~~\n").is_err());
    }

    proptest! {
        #[test]
        fn every_delta_applies(
            source in proptest::collection::vec(any::<u8>(), 0..400),
            edits in proptest::collection::vec((0usize..400, proptest::collection::vec(any::<u8>(), 0..20)), 0..6),
        ) {
            // The target: the source with some spans replaced, so there is much to copy.
            let mut target = source.clone();
            for (at, bytes) in edits {
                let at = at.min(target.len());
                let end = (at + bytes.len() / 2).min(target.len());
                target.splice(at..end, bytes);
            }
            let d = delta(&source, &target);
            prop_assert_eq!(apply(&source, &d).unwrap(), target);
        }

        #[test]
        fn applying_garbage_never_panics(
            source in proptest::collection::vec(any::<u8>(), 0..64),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = apply(&source, &garbage);
        }
    }
}

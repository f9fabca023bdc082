//! WebSocket frames from clients (RFC 6455, section 5) turned into messages, without IO:
//! the reading half of the WebSocket transport (`ws.rs` owns the socket and writes).
//!
//! It keeps bytes only while a frame or a fragmented message is incomplete: between
//! messages a connection's reader holds no buffer at all, which is most of an idle
//! connection's life. It must not read sockets or decide protocol codes beyond naming what
//! was wrong. Public for the fuzz target (fuzz/fuzz_targets/ws_frames.rs).

use bytes::Bytes;

/// What a complete frame (or fragmented message) from the client amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping: the payload to send back in a pong.
    Ping(Vec<u8>),
    /// The client's close frame.
    Close,
}

/// Why the client's input is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A message (all its fragments) over the limit, known from a frame's header.
    TooLarge { len: u64 },
    /// A text message that is not UTF-8.
    NotUtf8,
    /// A frame no client may send.
    Protocol(&'static str),
}

/// A connection's reading state.
#[derive(Default)]
pub struct Reader {
    /// Bytes read but not taken yet: the start of a frame, or frames after the one
    /// returned. Empty, with no allocation, between messages.
    pending: Vec<u8>,
    /// A fragmented message being put together (boxed: rare, and one pointer otherwise).
    fragmented: Option<Box<Fragmented>>,
}

struct Fragmented {
    binary: bool,
    data: Vec<u8>,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask key included.
    size: usize,
    len: u64,
}

const CONTINUATION: u8 = 0;
const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

impl Reader {
    /// A reader that starts with bytes already read (sent right after the upgrade request).
    pub fn with(bytes: Vec<u8>) -> Reader {
        Reader {
            pending: bytes,
            fragmented: None,
        }
    }

    /// Bytes just read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes held (buffered input and a message being put together).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.pending.capacity() + self.fragmented.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// The next event in what was pushed, `None` until a whole one is there. A message's
    /// size is checked against `max_message` from its frames' headers, before their
    /// payloads are waited for.
    pub fn next(&mut self, max_message: usize) -> Result<Option<Event>, FrameError> {
        loop {
            let Some(h) = header(&self.pending)? else {
                return Ok(None);
            };
            if h.opcode >= CLOSE {
                if !h.fin {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if h.len > 125 {
                    return Err(FrameError::Protocol("control frame over 125 bytes"));
                }
            } else {
                let so_far = self.fragmented.as_ref().map_or(0, |f| f.data.len() as u64);
                if so_far + h.len > max_message as u64 {
                    return Err(FrameError::TooLarge {
                        len: so_far + h.len,
                    });
                }
            }
            let end = h.size as u64 + h.len;
            if (self.pending.len() as u64) < end {
                return Ok(None);
            }
            let end = end as usize;
            let mut payload = self.pending[h.size..end].to_vec();
            unmask(&mut payload, h.mask);
            self.take(end);
            match h.opcode {
                TEXT | BINARY if self.fragmented.is_some() => {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                TEXT | BINARY if h.fin => return message(h.opcode == BINARY, payload).map(Some),
                TEXT | BINARY => {
                    self.fragmented = Some(Box::new(Fragmented {
                        binary: h.opcode == BINARY,
                        data: payload,
                    }));
                }
                CONTINUATION => {
                    let Some(f) = self.fragmented.as_mut() else {
                        return Err(FrameError::Protocol("continuation without a message"));
                    };
                    f.data.extend_from_slice(&payload);
                    if h.fin {
                        let f = self.fragmented.take().expect("checked above");
                        return message(f.binary, f.data).map(Some);
                    }
                }
                CLOSE => return Ok(Some(Event::Close)),
                PING => return Ok(Some(Event::Ping(payload))),
                PONG => {}
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }

    /// Drops the first `n` pending bytes; all of them frees the buffer.
    fn take(&mut self, n: usize) {
        if n == self.pending.len() {
            self.pending = Vec::new();
        } else {
            self.pending.drain(..n);
        }
    }
}

fn message(binary: bool, data: Vec<u8>) -> Result<Event, FrameError> {
    if binary {
        Ok(Event::Binary(Bytes::from(data)))
    } else {
        String::from_utf8(data)
            .map(Event::Text)
            .map_err(|_| FrameError::NotUtf8)
    }
}

/// The header at the start of `bytes`, `None` while it is incomplete.
fn header(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, rest @ ..] = bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len, ext) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(l) => {
                let len = u64::from_be_bytes(l.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with its top bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let Some(mask) = rest.get(ext..ext + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask: mask.try_into().expect("4 bytes"),
        size: 2 + ext + 4,
        len,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// An unmasked server frame: `opcode` with FIN set, `payload` (at most 125 bytes: control
/// frames).
pub fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(payload.len() as u8);
    frame.extend_from_slice(payload);
    frame
}

/// The opcode of a pong (for [`control_frame`]).
pub const PONG_OPCODE: u8 = PONG;
/// The opcode of a close frame (for [`control_frame`]).
pub const CLOSE_OPCODE: u8 = CLOSE;

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Event, FrameError>> {
        let mut r = Reader::default();
        r.push(bytes);
        let mut out = Vec::new();
        loop {
            match r.next(max) {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn messages_are_unmasked_and_the_buffer_is_freed_after_them() {
        let mut bytes = frame(true, TEXT, b"{\"id\":1}");
        bytes.extend(frame(true, BINARY, &[1, 2, 3]));
        let mut r = Reader::default();
        r.push(&bytes);
        assert_eq!(r.next(1024), Ok(Some(Event::Text("{\"id\":1}".into()))));
        assert_eq!(
            r.next(1024),
            Ok(Some(Event::Binary(Bytes::from_static(&[1, 2, 3]))))
        );
        assert_eq!(r.next(1024), Ok(None));
        assert_eq!(r.held(), 0, "an idle connection holds no buffer");
    }

    #[test]
    fn a_frame_arriving_a_byte_at_a_time_is_read_once_whole() {
        let payload = "x".repeat(300); // a 16-bit length
        let bytes = frame(true, TEXT, payload.as_bytes());
        let mut r = Reader::default();
        for (i, b) in bytes.iter().enumerate() {
            r.push(std::slice::from_ref(b));
            let got = r.next(1024).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None, "byte {i}");
            } else {
                assert_eq!(got, Some(Event::Text(payload.clone())));
            }
        }
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn fragments_make_one_message_with_control_frames_between_them() {
        let mut bytes = frame(false, TEXT, b"he");
        bytes.extend(frame(true, PING, b"p"));
        bytes.extend(frame(true, PONG, b""));
        bytes.extend(frame(false, CONTINUATION, b"ll"));
        bytes.extend(frame(true, CONTINUATION, b"o"));
        assert_eq!(
            read_all(&bytes, 1024),
            vec![
                Ok(Event::Ping(b"p".to_vec())),
                Ok(Event::Text("hello".into()))
            ]
        );
    }

    #[test]
    fn close_is_reported() {
        assert_eq!(
            read_all(&frame(true, CLOSE, &1000u16.to_be_bytes()), 1024),
            vec![Ok(Event::Close)]
        );
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_header() {
        // Only the header has arrived: the refusal does not wait for the payload.
        let big = frame(true, TEXT, &vec![b'x'; 70_000]);
        assert_eq!(
            read_all(&big[..14], 65_536),
            vec![Err(FrameError::TooLarge { len: 70_000 })]
        );
        // Exactly at the limit is fine.
        let at = frame(true, BINARY, &vec![7; 1000]);
        assert!(matches!(read_all(&at, 1000)[..], [Ok(Event::Binary(_))]));
        // Fragments count together.
        let mut parts = frame(false, BINARY, &[0; 600]);
        parts.extend(frame(true, CONTINUATION, &[0; 600]));
        assert_eq!(
            read_all(&parts, 1000),
            vec![Err(FrameError::TooLarge { len: 1200 })]
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_refused() {
        assert_eq!(
            read_all(&frame(true, TEXT, &[0xc3, 0x28]), 1024),
            vec![Err(FrameError::NotUtf8)]
        );
    }

    #[test]
    fn frames_no_client_may_send_are_protocol_errors() {
        let protocol = |bytes: &[u8]| {
            matches!(
                read_all(bytes, 1024).last(),
                Some(Err(FrameError::Protocol(_)))
            )
        };
        let mut unmasked = frame(true, TEXT, b"a");
        unmasked[1] &= 0x7f;
        assert!(protocol(&unmasked), "unmasked");
        let mut rsv = frame(true, TEXT, b"a");
        rsv[0] |= 0x40;
        assert!(protocol(&rsv), "reserved bit");
        assert!(protocol(&frame(true, 3, b"")), "unknown opcode");
        assert!(protocol(&frame(false, PING, b"")), "fragmented ping");
        assert!(protocol(&frame(true, PING, &[0; 126])), "long ping");
        assert!(
            protocol(&frame(true, CONTINUATION, b"x")),
            "lone continuation"
        );
        let mut two = frame(false, TEXT, b"a");
        two.extend(frame(true, TEXT, b"b"));
        assert!(protocol(&two), "a message inside a message");
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(protocol(&huge), "64-bit length with the top bit set");
    }

    #[test]
    fn server_control_frames() {
        assert_eq!(control_frame(PONG_OPCODE, b"ab"), vec![0x8a, 2, b'a', b'b']);
        assert_eq!(
            control_frame(CLOSE_OPCODE, &[3, 232]),
            vec![0x88, 2, 3, 232]
        );
    }
}

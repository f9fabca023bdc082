//! `rotor_server::wsframe::Reader`: the WebSocket frames a client sends, read the way the
//! transport reads them (bytes pushed as the socket gives them, events taken until none is
//! complete). Byte 0 sets the size of the pieces the rest arrives in (1..=32 bytes, or all
//! at once for 0), so frames split across reads are covered.
//!
//! Beyond never panicking: the events are the same however the bytes were split; after the
//! last event the reader holds no more bytes than it was given; a message is never larger
//! than the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor_server::wsframe::{Event, FrameError, Reader};

const LIMIT: usize = 4096;

/// Everything `input` amounts to, pushed in pieces of `piece` bytes (0: all at once).
fn read(input: &[u8], piece: usize) -> Vec<Result<Event, FrameError>> {
    let mut reader = Reader::default();
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if piece == 0 {
        vec![input]
    } else {
        input.chunks(piece).collect()
    };
    for bytes in pieces {
        reader.push(bytes);
        loop {
            match reader.next(LIMIT) {
                Ok(Some(event)) => {
                    if let Event::Text(t) = &event {
                        assert!(t.len() <= LIMIT, "a message over the limit");
                    }
                    if let Event::Binary(b) = &event {
                        assert!(b.len() <= LIMIT, "a message over the limit");
                    }
                    out.push(Ok(event));
                }
                Ok(None) => break,
                Err(e) => {
                    // The transport closes the connection on any error.
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 33);
    let whole = read(input, 0);
    let split = read(input, piece);
    assert_eq!(whole, split, "events depend on how the bytes were split ({piece})");
});

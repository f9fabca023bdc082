//! The JSON codec of the client protocol: `decode_commands` (what every session runs on
//! every client frame, whatever the transport) and `decode_replies` (what rotor-client runs
//! on server frames), plus `Raw`, which carries client JSON verbatim.
//!
//! Properties checked, beyond "never panics":
//! - whatever decodes re-encodes to a frame without blank lines or a trailing newline;
//! - that frame decodes again to the same messages and re-encodes to the same text
//!   (decode . encode is the identity on decoded values, encode is deterministic);
//! - a `Raw` never contains a raw line break (it would split the frame).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor_protocol::{decode_commands, decode_replies, encode_frame, Raw};

fn check_frame_text(encoded: &str) {
    assert!(
        !encoded.ends_with('\n'),
        "encoded frame ends with a newline: {encoded:?}"
    );
    assert!(
        !encoded.contains("\n\n") && !encoded.starts_with('\n'),
        "encoded frame has a blank line: {encoded:?}"
    );
    assert!(
        !encoded.contains('\r'),
        "encoded frame has a raw carriage return: {encoded:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // Transports hand the session text: WebSocket text frames and emulation bodies are UTF-8
    // checked first. Non-UTF-8 input is still decoded lossily, as uni transports do.
    let owned;
    let frame = match std::str::from_utf8(data) {
        Ok(s) => s,
        Err(_) => {
            owned = String::from_utf8_lossy(data).into_owned();
            &owned
        }
    };

    if let Ok(commands) = decode_commands(frame) {
        for c in &commands {
            let _ = c.method().name();
        }
        let encoded = encode_frame(&commands);
        check_frame_text(&encoded);
        let again = decode_commands(&encoded).unwrap_or_else(|e| {
            panic!("re-encoded commands do not decode: {e}\nframe: {frame:?}\nencoded: {encoded:?}")
        });
        assert_eq!(
            again, commands,
            "commands changed in a round trip: {encoded:?}"
        );
        assert_eq!(encode_frame(&again), encoded, "encoding is not stable");
    }

    if let Ok(replies) = decode_replies(frame) {
        for r in &replies {
            let _ = r.is_ping();
        }
        let encoded = encode_frame(&replies);
        check_frame_text(&encoded);
        let again = decode_replies(&encoded).unwrap_or_else(|e| {
            panic!("re-encoded replies do not decode: {e}\nframe: {frame:?}\nencoded: {encoded:?}")
        });
        assert_eq!(
            again, replies,
            "replies changed in a round trip: {encoded:?}"
        );
        assert_eq!(encode_frame(&again), encoded, "encoding is not stable");
    }

    if let Ok(raw) = Raw::from_json(frame) {
        assert!(
            !raw.get().contains(['\n', '\r']),
            "Raw keeps a line break: {:?}",
            raw.get()
        );
        let _ = raw.parse::<serde_json::Value>();
        let again = Raw::from_value(&raw);
        assert_eq!(again, raw, "Raw changed when re-encoded");
    }
});

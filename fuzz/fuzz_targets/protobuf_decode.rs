//! The Protobuf codec of the client protocol: what a Protobuf session runs on every binary
//! frame (`Protocol::Protobuf.decode_commands`), what a client runs on server frames
//! (`decode_replies`), and the Protobuf body of `POST /emulation`
//! (`rotor_server::stream::EmulationRequest::parse_as`), whose commands go to the session.
//!
//! Properties checked, beyond "never panics" (and never allocating what a length claims:
//! libFuzzer's -rss_limit_mb catches that, lengths of 2^60 are in the dictionary):
//! - whatever decodes re-encodes, as a frame, to bytes that decode to the same messages;
//! - encoding is deterministic (the re-encoded frame encodes again to the same bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor_protocol::{Command, Protocol, Reply};
use rotor_server::stream::EmulationRequest;

fn commands(frame: &[u8]) {
    let p = Protocol::Protobuf;
    if let Ok(cmds) = p.decode_commands(frame) {
        let _ = cmds.iter().map(Command::method).count();
        let messages: Vec<Vec<u8>> = cmds.iter().map(|c| p.encode_command(c)).collect();
        let mut encoded = Vec::new();
        p.frame_into(&mut encoded, &messages);
        let again = p
            .decode_commands(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded commands do not decode: {e}: {encoded:?}"));
        assert_eq!(again, cmds, "commands changed in a round trip");
        let twice: Vec<Vec<u8>> = again.iter().map(|c| p.encode_command(c)).collect();
        assert_eq!(twice, messages, "encoding is not stable");
    }
}

fn replies(frame: &[u8]) {
    let p = Protocol::Protobuf;
    if let Ok(replies) = p.decode_replies(frame) {
        let _ = replies.iter().filter(|r| r.is_ping()).count();
        let messages: Vec<Vec<u8>> = replies.iter().map(|r| p.encode_reply(r)).collect();
        let mut encoded = Vec::new();
        p.stream_into(&mut encoded, &messages);
        let again: Vec<Reply> = p
            .decode_replies(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded replies do not decode: {e}: {encoded:?}"));
        assert_eq!(again, replies, "replies changed in a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    commands(data);
    replies(data);
    if let Ok(req) = EmulationRequest::parse_as(data, true) {
        match req.into_frame() {
            Ok(rotor_core::session::Inbound::Binary(frame)) => commands(&frame),
            other => panic!("a Protobuf emulation request gives a binary frame: {other:?}"),
        }
    }
});

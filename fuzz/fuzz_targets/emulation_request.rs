//! What rotor-server does with the bytes of the emulation and unidirectional HTTP transports
//! before a session exists, fed the same input in each role:
//!
//! 1. `POST /emulation` body: `{"session":..,"node":..,"data":"<frame>"}` parsed as
//!    `stream::post` does (and as `ForwardedEmulation` does with Redis-forwarded text), then
//!    `data` decoded as the session decodes every frame;
//! 2. `http_stream` POST body / `sse` `cf_connect` value: the first frame of an emulation
//!    session, decoded with `decode_commands`;
//! 3. `uni_http_stream` body / `uni_sse` `cf_connect` value / the first `uni_websocket`
//!    message: a `ConnectRequest`, parsed as `session::uni_connect_request` does (empty text
//!    means `{}`, a header token fills in);
//! 4. the query string of `sse` / `uni_sse` / `uni_websocket`, parsed as warp does
//!    (`serde_urlencoded` into a map), then its `cf_connect` as in 2 and 3.
//!
//! Steps 1 and 3 call rotor's own parsers (`rotor_server::stream::EmulationRequest::parse`,
//! `rotor_core::session::uni_connect_request`).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use rotor_protocol::{decode_commands, encode_frame, ConnectRequest};

use rotor_core::session::uni_connect_request as connect_request;
use rotor_server::stream::EmulationRequest;

/// A frame as the session sees it: decode, and whatever decodes must survive a round trip.
fn session_frame(frame: &str) {
    if let Ok(commands) = decode_commands(frame) {
        let _ = commands.iter().map(|c| c.method()).count();
        let encoded = encode_frame(&commands);
        let again = decode_commands(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}: {encoded:?}"));
        assert_eq!(again, commands);
    }
}

fn uni_connect(text: &str) {
    if let Ok(req) = connect_request(text, Some("header-token".into())) {
        assert!(!req.token.is_empty(), "fallback token not applied");
        let json = serde_json::to_string(&req).expect("ConnectRequest serializes");
        let again: ConnectRequest = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("re-encoded connect request does not parse: {e}: {json}"));
        assert_eq!(again, req);
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. POST /emulation (bytes as received), and the Redis-forwarded copy (lossy text).
    if let Ok(req) = EmulationRequest::parse(data) {
        let _ = (req.session.len(), req.node.len());
        session_frame(&req.data);
    }
    let lossy = String::from_utf8_lossy(data);
    if let Ok(req) = EmulationRequest::parse(lossy.as_bytes()) {
        session_frame(&req.data);
    }

    // 2. http_stream connect body: refused with 400 unless UTF-8.
    if let Ok(text) = std::str::from_utf8(data) {
        session_frame(text);
    }

    // 3. uni_http_stream body (lossy, as the server does).
    uni_connect(&lossy);

    // 4. Query strings (sse, uni_sse, uni_websocket).
    if let Ok(mut q) = serde_urlencoded::from_bytes::<HashMap<String, String>>(data) {
        if let Some(cf_connect) = q.remove("cf_connect") {
            session_frame(&cf_connect);
            uni_connect(&cf_connect);
        }
    }
});

//! The Protobuf protocol with the SDKs' own Protobuf builds: centrifuge-js
//! (`centrifuge/build/protobuf`) over WebSocket and http_stream, centrifuge-python with
//! `use_protobuf=True`. The same flows as the JSON tests (connect, subscribe, publications
//! from the API and from clients, presence, history, recovery, refresh, sub_refresh), binary
//! payloads, and JSON and Protobuf clients on one channel.

use std::time::Duration;

use rotor_tests::*;
use serde_json::{json, Value};

use super::sdk::{client_env, cmd, full_flow};

const T: Duration = Duration::from_secs(10);

fn protobuf_env(
    server: &TestServer,
    token: String,
    transport: &str,
) -> Vec<(&'static str, String)> {
    let mut env = client_env(server, token);
    env.push(("PROTOBUF", "1".into()));
    env.push(("TRANSPORT", transport.into()));
    env
}

#[tokio::test]
async fn centrifuge_js_protobuf_over_websocket_full_flow() {
    if !sdks_available("centrifuge_js_protobuf_over_websocket_full_flow") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut js = Script::node(
        "client.js",
        &protobuf_env(&server, user_token("alice"), "websocket"),
    );
    full_flow(&server, &mut js, "alice").await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn centrifuge_js_protobuf_over_http_stream_full_flow() {
    if !sdks_available("centrifuge_js_protobuf_over_http_stream_full_flow") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut js = Script::node(
        "client.js",
        &protobuf_env(&server, user_token("hana"), "http_stream"),
    );
    full_flow(&server, &mut js, "hana").await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn centrifuge_python_protobuf_full_flow() {
    if !sdks_available("centrifuge_python_protobuf_full_flow") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut py = Script::python(
        "client.py",
        &protobuf_env(&server, user_token("bob"), "websocket"),
    );
    full_flow(&server, &mut py, "bob").await;
    py.send(&json!({"op": "quit"}).to_string()).await;
    py.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_protobuf_refreshes_then_stops_on_unauthorized() {
    super::expiry::js_client_stays_connected_through_refreshes_then_stops_on_unauthorized_with(
        true,
    )
    .await;
}

#[tokio::test]
async fn js_protobuf_never_refreshing_gets_3005_then_109_then_a_new_token() {
    super::expiry::js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token_with(true)
        .await;
}

#[tokio::test]
async fn js_protobuf_subscription_token_lifecycle() {
    super::expiry::js_subscription_token_lifecycle_with(true).await;
}

/// Starts a client, subscribes it to `channel` and waits until it is subscribed.
async fn subscribed(mut s: Script, channel: &str) -> (Script, String) {
    s.expect("ready", T).await;
    s.send(&json!({"op": "subscribe", "channel": channel}).to_string())
        .await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let client = s.expect("connected", T).await["client"]
        .as_str()
        .unwrap()
        .to_string();
    s.expect("subscribed", T).await;
    (s, client)
}

/// The next publication a client sees.
async fn next_pub(s: &mut Script) -> Value {
    s.expect("publication", T).await
}

#[tokio::test]
async fn json_and_protobuf_clients_on_one_channel_both_receive_every_publication() {
    if !sdks_available("json_and_protobuf_clients_on_one_channel_both_receive_every_publication") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let ch = "chat:mixed";
    let (json_js, _) = subscribed(
        Script::node("client.js", &client_env(&server, user_token("jay"))),
        ch,
    )
    .await;
    let (proto_js, _) = subscribed(
        Script::node(
            "client.js",
            &protobuf_env(&server, user_token("pat"), "websocket"),
        ),
        ch,
    )
    .await;
    let (proto_py, py_client) = subscribed(
        Script::python(
            "client.py",
            &protobuf_env(&server, user_token("pia"), "websocket"),
        ),
        ch,
    )
    .await;
    // Which of them speak Protobuf: they see bytes, the JSON client sees JSON.
    let mut everyone = [json_js, proto_js, proto_py];
    const JSON_JS: usize = 0;
    const PROTO_PY: usize = 2;

    // JSON from the API: every client gets the same JSON value.
    cent(&server, "publish", json!({"channel": ch, "data": {"n": 1}})).await;
    for s in everyone.iter_mut() {
        let p = next_pub(s).await;
        assert_eq!(
            (p["data"].clone(), p["offset"].as_u64()),
            (json!({"n": 1}), Some(1))
        );
    }

    // Bytes that are not JSON, from a Protobuf client: Protobuf clients get them byte for
    // byte, the JSON client gets their base64 as a string.
    let bin = "AAEC/w==";
    cmd(
        &mut everyone[PROTO_PY],
        json!({"op": "publish", "channel": ch, "b64": bin}),
    )
    .await;
    for (i, s) in everyone.iter_mut().enumerate() {
        let p = next_pub(s).await;
        assert_eq!(p["offset"], 2, "{p}");
        assert_eq!(p["info"]["client"], py_client.as_str(), "{p}");
        if i != JSON_JS {
            assert_eq!(p["data_b64"], bin, "Protobuf: the bytes themselves: {p}");
        } else {
            assert_eq!(p["data"], bin, "JSON: the base64 string: {p}");
        }
    }

    // JSON from the JSON client reaches the Protobuf clients as its JSON text.
    cmd(
        &mut everyone[JSON_JS],
        json!({"op": "publish", "channel": ch, "data": {"from": "json"}}),
    )
    .await;
    for s in everyone.iter_mut() {
        assert_eq!(next_pub(s).await["data"], json!({"from": "json"}));
    }

    // b64data from the API (cent 5.2 always sends `data`, so over plain HTTP), many in a
    // row: nobody misses one, in order.
    for n in 0..20u8 {
        let b64 = base64_of(&[0xff, n]);
        let (status, r) = server
            .api("publish", json!({"channel": ch, "b64data": b64}))
            .await;
        assert_eq!(status, 200, "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }
    for s in everyone.iter_mut() {
        for n in 0..20u8 {
            let p = next_pub(s).await;
            let want = base64_of(&[0xff, n]);
            let got = p.get("data_b64").unwrap_or(&p["data"]);
            assert_eq!(got, &json!(want), "{p}");
            assert_eq!(p["offset"], 4 + u64::from(n));
        }
    }

    // History keeps the bytes: the Protobuf client reads them back exactly.
    let h = cmd(
        &mut everyone[PROTO_PY],
        json!({"op": "history", "channel": ch, "options": {"limit": 3}}),
    )
    .await;
    assert_eq!(h["publications"][1]["data_b64"], bin, "{h}");
    assert_eq!(h["publications"][0]["data"], json!({"n": 1}), "{h}");
    let h = cmd(
        &mut everyone[JSON_JS],
        json!({"op": "history", "channel": ch, "options": {"limit": 3}}),
    )
    .await;
    assert_eq!(h["publications"][1]["data"], bin, "{h}");

    for mut s in everyone {
        s.send(&json!({"op": "quit"}).to_string()).await;
        s.finish(T).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn protobuf_pings_are_empty_replies_and_the_empty_command_is_the_pong() {
    let mut config = test_config();
    config.client.ping_interval = Duration::from_millis(500);
    config.client.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;
    // Does not answer: 3012 (no pong) after the first ping and the pong timeout.
    let mut quiet = raw_protobuf(&server).await;
    let code = loop {
        match quiet.binary_frame(T).await {
            Ok(f) => assert!(f == [0x00], "only pings come: {f:?}"),
            Err((code, _)) => break code,
        }
    };
    assert_eq!(code, 3012);
    // Answers every ping with the empty command: still connected after many intervals.
    let mut ws = raw_protobuf(&server).await;
    let mut pings = 0;
    while pings < 4 {
        let frame = ws.binary_frame(T).await.expect("still connected");
        if frame == [0x00] {
            pings += 1;
            ws.send_binary(vec![0x00]).await;
        }
    }
    assert_eq!(
        server.node().info().num_clients,
        1,
        "the answering one is kept"
    );
    server.shutdown().await;
}

/// A raw Protobuf WebSocket (`?format=protobuf`, as Centrifugo also accepts), connected.
async fn raw_protobuf(server: &TestServer) -> RawWs {
    use rotor_protocol::{proto, Command, ConnectRequest, Protocol, Reply};
    let mut ws = RawWs::connect(&format!("{}?format=protobuf", server.ws_url())).await;
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: user_token("raw"),
            ..ConnectRequest::default()
        }),
        ..Command::default()
    };
    let mut frame = Vec::new();
    Protocol::Protobuf.frame_into(&mut frame, &[proto::encode(&connect)]);
    ws.send_binary(frame).await;
    let reply = ws.binary_frame(T).await.expect("a connect reply");
    let replies: Vec<Reply> = Protocol::Protobuf.decode_replies(&reply).unwrap();
    assert!(
        replies[0]
            .connect
            .as_ref()
            .is_some_and(|c| !c.client.is_empty()),
        "{replies:?}"
    );
    ws
}

#[tokio::test]
async fn protobuf_bad_input_closes_with_3501_or_1009_and_nothing_else_is_hurt() {
    let server = TestServer::start(test_config()).await;
    let mut bystander = raw_protobuf(&server).await;
    let mut huge_length = Vec::new();
    rotor_protocol::proto::put_varint(&mut huge_length, 1 << 62);
    huge_length.extend([0x08, 0x01]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0x05, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("a length of 2^62", huge_length),
        ("an unterminated varint", vec![0x80]),
        ("a varint of 11 bytes", vec![0xff; 11]),
        (
            "a nested length past the end",
            vec![0x04, 0x08, 0x02, 0x22, 0x7f],
        ),
        (
            "a string that is not UTF-8",
            vec![0x06, 0x22, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        ),
    ];
    for (what, frame) in cases {
        let mut ws = raw_protobuf(&server).await;
        ws.send_binary(frame).await;
        assert_eq!(
            ws.binary_frame(T).await.map_err(|e| e.0),
            Err(3501),
            "{what}"
        );
    }
    // A text frame on a Protobuf connection.
    let mut ws = raw_protobuf(&server).await;
    ws.send(r#"{"id":2,"presence":{"channel":"chat:x"}}"#).await;
    assert_eq!(ws.binary_frame(T).await.map_err(|e| e.0), Err(3501));
    // Over websocket.message_size_limit (64 KiB): 1009 before anything is decoded.
    let mut ws = raw_protobuf(&server).await;
    ws.send_binary(vec![0u8; 70_000]).await;
    assert_eq!(ws.binary_frame(T).await.map_err(|e| e.0), Err(1009));
    // The bystander is still served: a command gets its answer.
    let cmd = rotor_protocol::Command {
        id: 2,
        presence_stats: Some(rotor_protocol::PresenceStatsRequest {
            channel: "chat:x".into(),
        }),
        ..rotor_protocol::Command::default()
    };
    let mut frame = Vec::new();
    rotor_protocol::Protocol::Protobuf
        .frame_into(&mut frame, &[rotor_protocol::proto::encode(&cmd)]);
    bystander.send_binary(frame).await;
    let reply = loop {
        let f = bystander.binary_frame(T).await.expect("served");
        let r = rotor_protocol::Protocol::Protobuf
            .decode_replies(&f)
            .unwrap();
        if let Some(r) = r.into_iter().find(|r| r.id == 2) {
            break r;
        }
    };
    // Answered (chat: needs a subscription for presence stats, so 103, as for JSON).
    assert_eq!(reply.error.map(|e| e.code), Some(103));
    server.shutdown().await;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

//! Unidirectional transports with plain HTTP and WebSocket clients: connect, publications,
//! pings, the expiry disconnect, and connect errors mapped to disconnect codes.

use std::time::Duration;

use rotor_tests::*;
use serde_json::{json, Value};

fn config() -> rotor_server::Config {
    let mut c = test_config();
    c.client.expired_close_delay = Duration::from_secs(1);
    c
}

fn http_stream_request(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn uni_http_stream_connects_receives_and_is_expired() {
    let server = TestServer::start(config()).await;
    let t = token(json!({"sub": "walt", "exp": now() + 2, "channels": ["chat:uni"]}));
    let mut s = HttpStream::open(
        server.addr,
        &http_stream_request(&json!({"token": t}).to_string(), ""),
    )
    .await;
    assert_eq!(s.status, 200);
    let connect = s.push().await.unwrap();
    assert!(
        connect["connect"]["client"].is_string(),
        "a bare connect push: {connect}"
    );
    assert!(connect["connect"]["session"].is_string(), "{connect}");
    assert_eq!(connect["connect"]["expires"], true);
    assert!(
        connect["connect"]["subs"]["chat:uni"].is_object(),
        "{connect}"
    );
    assert!(
        connect["connect"].get("pong").is_none(),
        "no pong on unidirectional transports: {connect}"
    );

    server
        .api(
            "publish",
            json!({"channel": "chat:uni", "data": {"hello": "uni"}}),
        )
        .await;
    let p = s.push().await.unwrap();
    assert_eq!(
        p,
        json!({"channel": "chat:uni", "pub": {"data": {"hello": "uni"}, "offset": 1, "time": p["pub"]["time"]}})
    );

    let d = s.push().await.unwrap();
    assert_eq!(d["disconnect"]["code"], 3005, "expiry disconnect: {d}");
    assert_eq!(d["disconnect"]["reason"], "connection expired");
    assert!(
        s.line().await.is_none(),
        "the stream ends after the disconnect"
    );
    assert!(
        s.ended_with_last_chunk(),
        "the body ends with its last chunk, not just a closed connection"
    );
    assert!(
        s.headers.contains("connection: close"),
        "a stream ends its connection: {}",
        s.headers
    );
    server.shutdown().await;
}

/// A stream asked for on a keep-alive connection that served another request first: hyper
/// writes the stream's response head and hands the connection over; rotor writes the body
/// (connect, a publication, the disconnect and the last chunk) straight to the socket. Over
/// HTTP/1.0, which has no chunked bodies, a stream is refused with 505.
#[tokio::test]
async fn a_stream_takes_its_connection_over_after_other_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(config()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    // The health answer: its head and a short body with a content-length.
    while !first.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        first.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&first).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the health answer has a length");
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();

    let t = token(json!({"sub": "walt", "exp": now() + 2, "channels": ["chat:uni"]}));
    let mut s = HttpStream::open_on(
        tcp,
        &http_stream_request(&json!({"token": t}).to_string(), ""),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        s.headers.contains("transfer-encoding: chunked"),
        "{}",
        s.headers
    );
    let connect = s.push().await.unwrap();
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    server
        .api("publish", json!({"channel": "chat:uni", "data": "reused"}))
        .await;
    assert_eq!(s.push().await.unwrap()["pub"]["data"], "reused");
    let d = s.push().await.unwrap();
    assert_eq!(d["disconnect"]["code"], 3005, "{d}");
    assert!(s.line().await.is_none());
    assert!(s.ended_with_last_chunk());

    let old = format!(
        "POST /connection/uni_http_stream HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
        json!({"token": t}).to_string().len(),
        json!({"token": t})
    );
    let s = HttpStream::open(server.addr, &old).await;
    assert_eq!(s.status, 505, "{}", s.headers);
    server.shutdown().await;
}

#[tokio::test]
async fn uni_connect_errors_become_disconnects() {
    let server = TestServer::start(config()).await;
    let cases: Vec<(String, u64)> = vec![
        (token(json!({"sub": "x", "exp": now() - 5})), 3005),
        (
            rotor_auth::sign_hmac(&json!({"sub": "x"}), "bad").unwrap(),
            3500,
        ),
        (String::new(), 3501),
        (token(json!({"sub": "x", "channels": ["nope:1"]})), 3004),
    ];
    for (t, code) in cases {
        let mut s = HttpStream::open(
            server.addr,
            &http_stream_request(&json!({"token": t}).to_string(), ""),
        )
        .await;
        assert_eq!(s.status, 200);
        let d = s.push().await.unwrap();
        assert_eq!(d["disconnect"]["code"], code, "{d}");
        assert!(s.line().await.is_none());
    }
    let s = HttpStream::open(
        server.addr,
        &http_stream_request("{broken", "Connection: close\r\n"),
    )
    .await;
    assert_eq!(s.status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn uni_http_stream_takes_a_bearer_token_and_pings() {
    let mut c = config();
    c.client.ping_interval = Duration::from_millis(1000);
    c.client.pong_timeout = Duration::from_millis(200);
    let server = TestServer::start(c).await;
    let header = format!("Authorization: Bearer {}\r\n", user_token("xena"));
    let mut s = HttpStream::open(server.addr, &http_stream_request("", &header)).await;
    let connect = s.push().await.unwrap();
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    for _ in 0..2 {
        assert_eq!(
            s.message().await.unwrap(),
            json!({}),
            "pings are {{}} and need no answer"
        );
    }
    assert_eq!(
        server.node().info().num_clients,
        1,
        "still connected past the pong timeout"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn uni_sse_with_cf_connect_or_a_cookie() {
    let server = TestServer::start(config()).await;
    let t = token(json!({"sub": "yuri", "channels": ["chat:sse"]}));
    let by_query = format!(
        "GET /connection/uni_sse?cf_connect={} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        urlencode(&json!({"token": t}).to_string())
    );
    let by_cookie = format!("GET /connection/uni_sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nCookie: other=1; rotor_token={t}\r\n\r\n");
    for req in [by_query, by_cookie] {
        let mut s = HttpStream::open(server.addr, &req).await;
        assert_eq!(s.status, 200);
        assert!(
            s.headers.contains("content-type: text/event-stream"),
            "{}",
            s.headers
        );
        let connect = s.push().await.unwrap();
        assert!(connect["connect"]["client"].is_string(), "{connect}");
        server
            .api(
                "publish",
                json!({"channel": "chat:sse", "data": "over sse"}),
            )
            .await;
        let p = s.push().await.unwrap();
        assert_eq!(p["channel"], "chat:sse");
        assert_eq!(p["pub"]["data"], "over sse");
    }
    server.shutdown().await;
}

/// A uni_websocket connection that sent its connect request as the first message and got
/// the connect push.
async fn uni_ws_connected(url: &str, token: &str) -> RawWs {
    let mut ws = RawWs::connect(url).await;
    ws.send(&json!({ "token": token }).to_string()).await;
    let connect = ws.message().await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    ws
}

#[tokio::test]
async fn uni_websocket_first_message_or_cf_connect() {
    let server = TestServer::start(config()).await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let t = token(json!({"sub": "zed", "channels": ["chat:uws"]}));

    let mut ws = uni_ws_connected(&url, &t).await;
    server
        .api("publish", json!({"channel": "chat:uws", "data": 1}))
        .await;
    let p: Value = ws.message().await;
    assert_eq!(
        (p["channel"].as_str(), p["pub"]["data"].as_u64()),
        (Some("chat:uws"), Some(1)),
        "{p}"
    );
    // Frames from the client after the connect are ignored, not errors.
    ws.send("anything").await;
    server.api("disconnect", json!({"user": "zed"})).await;
    let d = ws.message().await;
    assert_eq!(d["disconnect"]["code"], 3503, "{d}");
    assert_eq!(
        ws.closed().await.0,
        3503,
        "a close frame follows the disconnect push"
    );

    let mut ws = RawWs::connect(&format!(
        "{url}?cf_connect={}",
        urlencode(&json!({"token": t}).to_string())
    ))
    .await;
    let connect = ws.message().await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");

    let mut ws = RawWs::connect(&url).await;
    ws.send("{not json").await;
    match ws.recv(Duration::from_secs(10)).await {
        Received::Close(code, _) => assert_eq!(code, 3501),
        other => panic!("a bad request gets a close frame alone, got {other:?}"),
    }
    // A binary first frame is not a connect request either.
    let mut ws = RawWs::connect(&url).await;
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.closed().await.0, 3501);
    server.shutdown().await;
}

/// Clients of the unidirectional WebSocket parse each frame as one JSON push (Centrifugo
/// sends one per frame by default), so pushes queued together still go out one per frame.
#[tokio::test]
async fn uni_websocket_sends_one_push_per_frame() {
    let server = TestServer::start(config()).await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let t = token(json!({"sub": "zed", "channels": ["chat:burst"]}));
    let mut ws = uni_ws_connected(&url, &t).await;
    // One API call publishing 50 times: the pushes queue before the session's next turn.
    let commands: Vec<Value> = (0..50)
        .map(|n| json!({"publish": {"channel": "chat:burst", "data": n}}))
        .collect();
    server.api("batch", json!({ "commands": commands })).await;
    let mut seen = Vec::new();
    while seen.len() < 50 {
        match ws.recv(Duration::from_secs(10)).await {
            Received::Messages(ms) => {
                assert_eq!(ms.len(), 1, "one push per frame, got {ms:?}");
                if let Some(n) = ms[0]["pub"]["data"].as_u64() {
                    seen.push(n);
                }
            }
            other => panic!("expected pushes, got {other:?}"),
        }
    }
    assert_eq!(seen, (0..50).collect::<Vec<u64>>());
    server.shutdown().await;
}

//! Hostile or broken input gets the protocol's code, never a panic or a hang, and never hurts
//! other clients.

use std::time::Duration;

use rotor_tests::*;
use serde_json::json;

#[tokio::test]
async fn garbage_frame_gets_3501_and_other_clients_keep_receiving() {
    let server = TestServer::start(test_config()).await;
    let (mut good, _) = RawWs::connected(&server.ws_url(), &user_token("good")).await;
    good.send(r#"{"id":2,"subscribe":{"channel":"chat:g"}}"#)
        .await;
    assert_eq!(good.reply().await["id"], 2);

    let (mut bad, _) = RawWs::connected(&server.ws_url(), &user_token("bad")).await;
    bad.send(r#"{"id":2,"subscribe":{"channel":"chat:g"}}"#)
        .await;
    bad.reply().await;
    bad.send("\u{1}\u{2} this is not json {{{").await;
    assert_eq!(bad.closed().await.0, 3501);

    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "chat:g", "data": "still here"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let push = good.message().await;
    assert_eq!(push["push"]["pub"]["data"], "still here");
    let stats = server
        .api("presence_stats", json!({"channel": "chat:g"}))
        .await
        .1;
    assert_eq!(
        stats["result"]["num_clients"], 1,
        "the bad client left presence: {stats}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let server = TestServer::start(test_config()).await;
    // A command before connect.
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(r#"{"id":1,"subscribe":{"channel":"chat:x"}}"#)
        .await;
    assert_eq!(ws.closed().await.0, 3501);
    // A binary frame.
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    ws.send_binary(vec![0, 1, 2]).await;
    assert_eq!(ws.closed().await.0, 3501);
    // A command without an id (other than send/pong).
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    ws.send(r#"{"subscribe":{"channel":"chat:x"}}"#).await;
    assert_eq!(ws.closed().await.0, 3501);
    // A message over the size limit closes with 1009 (terminal for centrifuge-js).
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    let big = format!(
        r#"{{"id":2,"publish":{{"channel":"open:x","data":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    ws.send(&big).await;
    assert_eq!(ws.closed().await.0, 1009);
    server.shutdown().await;
}

#[tokio::test]
async fn errors_that_keep_the_connection() {
    let server = TestServer::start(test_config()).await;
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    let cases = [
        (r#"{"id":2,"frobnicate":{}}"#, 104),
        (r#"{"id":3,"subscribe":{"channel":"nope:x"}}"#, 102),
        (r#"{"id":4,"subscribe":{"channel":"locked:x"}}"#, 103),
        (r#"{"id":5,"subscribe":{"channel":"$private"}}"#, 103),
        (r#"{"id":6,"rpc":{"method":"m","data":{}}}"#, 108),
        (r#"{"id":7,"presence":{"channel":"open:x"}}"#, 108),
        (r#"{"id":8,"history":{"channel":"chat:x","limit":1}}"#, 103),
        (r#"{"id":9,"publish":{"channel":"chat:x","data":1}}"#, 103),
        (r#"{"id":10,"subscribe":{"channel":""}}"#, 107),
    ];
    for (cmd, code) in cases {
        ws.send(cmd).await;
        let reply = ws.reply().await;
        assert_eq!(reply["error"]["code"], code, "{cmd} -> {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "messages are always present: {reply}"
        );
    }
    ws.send(r#"{"id":11,"subscribe":{"channel":"chat:x"}}"#)
        .await;
    assert!(ws.reply().await["subscribe"].is_object());
    ws.send(r#"{"id":12,"subscribe":{"channel":"chat:x"}}"#)
        .await;
    assert_eq!(ws.reply().await["error"]["code"], 105);
    // Unsubscribe always succeeds, subscribed or not.
    ws.send(r#"{"id":13,"unsubscribe":{"channel":"chat:never"}}"#)
        .await;
    assert_eq!(ws.reply().await, json!({"id": 13, "unsubscribe": {}}));
    // Batched commands are answered in order in one frame, with empty results written.
    ws.send("{\"id\":14,\"publish\":{\"channel\":\"open:x\",\"data\":{}}}\n{\"id\":15,\"unsubscribe\":{\"channel\":\"chat:x\"}}").await;
    match ws.recv(Duration::from_secs(5)).await {
        Received::Messages(m) => assert_eq!(
            m,
            vec![
                json!({"id": 14, "publish": {}}),
                json!({"id": 15, "unsubscribe": {}})
            ]
        ),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn pings_are_sent_and_a_missing_pong_closes_with_3012() {
    let mut config = test_config();
    config.client.ping_interval = Duration::from_millis(1000);
    config.client.pong_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let (mut ws, reply) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    assert_eq!(reply["connect"]["ping"], 1);
    assert_eq!(reply["connect"]["pong"], true);
    // Answering pings keeps the connection.
    for _ in 0..2 {
        match ws.recv(Duration::from_secs(3)).await {
            Received::Messages(m) => {
                assert_eq!(m, vec![json!({})], "a server ping is an empty object")
            }
            other => panic!("{other:?}"),
        }
        ws.send("{}").await;
    }
    // Not answering closes it.
    match ws.recv(Duration::from_secs(3)).await {
        Received::Messages(m) => assert_eq!(m, vec![json!({})]),
        other => panic!("{other:?}"),
    }
    assert_eq!(ws.closed().await, (3012, "no pong".to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_never_connects_is_closed_as_stale() {
    let mut config = test_config();
    config.client.stale_close_delay = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut ws = RawWs::connect(&server.ws_url()).await;
    assert_eq!(ws.closed().await.0, 3502);
    server.shutdown().await;
}

#[tokio::test]
async fn origin_check() {
    let mut config = test_config();
    config.client.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(config).await;
    let req = |origin: &str| {
        format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    let (status, _) = http_head(server.addr, &req("https://evil.example.com")).await;
    assert_eq!(status, 403);
    let (status, _) = http_head(server.addr, &req("https://app.example.com")).await;
    assert_eq!(status, 101);
    server.shutdown().await;
}

/// Sends a request and reads only the status line (for upgrades that keep the socket open).
async fn http_head(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    (
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        text,
    )
}

/// A client that sends its first WebSocket frame in the same packet as the upgrade request
/// (hyper has already read it when it hands the socket over) gets it answered.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(test_config()).await;
    let command = json!({"id": 1, "connect": {"token": user_token("early")}}).to_string();
    // A masked text frame (clients must mask), length in the 16-bit form.
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&(command.len() as u16).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(command.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut packet = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    packet.extend_from_slice(&frame);
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&packet).await.unwrap();
    let mut got = Vec::new();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(at) = text.find("{\"id\":1") {
                return text[at..].to_string();
            }
        }
    })
    .await
    .expect("no reply to the early frame");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(reply.contains("\"connect\""), "{reply}");
    assert!(reply.contains("\"client\""), "{reply}");
}

/// A WebSocket opened by hand on a raw socket (the client side of the closing handshake is
/// what the tests look at, so no library sits in between).
async fn raw_websocket(server: &TestServer) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The header of a masked client frame (mask key 0: the payload goes as it is).
fn client_frame_header(opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Reads until the server's close frame and returns its code; `None` when the connection
/// ended (or was reset) without one.
async fn close_code(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // Frames from the server are unmasked; find a close frame's first two bytes.
        if let Some(at) = got
            .windows(2)
            .position(|w| w[0] == 0x88 && w[1] >= 2 && w[1] < 126)
        {
            if got.len() >= at + 4 {
                return Some(u16::from_be_bytes([got[at + 2], got[at + 3]]));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("neither a close frame nor an end within 10 s"),
        }
    }
}

#[tokio::test]
async fn a_message_far_over_the_limit_gets_its_1009_after_sending_it_all() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(test_config()).await;
    for _ in 0..3 {
        let mut s = raw_websocket(&server).await;
        // 16 MiB announced and all of it sent before reading, as a client that writes a
        // big message does (more than the socket buffers hold); the limit is 64 KiB.
        let len = 16 << 20;
        let mut message = client_frame_header(1, len);
        message.resize(message.len() + len, b'x');
        let sent = s.write_all(&message).await;
        // Before the closing handshake drained, the server closed with the rest unread:
        // the kernel reset the connection and the close frame was lost (1006).
        assert!(
            sent.is_ok(),
            "the server reads what comes until it is all there"
        );
        assert_eq!(close_code(&mut s).await, Some(1009));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_gets_1007() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(test_config()).await;
    let mut s = raw_websocket(&server).await;
    let payload = [0xc3, 0x28, b'{', b'}'];
    let mut frame = client_frame_header(1, payload.len());
    frame.extend_from_slice(&payload);
    s.write_all(&frame).await.unwrap();
    assert_eq!(close_code(&mut s).await, Some(1007));
    server.shutdown().await;
}

/// Sends a request head announcing `len` body bytes and then all of them, then reads the
/// answer's status line; `Err` when the write or the read failed (a reset).
async fn post_all_then_read(
    addr: std::net::SocketAddr,
    head: &str,
    len: usize,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = head.replace("{len}", &len.to_string()).into_bytes();
    request.resize(request.len() + len, b'x');
    s.write_all(&request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) => return Err("ended without an answer".into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err("no answer within 10 s".into()),
        }
    }
    Ok(String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

#[tokio::test]
async fn refused_http_bodies_get_their_status_after_sending_it_all() {
    let server = TestServer::start(test_config()).await;
    // Over emulation.max_request_body_size: 413; a wrong API key: 401. 16 MiB each, more
    // than the socket buffers hold, so the server must read what it does not want.
    let cases = [
        ("POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n", "413"),
        ("POST /emulation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n", "413"),
        ("POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong\r\nContent-Length: {len}\r\n\r\n", "401"),
    ];
    for (head, want) in cases {
        let status = post_all_then_read(server.addr, head, 16 << 20).await;
        assert!(
            status.as_ref().is_ok_and(|s| s.contains(want)),
            "{want} for {}: {status:?}",
            head.lines().next().unwrap()
        );
    }
    server.shutdown().await;
}

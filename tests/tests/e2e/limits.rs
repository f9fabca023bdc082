//! Every limit answers with the protocol's own code, counts in `rotor_limit_hits_total`, and
//! leaves other clients alone.

use std::collections::HashMap;
use std::time::Duration;

use rotor_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn limit_hits(server: &TestServer) -> HashMap<String, f64> {
    metrics(server.addr)
        .await
        .into_iter()
        .filter_map(|(series, v)| {
            let limit = series
                .strip_prefix("rotor_limit_hits_total{limit=\"")?
                .strip_suffix("\"}")?;
            Some((limit.to_string(), v))
        })
        .collect()
}

/// Sends a connect command and returns the close code the server answers with.
async fn refused_connect(server: &TestServer, token: &str) -> (u16, String) {
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    ws.closed().await
}

#[tokio::test]
async fn connections_per_user_and_per_node_close_with_3504() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.user_connection_limit = 2;
    config.client.connection_limit = 3;
    let server = TestServer::start(config).await;

    let (mut a1, _) = RawWs::connected(&server.ws_url(), &user_token("alice")).await;
    let (a2, _) = RawWs::connected(&server.ws_url(), &user_token("alice")).await;
    assert_eq!(
        refused_connect(&server, &user_token("alice")).await,
        (3504, "connection limit".to_string()),
        "a third connection of one user"
    );
    let (_b1, _) = RawWs::connected(&server.ws_url(), &user_token("bob")).await;
    assert_eq!(
        refused_connect(&server, &user_token("carol")).await.0,
        3504,
        "a fourth connection on the node"
    );

    // The connections inside the limits work on.
    a1.send(r#"{"id":2,"subscribe":{"channel":"open:x"}}"#)
        .await;
    assert!(a1.reply().await["subscribe"].is_object());
    server
        .api("publish", json!({"channel": "open:x", "data": {"n": 1}}))
        .await;
    assert_eq!(a1.message().await["push"]["pub"]["data"]["n"], 1);

    let hits = limit_hits(&server).await;
    assert_eq!(hits["connections_per_user"], 1.0, "{hits:?}");
    assert_eq!(hits["connections_per_node"], 1.0, "{hits:?}");

    // A closed connection frees its place.
    drop(a2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut ws = RawWs::connect(&server.ws_url()).await;
        ws.send(&json!({"id": 1, "connect": {"token": user_token("alice")}}).to_string())
            .await;
        match ws.recv(Duration::from_secs(5)).await {
            Received::Messages(m) if m[0]["connect"].is_object() => break,
            Received::Close(3504, _) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("alice could not reconnect after closing one: {other:?}"),
        }
    }

    server.shutdown().await;
}

#[tokio::test]
async fn channel_limit_is_error_106_for_subscribe_and_3505_for_token_channels() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.channel_limit = 2;
    let server = TestServer::start(config).await;

    let too_many = token(json!({"sub": "u", "channels": ["open:a", "open:b", "open:c"]}));
    assert_eq!(refused_connect(&server, &too_many).await.0, 3505);

    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("u")).await;
    for (id, ch) in [(2, "open:a"), (3, "open:b")] {
        ws.send(&json!({"id": id, "subscribe": {"channel": ch}}).to_string())
            .await;
        assert!(ws.reply().await["subscribe"].is_object());
    }
    ws.send(r#"{"id":4,"subscribe":{"channel":"open:c"}}"#)
        .await;
    assert_eq!(ws.reply().await["error"]["code"], 106);
    // The connection stays, and a freed place can be used.
    ws.send(r#"{"id":5,"unsubscribe":{"channel":"open:a"}}"#)
        .await;
    ws.reply().await;
    ws.send(r#"{"id":6,"subscribe":{"channel":"open:c"}}"#)
        .await;
    assert!(ws.reply().await["subscribe"].is_object());

    let hits = limit_hits(&server).await;
    assert_eq!(hits["channels_per_connection"], 2.0, "{hits:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn command_rate_limit_answers_111_then_closes_with_3013() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.command_rate_limit = 1;
    config.client.command_rate_burst = 3;
    let server = TestServer::start(config).await;
    let (mut calm, _) = RawWs::connected(&server.ws_url(), &user_token("calm")).await;
    // The connect took one of three tokens: of four pings in one frame, two pass.
    let (mut flood, _) = RawWs::connected(&server.ws_url(), &user_token("flood")).await;
    flood
        .send("{\"id\":2,\"ping\":{}}\n{\"id\":3,\"ping\":{}}\n{\"id\":4,\"ping\":{}}\n{\"id\":5,\"ping\":{}}")
        .await;
    let replies = match flood.recv(Duration::from_secs(5)).await {
        Received::Messages(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(replies[0], json!({"id": 2, "ping": {}}));
    assert_eq!(replies[1], json!({"id": 3, "ping": {}}));
    assert_eq!(replies[2]["error"]["code"], 111, "{replies:?}");
    assert_eq!(replies[3]["error"]["code"], 111, "{replies:?}");
    // Going on while refused ends the connection.
    let mut id = 6;
    let code = loop {
        assert!(id < 40, "never disconnected");
        flood
            .send(&format!(
                "{{\"id\":{id},\"ping\":{{}}}}\n{{\"id\":{},\"ping\":{{}}}}",
                id + 1
            ))
            .await;
        id += 2;
        match flood.recv(Duration::from_secs(5)).await {
            Received::Messages(m) => assert!(
                m.iter()
                    .all(|r| r["error"]["code"] == 111 || r["ping"].is_object()),
                "{m:?}"
            ),
            Received::Close(code, _) => break code,
            Received::Ended => panic!("ended without a close frame"),
        }
    };
    assert_eq!(code, 3013);
    // The calm client was never refused.
    calm.send(r#"{"id":2,"ping":{}}"#).await;
    assert_eq!(calm.reply().await, json!({"id": 2, "ping": {}}));
    assert!(limit_hits(&server).await["command_rate"] >= 3.0);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_publication_gets_107_and_subscribers_keep_receiving() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.publication_max_size = 100;
    let server = TestServer::start(config).await;
    let (mut sub, _) = RawWs::connected(&server.ws_url(), &user_token("s")).await;
    sub.send(r#"{"id":2,"subscribe":{"channel":"open:p"}}"#)
        .await;
    sub.reply().await;
    let (mut publisher, _) = RawWs::connected(&server.ws_url(), &user_token("p")).await;
    let big = json!({"id": 2, "publish": {"channel": "open:p", "data": "x".repeat(200)}});
    publisher.send(&big.to_string()).await;
    let reply = publisher.reply().await;
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    let small = json!({"id": 3, "publish": {"channel": "open:p", "data": "small"}});
    publisher.send(&small.to_string()).await;
    assert_eq!(publisher.reply().await, json!({"id": 3, "publish": {}}));
    assert_eq!(sub.message().await["push"]["pub"]["data"], "small");
    assert_eq!(limit_hits(&server).await["publication_size"], 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_headers_never_finish_is_closed() {
    let mut config = test_config();
    config.http_server.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A well-behaved client is served meanwhile.
    let (status, _) = http_raw(
        server.addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a request without headers open for 5 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_emulation_session_whose_client_goes_silent_is_closed_with_3012() {
    let mut config = test_config();
    config.client.ping_interval = Duration::from_millis(500);
    config.client.pong_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let connect = json!({"id": 1, "connect": {"token": user_token("quiet")}}).to_string();
    let req = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{connect}",
        connect.len()
    );
    let mut stream = HttpStream::open(server.addr, &req).await;
    let reply = stream.message().await.unwrap();
    assert_eq!(reply["connect"]["pong"], true, "{reply}");
    // The client never POSTs a pong: the session ends with 3012 on its stream and leaves
    // the node (no emulation session lingers without a reader).
    let started = tokio::time::Instant::now();
    let disconnect = loop {
        match stream.message().await {
            Some(m) if m["push"]["disconnect"].is_object() => break m,
            Some(_) => continue,
            None => panic!("the stream ended without a disconnect push"),
        }
    };
    assert_eq!(
        disconnect["push"]["disconnect"]["code"], 3012,
        "{disconnect}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.node().hub().num_clients() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the session stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn history_requests_are_capped_at_the_configured_limit() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.history_max_publication_limit = 5;
    let server = TestServer::start(config).await;
    for n in 0..8 {
        server
            .api("publish", json!({"channel": "chat:h", "data": {"n": n}}))
            .await;
    }
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("reader")).await;
    ws.send(r#"{"id":2,"subscribe":{"channel":"chat:h"}}"#)
        .await;
    ws.reply().await;
    ws.send(r#"{"id":3,"history":{"channel":"chat:h","limit":100}}"#)
        .await;
    let reply = ws.reply().await;
    let pubs = reply["history"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 5, "{reply}");
    assert_eq!(pubs[0]["data"]["n"], 0, "the oldest first: {reply}");
    assert_eq!(limit_hits(&server).await["history_limit"], 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_body_that_never_finishes_gets_408() {
    let mut config = test_config();
    config.http_server.body_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    for (path, key) in [("/api/info", true), ("/connection/http_stream", false)] {
        let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let auth = if key {
            format!("X-API-Key: {API_KEY}\r\n")
        } else {
            String::new()
        };
        slow.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{{\"par")
                .as_bytes(),
        )
        .await
        .unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(started.elapsed() < Duration::from_secs(3), "{path}");
    }
    // A complete request is answered as usual.
    let (status, _) = server.api("info", json!({})).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_api_body_gets_413_before_it_is_sent() {
    let server = TestServer::start(test_config()).await;
    // Only the headers: the answer comes from Content-Length, nothing is buffered.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: {}\r\n\r\n",
            17 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn channel_names_are_checked_for_length_and_characters() {
    let mut config = test_config();
    config.channel.max_length = 20;
    let server = TestServer::start(config).await;
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("names")).await;
    let long = format!("open:{}", "x".repeat(16));
    for (id, ch) in [
        (2, long.as_str()),
        (3, "open:with space"),
        (4, "open:tab\there"),
        (5, "open:nul\u{0}"),
        (6, "open:ünïcode"),
    ] {
        ws.send(&json!({"id": id, "subscribe": {"channel": ch}}).to_string())
            .await;
        let reply = ws.reply().await;
        assert_eq!(reply["error"]["code"], 107, "{ch:?}: {reply}");
    }
    // The connection is fine and a good name of the maximum length works.
    let ok = format!("open:{}", "x".repeat(15));
    ws.send(&json!({"id": 7, "subscribe": {"channel": ok}}).to_string())
        .await;
    assert!(ws.reply().await["subscribe"].is_object());
    server.shutdown().await;
}

#[test]
fn zero_request_timeouts_are_configuration_errors() {
    for set in [
        |c: &mut rotor_server::Config| c.http_server.header_read_timeout = Duration::ZERO,
        |c: &mut rotor_server::Config| c.http_server.body_read_timeout = Duration::ZERO,
    ] {
        let mut config = test_config();
        set(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("must be above zero"), "{err}");
    }
    assert!(test_config().validate().is_ok());
}

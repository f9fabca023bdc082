//! The same centrifuge-js scenarios on every bidirectional transport (websocket, http_stream,
//! sse), the emulation endpoint's status codes, and slow consumers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rotor_tests::*;
use serde_json::json;

use super::sdk::{client_env, full_flow};

const T: Duration = Duration::from_secs(10);

fn js_on(server: &TestServer, transport: &str, token: Option<String>) -> Script {
    let mut env = match token {
        Some(t) => client_env(server, t),
        None => vec![("BASE", server.http_url()), ("GET_TOKEN", "1".into())],
    };
    env.push(("TRANSPORT", transport.into()));
    Script::node("client.js", &env)
}

/// The foundation flow: connect, subscribe, publications from cent and the client,
/// presence, history, recovery after reconnect.
async fn js_full_flow_on(transport: &str) {
    if !sdks_available(&format!("js_full_flow_on_{transport}")) {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut js = js_on(&server, transport, Some(user_token("tina")));
    full_flow(&server, &mut js, "tina").await;
    let connected = js
        .seen
        .iter()
        .find(|e| e["event"] == "connected")
        .unwrap()
        .clone();
    assert_eq!(connected["transport"], transport, "{connected}");
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

/// Token refresh in place, a server disconnect with a reconnect code (the client comes back
/// and recovers), and a refused refresh (terminal 3500).
async fn js_lifecycle_on(transport: &str) {
    if !sdks_available(&format!("js_lifecycle_on_{transport}")) {
        return;
    }
    let mut config = test_config();
    // The SDK refreshes when `ttl` runs out; the grace delay is its whole margin. A busy CI
    // machine (many node processes at once) has been seen to need more than 1 s for the
    // get_token round trip through this harness, so give it 3 s.
    config.client.expired_close_delay = Duration::from_secs(3);
    let server = TestServer::start(config).await;
    let short = |user: &str, secs: u64| token(json!({"sub": user, "exp": now() + secs}));
    let mut c = js_on(&server, transport, None);
    c.expect("ready", T).await;
    c.send(&json!({"op": "subscribe", "channel": "chat:lc"}).to_string())
        .await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    c.expect("get_token", T).await;
    c.send(&json!({"op": "token", "token": short("uma", 2)}).to_string())
        .await;
    let first = c.expect("connected", T).await;
    assert_eq!(first["transport"], transport);
    c.expect("subscribed", T).await;

    // Two refreshes in place.
    for _ in 0..2 {
        c.expect("get_token", T).await;
        c.send(&json!({"op": "token", "token": short("uma", 2)}).to_string())
            .await;
    }
    server
        .api("publish", json!({"channel": "chat:lc", "data": {"n": 1}}))
        .await;
    assert_eq!(c.expect("publication", T).await["offset"], 1);
    let connects: Vec<_> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "connected" || e["event"] == "connecting")
        .collect();
    assert_eq!(
        c.seen.iter().filter(|e| e["event"] == "connected").count(),
        1,
        "refreshed without reconnecting: {connects:?}"
    );

    // The backend forces a reconnect; what is published meanwhile is recovered.
    let (status, r) = server
        .api(
            "disconnect",
            json!({"user": "uma", "disconnect": {"code": 3011, "reason": "force reconnect"}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let closing = c.expect_where("connecting", |e| e["code"] != 0, T).await;
    assert_eq!(closing["code"], 3011, "{closing}");
    server
        .api("publish", json!({"channel": "chat:lc", "data": {"n": 2}}))
        .await;
    // The reconnect may carry a token that expired meanwhile: answer any request for one.
    loop {
        let e = c
            .expect_any(&["get_token", "connected"], Duration::from_secs(15))
            .await;
        if e["event"] == "connected" {
            assert_ne!(e["client"], first["client"], "a new connection");
            break;
        }
        c.send(&json!({"op": "token", "token": short("uma", 2)}).to_string())
            .await;
    }
    let sub = c
        .expect_where("subscribed", |e| e["wasRecovering"] == true, T)
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let p = c.expect_where("publication", |e| e["offset"] == 2, T).await;
    assert_eq!(p["data"], json!({"n": 2}));

    // A refresh with a token for another user: 3500, and the client stops.
    c.expect("get_token", T).await;
    c.send(&json!({"op": "token", "token": short("someone-else", 60)}).to_string())
        .await;
    let d = c.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "{d}");
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_full_flow_on_http_stream() {
    js_full_flow_on("http_stream").await;
}

#[tokio::test]
async fn js_full_flow_on_sse() {
    js_full_flow_on("sse").await;
}

#[tokio::test]
async fn js_lifecycle_on_websocket() {
    js_lifecycle_on("websocket").await;
}

#[tokio::test]
async fn js_lifecycle_on_http_stream() {
    js_lifecycle_on("http_stream").await;
}

#[tokio::test]
async fn js_lifecycle_on_sse() {
    js_lifecycle_on("sse").await;
}

#[tokio::test]
async fn emulation_endpoint_status_codes() {
    let server = TestServer::start(test_config()).await;
    let post = |body: String| {
        http_post(
            server.addr,
            "/emulation",
            &[],
            Box::leak(body.into_boxed_str()),
        )
    };
    assert_eq!(
        post(json!({"session": "nope", "node": "n", "data": "{}"}).to_string())
            .await
            .0,
        404
    );
    assert_eq!(post("not json".into()).await.0, 400);
    assert_eq!(
        post(json!({"session": "x", "node": "n", "data": {"connect": {}}}).to_string())
            .await
            .0,
        400,
        "data must be a string"
    );

    // A live http_stream session takes commands by POST and answers on its stream.
    let connect = json!({"id": 1, "connect": {"token": user_token("vic")}}).to_string();
    let req = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{connect}",
        connect.len()
    );
    let mut stream = HttpStream::open(server.addr, &req).await;
    assert_eq!(stream.status, 200);
    let reply = stream.message().await.unwrap();
    let session = reply["connect"]["session"].as_str().unwrap().to_string();
    assert_eq!(reply["connect"]["node"], server.node().uid(), "{reply}");
    let data = json!({"id": 2, "subscribe": {"channel": "chat:emu"}}).to_string()
        + "\n"
        + &json!({"id": 3, "presence_stats": {"channel": "chat:emu"}}).to_string();
    let (status, _) =
        post(json!({"session": session, "node": server.node().uid(), "data": data}).to_string())
            .await;
    assert_eq!(status, 204);
    assert_eq!(stream.message().await.unwrap()["id"], 2);
    let stats = stream.push_or_reply().await;
    assert_eq!(stats["presence_stats"]["num_clients"], 1, "{stats}");

    // SSE needs cf_connect.
    let (status, _) = http_raw(
        server.addr,
        "GET /connection/sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    // A disallowed browser origin is refused on emulation endpoints too.
    let mut config = test_config();
    config.client.allowed_origins = vec!["https://ok.example".into()];
    let strict = TestServer::start(config).await;
    let (status, _) = http_post(
        strict.addr,
        "/connection/http_stream",
        &[("Origin", "https://evil.example")],
        &connect,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = http_raw(
        strict.addr,
        "OPTIONS /connection/http_stream HTTP/1.1\r\nHost: x\r\nOrigin: https://ok.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 204, "{body}");
    strict.shutdown().await;
    server.shutdown().await;
}

/// Records disconnect codes.
#[derive(Default)]
struct Codes(Mutex<Vec<Option<u16>>>, AtomicUsize);

impl rotor_core::events::Observer for Codes {
    fn disconnected(&self, _transport: &'static str, code: Option<u16>) {
        self.0.lock().unwrap().push(code);
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_3008_while_others_keep_receiving() {
    let mut config = test_config();
    config.client.queue_max_size = 256 * 1024;
    config.websocket.write_timeout = Duration::from_secs(30);
    let codes = Arc::new(Codes::default());
    let server = TestServer::start_observed(config, codes.clone()).await;
    let (mut good, _) = RawWs::connected(&server.ws_url(), &user_token("good")).await;
    good.send(r#"{"id":2,"subscribe":{"channel":"open:flood"}}"#)
        .await;
    good.reply().await;
    let (mut slow, _) = RawWs::connected(&server.ws_url(), &user_token("slow")).await;
    slow.send(r#"{"id":2,"subscribe":{"channel":"open:flood"}}"#)
        .await;
    slow.reply().await;
    // `slow` never reads again.

    const N: u64 = 3000;
    let payload = "x".repeat(8 * 1024);
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        while next < N {
            match good.recv(Duration::from_secs(20)).await {
                Received::Messages(ms) => {
                    for m in ms {
                        if let Some(n) = m["push"]["pub"]["data"]["n"].as_u64() {
                            assert_eq!(n, next, "in order, nothing lost");
                            next += 1;
                        }
                    }
                }
                other => panic!("the good client was disturbed: {other:?}"),
            }
        }
        (next, good)
    });
    for n in 0..N {
        let data = rotor_protocol::Raw::from_value(&json!({"n": n, "pad": payload}));
        server
            .node()
            .publish("open:flood", data, Default::default())
            .await
            .unwrap();
        // Paced like a busy channel (about 2,000 messages/s) rather than a tight loop, so a
        // client that reads keeps up while the one that does not falls behind.
        if n % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (received, _good) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, N);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while codes.1.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_by_server: Vec<Option<u16>> = codes
        .0
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(Option::is_some)
        .collect();
    assert_eq!(
        closed_by_server,
        vec![Some(3008)],
        "the slow client, and only it, was closed as slow"
    );
    assert_eq!(server.node().info().num_clients, 1);
    drop(slow);
    server.shutdown().await;
}

/// Replies and pushes queued together go out as one text frame, joined with `\n`, whatever
/// its size (the frame header's 7-, 16- and 64-bit lengths), and a client reading them gets
/// every message in order.
#[tokio::test]
async fn queued_pushes_are_joined_into_one_frame_of_any_size() {
    let server = TestServer::start(test_config()).await;
    let t = token(json!({"sub": "zed", "channels": ["chat:burst"]}));
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &t).await;
    for (count, pad) in [(1, 10), (1, 300), (100, 1000)] {
        // One API call: the publications queue before the session's next turn.
        let pad = "x".repeat(pad);
        let commands: Vec<serde_json::Value> = (0..count)
            .map(|n| json!({"publish": {"channel": "chat:burst", "data": {"n": n, "pad": pad}}}))
            .collect();
        server.api("batch", json!({ "commands": commands })).await;
        let mut seen = Vec::new();
        let mut largest = 0;
        while seen.len() < count {
            let frame = ws.text_frame(Duration::from_secs(10)).await;
            assert!(!frame.ends_with('\n'), "no trailing newline");
            largest = largest.max(frame.len());
            for line in frame.split('\n') {
                let m: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                if let Some(n) = m["push"]["pub"]["data"]["n"].as_u64() {
                    assert_eq!(
                        m["push"]["pub"]["data"]["pad"].as_str().map(str::len),
                        Some(pad.len())
                    );
                    seen.push(n);
                }
            }
        }
        assert_eq!(seen, (0..count as u64).collect::<Vec<u64>>());
        if count == 100 {
            assert!(
                largest > 65_535,
                "100 KiB queued together, largest frame {largest}"
            );
        }
    }
    server.shutdown().await;
}

//! The server HTTP API, called with `cent` (which validates Centrifugo's response shapes) and
//! with raw HTTP for status codes.

use std::time::{Duration, Instant};

use rotor_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn api_status_codes_and_auth_headers() {
    let server = TestServer::start(test_config()).await;
    let body = json!({"channel": "open:x", "data": 1}).to_string();
    let (status, _) = http_post(
        server.addr,
        "/api/publish",
        &[("X-API-Key", "wrong")],
        &body,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http_post(server.addr, "/api/publish", &[], &body).await;
    assert_eq!(status, 401);
    let (status, v) = http_post(
        server.addr,
        "/api/publish",
        &[("Authorization", &format!("apikey {API_KEY}"))],
        &body,
    )
    .await;
    assert_eq!((status, v), (200, json!({"result": {}})));
    let (status, _) = http_post(
        server.addr,
        "/api/frobnicate",
        &[("X-API-Key", API_KEY)],
        "{}",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http_post(
        server.addr,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    let (status, v) = server
        .api("publish", json!({"channel": "nope:x", "data": 1}))
        .await;
    assert_eq!((status, v["error"]["code"].as_u64()), (200, Some(102)));
    let (status, v) = server
        .api("publish", json!({"channel": "", "data": 1}))
        .await;
    assert_eq!((status, v["error"]["code"].as_u64()), (200, Some(107)));
    let (status, _) = http_raw(
        server.addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn every_api_method_through_cent() {
    if !sdks_available("every_api_method_through_cent") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let (mut ws, reply) = RawWs::connected(&server.ws_url(), &user_token("carol")).await;
    let client_id = reply["connect"]["client"].as_str().unwrap().to_string();
    ws.send(r#"{"id":2,"subscribe":{"channel":"chat:api"}}"#)
        .await;
    ws.reply().await;

    let r = cent(
        &server,
        "publish",
        json!({"channel": "chat:api", "data": {"a": 1}, "tags": {"k": "v"}}),
    )
    .await;
    assert_eq!(r["offset"], 1, "{r}");
    let push = ws.message().await;
    assert_eq!(push["push"]["pub"]["tags"], json!({"k": "v"}));

    let r = cent(
        &server,
        "broadcast",
        json!({"channels": ["chat:api", "nope:x"], "data": {"b": 2}}),
    )
    .await;
    let responses = r["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], 2, "{r}");
    assert_eq!(responses[1]["error"]["code"], 102, "{r}");
    assert_eq!(
        ws.message().await["push"]["pub"]["data"],
        json!({"b": 2}),
        "broadcast reached the subscriber"
    );

    let r = cent(
        &server,
        "history",
        json!({"channel": "chat:api", "limit": -1}),
    )
    .await;
    assert_eq!(r["publications"].as_array().unwrap().len(), 2, "{r}");
    let r = cent(
        &server,
        "history",
        json!({"channel": "chat:api", "limit": 1, "reverse": true}),
    )
    .await;
    assert_eq!(r["publications"][0]["offset"], 2, "{r}");
    let r = cent(&server, "history_remove", json!({"channel": "chat:api"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let r = cent(
        &server,
        "history",
        json!({"channel": "chat:api", "limit": 10}),
    )
    .await;
    assert!(
        r.get("publications")
            .is_none_or(|p| p.as_array().unwrap().is_empty()),
        "{r}"
    );
    assert_eq!(r["offset"], 2, "the position survives history_remove: {r}");

    let r = cent(&server, "channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(r["channels"]["chat:api"]["num_clients"], 1, "{r}");
    let r = cent(&server, "info", json!({})).await;
    let node = &r["nodes"][0];
    assert_eq!(
        (
            node["num_clients"].as_u64(),
            node["num_users"].as_u64(),
            node["num_channels"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{r}"
    );

    let r = cent(&server, "batch", json!({"commands": [{"publish": {"channel": "open:b", "data": 1}}, {"presence_stats": {"channel": "chat:api"}}]})).await;
    assert_eq!(r["replies"][0]["offset"], 0, "open:b keeps no history: {r}");
    assert_eq!(
        r["replies"][1]["num_clients"], 1,
        "cent matched the keyed reply to presence_stats: {r}"
    );

    // Server-side subscribe and unsubscribe reach the live connection.
    cent(
        &server,
        "subscribe",
        json!({"user": "carol", "channel": "open:pushed"}),
    )
    .await;
    let push = ws.message().await;
    assert_eq!(push["push"]["channel"], "open:pushed");
    assert!(push["push"]["subscribe"].is_object(), "{push}");
    cent(
        &server,
        "publish",
        json!({"channel": "open:pushed", "data": "via server sub"}),
    )
    .await;
    assert_eq!(ws.message().await["push"]["pub"]["data"], "via server sub");
    cent(
        &server,
        "unsubscribe",
        json!({"user": "carol", "channel": "chat:api"}),
    )
    .await;
    let push = ws.message().await;
    assert_eq!(push["push"]["unsubscribe"]["code"], 2000, "{push}");

    // Disconnect with a custom code.
    cent(&server, "disconnect", json!({"user": "carol", "client": client_id, "disconnect": {"code": 4000, "reason": "bye"}})).await;
    assert_eq!(ws.closed().await, (4000, "bye".to_string()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = cent(&server, "info", json!({})).await;
    assert_eq!(r["nodes"][0]["num_clients"], 0, "{r}");

    // A wrong key is CentUnauthorizedError for cent.
    let mut s = Script::python(
        "cent_call.py",
        &[
            ("API_URL", format!("{}/api", server.http_url())),
            ("API_KEY", "wrong".into()),
            ("METHOD", "info".into()),
            ("REQUEST", "{}".into()),
        ],
    );
    let v = s.expect("result", Duration::from_secs(20)).await;
    assert_eq!(v["result"]["error_type"], "CentUnauthorizedError", "{v}");
    s.finish(Duration::from_secs(10)).await;
    server.shutdown().await;
}

/// Sends `head` (a request head ending in a blank line) and, if given, part of a body;
/// returns the status and body of the answer and how long it took.
async fn raw_request(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    // Read until the answer's body is there (a JSON object or a line).
    while !(got.windows(4).any(|w| w == b"\r\n\r\n")
        && (got.ends_with(b"}") || got.ends_with(b"\n")))
    {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 15 s"),
        }
    }
    let took = started.elapsed();
    let (status, body) = parse_response(&got);
    (status, body, took)
}

#[tokio::test]
async fn requests_without_the_key_are_answered_401_before_their_bodies_are_read() {
    let server = TestServer::start(test_config()).await;
    // 16 at once, each announcing 15 MB and sending none of it: every one is answered 401
    // at once (it was: nothing until the 10 s body timeout, the bodies held in memory).
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong\r\nContent-Type: application/json\r\nContent-Length: 15000000\r\n\r\n";
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move { raw_request(addr, head, b"{\"channel\":").await })
        })
        .collect();
    for t in tasks {
        let (status, body, took) = t.await.unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"code\":101"), "{body}");
        assert!(
            took < Duration::from_secs(3),
            "answered before the body: {took:?}"
        );
    }
    // No key at all, the same.
    let head = "POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n";
    let (status, _, took) = raw_request(server.addr, head, b"").await;
    assert_eq!((status, took < Duration::from_secs(3)), (401, true));
    server.shutdown().await;
}

#[tokio::test]
async fn api_bodies_wait_for_room_in_the_budget() {
    let mut config = test_config();
    config.http_api.max_body_bytes_in_flight = 64 * 1024;
    config.http_server.body_read_timeout = Duration::from_millis(1500);
    let server = TestServer::start(config).await;
    let key = API_KEY;
    // A holds 60 KiB of the 64 KiB: it announces them and sends nothing (408 at 1.5 s).
    let holder = {
        let addr = server.addr;
        let head = format!("POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 61440\r\n\r\n");
        tokio::spawn(async move { raw_request(addr, &head, b"").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B needs 10 KiB: it waits until A is done, then is answered.
    let mut body = b"{}".to_vec();
    body.resize(10 * 1024, b' ');
    let head = format!(
        "POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, answer, took) = raw_request(server.addr, &head, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"nodes\""), "{answer}");
    assert!(
        took >= Duration::from_millis(900),
        "waited for the budget: {took:?}"
    );
    let (status, _, _) = holder.await.unwrap();
    assert_eq!(status, 408);
    // With room, no wait.
    let (status, _, took) = raw_request(server.addr, &head, &body).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(900), "{took:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_key_in_the_query_can_be_turned_off() {
    let mut config = test_config();
    let server = TestServer::start(config.clone()).await;
    let key = API_KEY;
    let head =
        format!("POST /api/info?api_key={key} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(
        raw_request(server.addr, &head, b"{}").await.0,
        200,
        "on by default, as in Centrifugo"
    );
    server.shutdown().await;
    config.http_api.key_in_query = false;
    let server = TestServer::start(config).await;
    assert_eq!(raw_request(server.addr, &head, b"{}").await.0, 401);
    let head = format!(
        "POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 2\r\n\r\n"
    );
    assert_eq!(raw_request(server.addr, &head, b"{}").await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_big_batch_answers_every_command_in_order() {
    let server = TestServer::start(test_config()).await;
    // 5,000 publishes in order: offsets follow the commands; a broken command in the middle
    // gets its own error and the others go on.
    let mut commands: Vec<Value> = (0..5000)
        .map(|n| json!({"publish": {"channel": "chat:batch", "data": {"n": n}}}))
        .collect();
    commands[2500] = json!({});
    let (status, r) = server.api("batch", json!({ "commands": commands })).await;
    assert_eq!(status, 200);
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 5000);
    assert!(
        replies[2500]["error"]["code"].is_number(),
        "{}",
        replies[2500]
    );
    assert_eq!(replies[0]["publish"]["offset"], 1);
    assert_eq!(replies[2499]["publish"]["offset"], 2500);
    assert_eq!(replies[2501]["publish"]["offset"], 2501);
    assert_eq!(replies[4999]["publish"]["offset"], 4999);
    // In parallel (in groups): every reply, in command order.
    let commands: Vec<Value> = (0..3000)
        .map(|n| {
            if n % 2 == 0 {
                json!({"presence_stats": {"channel": "chat:batch"}})
            } else {
                json!({"history": {"channel": "chat:batch", "limit": 0}})
            }
        })
        .collect();
    let (_, r) = server
        .api("batch", json!({ "commands": commands, "parallel": true }))
        .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 3000);
    for (n, reply) in replies.iter().enumerate() {
        let key = if n % 2 == 0 {
            "presence_stats"
        } else {
            "history"
        };
        assert!(reply.get(key).is_some(), "{n}: {reply}");
    }
    // Not a batch body: the error, as before; no body: no commands; not JSON: 400.
    let (status, r) = server.api("batch", json!({"commands": 5})).await;
    assert_eq!(status, 200);
    assert!(r["error"]["code"].is_number(), "{r}");
    let key = API_KEY;
    let head = format!(
        "POST /api/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, body, _) = raw_request(server.addr, &head, b"").await;
    assert_eq!((status, body.as_str()), (200, r#"{"replies":[]}"#));
    let head = format!(
        "POST /api/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 5\r\n\r\n"
    );
    assert_eq!(raw_request(server.addr, &head, b"{oops").await.0, 400);
    server.shutdown().await;
}

/// centrifuge's rule, which its SDKs and `cent` rely on: a `since` with an empty epoch
/// matches any epoch, for history and for recovery alike.
#[tokio::test]
async fn history_since_an_empty_epoch_reads_and_recovers_any_stream() {
    let server = TestServer::start(test_config()).await;
    for n in 1..=3 {
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "chat:since", "data": {"n": n}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let history = |since: Value| {
        server.api(
            "history",
            json!({"channel": "chat:since", "limit": 10, "since": since}),
        )
    };
    let (_, r) = history(json!({"offset": 0, "epoch": ""})).await;
    let offsets: Vec<&Value> = r["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| &p["offset"])
        .collect();
    assert_eq!(offsets, vec![&json!(1), &json!(2), &json!(3)], "{r}");
    let epoch = r["result"]["epoch"].as_str().unwrap().to_string();
    let (_, r) = history(json!({"offset": 2, "epoch": ""})).await;
    assert_eq!(r["result"]["publications"][0]["offset"], 3, "{r}");
    let (_, r) = history(json!({"offset": 0, "epoch": "another"})).await;
    assert_eq!(r["error"]["code"], 112, "{r}");

    // A subscriber recovering from offset 1 with no epoch recovers what follows, and so
    // does one with the stream's epoch.
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("rita")).await;
    for (id, since_epoch) in [(2, ""), (4, epoch.as_str())] {
        ws.send(
            &json!({"id": id, "subscribe": {"channel": "chat:since", "recover": true, "offset": 1, "epoch": since_epoch}})
                .to_string(),
        )
        .await;
        let r = ws.reply().await;
        assert_eq!(r["subscribe"]["recovered"], true, "{r}");
        assert_eq!(r["subscribe"]["epoch"], epoch.as_str(), "{r}");
        assert_eq!(
            r["subscribe"]["publications"].as_array().unwrap().len(),
            2,
            "{r}"
        );
        ws.send(&json!({"id": id + 1, "unsubscribe": {"channel": "chat:since"}}).to_string())
            .await;
        ws.reply().await;
    }
    server.shutdown().await;
}

/// What the server API is given to publish reaches subscribers byte for byte, as
/// Centrifugo passes it: key order and numbers beyond 64 bits included, alone or in a
/// batch.
#[tokio::test]
async fn api_payloads_reach_subscribers_as_they_were_sent() {
    let server = TestServer::start(test_config()).await;
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &user_token("verbatim")).await;
    ws.send(&json!({"id": 2, "subscribe": {"channel": "open:raw"}}).to_string())
        .await;
    ws.reply().await;
    let data = r#"{"z":1,"a":12345678901234567890123,"f":1.50}"#;
    let body = format!(r#"{{"channel":"open:raw","data":{data}}}"#);
    let (status, _) = http_post(
        server.addr,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let batch = format!(r#"{{"commands":[{{"publish":{body}}}]}}"#);
    let (status, _) = http_post(server.addr, "/api/batch", &[("X-API-Key", API_KEY)], &batch).await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let frame = ws.text_frame(Duration::from_secs(5)).await;
        assert!(frame.contains(&format!(r#""data":{data}"#)), "{frame}");
    }
    server.shutdown().await;
}

/// The `connections` method (Centrifugo PRO's shape, plus rotor's node, address and expiry):
/// SDK clients on three transports, filtered by user and channel, counted by transport.
#[tokio::test]
async fn connections_api_lists_filters_and_counts_live_clients() {
    let test = "connections_api";
    let jti_token = |user: &str, jti: &str, exp_in: u64| {
        token(json!({"sub": user, "jti": jti, "iat": now(), "exp": now() + exp_in}))
    };
    if !sdks_available(test) {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut clients = Vec::new();
    for (user, transport, jti, channel) in [
        ("ann", "websocket", "c-ann", "chat:a"),
        ("bob", "sse", "c-bob", "chat:b"),
        ("bob", "http_stream", "c-bob2", "chat:a"),
    ] {
        let token = if user == "ann" {
            // `meta` is for the backend: listed by `connections`, never sent to the client.
            token(
                json!({"sub": user, "jti": jti, "iat": now(), "exp": now() + 600,
                         "meta": {"plan": "pro"}}),
            )
        } else {
            jti_token(user, jti, 600)
        };
        let mut c = Script::node(
            "client.js",
            &[
                ("BASE", server.http_url()),
                ("TRANSPORT", transport.to_string()),
                ("TOKEN", token),
            ],
        );
        c.expect("ready", T).await;
        c.send(&json!({"op": "subscribe", "channel": channel}).to_string())
            .await;
        c.send(&json!({"op": "connect"}).to_string()).await;
        c.expect("subscribed", T).await;
        clients.push(c);
    }

    let (status, all) = server.api("connections", json!({})).await;
    assert_eq!(status, 200);
    let r = &all["result"];
    assert_eq!(r["total"], 3, "{all}");
    assert_eq!(
        r["by_transport"],
        json!({"websocket": 1, "sse": 1, "http_stream": 1}),
        "{all}"
    );
    let conns = r["connections"].as_object().unwrap();
    let ann = conns
        .values()
        .find(|c| c["user"] == "ann")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(ann["transport"], "websocket");
    assert_eq!(ann["protocol"], "json");
    assert_eq!(ann["remote_addr"], "127.0.0.1");
    assert_eq!(ann["state"]["connection_token"]["uid"], "c-ann");
    assert_eq!(ann["state"]["channels"], json!({"chat:a": {}}));
    assert_eq!(ann["state"]["meta"], json!({"plan": "pro"}));
    assert!(ann["expire_at"].as_u64().unwrap().abs_diff(now() + 600) <= 5);
    let connected_s = ann["connected_at_ms"].as_u64().unwrap() / 1000;
    assert!(
        connected_s.abs_diff(now()) < 60,
        "connected just now: {ann}"
    );

    // By user, by channel, both.
    let users = |v: &Value| -> Vec<String> {
        let mut u: Vec<String> = v["result"]["connections"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["user"].as_str().unwrap().to_string())
            .collect();
        u.sort();
        u
    };
    let (_, bob) = server.api("connections", json!({"user": "bob"})).await;
    assert_eq!(users(&bob), ["bob", "bob"], "{bob}");
    let (_, in_a) = server
        .api("connections", json!({"channel": "chat:a"}))
        .await;
    assert_eq!(users(&in_a), ["ann", "bob"], "{in_a}");
    let (_, bob_in_a) = server
        .api("connections", json!({"user": "bob", "channel": "chat:a"}))
        .await;
    assert_eq!(bob_in_a["result"]["total"], 1, "{bob_in_a}");
    // The official `cent` client reads the answer with Centrifugo PRO's types (it sends
    // `user` and an empty `expression`).
    let by_cent = cent(
        &server,
        "connections",
        json!({"user": "ann", "expression": ""}),
    )
    .await;
    let listed = by_cent["connections"]
        .as_object()
        .unwrap_or_else(|| panic!("{by_cent}"));
    assert_eq!(listed.len(), 1, "{by_cent}");
    let (_, c) = listed.iter().next().unwrap();
    assert_eq!(
        (&c["transport"], &c["protocol"], &c["user"]),
        (&json!("websocket"), &json!("json"), &json!("ann")),
        "{by_cent}"
    );
    assert_eq!(c["state"]["connection_token"]["uid"], "c-ann", "{by_cent}");
    // A limit lists fewer but counts all.
    let (_, one) = server.api("connections", json!({"limit": 1})).await;
    assert_eq!(one["result"]["connections"].as_object().unwrap().len(), 1);
    assert_eq!(one["result"]["total"], 3);
    // Centrifugo PRO's CEL expressions are refused with a clear error, not ignored.
    let (status, expr) = server
        .api("connections", json!({"expression": "user == 'ann'"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(expr["error"]["code"], 107, "{expr}");

    // Gone from the list as soon as it disconnects.
    let mut ann_client = clients.remove(0);
    ann_client
        .send(&json!({"op": "disconnect"}).to_string())
        .await;
    ann_client.expect("disconnected", T).await;
    let deadline = Instant::now() + T;
    loop {
        let (_, v) = server.api("connections", json!({"user": "ann"})).await;
        if v["result"]["total"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut c in clients.into_iter().chain([ann_client]) {
        c.send(&json!({"op": "quit"}).to_string()).await;
        c.finish(T).await;
    }
    server.shutdown().await;
}

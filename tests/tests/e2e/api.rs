//! The server HTTP API, called with `cent` (which validates Centrifugo's response shapes) and
//! with raw HTTP for status codes.

use std::time::Duration;

use rotor_tests::*;
use serde_json::json;

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

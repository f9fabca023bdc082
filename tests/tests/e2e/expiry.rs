//! The token lifecycle: connections and subscriptions live as long as their tokens, are
//! extended in place by `refresh` / `sub_refresh`, and are closed after a grace period when
//! nobody refreshes them.

use std::time::{Duration, Instant};

use rotor_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn short_grace() -> rotor_server::Config {
    let mut c = test_config();
    c.client.expired_close_delay = Duration::from_secs(1);
    c.client.expired_sub_close_delay = Duration::from_secs(1);
    c
}

/// centrifuge-js, its Protobuf build when `protobuf`.
fn js(server: &TestServer, token: Option<String>, protobuf: bool) -> Script {
    let mut env = vec![("BASE", server.http_url())];
    match token {
        Some(t) => env.push(("TOKEN", t)),
        None => env.push(("GET_TOKEN", "1".into())),
    }
    if protobuf {
        env.push(("PROTOBUF", "1".into()));
    }
    Script::node("client.js", &env)
}

async fn give_token(s: &mut Script, token: &str) {
    s.send(&json!({"op": "token", "token": token}).to_string())
        .await;
}

fn short_token(user: &str, secs: u64) -> String {
    token(json!({"sub": user, "exp": now() + secs}))
}

#[tokio::test]
async fn js_client_stays_connected_through_refreshes_then_stops_on_unauthorized() {
    js_client_stays_connected_through_refreshes_then_stops_on_unauthorized_with(false).await;
}

/// The flow of [`js_client_stays_connected_through_refreshes_then_stops_on_unauthorized`], over the JSON or the Protobuf protocol.
pub async fn js_client_stays_connected_through_refreshes_then_stops_on_unauthorized_with(
    protobuf: bool,
) {
    if !sdks_available("js_client_stays_connected_through_refreshes_then_stops_on_unauthorized") {
        return;
    }
    // Each refresh goes SDK -> this test (get_token) -> SDK -> server; under the whole suite
    // on 2 busy cores that round trip once took longer than a 1 s grace, and the connection
    // expired. The flow is what is tested here, so the grace leaves room for it.
    let mut config = short_grace();
    config.client.expired_close_delay = Duration::from_secs(3);
    let server = TestServer::start(config).await;
    let mut c = js(&server, None, protobuf);
    c.expect("ready", T).await;
    c.send(&json!({"op": "subscribe", "channel": "chat:life"}).to_string())
        .await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    c.expect("get_token", T).await;
    give_token(&mut c, &short_token("erin", 3)).await;
    let client_id = c.expect("connected", T).await["client"].clone();
    c.expect("subscribed", T).await;

    // Tokens live 3s; for 15s every refresh gets a fresh one and the connection stays.
    let start = Instant::now();
    let mut refreshes = 0;
    while start.elapsed() < Duration::from_secs(15) {
        c.expect("get_token", Duration::from_secs(5)).await;
        give_token(&mut c, &short_token("erin", 3)).await;
        refreshes += 1;
    }
    assert!(refreshes >= 4, "several refreshes in 15s, got {refreshes}");
    let (status, r) = server
        .api(
            "publish",
            json!({"channel": "chat:life", "data": "still connected"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(c.expect("publication", T).await["data"], "still connected");
    let connects: Vec<&Value> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "connected")
        .collect();
    assert_eq!(
        connects.len(),
        1,
        "one connection, never re-established: {:?}",
        c.seen
    );
    assert_eq!(connects[0]["client"], client_id);
    assert!(
        !c.seen.iter().any(|e| e["event"] == "disconnected" || (e["event"] == "connecting" && e["code"] != 0)),
        "no disconnect during refreshes: {:?}",
        c.seen
    );

    // getToken throwing UnauthorizedError: disconnected for good.
    c.expect("get_token", Duration::from_secs(5)).await;
    c.send(&json!({"op": "token", "unauthorized": true}).to_string())
        .await;
    let d = c.expect("disconnected", T).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !c.seen
            .iter()
            .skip_while(|e| *e != &d)
            .any(|e| e["event"] == "connecting" || e["event"] == "connected"),
        "no reconnect after UnauthorizedError: {:?}",
        c.seen
    );
    assert_eq!(
        server.node().info().num_clients,
        0,
        "the server let the connection go"
    );
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token() {
    js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token_with(false).await;
}

/// The flow of [`js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token`], over the JSON or the Protobuf protocol.
pub async fn js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token_with(
    protobuf: bool,
) {
    if !sdks_available("js_client_that_never_refreshes_gets_3005_then_109_then_a_new_token") {
        return;
    }
    let server = TestServer::start(short_grace()).await;
    let mut c = js(&server, None, protobuf);
    c.expect("ready", T).await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    c.expect("get_token", T).await;
    give_token(&mut c, &short_token("frank", 2)).await;
    let first = c.expect("connected", T).await["client"].clone();
    let connected_at = Instant::now();
    // The refresh asks for a token; the test never answers, as a stuck backend would.
    c.expect("get_token", T).await;
    let closing = c.expect_where("connecting", |e| e["code"] != 0, T).await;
    assert_eq!(
        (closing["code"].as_u64(), closing["reason"].as_str()),
        (Some(3005), Some("connection expired")),
        "{closing}"
    );
    assert!(
        connected_at.elapsed() >= Duration::from_millis(1900),
        "closed only after expiry plus grace: {:?}",
        connected_at.elapsed()
    );
    // The reconnect still carries the stale token: error 109, then the SDK asks for a new one.
    let err = c.expect("error", T).await;
    assert_eq!(err["error"]["code"], 109, "{err}");
    c.expect("get_token", T).await;
    give_token(&mut c, &short_token("frank", 60)).await;
    let second = c.expect("connected", T).await["client"].clone();
    assert_ne!(first, second, "a new connection");
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_subscription_token_lifecycle() {
    js_subscription_token_lifecycle_with(false).await;
}

/// The flow of [`js_subscription_token_lifecycle`], over the JSON or the Protobuf protocol.
pub async fn js_subscription_token_lifecycle_with(protobuf: bool) {
    if !sdks_available("js_subscription_token_lifecycle") {
        return;
    }
    let server = TestServer::start(short_grace()).await;
    let mut c = js(&server, Some(user_token("gina")), protobuf);
    c.expect("ready", T).await;
    c.send(
        &json!({"op": "subscribe", "channel": "$chat:secret", "options": {"getToken": true}})
            .to_string(),
    )
    .await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    let sub_token =
        |secs: u64| token(json!({"sub": "gina", "channel": "$chat:secret", "exp": now() + secs}));
    let ask = c.expect("get_token", T).await;
    assert_eq!(ask["channel"], "$chat:secret");
    give_token(&mut c, &sub_token(3)).await;
    c.expect("subscribed", T).await;

    // Refreshed in place for 8s.
    let start = Instant::now();
    let mut refreshes = 0;
    while start.elapsed() < Duration::from_secs(8) {
        c.expect("get_token", Duration::from_secs(5)).await;
        give_token(&mut c, &sub_token(3)).await;
        refreshes += 1;
    }
    assert!(refreshes >= 2, "{refreshes}");
    server
        .api(
            "publish",
            json!({"channel": "$chat:secret", "data": "secret"}),
        )
        .await;
    assert_eq!(c.expect("publication", T).await["data"], "secret");
    assert!(
        !c.seen
            .iter()
            .any(|e| e["event"] == "subscribing" && e["code"] != 0),
        "no resubscribe during sub refreshes: {:?}",
        c.seen
    );

    // Nobody refreshes: unsubscribed with 2501 after the grace, and the SDK resubscribes with
    // a new token.
    c.expect("get_token", Duration::from_secs(5)).await;
    let resub = c.expect_where("subscribing", |e| e["code"] != 0, T).await;
    assert_eq!(resub["code"], 2501, "{resub}");
    c.expect("get_token", T).await;
    give_token(&mut c, &sub_token(30)).await;
    let again = c.expect("subscribed", T).await;
    assert_eq!(again["channel"], "$chat:secret");
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;
    server.shutdown().await;
}

async fn raw(server: &TestServer, tok: &str) -> (RawWs, Value) {
    RawWs::connected(&server.ws_url(), tok).await
}

#[tokio::test]
async fn refresh_outcomes() {
    let server = TestServer::start(short_grace()).await;
    let cases: Vec<(String, u16)> = vec![
        (short_token("other", 60), 3500),
        (
            rotor_auth::sign_hmac(&json!({"sub": "hal", "exp": now() + 60}), "wrong").unwrap(),
            3500,
        ),
        (String::new(), 3501),
        (token(json!({"sub": "hal", "exp": now() - 1})), 3005),
    ];
    for (refresh_token, code) in cases {
        let (mut ws, _) = raw(&server, &short_token("hal", 60)).await;
        ws.send(&json!({"id": 2, "refresh": {"token": refresh_token}}).to_string())
            .await;
        assert_eq!(ws.closed().await.0, code, "refresh with {refresh_token:?}");
    }
    // A good refresh extends the connection and replaces nothing else.
    let (mut ws, reply) = raw(&server, &short_token("hal", 5)).await;
    assert!(reply["connect"]["ttl"].as_u64().unwrap() <= 5);
    ws.send(&json!({"id": 2, "refresh": {"token": short_token("hal", 100)}}).to_string())
        .await;
    let r = ws.reply().await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(
        (99..=100).contains(&r["refresh"]["ttl"].as_u64().unwrap()),
        "{r}"
    );
    // expire_at: 0 means the connection never expires (exp still checked at connect).
    let (_ws, reply) = raw(
        &server,
        &token(json!({"sub": "hal", "exp": now() + 60, "expire_at": 0})),
    )
    .await;
    assert!(reply["connect"].get("expires").is_none(), "{reply}");
    let (_ws, reply) = raw(
        &server,
        &token(json!({"sub": "hal", "exp": now() + 60, "expire_at": now() + 600})),
    )
    .await;
    assert!(reply["connect"]["ttl"].as_u64().unwrap() > 590, "{reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_is_not_refreshed_closes_after_the_grace() {
    let server = TestServer::start(short_grace()).await;
    // `exp` is in whole seconds: now + 1 could be only a millisecond away by the time the
    // connect arrives, so the token gets 2 (at least 1 s of life).
    let (mut ws, reply) = raw(&server, &short_token("ivy", 2)).await;
    assert_eq!(reply["connect"]["expires"], true);
    let start = Instant::now();
    assert_eq!(ws.closed().await, (3005, "connection expired".to_string()));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "expiry (1-2 s) + grace (1 s): {waited:?}"
    );
    // Reconnecting with the same token: error 109, the connection stays for a retry.
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(&json!({"id": 1, "connect": {"token": short_token("ivy", 0)}}).to_string())
        .await;
    assert_eq!(ws.reply().await["error"]["code"], 109);
    server.shutdown().await;
}

#[tokio::test]
async fn sub_refresh_rules() {
    let server = TestServer::start(short_grace()).await;
    let (mut ws, _) = raw(&server, &user_token("jay")).await;
    let st = |user: &str, channel: &str, exp: i64| {
        token(json!({"sub": user, "channel": channel, "exp": now() as i64 + exp}))
    };
    ws.send(
        &json!({"id": 2, "subscribe": {"channel": "$chat:s", "token": st("jay", "$chat:s", 60)}})
            .to_string(),
    )
    .await;
    let r = ws.reply().await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    ws.send(&json!({"id": 3, "sub_refresh": {"channel": "$chat:s", "token": st("jay", "$chat:s", 120)}}).to_string()).await;
    let r = ws.reply().await;
    assert!(r["sub_refresh"]["ttl"].as_u64().unwrap() > 100, "{r}");
    // Expired token in sub_refresh: never accepted.
    ws.send(
        &json!({"id": 4, "sub_refresh": {"channel": "$chat:s", "token": st("jay", "$chat:s", -1)}})
            .to_string(),
    )
    .await;
    assert_eq!(ws.closed().await.0, 3006);
    // A token for another channel or user.
    for bad in [st("jay", "$chat:other", 60), st("kim", "$chat:s", 60)] {
        let (mut ws, _) = raw(&server, &user_token("jay")).await;
        ws.send(&json!({"id": 2, "subscribe": {"channel": "$chat:s", "token": st("jay", "$chat:s", 60)}}).to_string()).await;
        ws.reply().await;
        ws.send(&json!({"id": 3, "sub_refresh": {"channel": "$chat:s", "token": bad}}).to_string())
            .await;
        assert_eq!(ws.closed().await.0, 3500);
    }
    // Subscribe with an expired token: 109; with a forged one: 103.
    let (mut ws, _) = raw(&server, &user_token("jay")).await;
    ws.send(
        &json!({"id": 2, "subscribe": {"channel": "$chat:s", "token": st("jay", "$chat:s", -1)}})
            .to_string(),
    )
    .await;
    assert_eq!(ws.reply().await["error"]["code"], 109);
    let forged =
        rotor_auth::sign_hmac(&json!({"sub": "jay", "channel": "$chat:s"}), "nope").unwrap();
    ws.send(&json!({"id": 3, "subscribe": {"channel": "$chat:s", "token": forged}}).to_string())
        .await;
    assert_eq!(ws.reply().await["error"]["code"], 103);
    // A subscription token's override turns presence on for this subscription.
    let t = token(
        json!({"sub": "jay", "channel": "$open:o", "override": {"presence": {"value": true}}}),
    );
    ws.send(&json!({"id": 4, "subscribe": {"channel": "$open:o", "token": t}}).to_string())
        .await;
    assert!(ws.reply().await["subscribe"].is_object());
    let presence = server
        .node()
        .storage()
        .presence
        .get("$open:o")
        .await
        .unwrap();
    assert_eq!(presence.len(), 1, "override applied");
    // An expiring subscription is unsubscribed with 2501 after the grace.
    ws.send(&json!({"id": 5, "subscribe": {"channel": "$chat:short", "token": st("jay", "$chat:short", 1)}}).to_string()).await;
    ws.reply().await;
    let push = ws.message().await;
    assert_eq!(push["push"]["channel"], "$chat:short");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2501, "{push}");
    server.shutdown().await;
}

#[tokio::test]
async fn server_api_refresh_extends_or_expires_connections() {
    let server = TestServer::start(short_grace()).await;
    let (mut ws, _) = raw(&server, &short_token("lee", 60)).await;
    let at = now() + 3600;
    server
        .api("refresh", json!({"user": "lee", "expire_at": at}))
        .await;
    let push = ws.message().await;
    assert_eq!(push["push"]["refresh"]["expires"], true, "{push}");
    assert!(push["push"]["refresh"]["ttl"].as_u64().unwrap() > 3590);
    server
        .api("refresh", json!({"user": "lee", "expired": true}))
        .await;
    assert_eq!(ws.closed().await.0, 3005);
    server.shutdown().await;
}

#[tokio::test]
async fn subscription_tokens_can_have_their_own_keys() {
    let mut config = short_grace();
    config.client.subscription_token.enabled = true;
    config.client.subscription_token.hmac_secret_key = "sub-secret".into();
    let server = TestServer::start(config).await;
    let (mut ws, _) = raw(&server, &user_token("max")).await;
    let claims = json!({"sub": "max", "channel": "$chat:own"});
    let with_conn_key = token(claims.clone());
    ws.send(
        &json!({"id": 2, "subscribe": {"channel": "$chat:own", "token": with_conn_key}})
            .to_string(),
    )
    .await;
    assert_eq!(
        ws.reply().await["error"]["code"],
        103,
        "the connection key no longer signs subscriptions"
    );
    let with_sub_key = rotor_auth::sign_hmac(&claims, "sub-secret").unwrap();
    ws.send(
        &json!({"id": 3, "subscribe": {"channel": "$chat:own", "token": with_sub_key}}).to_string(),
    )
    .await;
    assert!(ws.reply().await["subscribe"].is_object());
    server.shutdown().await;
}

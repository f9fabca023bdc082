//! The official SDKs against the real server: centrifuge-js and centrifuge-python connect with
//! HS256 tokens, subscribe to a namespace with history and presence, receive publications sent
//! with `cent`, read presence and history, publish, and recover what they missed.

use std::time::Duration;

use rotor_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

pub fn client_env(server: &TestServer, token: String) -> Vec<(&'static str, String)> {
    vec![("BASE", server.http_url()), ("TOKEN", token)]
}

/// Sends a command and waits for its result.
pub async fn cmd(s: &mut Script, c: Value) -> Value {
    s.send(&c.to_string()).await;
    let op = c["op"].clone();
    s.expect_where("result", |v| v["op"] == op, T).await["result"].clone()
}

/// The scenario both SDKs go through; `s` is a started client script.
pub async fn full_flow(server: &TestServer, s: &mut Script, user: &str) {
    s.expect("ready", T).await;
    s.send(
        &json!({"op": "subscribe", "channel": "chat:room", "options": {"joinLeave": true}})
            .to_string(),
    )
    .await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let connected = s.expect("connected", T).await;
    let client_id = connected["client"].as_str().unwrap().to_string();
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["recoverable"], true, "chat forces recovery: {sub}");
    assert_eq!(sub["streamPosition"]["offset"], 0);

    // A publication from the backend through cent reaches the client.
    let r = cent(
        server,
        "publish",
        json!({"channel": "chat:room", "data": {"text": "from cent"}}),
    )
    .await;
    assert_eq!(r["offset"], 1, "publish result carries the offset: {r}");
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let p = s.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "from cent"}));
    assert_eq!(p["offset"], 1);

    // Presence and history from the client.
    let presence = cmd(s, json!({"op": "presence", "channel": "chat:room"})).await;
    assert_eq!(presence["clients"][&client_id]["user"], user, "{presence}");
    let stats = cmd(s, json!({"op": "presence_stats", "channel": "chat:room"})).await;
    assert_eq!(
        (stats["numClients"].as_u64(), stats["numUsers"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    let history = cmd(
        s,
        json!({"op": "history", "channel": "chat:room", "options": {"limit": 10}}),
    )
    .await;
    assert_eq!(
        history["publications"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    assert_eq!(
        history["publications"][0]["data"],
        json!({"text": "from cent"})
    );
    assert_eq!(history["offset"], 1);

    // Publishing from the client: every subscriber, the publisher too, gets it with info.
    cmd(
        s,
        json!({"op": "publish", "channel": "chat:room", "data": {"text": "from client"}}),
    )
    .await;
    let p = s.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "from client"}));
    assert_eq!(p["offset"], 2);
    assert_eq!(p["info"]["user"], user);
    assert_eq!(p["info"]["client"], client_id.as_str());

    // cent sees the same state.
    let h = cent(
        server,
        "history",
        json!({"channel": "chat:room", "limit": 10}),
    )
    .await;
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2]);
    let pres = cent(server, "presence", json!({"channel": "chat:room"})).await;
    assert_eq!(pres["presence"][&client_id]["user"], user, "{pres}");

    // Missed publications are recovered after a reconnect, in order, with the same epoch.
    s.send(&json!({"op": "disconnect"}).to_string()).await;
    s.expect("disconnected", T).await;
    for n in 3..=4 {
        cent(
            server,
            "publish",
            json!({"channel": "chat:room", "data": {"n": n}}),
        )
        .await;
    }
    s.send(&json!({"op": "connect"}).to_string()).await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["wasRecovering"], true, "{sub}");
    assert_eq!(sub["recovered"], true, "{sub}");
    for n in 3..=4u64 {
        let p = s.expect("publication", T).await;
        assert_eq!(
            (p["data"]["n"].as_u64(), p["offset"].as_u64()),
            (Some(n), Some(n)),
            "{p}"
        );
    }
}

#[tokio::test]
async fn centrifuge_js_over_websocket_full_flow() {
    if !sdks_available("centrifuge_js_over_websocket_full_flow") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut js = Script::node("client.js", &client_env(&server, user_token("alice")));
    full_flow(&server, &mut js, "alice").await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn centrifuge_python_over_websocket_full_flow() {
    if !sdks_available("centrifuge_python_over_websocket_full_flow") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut py = Script::python("client.py", &client_env(&server, user_token("bob")));
    full_flow(&server, &mut py, "bob").await;
    py.send(&json!({"op": "quit"}).to_string()).await;
    py.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_and_python_clients_see_each_other() {
    if !sdks_available("js_and_python_clients_see_each_other") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut js = Script::node("client.js", &client_env(&server, user_token("alice")));
    js.expect("ready", T).await;
    js.send(
        &json!({"op": "subscribe", "channel": "chat:both", "options": {"joinLeave": true}})
            .to_string(),
    )
    .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("subscribed", T).await;

    let mut py = Script::python("client.py", &client_env(&server, user_token("bob")));
    py.expect("ready", T).await;
    py.send(
        &json!({"op": "subscribe", "channel": "chat:both", "options": {"join_leave": true}})
            .to_string(),
    )
    .await;
    py.send(&json!({"op": "connect"}).to_string()).await;
    let py_client = py.expect("connected", T).await["client"]
        .as_str()
        .unwrap()
        .to_string();
    py.expect("subscribed", T).await;

    let join = loop {
        let join = js.expect("join", T).await;
        if join["info"]["user"] != "alice" {
            break join;
        }
    };
    assert_eq!(join["info"]["user"], "bob");
    assert_eq!(join["info"]["client"], py_client.as_str());

    cmd(
        &mut py,
        json!({"op": "publish", "channel": "chat:both", "data": {"from": "python"}}),
    )
    .await;
    let p = js.expect("publication", T).await;
    assert_eq!(p["data"], json!({"from": "python"}));
    assert_eq!(p["info"]["user"], "bob");
    let p = py.expect("publication", T).await;
    assert_eq!(p["data"], json!({"from": "python"}));

    let stats = cent(&server, "presence_stats", json!({"channel": "chat:both"})).await;
    assert_eq!(
        (stats["num_clients"].as_u64(), stats["num_users"].as_u64()),
        (Some(2), Some(2)),
        "{stats}"
    );

    py.send(&json!({"op": "quit"}).to_string()).await;
    py.finish(T).await;
    let leave = js.expect("leave", T).await;
    assert_eq!(leave["info"]["client"], py_client.as_str());
    let stats = cent(&server, "presence_stats", json!({"channel": "chat:both"})).await;
    assert_eq!(
        stats["num_clients"].as_u64(),
        Some(1),
        "presence drops the client that left: {stats}"
    );

    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn js_client_is_told_to_reconnect_on_shutdown_and_stops_on_invalid_token() {
    if !sdks_available("js_client_is_told_to_reconnect_on_shutdown_and_stops_on_invalid_token") {
        return;
    }
    // A token with a bad signature: the client ends disconnected with 3500 and does not retry.
    let server = TestServer::start(test_config()).await;
    let forged = rotor_auth::sign_hmac(&json!({"sub": "mallory"}), "not-the-secret").unwrap();
    let mut js = Script::node("client.js", &client_env(&server, forged));
    js.expect("ready", T).await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    let d = js.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "{d}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !js.seen.iter().any(|e| e["event"] == "connected"),
        "no reconnect after 3500"
    );
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;

    // Graceful shutdown sends 3001, which SDKs treat as "reconnect elsewhere".
    let mut js = Script::node("client.js", &client_env(&server, user_token("alice")));
    js.expect("ready", T).await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("connected", T).await;
    server.shutdown().await;
    let c = js.expect_where("connecting", |v| v["code"] != 0, T).await;
    assert_eq!(c["code"], 3001, "{c}");
    assert_eq!(c["reason"], "shutdown");
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
}

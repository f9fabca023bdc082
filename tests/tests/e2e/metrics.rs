//! `/metrics` after real traffic: connects and refusals, expiries, refreshes, revocations,
//! disconnect codes, node gauges and their Centrifugo aliases.

use std::collections::HashMap;
use std::time::Duration;

use rotor_tests::*;
use serde_json::json;

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        panic!(
            "{series} missing; have: {:#?}",
            m.keys()
                .filter(|k| k.starts_with(series.split('{').next().unwrap()))
                .collect::<Vec<_>>()
        )
    })
}

#[tokio::test]
async fn metrics_follow_the_token_lifecycle() {
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.expired_close_delay = Duration::from_millis(500);
    let server = TestServer::start(config).await;

    // Two good connects; one will be refreshed, one revoked.
    let (mut a, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "m1", "exp": now() + 60})),
    )
    .await;
    let (mut b, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "m2", "jti": "mj", "iat": now()})),
    )
    .await;
    // Refused connects: expired token, forged token.
    for t in [
        token(json!({"sub": "x", "exp": now() - 5})),
        rotor_auth::sign_hmac(&json!({"sub": "x"}), "nope").unwrap(),
    ] {
        let mut ws = RawWs::connect(&server.ws_url()).await;
        ws.send(&json!({"id": 1, "connect": {"token": t}}).to_string())
            .await;
        let _ = ws.recv(Duration::from_secs(5)).await;
    }
    a.send(
        &json!({"id": 2, "refresh": {"token": token(json!({"sub": "m1", "exp": now() + 120}))}})
            .to_string(),
    )
    .await;
    assert!(a.reply().await["refresh"].is_object());
    server.api("revoke_token", json!({"uid": "mj"})).await;
    assert_eq!(b.closed().await.0, 3500);
    let mut again = RawWs::connect(&server.ws_url()).await;
    again.send(&json!({"id": 1, "connect": {"token": token(json!({"sub": "m2", "jti": "mj", "iat": now()}))}}).to_string()).await;
    assert_eq!(again.closed().await.0, 3500);
    // One that expires and is closed after the grace.
    let (mut c, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "m3", "exp": now() + 1})),
    )
    .await;
    assert_eq!(c.closed().await.0, 3005);
    server
        .api("publish", json!({"channel": "chat:m", "data": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let m = metrics(server.addr).await;
    assert_eq!(
        get(&m, "rotor_connections_with_expiry"),
        1.0,
        "the refreshed connection (expires in ~2 minutes)"
    );
    assert_eq!(get(&m, r#"rotor_connections_expiring{within="1m"}"#), 0.0);
    assert_eq!(get(&m, r#"rotor_connections_expiring{within="5m"}"#), 1.0);
    assert_eq!(get(&m, "rotor_broker_publish_duration_seconds_count"), 1.0);
    assert_eq!(get(&m, "rotor_broker_delivery_lag_seconds_count"), 1.0);
    assert_eq!(
        get(&m, r#"rotor_connects_total{transport="websocket"}"#),
        3.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_connect_refusals_total{reason="token_expired",transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_connect_refusals_total{reason="invalid_token",transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_connect_refusals_total{reason="revoked",transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_refreshes_total{kind="connection",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        get(&m, r#"rotor_refresh_lag_seconds_count{kind="connection"}"#),
        1.0
    );
    assert!(
        get(&m, r#"rotor_refresh_lag_seconds_sum{kind="connection"}"#) < -50.0,
        "refreshed about a minute early"
    );
    assert_eq!(get(&m, r#"rotor_revocations_total{kind="token"}"#), 1.0);
    assert_eq!(get(&m, "rotor_revocation_kicked_connections_total"), 1.0);
    assert_eq!(
        get(
            &m,
            r#"rotor_revocation_rejections_total{reason="revoked",stage="connect"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_connection_expirations_total{transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_disconnects_total{code="3005",transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"rotor_disconnects_total{code="3500",transport="websocket"}"#
        ),
        1.0
    );
    assert_eq!(
        get(&m, "rotor_connection_expires_in_seconds_count"),
        2.0,
        "two connects had an expiry"
    );
    assert_eq!(
        get(&m, r#"rotor_connections{transport="websocket"}"#),
        1.0,
        "only the refreshed one is open"
    );
    assert_eq!(get(&m, "rotor_node_clients"), 1.0);
    assert_eq!(
        get(&m, "centrifugo_node_num_clients"),
        1.0,
        "Centrifugo alias"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_on_an_internal_port_leave_the_public_port() {
    let port = free_port();
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.prometheus.internal_port = port;
    let server = TestServer::start(config).await;
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(
        http_raw(server.addr, req).await.0,
        404,
        "not on the public port"
    );
    let internal: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = http_raw(internal, req).await;
    assert_eq!(status, 200);
    assert!(body.contains("rotor_node_clients"), "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_are_off_unless_enabled() {
    let server = TestServer::start(test_config()).await;
    let (status, _) = http_raw(
        server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

/// Metric names referenced by an expression (`rotor_…`, `centrifugo_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = rest.starts_with("rotor_") || rest.starts_with("centrifugo_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

fn exprs_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                match (k.as_str(), child) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs_in(child, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| exprs_in(c, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_uses_exported_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut exprs = Vec::new();
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            dashboards += 1;
            exprs_in(
                &serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
                &mut exprs,
            );
        }
    }
    let rules = std::fs::read_to_string(dir.join("prometheus/rotor-alerts.yml")).unwrap();
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_string),
    );
    assert!(
        dashboards >= 4 && exprs.len() > 30,
        "{dashboards} dashboards, {} expressions",
        exprs.len()
    );

    // A server that has served the traffic those panels are about (a connect proxy whose
    // backend is not there: one failed call).
    let mut config = test_config();
    config.prometheus.enabled = true;
    config.client.proxy.connect.enabled = true;
    config.client.proxy.connect.endpoint = format!("http://127.0.0.1:{}/connect", free_port());
    config.client.expired_close_delay = Duration::from_millis(300);
    config.client.expired_sub_close_delay = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let (mut a, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "t1", "exp": now() + 60})),
    )
    .await;
    a.send(
        &json!({"id": 2, "refresh": {"token": token(json!({"sub": "t1", "exp": now() + 60}))}})
            .to_string(),
    )
    .await;
    a.reply().await;
    let st = token(json!({"sub": "t1", "channel": "$chat:s", "exp": now() + 60}));
    a.send(&json!({"id": 3, "subscribe": {"channel": "$chat:s", "token": st}}).to_string())
        .await;
    a.reply().await;
    a.send(&json!({"id": 4, "sub_refresh": {"channel": "$chat:s", "token": token(json!({"sub": "t1", "channel": "$chat:s", "exp": now() + 1}))}}).to_string()).await;
    a.reply().await;
    a.send(r#"{"id":5,"subscribe":{"channel":"nope:x"}}"#).await;
    a.reply().await;
    a.send(r#"{"id":6,"presence":{"channel":"$chat:s"}}"#).await;
    a.reply().await;
    server
        .api("publish", json!({"channel": "$chat:s", "data": 1}))
        .await;
    server
        .api("publish", json!({"channel": "open:x", "data": 1}))
        .await;
    let (mut b, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "t2", "jti": "jj", "iat": now()})),
    )
    .await;
    server.api("revoke_token", json!({"uid": "jj"})).await;
    b.closed().await;
    let mut c = RawWs::connect(&server.ws_url()).await;
    c.send(&json!({"id": 1, "connect": {"token": token(json!({"sub": "t2", "jti": "jj", "iat": now()}))}}).to_string()).await;
    c.closed().await;
    let (mut d, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "t3", "exp": now() + 1})),
    )
    .await;
    d.closed().await;
    // The subscription refreshed to a 1s token expires too (2501).
    loop {
        let m = a.message().await;
        if m["push"]["unsubscribe"]["code"] == 2501 {
            break;
        }
    }

    let mut e = RawWs::connect(&server.ws_url()).await;
    e.send(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(e.reply().await["error"]["code"], 100);

    let (_, body) = http_raw(
        server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut exported = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            exported.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let mut missing = Vec::new();
    for e in &exprs {
        for name in metric_names(e) {
            if !exported.contains(&name) {
                missing.push(format!("{name} (in {e})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:#?}"
    );
    server.shutdown().await;
}

//! Secrets stay secret: `Debug` of the configuration redacts them, and no token, key or
//! secret reaches the log even at trace level, whatever the client sends.

use std::time::Duration;

use rotor_tests::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");

#[test]
fn config_debug_redacts_every_secret() {
    let mut c = test_config();
    c.client.token.hmac_secret_key = "S3CRET-hmac".into();
    c.client.token.hmac_previous_secret_key = "S3CRET-previous".into();
    c.client.subscription_token.enabled = true;
    c.client.subscription_token.hmac_secret_key = "S3CRET-sub".into();
    c.http_api.key = "S3CRET-api".into();
    c.admin.password = "S3CRET-admin-password".into();
    c.admin.secret = "S3CRET-admin-secret".into();
    c.storage.postgres.dsn = "postgres://rotor:S3CRET-pg@db:5432/rotor".into();
    c.engine.redis.address = vec!["redis://:S3CRET-redis@cache:6379".into()];
    c.engine.redis.cluster_address = vec!["redis://user:S3CRET-cluster@cache:7000".into()];
    let shown = format!("{c:?}");
    assert!(!shown.contains("S3CRET"), "{shown}");
    assert!(shown.contains("<redacted>"));
    assert!(
        shown.contains("db:5432"),
        "the rest stays readable: {shown}"
    );
}

#[tokio::test]
async fn tokens_and_keys_never_reach_the_log() {
    let secret = "log-test-secret-4f1a";
    let api_key = "log-test-api-key-9c2e";
    let admin_password = "log-test-admin-password-31b0";
    let dir = std::env::temp_dir().join(format!("rotor-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rotor.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[http_server]
address = "127.0.0.1"
port = 0
[client.token]
hmac_secret_key = "{secret}"
[http_api]
key = "{api_key}"
[admin]
enabled = true
password = "{admin_password}"
secret = "log-test-admin-secret-77d1"
[[channel.namespaces]]
name = "open"
allow_subscribe_for_client = true
"#
        ),
    )
    .unwrap();
    let log_path = dir.join("stderr.log");
    let (mut child, addr) = spawn_rotor_with(
        BIN,
        &config,
        Some("trace"),
        std::fs::File::create(&log_path).unwrap().into(),
    )
    .await;
    let url = format!("ws://{addr}/connection/websocket");
    let sign = |claims: serde_json::Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let forged = sign(json!({"sub": "mallory"}), "guessed-wrong-key");
    let expired = sign(json!({"sub": "eve", "exp": now() - 60}), secret);
    let good = sign(json!({"sub": "alice", "exp": now() + 600}), secret);
    let bad_refresh = sign(json!({"sub": "alice"}), "another-wrong-key");
    let wrong_key = "wrong-api-key-7d3b";

    for t in [&forged, &expired] {
        let mut ws = RawWs::connect(&url).await;
        ws.send(&json!({"id": 1, "connect": {"token": t}}).to_string())
            .await;
        let _ = ws.recv(Duration::from_secs(5)).await;
    }
    let (mut ws, _) = RawWs::connected(&url, &good).await;
    ws.send(&json!({"id": 2, "subscribe": {"channel": "open:x", "token": forged}}).to_string())
        .await;
    ws.reply().await;
    ws.send(&json!({"id": 3, "refresh": {"token": bad_refresh}}).to_string())
        .await;
    let _ = ws.recv(Duration::from_secs(5)).await;
    let (status, _) = http_post(addr, "/api/info", &[("X-API-Key", wrong_key)], "{}").await;
    assert_eq!(status, 401);
    let (status, _) = http_post(addr, "/api/info", &[("X-API-Key", api_key)], "{}").await;
    assert_eq!(status, 200);
    let (status, _) = http_post(
        addr,
        "/api/info",
        &[("Authorization", &format!("apikey {wrong_key}"))],
        "{}",
    )
    .await;
    assert_eq!(status, 401);
    // Admin sign-ins, wrong and right: neither password nor session reaches the log.
    let wrong_password = "log-test-wrong-admin-password-5e";
    let (status, _) = http_post(
        addr,
        "/admin/auth",
        &[],
        &json!({ "password": wrong_password }).to_string(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, signed_in) = http_post(
        addr,
        "/admin/auth",
        &[],
        &json!({ "password": admin_password }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{signed_in}");
    let csrf = signed_in["csrf"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill().await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("connect refused"),
        "the log captured the refusals (otherwise this test proves nothing): {log}"
    );
    for (what, needle) in [
        ("HMAC secret", secret),
        ("API key", api_key),
        ("wrong API key", wrong_key),
        ("admin password", admin_password),
        ("admin secret", "log-test-admin-secret-77d1"),
        ("wrong admin password", wrong_password),
        ("admin CSRF token", &csrf),
    ] {
        assert!(!log.contains(needle), "the {what} is in the log");
    }
    for (what, token) in [
        ("forged token", &forged),
        ("expired token", &expired),
        ("good token", &good),
        ("refresh token", &bad_refresh),
    ] {
        // Any part of a token would do to replay or brute-force it: check the signature
        // and the payload, not only the whole string.
        for part in token.split('.').skip(1) {
            assert!(!log.contains(part), "part of the {what} is in the log");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_default_log_level_stays_quiet_about_every_connection() {
    // A directive meant to cap tungstenite once switched its debug output on at every
    // level; at the default level a connect and a close log nothing per connection.
    let dir = std::env::temp_dir().join(format!("rotor-quiet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rotor.toml");
    std::fs::write(
        &config,
        format!(
            "[http_server]\naddress = \"127.0.0.1\"\nport = 0\n[client.token]\nhmac_secret_key = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let log_path = dir.join("stderr.log");
    let (mut child, addr) = spawn_rotor_with(
        BIN,
        &config,
        None,
        std::fs::File::create(&log_path).unwrap().into(),
    )
    .await;
    for _ in 0..3 {
        let (ws, _) = RawWs::connected(
            &format!("ws://{addr}/connection/websocket"),
            &user_token("quiet"),
        )
        .await;
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("rotor listening"), "{log}");
    assert!(!log.contains("tungstenite"), "{log}");
    assert!(!log.contains("DEBUG") && !log.contains("TRACE"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

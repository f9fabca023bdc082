//! Token revocation by jti and user invalidation: live connections are closed at once, the
//! token stays refused (also on refresh, across restarts and on other nodes sharing the
//! database), and every revocation is in the audit trail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rotor_core::testing::{self as mem, Out};
use rotor_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn jti_token(user: &str, jti: &str, exp_in: u64) -> String {
    token(json!({"sub": user, "jti": jti, "iat": now(), "exp": now() + exp_in}))
}

#[tokio::test]
async fn js_client_with_a_revoked_jti_is_disconnected_and_stays_out() {
    if !sdks_available("js_client_with_a_revoked_jti_is_disconnected_and_stays_out") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let leaked = jti_token("ann", "leak-1", 3600);
    let env = |t: &str| vec![("BASE", server.http_url()), ("TOKEN", t.to_string())];
    let mut c = Script::node("client.js", &env(&leaked));
    c.expect("ready", T).await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    c.expect("connected", T).await;

    let start = Instant::now();
    let (status, r) = server
        .api(
            "revoke_token",
            json!({"uid": "leak-1", "reason": "leaked in a log"}),
        )
        .await;
    assert_eq!((status, &r), (200, &json!({"result": {}})));
    let d = c.expect("disconnected", T).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "kicked within a second: {:?}",
        start.elapsed()
    );
    assert_eq!(
        (d["code"].as_u64(), d["reason"].as_str()),
        (Some(3500), Some("token revoked")),
        "{d}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.seen.iter().filter(|e| e["event"] == "connecting").count(),
        1,
        "no reconnect: {:?}",
        c.seen
    );
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;

    // The same token again: refused.
    let mut again = Script::node("client.js", &env(&leaked));
    again.expect("ready", T).await;
    again.send(&json!({"op": "connect"}).to_string()).await;
    assert_eq!(again.expect("disconnected", T).await["code"], 3500);
    again.send(&json!({"op": "quit"}).to_string()).await;
    again.finish(T).await;

    // A fresh token with a new jti works.
    let mut fresh = Script::node("client.js", &env(&jti_token("ann", "fresh-2", 3600)));
    fresh.expect("ready", T).await;
    fresh.send(&json!({"op": "connect"}).to_string()).await;
    fresh.expect("connected", T).await;
    fresh.send(&json!({"op": "quit"}).to_string()).await;
    fresh.finish(T).await;

    let (_, list) = server.api("revoked_tokens", json!({})).await;
    let tokens = list["result"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{list}");
    let e = &tokens[0];
    assert_eq!(
        (e["jti"].as_str(), e["user"].as_str(), e["kicked"].as_u64()),
        (Some("leak-1"), Some("ann"), Some(1)),
        "{e}"
    );
    assert_eq!(
        (e["reason"].as_str(), e["actor"].as_str()),
        (Some("leaked in a log"), Some("api"))
    );
    assert!(e["revoked_at"].as_u64().unwrap() >= now() - 30);
    server.shutdown().await;
}

#[tokio::test]
async fn refresh_with_a_revoked_token_is_refused() {
    if !sdks_available("refresh_with_a_revoked_token_is_refused") {
        return;
    }
    let server = TestServer::start(test_config()).await;
    let mut c = Script::node(
        "client.js",
        &[("BASE", server.http_url()), ("GET_TOKEN", "1".into())],
    );
    c.expect("ready", T).await;
    c.send(&json!({"op": "connect"}).to_string()).await;
    c.expect("get_token", T).await;
    c.send(&json!({"op": "token", "token": jti_token("ben", "first", 2)}).to_string())
        .await;
    c.expect("connected", T).await;
    server
        .api("revoke_token", json!({"uid": "second", "reason": "stolen"}))
        .await;
    c.expect("get_token", T).await;
    c.send(&json!({"op": "token", "token": jti_token("ben", "second", 60)}).to_string())
        .await;
    let d = c.expect("disconnected", T).await;
    assert_eq!(
        (d["code"].as_u64(), d["reason"].as_str()),
        (Some(3500), Some("token revoked")),
        "{d}"
    );
    c.send(&json!({"op": "quit"}).to_string()).await;
    c.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalidating_a_user_closes_old_tokens_and_admits_new_ones() {
    let server = TestServer::start(test_config()).await;
    let old = token(json!({"sub": "bo", "iat": now() - 10}));
    let (mut ws, _) = RawWs::connected(&server.ws_url(), &old).await;
    let (mut other_user, _) = RawWs::connected(
        &server.ws_url(),
        &token(json!({"sub": "cy", "iat": now() - 10})),
    )
    .await;
    let (status, r) = server
        .api(
            "invalidate_user_tokens",
            json!({"user": "bo", "reason": "password reset"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(ws.closed().await, (3500, "token revoked".to_string()));
    let mut refused = RawWs::connect(&server.ws_url()).await;
    refused
        .send(&json!({"id": 1, "connect": {"token": old}}).to_string())
        .await;
    assert_eq!(refused.closed().await.0, 3500);
    let newer = token(json!({"sub": "bo", "iat": now() + 1}));
    RawWs::connected(&server.ws_url(), &newer).await;
    // Other users are untouched.
    other_user
        .send(r#"{"id":2,"subscribe":{"channel":"chat:still"}}"#)
        .await;
    assert!(other_user.reply().await["subscribe"].is_object());
    server.shutdown().await;
}

#[tokio::test]
async fn revocations_survive_restarts_reach_other_processes_and_show_in_the_cli() {
    use tokio::process::Command;
    let Some(pg) = PgSchema::create("revoke").await else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_rotor-under-test");
    let cfg = std::env::temp_dir().join(format!("rotor-revoke-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[http_server]\naddress = \"127.0.0.1\"\nport = 0\n[client.token]\nhmac_secret_key = \"{SECRET}\"\n[http_api]\nkey = \"{API_KEY}\"\n[revocation]\nsync_interval = \"1s\"\n[storage]\ntype = \"postgres\"\n[storage.postgres]\ndsn = \"{}\"\nschema = \"{}\"\n",
            pg.dsn, pg.schema
        ),
    )
    .unwrap();
    let spawn = || spawn_rotor(bin, &cfg);
    let (mut a, addr_a) = spawn().await;
    let (mut b, addr_b) = spawn().await;
    let t = jti_token("dee", "multi-1", 3600);
    let (mut on_b, _) = RawWs::connected(&format!("ws://{addr_b}/connection/websocket"), &t).await;

    // Revoked through A's API with the CLI; B learns it from the database within its sync interval.
    let api_a = format!("http://{addr_a}/api");
    let out = Command::new(bin)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "revoke",
            "multi-1",
            "--reason",
            "laptop stolen",
            "--api-url",
            &api_a,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    assert_eq!(on_b.closed().await, (3500, "token revoked".to_string()));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "another node enforces it within its 1s sync interval: {:?}",
        start.elapsed()
    );

    // After a restart the revocation still holds (loaded from Postgres before listening).
    a.kill().await.unwrap();
    let (mut a2, addr_a2) = spawn().await;
    let mut ws = RawWs::connect(&format!("ws://{addr_a2}/connection/websocket")).await;
    ws.send(&json!({"id": 1, "connect": {"token": t}}).to_string())
        .await;
    assert_eq!(ws.closed().await.0, 3500);

    // The audit trail through the CLI: JSON for scripts, a table for people.
    let api_a2 = format!("http://{addr_a2}/api");
    let out = Command::new(bin)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "revocations",
            "list",
            "--json",
            "--api-url",
            &api_a2,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["jti"], "multi-1", "{listed}");
    assert_eq!(listed[0]["reason"], "laptop stolen");
    assert!(
        listed[0]["actor"].as_str().unwrap().starts_with("cli:"),
        "{listed}"
    );
    let table = Command::new(bin)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "revocations",
            "list",
            "--user",
            "nobody",
            "--since",
            "1h",
            "--api-url",
            &api_a2,
        ])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("(no revocations)"));
    let _ = a2.kill().await;
    let _ = b.kill().await;
    pg.drop_now().await;
}

/// Counts calls to the revocation store.
struct CountingStore {
    inner: Arc<rotor_store_memory::MemoryRevocations>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl rotor_core::storage::RevocationStore for CountingStore {
    async fn revoke(
        &self,
        e: rotor_core::storage::RevokedToken,
    ) -> Result<(), rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.revoke(e).await
    }
    async fn active(
        &self,
        now: u64,
    ) -> Result<Vec<rotor_core::storage::RevokedToken>, rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.active(now).await
    }
    async fn list(
        &self,
        f: &rotor_core::storage::RevocationFilter,
    ) -> Result<Vec<rotor_core::storage::RevokedToken>, rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list(f).await
    }
    async fn purge_expired(&self, now: u64) -> Result<u64, rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.purge_expired(now).await
    }
    async fn invalidate_user(
        &self,
        e: rotor_core::storage::UserInvalidation,
    ) -> Result<(), rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.invalidate_user(e).await
    }
    async fn active_invalidations(
        &self,
        now: u64,
    ) -> Result<Vec<rotor_core::storage::UserInvalidation>, rotor_core::CoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.active_invalidations(now).await
    }
}

#[derive(Default)]
struct Seen {
    revoked: AtomicUsize,
    rejected: AtomicUsize,
    kicked: AtomicUsize,
}

impl rotor_core::events::Observer for Seen {
    fn revoked(&self, _kind: &'static str) {
        self.revoked.fetch_add(1, Ordering::SeqCst);
    }
    fn rejected(
        &self,
        _stage: rotor_core::events::Stage,
        _reason: rotor_core::revocation::Refusal,
    ) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }
    fn kicked(&self, n: usize) {
        self.kicked.fetch_add(n, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn the_revocation_check_makes_no_storage_call_per_connect() {
    let store = Arc::new(CountingStore {
        inner: rotor_store_memory::MemoryRevocations::new(),
        calls: AtomicUsize::new(0),
    });
    let mut storage = rotor_store_memory::storage();
    storage.revocations = store.clone();
    let seen = Arc::new(Seen::default());
    let mut config = test_config();
    config.client.ping_interval = Duration::ZERO;
    let node = rotor_core::Node::new(
        config.core(),
        storage,
        Arc::new(rotor_core::broker::LocalBroker::default()),
        seen.clone(),
    )
    .unwrap();
    node.revoke_token("bad", 0, "", "test", "test")
        .await
        .unwrap();
    node.sync_revocations().await.unwrap();
    let calls_before = store.calls.load(Ordering::SeqCst);

    let mut rxs = Vec::new();
    for i in 0..200 {
        let (tx, rx) = mem::session(&node);
        let jti = if i % 2 == 0 {
            "bad".to_string()
        } else {
            format!("good-{i}")
        };
        tx.send(
            json!({"id": 1, "connect": {"token": jti_token(&format!("u{i}"), &jti, 60)}})
                .to_string(),
        )
        .unwrap();
        rxs.push((i, tx, rx));
    }
    for (i, _tx, rx) in rxs.iter_mut() {
        match rx.recv().await {
            Some(Out::Messages(m)) => {
                assert!(*i % 2 == 1 && m[0].contains("\"connect\""), "{i}: {m:?}")
            }
            Some(Out::Closed(d, _)) => assert!(*i % 2 == 0 && d.code == 3500, "{i}: {d:?}"),
            None => panic!("{i}: nothing"),
        }
    }
    assert_eq!(
        store.calls.load(Ordering::SeqCst),
        calls_before,
        "200 connects, no storage call"
    );
    assert_eq!(seen.revoked.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.rejected.load(Ordering::SeqCst),
        100,
        "each refused connect is reported"
    );
    node.revoke_token("good-1", 0, "", "test", "test")
        .await
        .unwrap();
    assert_eq!(
        seen.kicked.load(Ordering::SeqCst),
        1,
        "the live connection using it was kicked"
    );
}

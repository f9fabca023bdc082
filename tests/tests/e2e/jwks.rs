//! JWKS: keys from a real HTTP endpoint the test runs, looked up by kid, rotated, with
//! unknown kids rate-limited and an unreachable endpoint answered with a temporary error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rotor_tests::*;
use serde_json::{json, Value};
use tokio_util_free::Stop;
use warp::Filter;

mod tokio_util_free {
    /// Stops the JWKS server.
    pub struct Stop(pub tokio::sync::oneshot::Sender<()>);
}

fn testdata(file: &str) -> String {
    format!(
        "{}/../crates/rotor-auth/testdata/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn sign(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: Value) -> String {
    let pem = std::fs::read(testdata(key_file)).unwrap();
    let key = if alg == Algorithm::ES256 {
        EncodingKey::from_ec_pem(&pem).unwrap()
    } else {
        EncodingKey::from_rsa_pem(&pem).unwrap()
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// An ES512 token signed with testdata/ec521.key, or with another P-521 key (`forged`).
pub fn es512(kid: Option<&str>, claims: Value, forged: bool) -> String {
    use rotor_auth::p521;
    use rotor_auth::p521::pkcs8::DecodePrivateKey;
    let key = if forged {
        p521::ecdsa::SigningKey::from_slice(&[&[0u8][..], &[9u8; 65][..]].concat()).unwrap()
    } else {
        let pem = std::fs::read_to_string(testdata("ec521.key")).unwrap();
        let secret = p521::SecretKey::from_pkcs8_pem(&pem).unwrap();
        p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes()).unwrap()
    };
    rotor_auth::sign_es512(&claims, &key, kid)
}

struct Jwks {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    stop: Stop,
}

async fn jwks_server(initial: Value) -> Jwks {
    let keys = Arc::new(Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let route = warp::path!("jwks").map(move || {
        h.fetch_add(1, Ordering::SeqCst);
        warp::reply::json(&*k.lock().unwrap())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    Jwks {
        url: format!("http://{addr}/jwks"),
        keys,
        hits,
        stop: Stop(tx),
    }
}

fn jwk(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata("jwks.json")).unwrap()).unwrap();
    all[name].clone()
}

async fn connect(server: &TestServer, token: &str) -> Value {
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    match ws.recv(Duration::from_secs(10)).await {
        Received::Messages(m) => m[0].clone(),
        Received::Close(code, _) => json!({"closed": code}),
        Received::Ended => panic!("no close frame"),
    }
}

#[tokio::test]
async fn jwks_keys_rotation_unknown_kid_and_outage() {
    let jwks = jwks_server(json!({"keys": [jwk("rsa1")]})).await;
    let mut config = test_config();
    config.client.token.jwks_public_endpoint = jwks.url.clone();
    let server = TestServer::start(config).await;
    let claims = || json!({"sub": "jw", "exp": now() + 60});

    let r = connect(
        &server,
        &sign(Algorithm::RS256, "rsa.key", Some("rsa1"), claims()),
    )
    .await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1);
    // Cached: another connect does not fetch again.
    connect(
        &server,
        &sign(Algorithm::RS256, "rsa.key", Some("rsa1"), claims()),
    )
    .await;
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "keys are cached");
    // No kid: refused.
    assert_eq!(
        connect(&server, &sign(Algorithm::RS256, "rsa.key", None, claims())).await["closed"],
        3500
    );
    // HMAC tokens are not accepted once JWKS is configured.
    assert_eq!(connect(&server, &user_token("jw")).await["closed"], 3500);

    // The provider rotates to rsa2 and adds an EC key: an unknown kid triggers one refetch.
    *jwks.keys.lock().unwrap() = json!({"keys": [jwk("rsa2"), jwk("ec1"), jwk("ec521")]});
    let r = connect(
        &server,
        &sign(Algorithm::RS256, "rsa2.key", Some("rsa2"), claims()),
    )
    .await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    let r = connect(
        &server,
        &sign(Algorithm::ES256, "ec256.key", Some("ec1"), claims()),
    )
    .await;
    assert!(r["connect"]["client"].is_string(), "EC keys from JWKS: {r}");
    // ES512 on a P-521 JWK of the same set (jsonwebtoken has no ES512): accepted; a token
    // signed by another P-521 key under the same kid is not.
    let r = connect(&server, &es512(Some("ec521"), claims(), false)).await;
    assert!(r["connect"]["client"].is_string(), "ES512 from JWKS: {r}");
    assert_eq!(
        connect(&server, &es512(Some("ec521"), claims(), true)).await["closed"],
        3500
    );
    // A key signed by rsa.key but claiming kid rsa2 fails the signature check.
    assert_eq!(
        connect(
            &server,
            &sign(Algorithm::RS256, "rsa.key", Some("rsa2"), claims())
        )
        .await["closed"],
        3500
    );
    // A flood of unknown kids causes no flood of fetches.
    for i in 0..10 {
        let r = connect(
            &server,
            &sign(
                Algorithm::RS256,
                "rsa.key",
                Some(&format!("forged{i}")),
                claims(),
            ),
        )
        .await;
        assert_eq!(r["closed"], 3500, "{r}");
    }
    assert!(
        jwks.hits.load(Ordering::SeqCst) <= 3,
        "unknown kids are rate-limited: {} fetches",
        jwks.hits.load(Ordering::SeqCst)
    );

    // The endpoint goes down: cached keys keep working.
    jwks.stop.0.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = connect(
        &server,
        &sign(Algorithm::RS256, "rsa2.key", Some("rsa2"), claims()),
    )
    .await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    server.shutdown().await;

    // A node that has no keys yet, with the endpoint down: a temporary error, and the
    // connection stays open so the SDK can retry.
    let mut config = test_config();
    config.client.token.jwks_public_endpoint = jwks.url.clone();
    let server = TestServer::start(config).await;
    let r = connect(
        &server,
        &sign(Algorithm::RS256, "rsa.key", Some("rsa1"), claims()),
    )
    .await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    server.shutdown().await;
}

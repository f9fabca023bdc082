//! Connection tokens at connect: algorithms, audience/issuer, expiry, and the codes clients
//! get (expired: error 109 and the connection stays usable for a retry; invalid: 3500).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rotor_tests::*;
use serde_json::{json, Value};

fn keys() -> String {
    format!(
        "{}/../crates/rotor-auth/testdata",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn sign(alg: Algorithm, key_file: &str, claims: Value) -> String {
    let pem = std::fs::read(format!("{}/{key_file}", keys())).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

async fn connect(server: &TestServer, token: &str) -> (RawWs, Value) {
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    match ws.recv(std::time::Duration::from_secs(5)).await {
        Received::Messages(m) => (ws, m[0].clone()),
        Received::Close(code, reason) => (ws, json!({"closed": code, "reason": reason})),
        Received::Ended => panic!("ended without a close frame"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_accepted() {
    let mut config = test_config();
    config.client.token.rsa_public_key = format!("{}/rsa.pub", keys());
    config.client.token.ecdsa_public_key =
        std::fs::read_to_string(format!("{}/ec256.pub", keys())).unwrap();
    let server = TestServer::start(config).await;
    let rs = sign(
        Algorithm::RS256,
        "rsa.key",
        json!({"sub": "rsa-user", "exp": now() + 60}),
    );
    let (_ws, reply) = connect(&server, &rs).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert_eq!(reply["connect"]["expires"], true);
    let ttl = reply["connect"]["ttl"].as_u64().unwrap();
    assert!((58..=60).contains(&ttl), "ttl is exp - now: {ttl}");
    let es = sign(Algorithm::ES256, "ec256.key", json!({"sub": "ec-user"}));
    let (_ws, reply) = connect(&server, &es).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert!(
        reply["connect"].get("expires").is_none(),
        "a token without exp does not expire: {reply}"
    );
    // A token signed by an ECDSA key the server does not know is refused.
    let other = sign(Algorithm::ES384, "ec384.key", json!({"sub": "x"}));
    let (_ws, reply) = connect(&server, &other).await;
    assert_eq!(reply["closed"], 3500, "{reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn es512_tokens_from_a_configured_p521_key() {
    let mut config = test_config();
    config.client.token.ecdsa_public_key = format!("{}/ec521.pub", keys());
    let server = TestServer::start(config).await;
    let t = super::jwks::es512(None, json!({"sub": "p521", "exp": now() + 60}), false);
    let (_ws, reply) = connect(&server, &t).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert_eq!(reply["connect"]["ttl"].as_u64().map(|t| t > 50), Some(true));
    // Signed by another P-521 key: 3500.
    let forged = super::jwks::es512(None, json!({"sub": "p521"}), true);
    assert_eq!(connect(&server, &forged).await.1["closed"], 3500);
    // Expired: 109, the connection stays for a retry.
    let old = super::jwks::es512(None, json!({"sub": "p521", "exp": now() - 5}), false);
    assert_eq!(connect(&server, &old).await.1["error"]["code"], 109);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_signature_wrong_audience_and_expiry_get_their_codes() {
    let mut config = test_config();
    config.client.token.audience = "rotor-tests".into();
    let server = TestServer::start(config).await;

    let forged =
        rotor_auth::sign_hmac(&json!({"sub": "u", "aud": "rotor-tests"}), "wrong").unwrap();
    let (_ws, reply) = connect(&server, &forged).await;
    assert_eq!(reply["closed"], 3500, "bad signature: {reply}");
    assert_eq!(reply["reason"], "invalid token");

    let wrong_aud = token(json!({"sub": "u", "aud": "someone-else"}));
    let (_ws, reply) = connect(&server, &wrong_aud).await;
    assert_eq!(reply["closed"], 3500, "wrong audience: {reply}");

    let expired = token(json!({"sub": "u", "aud": "rotor-tests", "exp": now() - 10}));
    let (mut ws, reply) = connect(&server, &expired).await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], 109, "expired: {reply}");
    assert_eq!(reply["error"]["message"], "token expired");
    // The connection is not closed: the SDK gets a fresh token and connects again.
    let fresh = token(json!({"sub": "u", "aud": "rotor-tests", "exp": now() + 60}));
    ws.send(&json!({"id": 2, "connect": {"token": fresh}}).to_string())
        .await;
    let reply = ws.reply().await;
    assert_eq!(reply["id"], 2);
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    let ok = token(json!({"sub": "u", "aud": ["a", "rotor-tests"]}));
    let (_ws, reply) = connect(&server, &ok).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn connect_without_token_needs_the_anonymous_option() {
    let server = TestServer::start(test_config()).await;
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(
        ws.closed().await,
        (3501, "client credentials not found".to_string())
    );
    server.shutdown().await;

    let mut config = test_config();
    config.client.allow_anonymous_connect_without_token = true;
    let server = TestServer::start(config).await;
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(r#"{"id":1,"connect":{}}"#).await;
    let reply = ws.reply().await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    // Anonymous users cannot subscribe unless the namespace allows it.
    ws.send(r#"{"id":2,"subscribe":{"channel":"news"}}"#).await;
    assert_eq!(ws.reply().await["error"]["code"], 103);
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_subscriptions_from_the_channels_claim() {
    let server = TestServer::start(test_config()).await;
    let t = token(json!({"sub": "u1", "channels": ["chat:personal"]}));
    let (mut ws, reply) = RawWs::connected(&server.ws_url(), &t).await;
    let subs = &reply["connect"]["subs"];
    assert_eq!(subs["chat:personal"]["recoverable"], true, "{reply}");
    server
        .api(
            "publish",
            json!({"channel": "chat:personal", "data": {"x": 1}}),
        )
        .await;
    let push = ws.message().await;
    assert_eq!(push["push"]["channel"], "chat:personal");
    assert_eq!(push["push"]["pub"]["data"], json!({"x": 1}));
    // An unknown namespace in the claim fails the connect with 102.
    let t = token(json!({"sub": "u1", "channels": ["nope:x"]}));
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(&json!({"id": 1, "connect": {"token": t}}).to_string())
        .await;
    assert_eq!(ws.reply().await["error"]["code"], 102);
    server.shutdown().await;
}

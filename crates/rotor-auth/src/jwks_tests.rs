//! The JWKS cache against a local key endpoint that answers, fails (500) or hangs, and
//! counts every request: cached keys never wait, fetches are single-flight, and what the
//! endpoint sees is bounded in every state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::jwks::{Jwks, FAILURE_BACKOFF_MIN};
use crate::AuthError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Keys,
    Fail,
    Hang,
}

struct Endpoint {
    url: String,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl Endpoint {
    async fn start(mode: Mode) -> Endpoint {
        let keys =
            std::fs::read_to_string(format!("{}/testdata/jwks.json", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let all: serde_json::Value = serde_json::from_str(&keys).unwrap();
        let body = serde_json::json!({"keys": [all["rsa1"], all["ec1"]]}).to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h) = (mode.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (m, h, body) = (m.clone(), h.clone(), body.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let mode = *m.lock().unwrap();
                    let response = match mode {
                        Mode::Keys => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Mode::Fail => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let _ = sock.write_all(response.as_bytes()).await;
                });
            }
        });
        Endpoint { url, mode, hits }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// `n` concurrent lookups of kids the set does not have.
async fn forged_lookups(jwks: &Arc<Jwks>, n: usize) -> Vec<Result<(), AuthError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.key(&format!("forged-{i}")).await.map(drop) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_cached_kid_is_answered_at_once_while_a_forged_one_waits_on_a_hanging_endpoint() {
    let ep = Endpoint::start(Mode::Keys).await;
    let jwks =
        Arc::new(Jwks::with_timing(&ep.url, Duration::from_secs(3600), Duration::ZERO).unwrap());
    jwks.key("rsa1").await.unwrap();
    assert_eq!(ep.hits(), 1);
    ep.set(Mode::Hang);
    // A forged kid starts a fetch that hangs (two tries of 1 s).
    let forged = {
        let jwks = jwks.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            (jwks.key("forged").await.map(drop), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile the cached kid does not wait for it (it waited ~2 s before).
    for _ in 0..20 {
        let t = Instant::now();
        jwks.key("rsa1").await.unwrap();
        jwks.key("ec1").await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "cached keys waited {:?}",
            t.elapsed()
        );
    }
    // More forged kids during the hanging fetch join it: no request of their own.
    let more = forged_lookups(&jwks, 20).await;
    assert!(
        more.iter()
            .all(|r| matches!(r, Err(AuthError::Unavailable(_)))),
        "{more:?}"
    );
    let (r, took) = forged.await.unwrap();
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(900),
        "the forged kid waited for the fetch: {took:?}"
    );
    assert!(
        ep.hits() <= 1 + 2,
        "one fetch of two tries: {} requests",
        ep.hits()
    );
}

#[tokio::test]
async fn an_endpoint_failing_from_the_start_sees_two_requests_per_backoff() {
    let ep = Endpoint::start(Mode::Fail).await;
    let jwks = Arc::new(Jwks::new(&ep.url).unwrap());
    // 50 connects with random kids: one fetch (two tries), every lookup a temporary error.
    let r = forged_lookups(&jwks, 50).await;
    assert!(
        r.iter()
            .all(|r| matches!(r, Err(AuthError::Unavailable(_)))),
        "{r:?}"
    );
    assert_eq!(ep.hits(), 2, "one fetch, two requests");
    // Within the backoff: refused at once, nothing sent.
    let t = Instant::now();
    let r = forged_lookups(&jwks, 50).await;
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(r
        .iter()
        .all(|r| matches!(r, Err(AuthError::Unavailable(_)))));
    assert_eq!(ep.hits(), 2, "the negative cache holds");
    // After the first backoff one more fetch; the next backoff is twice as long.
    tokio::time::sleep(FAILURE_BACKOFF_MIN + Duration::from_millis(200)).await;
    forged_lookups(&jwks, 50).await;
    assert_eq!(ep.hits(), 4);
    tokio::time::sleep(FAILURE_BACKOFF_MIN + Duration::from_millis(200)).await;
    forged_lookups(&jwks, 50).await;
    assert_eq!(ep.hits(), 4, "2 s backoff after two failures");
    // The endpoint comes back: the next allowed fetch finds the keys.
    ep.set(Mode::Keys);
    tokio::time::sleep(FAILURE_BACKOFF_MIN).await;
    jwks.key("rsa1").await.unwrap();
    assert_eq!(ep.hits(), 5);
}

#[tokio::test]
async fn keys_past_their_ttl_are_still_used_while_the_endpoint_fails() {
    let ep = Endpoint::start(Mode::Keys).await;
    let jwks = Arc::new(
        Jwks::with_timing(&ep.url, Duration::from_millis(200), Duration::from_secs(5)).unwrap(),
    );
    jwks.key("rsa1").await.unwrap();
    ep.set(Mode::Fail);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expired keys answer at once; one background fetch (failing) is all that is sent.
    for _ in 0..50 {
        let t = Instant::now();
        jwks.key("rsa1").await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(200));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ep.hits(), 1 + 2, "one background refetch of two tries");
    for _ in 0..50 {
        jwks.key("rsa1").await.unwrap();
    }
    assert_eq!(ep.hits(), 3, "backoff after the failure");
    // Unknown kids while failing: a temporary error, not a flood.
    let r = forged_lookups(&jwks, 30).await;
    assert!(
        r.iter()
            .all(|r| matches!(r, Err(AuthError::Unavailable(_)))),
        "{r:?}"
    );
    assert_eq!(ep.hits(), 3);
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval_while_the_endpoint_answers() {
    let ep = Endpoint::start(Mode::Keys).await;
    let jwks = Arc::new(Jwks::new(&ep.url).unwrap());
    jwks.key("rsa1").await.unwrap();
    // The first unknown kid refetches (a key the provider just added is found); the flood
    // of them with it, and after it, does not.
    let r = forged_lookups(&jwks, 100).await;
    assert!(
        r.iter().all(|r| matches!(r, Err(AuthError::Invalid(_)))),
        "unknown kids are invalid: {r:?}"
    );
    assert_eq!(ep.hits(), 2, "one refetch for the unknown kids");
    let r = forged_lookups(&jwks, 100).await;
    assert!(r.iter().all(|r| matches!(r, Err(AuthError::Invalid(_)))));
    assert_eq!(ep.hits(), 2, "then the interval");
}

mod parse {
    use proptest::prelude::*;

    use crate::jwks::parse_set;

    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A JWK with fields a hostile or careless provider could send.
    fn arb_jwk() -> impl Strategy<Value = serde_json::Value> {
        let kty = prop_oneof![
            Just("EC".to_string()),
            Just("RSA".to_string()),
            Just("oct".to_string()),
            Just("OKP".to_string()),
            ".{0,4}"
        ];
        let crv = prop_oneof![
            Just("P-256".to_string()),
            Just("P-384".to_string()),
            Just("P-521".to_string()),
            Just("Ed25519".to_string()),
            ".{0,6}"
        ];
        let alg = prop_oneof![
            Just("ES256".to_string()),
            Just("ES512".to_string()),
            Just("RS256".to_string()),
            Just("none".to_string()),
            ".{0,6}"
        ];
        let coord = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..140).prop_map(|b| b64url(&b)),
            ".{0,20}",
        ];
        (kty, crv, alg, coord.clone(), coord, proptest::option::of("[a-z0-9]{0,8}"), any::<bool>())
            .prop_map(|(kty, crv, alg, x, y, kid, sig)| {
                let mut v = serde_json::json!({"kty": kty, "crv": crv, "alg": alg, "x": x, "y": y,
                                               "n": x, "e": "AQAB", "use": if sig { "sig" } else { "enc" }});
                if let Some(kid) = kid {
                    v["kid"] = kid.into();
                }
                v
            })
    }

    proptest! {
        #[test]
        fn any_body_parses_or_is_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_set(&body);
        }

        #[test]
        fn a_set_of_odd_keys_keeps_the_usable_ones_only(keys in proptest::collection::vec(arb_jwk(), 0..6)) {
            let body = serde_json::json!({"keys": keys}).to_string();
            let parsed = parse_set(body.as_bytes()).expect("a set with a keys array parses");
            for kid in parsed.keys() {
                prop_assert!(
                    keys.iter().any(|k| k["kid"] == kid.as_str() && k["use"] == "sig"),
                    "only signature keys of the set are kept: {}", kid
                );
            }
        }
    }

    #[test]
    fn the_test_set_parses_whole() {
        let body =
            std::fs::read(format!("{}/testdata/jwks.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let all: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let set =
            serde_json::json!({"keys": all.as_object().unwrap().values().collect::<Vec<_>>()});
        let parsed = parse_set(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&String> = parsed.keys().collect();
        kids.sort();
        assert_eq!(kids, ["ec1", "ec521", "rsa1", "rsa2"]);
    }
}

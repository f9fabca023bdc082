//! Token verification against real keys (HMAC, RSA, ECDSA from testdata/): signatures,
//! expiry, audience and issuer, claims, and the refusals.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::*;

const SECRET: &str = "test-secret";
const NOW: u64 = 1_800_000_000;

fn keys_dir() -> String {
    format!("{}/testdata", env!("CARGO_MANIFEST_DIR"))
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn hmac_verifier() -> TokenVerifier {
    TokenVerifier::new(&TokenConfig {
        hmac_secret_key: SECRET.into(),
        ..TokenConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn hmac_token_yields_user_expiry_and_info() {
    let t = sign_hmac(
        &json!({"sub": "42", "exp": NOW + 60, "info": {"name": "Ann"}, "jti": "j1", "iat": NOW}),
        SECRET,
    )
    .unwrap();
    let c = hmac_verifier().verify_connect(&t, NOW).await.unwrap();
    assert_eq!(c.user, "42");
    assert_eq!(c.expire_at, Some(NOW + 60));
    assert_eq!(c.jti.as_deref(), Some("j1"));
    assert_eq!(c.info.unwrap().get(), r#"{"name":"Ann"}"#);
}

#[tokio::test]
async fn every_hmac_size_verifies_and_a_bad_signature_is_invalid() {
    let v = hmac_verifier();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = sign(
            alg,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            json!({"sub": "u"}),
        );
        assert_eq!(
            v.verify_connect(&t, NOW).await.unwrap().user,
            "u",
            "{alg:?}"
        );
        let bad = sign(
            alg,
            &EncodingKey::from_secret(b"other"),
            json!({"sub": "u"}),
        );
        assert!(
            matches!(
                v.verify_connect(&bad, NOW).await,
                Err(AuthError::Invalid(_))
            ),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn expired_is_reported_only_for_correctly_signed_tokens() {
    let v = hmac_verifier();
    let expired = sign_hmac(&json!({"sub": "u", "exp": NOW}), SECRET).unwrap();
    assert_eq!(
        v.verify_connect(&expired, NOW).await,
        Err(AuthError::Expired)
    );
    let forged_expired = sign_hmac(&json!({"sub": "u", "exp": NOW - 5}), "wrong").unwrap();
    assert!(matches!(
        v.verify_connect(&forged_expired, NOW).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn expire_at_overrides_exp_and_zero_means_never() {
    let v = hmac_verifier();
    let t = sign_hmac(
        &json!({"sub": "u", "exp": NOW + 10, "expire_at": NOW + 100}),
        SECRET,
    )
    .unwrap();
    assert_eq!(
        v.verify_connect(&t, NOW).await.unwrap().expire_at,
        Some(NOW + 100)
    );
    let t = sign_hmac(
        &json!({"sub": "u", "exp": NOW + 10, "expire_at": 0}),
        SECRET,
    )
    .unwrap();
    assert_eq!(v.verify_connect(&t, NOW).await.unwrap().expire_at, None);
    // exp is still checked at connect even when expire_at is 0.
    let t = sign_hmac(&json!({"sub": "u", "exp": NOW - 1, "expire_at": 0}), SECRET).unwrap();
    assert_eq!(v.verify_connect(&t, NOW).await, Err(AuthError::Expired));
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_from_pem_files_and_text() {
    let dir = keys_dir();
    let rsa_priv = std::fs::read(format!("{dir}/rsa.key")).unwrap();
    let ec256_priv = std::fs::read(format!("{dir}/ec256.key")).unwrap();
    let v = TokenVerifier::new(&TokenConfig {
        rsa_public_key: format!("{dir}/rsa.pub"),
        ecdsa_public_key: std::fs::read_to_string(format!("{dir}/ec256.pub")).unwrap(),
        ..TokenConfig::default()
    })
    .unwrap();
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let t = sign(
            alg,
            &EncodingKey::from_rsa_pem(&rsa_priv).unwrap(),
            json!({"sub": "r"}),
        );
        assert_eq!(
            v.verify_connect(&t, NOW).await.unwrap().user,
            "r",
            "{alg:?}"
        );
    }
    let t = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&ec256_priv).unwrap(),
        json!({"sub": "e"}),
    );
    assert_eq!(v.verify_connect(&t, NOW).await.unwrap().user, "e");
    // An HMAC token is refused when no HMAC key is configured.
    let t = sign_hmac(&json!({"sub": "h"}), SECRET).unwrap();
    assert!(matches!(
        v.verify_connect(&t, NOW).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn es384_verifies() {
    let dir = keys_dir();
    let v = TokenVerifier::new(&TokenConfig {
        ecdsa_public_key: format!("{dir}/ec384.pub"),
        ..TokenConfig::default()
    })
    .unwrap();
    let key =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{dir}/ec384.key")).unwrap()).unwrap();
    let t = sign(Algorithm::ES384, &key, json!({"sub": "e384"}));
    assert_eq!(v.verify_connect(&t, NOW).await.unwrap().user, "e384");
}

/// The ES512 test key (testdata/ec521.key, made by openssl).
fn es512_key(dir: &str) -> p521::ecdsa::SigningKey {
    use p521::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(format!("{dir}/ec521.key")).unwrap();
    let secret = p521::SecretKey::from_pkcs8_pem(&pem).unwrap();
    p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes()).unwrap()
}

#[tokio::test]
async fn es512_verifies_and_a_bad_signature_or_the_wrong_curve_is_invalid() {
    let dir = keys_dir();
    let v = TokenVerifier::new(&TokenConfig {
        ecdsa_public_key: format!("{dir}/ec521.pub"),
        ..TokenConfig::default()
    })
    .unwrap();
    let key = es512_key(&dir);
    let t = sign_es512(
        &json!({"sub": "e512", "exp": NOW + 60, "info": {"a": 1}}),
        &key,
        None,
    );
    let c = v.verify_connect(&t, NOW).await.unwrap();
    assert_eq!((c.user.as_str(), c.expire_at), ("e512", Some(NOW + 60)));
    // Expiry is checked as for every algorithm.
    let old = sign_es512(&json!({"sub": "e512", "exp": NOW - 1}), &key, None);
    assert_eq!(v.verify_connect(&old, NOW).await, Err(AuthError::Expired));
    // Subscription tokens too.
    let s = sign_es512(&json!({"sub": "e512", "channel": "$c"}), &key, None);
    assert_eq!(v.verify_subscribe(&s, NOW).await.unwrap().channel, "$c");

    // Another P-521 key, a tampered payload, a truncated signature: invalid.
    let other =
        p521::ecdsa::SigningKey::from_slice(&[&[0u8][..], &[7u8; 65][..]].concat()).unwrap();
    let forged = sign_es512(&json!({"sub": "e512"}), &other, None);
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let tampered = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] = e.encode(br#"{"sub":"admin"}"#);
        parts.join(".")
    };
    let truncated = &t[..t.len() - 4];
    for bad in [
        forged.as_str(),
        tampered.as_str(),
        truncated,
        "eyJhbGciOiJFUzUxMiJ9.e30.",
    ] {
        assert!(
            matches!(v.verify_connect(bad, NOW).await, Err(AuthError::Invalid(_))),
            "{bad}"
        );
    }
    // ES256 tokens are refused with a P-521 key, and ES512 ones with a P-256 key.
    let ec256 =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{dir}/ec256.key")).unwrap()).unwrap();
    let t256 = sign(Algorithm::ES256, &ec256, json!({"sub": "e"}));
    assert!(matches!(
        v.verify_connect(&t256, NOW).await,
        Err(AuthError::Invalid(_))
    ));
    let v256 = TokenVerifier::new(&TokenConfig {
        ecdsa_public_key: format!("{dir}/ec256.pub"),
        ..TokenConfig::default()
    })
    .unwrap();
    assert!(matches!(
        v256.verify_connect(&t, NOW).await,
        Err(AuthError::Invalid(_))
    ));
    assert_eq!(v256.verify_connect(&t256, NOW).await.unwrap().user, "e");
}

#[tokio::test]
async fn alg_none_and_unknown_algorithms_are_invalid() {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let v = hmac_verifier();
    for alg in ["none", "ES999", "HS1"] {
        let t = format!(
            "{}.{}.",
            e.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            e.encode(br#"{"sub":"x"}"#)
        );
        assert!(
            matches!(v.verify_connect(&t, NOW).await, Err(AuthError::Invalid(_))),
            "{alg}"
        );
    }
}

#[test]
fn bad_key_config_names_the_key() {
    let err = TokenVerifier::new(&TokenConfig {
        rsa_public_key: "/nonexistent.pem".into(),
        ..TokenConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("rsa_public_key"), "{err}");
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let v = TokenVerifier::new(&TokenConfig {
        hmac_secret_key: SECRET.into(),
        audience: "rotor".into(),
        issuer: "auth.example".into(),
        ..TokenConfig::default()
    })
    .unwrap();
    let ok = sign_hmac(
        &json!({"sub": "u", "aud": ["x", "rotor"], "iss": "auth.example"}),
        SECRET,
    )
    .unwrap();
    assert!(v.verify_connect(&ok, NOW).await.is_ok());
    let ok_str = sign_hmac(
        &json!({"sub": "u", "aud": "rotor", "iss": "auth.example"}),
        SECRET,
    )
    .unwrap();
    assert!(v.verify_connect(&ok_str, NOW).await.is_ok());
    let wrong_aud = sign_hmac(
        &json!({"sub": "u", "aud": "other", "iss": "auth.example"}),
        SECRET,
    )
    .unwrap();
    assert_eq!(
        v.verify_connect(&wrong_aud, NOW).await,
        Err(AuthError::Invalid("audience mismatch".into()))
    );
    let no_aud = sign_hmac(&json!({"sub": "u", "iss": "auth.example"}), SECRET).unwrap();
    assert!(v.verify_connect(&no_aud, NOW).await.is_err());
    let wrong_iss = sign_hmac(&json!({"sub": "u", "aud": "rotor", "iss": "evil"}), SECRET).unwrap();
    assert_eq!(
        v.verify_connect(&wrong_iss, NOW).await,
        Err(AuthError::Invalid("issuer mismatch".into()))
    );
}

#[tokio::test]
async fn malformed_claims_are_invalid() {
    let v = hmac_verifier();
    for claims in [
        json!({"sub": 42}),
        json!({"sub": "u", "channel": "x"}),
        json!({"sub": "u", "nbf": NOW + 10}),
        json!({"sub": "u", "b64info": "%%%"}),
    ] {
        let t = sign_hmac(&claims, SECRET).unwrap();
        assert!(
            matches!(v.verify_connect(&t, NOW).await, Err(AuthError::Invalid(_))),
            "{claims}"
        );
    }
    assert!(matches!(
        v.verify_connect("garbage", NOW).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        v.verify_connect("", NOW).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn b64info_channels_and_subs_claims() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"role":"admin"}"#);
    let t = sign_hmac(
        &json!({"sub": "u", "b64info": b64, "channels": ["news"], "subs": {"chat:1": {"data": {"x": 1}, "override": {"presence": {"value": true}}}}, "meta": {"m": 1}}),
        SECRET,
    )
    .unwrap();
    let c = hmac_verifier().verify_connect(&t, NOW).await.unwrap();
    assert_eq!(c.info.unwrap().get(), r#"{"role":"admin"}"#);
    assert_eq!(c.channels, vec!["news".to_string()]);
    let sub = &c.subs["chat:1"];
    assert_eq!(sub.data.as_ref().unwrap().get(), r#"{"x":1}"#);
    assert_eq!(sub.override_.presence.map(|b| b.value), Some(true));
    assert!(c.meta.is_some());
}

#[tokio::test]
async fn override_names_of_the_seed_and_of_v6_are_accepted_and_unknown_keys_ignored() {
    let t = sign_hmac(
        &json!({"sub": "u", "subs": {
            "a": {"override": {"presence": {"value": true}, "join_leave": {"value": false},
                               "position": {"value": true}, "recover": {"value": true},
                               "not_an_option": {"value": true}, "x": 1}},
            "b": {"override": {"force_positioning": {"value": false}, "force_recovery": {"value": false},
                               "force_push_join_leave": {"value": true}}}
        }, "unknown_claim": {"nested": [1, 2]}}),
        SECRET,
    )
    .unwrap();
    let c = hmac_verifier().verify_connect(&t, NOW).await.unwrap();
    let a = &c.subs["a"].override_;
    let value = |b: Option<BoolValue>| b.map(|b| b.value);
    assert_eq!(value(a.presence), Some(true));
    assert_eq!(value(a.join_leave), Some(false));
    assert_eq!(value(a.force_positioning), Some(true), "position");
    assert_eq!(value(a.force_recovery), Some(true), "recover");
    let b = &c.subs["b"].override_;
    assert_eq!(
        (
            value(b.force_positioning),
            value(b.force_recovery),
            value(b.force_push_join_leave)
        ),
        (Some(false), Some(false), Some(true))
    );
}

#[tokio::test]
async fn subscription_tokens_need_a_channel() {
    let v = hmac_verifier();
    let t = sign_hmac(
        &json!({"sub": "u", "channel": "$secret", "exp": NOW + 30, "info": {"a": 1}}),
        SECRET,
    )
    .unwrap();
    let s = v.verify_subscribe(&t, NOW).await.unwrap();
    assert_eq!(
        (s.user.as_str(), s.channel.as_str(), s.expire_at),
        ("u", "$secret", Some(NOW + 30))
    );
    assert!(s.claim.info.is_some());
    let no_channel = sign_hmac(&json!({"sub": "u"}), SECRET).unwrap();
    assert!(matches!(
        v.verify_subscribe(&no_channel, NOW).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn previous_hmac_secret_works_until_its_deadline() {
    let v = TokenVerifier::new(&TokenConfig {
        hmac_secret_key: "new".into(),
        hmac_previous_secret_key: "old".into(),
        hmac_previous_secret_key_valid_until: NOW + 100,
        ..TokenConfig::default()
    })
    .unwrap();
    let old = sign_hmac(&json!({"sub": "u"}), "old").unwrap();
    assert!(v.verify_connect(&old, NOW).await.is_ok());
    assert!(matches!(
        v.verify_connect(&old, NOW + 100).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(v
        .verify_connect(&sign_hmac(&json!({"sub": "u"}), "new").unwrap(), NOW + 1000)
        .await
        .is_ok());
}

#[test]
fn debug_output_hides_secrets() {
    let cfg = TokenConfig {
        hmac_secret_key: "supersecret".into(),
        ..TokenConfig::default()
    };
    assert!(!format!("{cfg:?}").contains("supersecret"));
}

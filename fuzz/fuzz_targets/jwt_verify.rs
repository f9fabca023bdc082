//! rotor-auth's token verification: `TokenVerifier::verify_connect` / `verify_subscribe`.
//!
//! Input layout (so seeds stay readable): the first byte selects what to do, the rest is text.
//!
//! ```text
//! byte 0, bit 0     verify_subscribe instead of verify_connect
//!         bit 1     the strict verifier (audience, issuer, previous secret) instead of the
//!                   plain one (HMAC + RSA + ECDSA keys)
//!         bits 2-3  0: the rest is the token itself (arbitrary text)
//!                   1: the rest is the claims JSON; the harness builds a correctly signed
//!                      token around it, header {"alg":..,"typ":"JWT"}
//!                   2: the rest is `<header JSON>\n<claims JSON>`; signed likewise
//!                   3: like 1, but the signature is cut in half (must never verify)
//!         bits 4-5  HMAC algorithm for modes 1-3: HS256, HS384, HS512, HS256
//!         bit 6     sign with the previous (rotated-out) secret instead of the current one
//!         bit 7     verify at time 0 instead of NOW
//! ```
//!
//! Besides "never panics", one security property is checked: a token with an HMAC `alg`
//! is only ever accepted (or reported `Expired`, which the verifier only does for correctly
//! signed tokens) when its signature really is the HMAC of its first two segments under a
//! configured secret.

#![no_main]

use std::future::Future;
use std::sync::OnceLock;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rotor_auth::{AuthError, TokenConfig, TokenVerifier};

const SECRET: &str = "fuzz-secret";
const PREVIOUS: &str = "fuzz-previous-secret";
const NOW: u64 = 1_800_000_000;
const RSA_PUB: &str = include_str!("../../crates/rotor-auth/testdata/rsa.pub");
const EC_PUB: &str = include_str!("../../crates/rotor-auth/testdata/ec256.pub");

struct Fixture {
    rt: tokio::runtime::Runtime,
    plain: TokenVerifier,
    strict: TokenVerifier,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        rt: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("current-thread runtime"),
        plain: TokenVerifier::new(&TokenConfig {
            hmac_secret_key: SECRET.into(),
            rsa_public_key: RSA_PUB.into(),
            ecdsa_public_key: EC_PUB.into(),
            ..TokenConfig::default()
        })
        .expect("plain verifier"),
        strict: TokenVerifier::new(&TokenConfig {
            hmac_secret_key: SECRET.into(),
            hmac_previous_secret_key: PREVIOUS.into(),
            hmac_previous_secret_key_valid_until: NOW + 3600,
            audience: "rotor".into(),
            issuer: "https://issuer.example".into(),
            ..TokenConfig::default()
        })
        .expect("strict verifier"),
    })
}

fn block_on<F: Future>(f: F) -> F::Output {
    fixture().rt.block_on(f)
}

fn hmac_sig(alg: &str, key: &str, msg: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($h:ty) => {{
            let mut m = <Hmac<$h>>::new_from_slice(key.as_bytes()).expect("any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        "HS384" => mac!(sha2::Sha384),
        "HS512" => mac!(sha2::Sha512),
        _ => mac!(sha2::Sha256),
    }
}

/// Builds `b64(header).b64(claims).b64(sig)`, HMAC-signed.
fn signed_token(header: &[u8], claims: &[u8], alg: &str, key: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = hmac_sig(alg, key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The oracle: true when `token` is `a.b.c` with `c` the HMAC of `a.b` under `alg` and one
/// of the configured secrets. Decoding is as lenient as possible (padding, trailing bits),
/// so only a real forgery fails it.
fn really_hmac_signed(token: &str, alg: &str, strict: bool) -> bool {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Some((signing_input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = LENIENT.decode(sig) else {
        return false;
    };
    let mut keys = vec![SECRET];
    if strict {
        keys.push(PREVIOUS);
    }
    keys.iter()
        .any(|k| hmac_sig(alg, k, signing_input.as_bytes()) == sig)
}

fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_string)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let subscribe = flags & 1 != 0;
    let strict = flags & 2 != 0;
    let mode = (flags >> 2) & 3;
    let alg = ["HS256", "HS384", "HS512", "HS256"][usize::from((flags >> 4) & 3)];
    let key = if flags & 0x40 != 0 { PREVIOUS } else { SECRET };
    let now = if flags & 0x80 != 0 { 0 } else { NOW };

    let token = match mode {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 | 3 => {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let mut t = signed_token(header.as_bytes(), rest, alg, key);
            if mode == 3 {
                let keep = t.len() - (t.len() - t.rfind('.').unwrap_or(0)) / 2;
                t.truncate(keep);
            }
            t
        }
        _ => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            signed_token(header, claims, alg, key)
        }
    };

    let f = fixture();
    let verifier = if strict { &f.strict } else { &f.plain };
    let outcome: Result<(), AuthError> = if subscribe {
        block_on(verifier.verify_subscribe(&token, now)).map(|t| {
            assert!(
                !t.channel.is_empty(),
                "subscription token without a channel"
            );
        })
    } else {
        block_on(verifier.verify_connect(&token, now)).map(|_| ())
    };

    // Only correctly signed tokens get past the signature check.
    if matches!(outcome, Ok(()) | Err(AuthError::Expired)) {
        if let Some(alg) = header_alg(&token).filter(|a| a.starts_with("HS")) {
            assert!(
                really_hmac_signed(&token, &alg, strict),
                "verifier accepted a token that is not HMAC-signed with a configured secret \
                 ({outcome:?}): {token:?}"
            );
        }
    }
    if mode == 3 {
        assert!(
            !matches!(outcome, Ok(()) | Err(AuthError::Expired)),
            "a token with a truncated signature passed the signature check: {token:?}"
        );
    }
});

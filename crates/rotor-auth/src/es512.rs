//! ES512 (ECDSA on P-521 with SHA-512), which the jsonwebtoken crate does not have: the JWS
//! signature check on RustCrypto's `p521`, keys from PEM or from a JWK's coordinates, and
//! the token header read without jsonwebtoken (whose header type cannot hold `ES512`).
//!
//! Only verification and the header live here; claims are checked by the verifier as for
//! every other algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p521::ecdsa::signature::Verifier as _;
use p521::ecdsa::{Signature, VerifyingKey};
use p521::pkcs8::DecodePublicKey as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::AuthError;

/// The algorithm's name in a JWS header and a JWK.
pub(crate) const ALG: &str = "ES512";

/// A P-521 public key for ES512.
#[derive(Clone)]
pub(crate) struct Es512Key(VerifyingKey);

impl std::fmt::Debug for Es512Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Es512Key")
    }
}

impl Es512Key {
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) on P-521; `None` for any other key (a P-256
    /// or P-384 key is then read by jsonwebtoken).
    pub(crate) fn from_pem(pem: &[u8]) -> Option<Es512Key> {
        let text = std::str::from_utf8(pem).ok()?;
        let public = p521::PublicKey::from_public_key_pem(text.trim()).ok()?;
        VerifyingKey::from_affine(*public.as_affine())
            .ok()
            .map(Es512Key)
    }

    /// A JWK's `x` and `y` (base64url, 66 bytes each).
    pub(crate) fn from_coordinates(x: &str, y: &str) -> Result<Es512Key, String> {
        let coord = |name: &str, v: &str| {
            let b = URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|e| format!("{name}: {e}"))?;
            if b.len() != 66 {
                return Err(format!(
                    "{name}: {} bytes, a P-521 coordinate has 66",
                    b.len()
                ));
            }
            Ok(b)
        };
        let (x, y) = (coord("x", x)?, coord("y", y)?);
        let point = p521::EncodedPoint::from_affine_coordinates(
            x.as_slice().into(),
            y.as_slice().into(),
            false,
        );
        VerifyingKey::from_encoded_point(&point)
            .map(Es512Key)
            .map_err(|_| "not a point on P-521".to_string())
    }

    /// Checks the token's signature and returns its claims.
    pub(crate) fn decode<T: DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        let bad = |what: &str| AuthError::Invalid(format!("malformed ES512 token: {what}"));
        let (signing_input, sig) = token.rsplit_once('.').ok_or_else(|| bad("no signature"))?;
        let (_, payload) = signing_input
            .split_once('.')
            .ok_or_else(|| bad("no payload"))?;
        if payload.contains('.') {
            return Err(bad("too many parts"));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| bad("signature is not base64url"))?;
        let sig = Signature::from_slice(&sig).map_err(|_| bad("signature is not 132 bytes"))?;
        self.0
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| AuthError::Invalid("InvalidSignature".into()))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("payload is not base64url"))?;
        serde_json::from_slice(&payload)
            .map_err(|e| AuthError::Invalid(format!("claims are not valid: {e}")))
    }
}

/// What the verifier reads of a JWS header.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Reads a token's header (any algorithm, ES512 included).
pub(crate) fn header(token: &str) -> Result<Header, AuthError> {
    let bad = |what: String| AuthError::Invalid(format!("malformed token: {what}"));
    let first = token
        .split('.')
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("no header".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|e| bad(format!("header is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("header: {e}")))
}

/// Signs claims with ES512 (tests and `rotor gentoken`-style tooling): the compact JWS.
pub fn sign_es512<T: serde::Serialize>(
    claims: &T,
    key: &p521::ecdsa::SigningKey,
    kid: Option<&str>,
) -> String {
    use p521::ecdsa::signature::Signer as _;
    let mut header = serde_json::json!({"alg": ALG, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"))
    );
    let sig: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

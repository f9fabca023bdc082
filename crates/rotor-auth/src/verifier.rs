//! The verifier: the configured keys (HMAC, RSA, ECDSA, a JWKS endpoint), the algorithms
//! they allow, and the checks every token passes before its claims are used.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::claims::{HasRegistered, RawConnectClaims, RawSubscribeClaims};
use crate::es512::Es512Key;
use crate::jwks::{JwkKey, Jwks, Key};
use crate::{AuthError, ConnectToken, SubscribeToken};

/// Key and claim-check settings, named as Centrifugo v6 names them under `client.token`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Secret for HS256/384/512.
    pub hmac_secret_key: String,
    /// The secret being rotated out, still accepted until `hmac_previous_secret_key_valid_until`.
    pub hmac_previous_secret_key: String,
    /// Unix seconds after which the previous secret is refused (0 = not accepted at all).
    pub hmac_previous_secret_key_valid_until: u64,
    /// RSA public key for RS256/384/512: PEM text, or a path to a PEM file.
    pub rsa_public_key: String,
    /// ECDSA public key for ES256/384 (a P-256 or P-384 key) or ES512 (a P-521 key): PEM
    /// text, or a path to a PEM file.
    pub ecdsa_public_key: String,
    /// When set, the token's `aud` must contain it.
    pub audience: String,
    /// When set, the token's `iss` must equal it.
    pub issuer: String,
    /// JWKS URL. When set, tokens must name a key (`kid`) of that set, and the keys above are
    /// not used.
    pub jwks_public_endpoint: String,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("TokenConfig")
            .field("hmac_secret_key", &redact(&self.hmac_secret_key))
            .field(
                "hmac_previous_secret_key",
                &redact(&self.hmac_previous_secret_key),
            )
            .field(
                "hmac_previous_secret_key_valid_until",
                &self.hmac_previous_secret_key_valid_until,
            )
            .field(
                "rsa_public_key",
                &self.rsa_public_key.lines().next().unwrap_or(""),
            )
            .field(
                "ecdsa_public_key",
                &self.ecdsa_public_key.lines().next().unwrap_or(""),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("jwks_public_endpoint", &self.jwks_public_endpoint)
            .finish()
    }
}

impl TokenConfig {
    /// True when no key of any kind is configured.
    pub fn is_empty(&self) -> bool {
        self.hmac_secret_key.is_empty()
            && self.rsa_public_key.is_empty()
            && self.ecdsa_public_key.is_empty()
    }
}

/// Verifies tokens against the configured keys.
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    hmac_previous: Option<(DecodingKey, u64)>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    es512: Option<Es512Key>,
    audience: Option<String>,
    issuer: Option<String>,
    jwks: Option<Jwks>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("es512", &self.es512.is_some())
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

/// Reads a PEM key given inline or as a file path.
fn pem_bytes(what: &str, value: &str) -> Result<Vec<u8>, AuthError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value)
        .map_err(|e| AuthError::Config(format!("{what}: cannot read PEM file {value:?}: {e}")))
}

impl TokenVerifier {
    /// Builds a verifier; fails with a message naming the bad key.
    pub fn new(config: &TokenConfig) -> Result<TokenVerifier, AuthError> {
        let rsa = if config.rsa_public_key.is_empty() {
            None
        } else {
            let pem = pem_bytes("rsa_public_key", &config.rsa_public_key)?;
            Some(
                DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| AuthError::Config(format!("rsa_public_key: {e}")))?,
            )
        };
        let (ecdsa, es512) = if config.ecdsa_public_key.is_empty() {
            (None, None)
        } else {
            let pem = pem_bytes("ecdsa_public_key", &config.ecdsa_public_key)?;
            match Es512Key::from_pem(&pem) {
                Some(key) => (None, Some(key)),
                None => (
                    Some(
                        DecodingKey::from_ec_pem(&pem)
                            .map_err(|e| AuthError::Config(format!("ecdsa_public_key: {e}")))?,
                    ),
                    None,
                ),
            }
        };
        let hmac = (!config.hmac_secret_key.is_empty())
            .then(|| DecodingKey::from_secret(config.hmac_secret_key.as_bytes()));
        let hmac_previous = (!config.hmac_previous_secret_key.is_empty()).then(|| {
            (
                DecodingKey::from_secret(config.hmac_previous_secret_key.as_bytes()),
                config.hmac_previous_secret_key_valid_until,
            )
        });
        Ok(TokenVerifier {
            hmac,
            hmac_previous,
            rsa,
            ecdsa,
            es512,
            audience: (!config.audience.is_empty()).then(|| config.audience.clone()),
            issuer: (!config.issuer.is_empty()).then(|| config.issuer.clone()),
            jwks: if config.jwks_public_endpoint.is_empty() {
                None
            } else {
                Some(Jwks::new(&config.jwks_public_endpoint)?)
            },
        })
    }

    /// Verifies a connection token at time `now` (Unix seconds).
    pub async fn verify_connect(&self, token: &str, now: u64) -> Result<ConnectToken, AuthError> {
        let claims: RawConnectClaims = self.decode(token, now).await?;
        claims.into_token()
    }

    /// Verifies a subscription token at time `now` (Unix seconds).
    pub async fn verify_subscribe(
        &self,
        token: &str,
        now: u64,
    ) -> Result<SubscribeToken, AuthError> {
        let claims: RawSubscribeClaims = self.decode(token, now).await?;
        claims.into_token()
    }

    /// Verifies the signature with the key for the token's algorithm, then the time and
    /// audience/issuer claims. Expiry is reported only for correctly signed tokens.
    async fn decode<T: DeserializeOwned + HasRegistered>(
        &self,
        token: &str,
        now: u64,
    ) -> Result<T, AuthError> {
        let header = crate::es512::header(token)?;
        let kid = header.kid.as_deref().filter(|k| !k.is_empty());
        let claims: T = if header.alg == crate::es512::ALG {
            let key = match &self.jwks {
                Some(jwks) => {
                    let kid = kid.ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                    let key = jwks.key(kid).await?;
                    check_pinned(&key, kid, &header.alg)?;
                    match &*key.key {
                        Key::Es512(k) => k.clone(),
                        Key::Jwt(_) => {
                            return Err(AuthError::Invalid(format!(
                                "key {kid:?} is not a P-521 key"
                            )))
                        }
                    }
                }
                None => self.es512.clone().ok_or_else(|| {
                    AuthError::Invalid("no key configured for algorithm ES512".into())
                })?,
            };
            key.decode(token)?
        } else {
            let alg: Algorithm = header.alg.parse().map_err(|_| {
                AuthError::Invalid(format!("unsupported algorithm {:?}", header.alg))
            })?;
            let mut validation = Validation::new(alg);
            validation.required_spec_claims = HashSet::new();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            let no_key = || AuthError::Invalid(format!("no key configured for algorithm {alg:?}"));
            if let Some(jwks) = &self.jwks {
                let kid = kid.ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                let key = jwks.key(kid).await?;
                check_pinned(&key, kid, &header.alg)?;
                match &*key.key {
                    Key::Jwt(k) => decode_with(token, k, &validation)?,
                    Key::Es512(_) => {
                        return Err(AuthError::Invalid(format!(
                            "key {kid:?} is not for {alg:?}"
                        )))
                    }
                }
            } else {
                match alg {
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                        let key = self.hmac.as_ref().ok_or_else(no_key);
                        match key.and_then(|k| decode_with(token, k, &validation)) {
                            Ok(c) => c,
                            Err(err) => match &self.hmac_previous {
                                Some((prev, until)) if *until > now => {
                                    decode_with(token, prev, &validation).map_err(|_| err)?
                                }
                                _ => return Err(err),
                            },
                        }
                    }
                    Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                        decode_with(token, self.rsa.as_ref().ok_or_else(no_key)?, &validation)?
                    }
                    Algorithm::ES256 | Algorithm::ES384 => {
                        decode_with(token, self.ecdsa.as_ref().ok_or_else(no_key)?, &validation)?
                    }
                    other => {
                        return Err(AuthError::Invalid(format!(
                            "unsupported algorithm {other:?}"
                        )))
                    }
                }
            }
        };
        let reg = claims.registered();
        if let Some(nbf) = reg.nbf {
            if nbf > now {
                return Err(AuthError::Invalid("token is not valid yet (nbf)".into()));
            }
        }
        if let Some(want) = &self.audience {
            if !reg.aud.is_some_and(|a| a.0.iter().any(|x| x == want)) {
                return Err(AuthError::Invalid("audience mismatch".into()));
            }
        }
        if let Some(want) = &self.issuer {
            if reg.iss != Some(want.as_str()) {
                return Err(AuthError::Invalid("issuer mismatch".into()));
            }
        }
        if let Some(exp) = reg.exp {
            if exp <= now {
                return Err(AuthError::Expired);
            }
        }
        Ok(claims)
    }
}

/// A JWK that pins an algorithm (`alg`) only verifies tokens of that algorithm.
fn check_pinned(key: &JwkKey, kid: &str, alg: &str) -> Result<(), AuthError> {
    match &key.alg {
        Some(pinned) if pinned != alg => {
            Err(AuthError::Invalid(format!("key {kid:?} is not for {alg}")))
        }
        _ => Ok(()),
    }
}

fn decode_with<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<T, AuthError> {
    jsonwebtoken::decode::<T>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Signs claims with an HMAC secret (HS256). Used by `rotor gentoken` and by tests.
pub fn sign_hmac<T: Serialize>(claims: &T, secret: &str) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Config(e.to_string()))
}

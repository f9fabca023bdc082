//! Keys from a JWKS endpoint: fetched over HTTP(S), cached for an hour, looked up by `kid`,
//! refetched (at most every few seconds) when a token names a key the cache does not have.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::AuthError;

/// How long fetched keys are trusted before the set is fetched again.
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// Timeout of one fetch attempt; a failed attempt is retried once.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Minimum time between refetches caused by unknown `kid`s (forged tokens must not turn
/// into a flood of requests to the identity provider).
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// A key of the set, for jsonwebtoken's algorithms or for ES512.
pub(crate) enum Key {
    Jwt(DecodingKey),
    Es512(crate::es512::Es512Key),
}

#[derive(Clone)]
pub(crate) struct JwkKey {
    pub key: Arc<Key>,
    /// The algorithm the JWK pins (`alg`), if any.
    pub alg: Option<String>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, JwkKey>,
    fetched_at: Option<Instant>,
    /// When an unknown `kid` last caused a refetch.
    last_unknown_refetch: Option<Instant>,
}

pub(crate) struct Jwks {
    url: String,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Jwks, AuthError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(AuthError::Config(format!(
                "jwks_public_endpoint must be an http(s) URL, got {url:?}"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| AuthError::Config(format!("jwks client: {e}")))?;
        Ok(Jwks {
            url: url.to_string(),
            client,
            state: Mutex::new(State::default()),
        })
    }

    /// The key for `kid`. Fetching happens under the lock, so concurrent lookups share one
    /// request. An unreachable endpoint is `Unavailable` (a temporary error for clients)
    /// unless cached keys can still answer.
    pub async fn key(&self, kid: &str) -> Result<JwkKey, AuthError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let fresh = st
            .fetched_at
            .is_some_and(|t| now.duration_since(t) < KEY_TTL);
        if fresh {
            if let Some(k) = st.keys.get(kid) {
                return Ok(k.clone());
            }
            if st
                .last_unknown_refetch
                .is_some_and(|t| now.duration_since(t) < UNKNOWN_KID_REFETCH_INTERVAL)
            {
                return Err(AuthError::Invalid(format!("unknown key id {kid:?}")));
            }
            st.last_unknown_refetch = Some(now);
        }
        match self.fetch().await {
            Ok(keys) => {
                st.keys = keys;
                st.fetched_at = Some(Instant::now());
            }
            Err(e) => {
                if let Some(k) = st.keys.get(kid) {
                    tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; using cached keys");
                    return Ok(k.clone());
                }
                return Err(e);
            }
        }
        st.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))
    }

    async fn fetch(&self) -> Result<HashMap<String, JwkKey>, AuthError> {
        let mut last_err = String::new();
        for attempt in 0..2 {
            match self.fetch_once().await {
                Ok(keys) => return Ok(keys),
                Err(e) => {
                    tracing::warn!(url = %self.url, attempt, error = %e, "JWKS fetch failed");
                    last_err = e;
                }
            }
        }
        Err(AuthError::Unavailable(format!("JWKS endpoint: {last_err}")))
    }

    async fn fetch_once(&self) -> Result<HashMap<String, JwkKey>, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let set: JwkSetValue =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        // Each key on its own: one the verifier cannot use is skipped, not the whole set.
        for value in set.keys {
            let Some(kid) = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned) else {
                continue;
            };
            let field = |name: &str| value.get(name).and_then(|v| v.as_str());
            if field("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let alg = field("alg").map(str::to_owned);
            let key = if field("kty") == Some("EC") && field("crv") == Some("P-521") {
                crate::es512::Es512Key::from_coordinates(
                    field("x").unwrap_or(""),
                    field("y").unwrap_or(""),
                )
                .map(Key::Es512)
            } else {
                serde_json::from_value::<Jwk>(value.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|jwk| {
                        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                            return Err("not a signature key".to_string());
                        }
                        DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())
                    })
                    .map(Key::Jwt)
            };
            match key {
                Ok(key) => {
                    keys.insert(
                        kid,
                        JwkKey {
                            key: Arc::new(key),
                            alg,
                        },
                    );
                }
                Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWK"),
            }
        }
        Ok(keys)
    }
}

/// A JWK set read loosely: its keys are parsed one by one.
#[derive(serde::Deserialize)]
struct JwkSetValue {
    keys: Vec<serde_json::Value>,
}

//! Keys from a JWKS endpoint: fetched over HTTP(S), cached for an hour, looked up by `kid`.
//!
//! What unauthenticated clients can make rotor do to the identity provider is bounded in
//! every state (never fetched, fetched, failing, keys expired while failing):
//!
//! - a `kid` in the cache is answered at once, without waiting for any fetch: keys past
//!   [`KEY_TTL`] are still used while one background fetch replaces them (stale while
//!   revalidating; a key the provider dropped works until that fetch lands);
//! - at most one fetch runs at a time (single flight); lookups of an unknown `kid` during
//!   it wait for its outcome instead of starting another;
//! - a fetch is at most two requests of at most [`FETCH_TIMEOUT`] each;
//! - while the endpoint answers, unknown `kid`s refetch fresh keys at most once every
//!   [`UNKNOWN_KID_REFETCH_INTERVAL`] (a key the provider just added is found at once,
//!   a flood of forged ones costs one fetch per interval); after a failed fetch, no fetch starts for a backoff
//!   that doubles from [`FAILURE_BACKOFF_MIN`] to [`FAILURE_BACKOFF_MAX`] with each failure
//!   in a row (the negative cache), and lookups in between are refused at once: a `kid`
//!   not in the cache gets `Unavailable` (a temporary error) while the endpoint fails,
//!   `Invalid` when the last fetch succeeded.
//!
//! So while it answers the endpoint sees at most one fetch (2 requests) per 5 s besides
//! the first and the hourly one, and while it fails at most one fetch per backoff (1, 2,
//! 4, ... 30 s), whatever the clients send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use tokio::time::Instant;

use crate::AuthError;

/// How long fetched keys are trusted before the set is fetched again.
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// Timeout of one fetch attempt; a failed attempt is retried once.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Minimum time between refetches caused by unknown `kid`s (forged tokens must not turn
/// into a flood of requests to the identity provider).
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// The wait after one failed fetch before the next may start; it doubles with each failure
/// in a row.
pub const FAILURE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between fetches while the endpoint keeps failing.
pub const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When the last fetch finished, whatever its outcome.
    last_attempt: Option<Instant>,
    /// When an unknown `kid` last made rotor fetch keys it already had fresh.
    last_unknown_fetch: Option<Instant>,
    /// Failed fetches in a row, and the last one's error.
    failures: u32,
    last_error: String,
    /// A fetch is running (lookups of unknown kids wait for it).
    inflight: bool,
    /// Counts finished fetches: a lookup that waited knows one happened meanwhile.
    generation: u64,
}

impl State {
    fn fresh(&self, now: Instant, ttl: Duration) -> bool {
        self.fetched_at.is_some_and(|t| now.duration_since(t) < ttl)
    }

    /// Whether a new fetch may start now: for an unknown `kid` (`unknown`: the interval
    /// between such fetches) or for keys past their TTL (`None`).
    fn may_fetch(&self, now: Instant, unknown: Option<Duration>) -> bool {
        let since =
            |t: Option<Instant>, wait: Duration| t.is_none_or(|t| now.duration_since(t) >= wait);
        if self.failures > 0 {
            return since(self.last_attempt, backoff(self.failures));
        }
        match unknown {
            Some(interval) => since(self.last_unknown_fetch, interval),
            None => true,
        }
    }

    /// The answer for a `kid` the cache does not have.
    fn refusal(&self, kid: &str) -> AuthError {
        if self.failures > 0 || self.fetched_at.is_none() {
            AuthError::Unavailable(format!("JWKS endpoint: {}", self.last_error))
        } else {
            AuthError::Invalid(format!("unknown key id {kid:?}"))
        }
    }
}

/// The wait before the next fetch after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    let doubled = FAILURE_BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(FAILURE_BACKOFF_MAX)
}

pub(crate) struct Jwks {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    client: reqwest::Client,
    ttl: Duration,
    unknown_interval: Duration,
    /// Held only for short, synchronous looks: never across a fetch.
    state: Mutex<State>,
    /// Held by the one fetch that runs (the single flight).
    flight: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Jwks, AuthError> {
        Jwks::with_timing(url, KEY_TTL, UNKNOWN_KID_REFETCH_INTERVAL)
    }

    /// With keys trusted for `ttl` and unknown kids refetching every `unknown_interval`
    /// (tests use short ones).
    pub(crate) fn with_timing(
        url: &str,
        ttl: Duration,
        unknown_interval: Duration,
    ) -> Result<Jwks, AuthError> {
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
            inner: Arc::new(Inner {
                url: url.to_string(),
                client,
                ttl,
                unknown_interval,
                state: Mutex::new(State::default()),
                flight: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The key for `kid` (see the module's documentation for when this fetches).
    pub async fn key(&self, kid: &str) -> Result<JwkKey, AuthError> {
        let inner = &self.inner;
        let seen = {
            let mut st = inner.state();
            let now = Instant::now();
            if let Some(k) = st.keys.get(kid).cloned() {
                if !st.fresh(now, inner.ttl) && !st.inflight && st.may_fetch(now, None) {
                    st.inflight = true;
                    let seen = st.generation;
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let _flight = inner.flight.lock().await;
                        // A fetch that ran while this one waited for the flight answers
                        // for it (and a failed one starts the backoff).
                        if inner.state().generation != seen {
                            inner.state().inflight = false;
                            return;
                        }
                        inner.fetch_and_store().await;
                    });
                }
                return Ok(k);
            }
            if !st.inflight && !st.may_fetch(now, Some(inner.unknown_interval)) {
                return Err(st.refusal(kid));
            }
            st.generation
        };
        let _flight = inner.flight.lock().await;
        {
            let mut st = inner.state();
            if st.generation != seen {
                // A fetch finished while this lookup waited: its outcome answers.
                return st.keys.get(kid).cloned().ok_or_else(|| st.refusal(kid));
            }
            let now = Instant::now();
            if !st.may_fetch(now, Some(inner.unknown_interval)) {
                return Err(st.refusal(kid));
            }
            st.inflight = true;
            // A refetch for an unknown kid (the first fetch is not one): the interval
            // starts.
            if st.fresh(now, inner.ttl) {
                st.last_unknown_fetch = Some(now);
            }
        }
        inner.fetch_and_store().await;
        let st = inner.state();
        st.keys.get(kid).cloned().ok_or_else(|| st.refusal(kid))
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One fetch (the caller holds `flight`), its outcome recorded.
    async fn fetch_and_store(&self) {
        let result = self.fetch().await;
        let now = Instant::now();
        let mut st = self.state();
        st.inflight = false;
        st.generation += 1;
        st.last_attempt = Some(now);
        match result {
            Ok(keys) => {
                st.keys = keys;
                st.fetched_at = Some(now);
                st.failures = 0;
                st.last_error.clear();
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                tracing::warn!(url = %self.url, error = %e, failures = st.failures, next_in = ?backoff(st.failures), cached_keys = st.keys.len(), "JWKS fetch failed; cached keys stay in use");
                st.last_error = e;
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, JwkKey>, String> {
        let mut last_err = String::new();
        for attempt in 0..2 {
            match self.fetch_once().await {
                Ok(keys) => return Ok(keys),
                Err(e) => {
                    tracing::debug!(url = %self.url, attempt, error = %e, "JWKS request failed");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    async fn fetch_once(&self) -> Result<HashMap<String, JwkKey>, String> {
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_SET_BYTES {
                return Err(format!("key set larger than {MAX_SET_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }
}

/// The largest key set read (a real one is a few KiB).
pub const MAX_SET_BYTES: usize = 1 << 20;

/// The usable keys of a JWK set, by `kid`. Public to the crate for its property test.
pub(crate) fn parse_set(body: &[u8]) -> Result<HashMap<String, JwkKey>, String> {
    let set: JwkSetValue =
        serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
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
                .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()))
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

/// A JWK set read loosely: its keys are parsed one by one.
#[derive(serde::Deserialize)]
struct JwkSetValue {
    keys: Vec<serde_json::Value>,
}

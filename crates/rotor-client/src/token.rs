//! Where credentials come from: the application supplies an async provider. The client asks it
//! for a connection token before connecting when it has none (or the one it has expired), and
//! again before each refresh; the same for subscription tokens per channel.
//!
//! A provider may hand back a token it cached that is about to expire (the seed: providers
//! "can return existing tokens (which are about to expire)"). The client reads the `exp` of
//! what it gets ([`fetch_fresh`]): a token valid for less than
//! `ClientConfig::min_token_validity` is not used; the client waits until it has
//! expired (so a caching provider fetches anew) and asks again, up to [`STALE_ASKS`] times,
//! then reports the provider as stale instead of turning one refresh into expiries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The provider could not produce a token. The message is for logs: never put a secret in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// Supplies connection and subscription tokens (JWTs) on demand.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A fresh connection token.
    async fn connection_token(&self) -> Result<String, TokenError>;

    /// A fresh subscription token for `channel`. The default refuses: override it when
    /// subscriptions use tokens ([`crate::SubscriptionOptions::token_required`]).
    async fn subscription_token(&self, channel: &str) -> Result<String, TokenError> {
        Err(TokenError(format!(
            "no subscription token provider for channel {channel}"
        )))
    }
}

type BoxFut = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// How many tokens in a row the provider may hand back stale before it is reported.
pub(crate) const STALE_ASKS: u32 = 3;

/// The longest wait for a stale token to expire before the provider is asked again.
const STALE_WAIT_AT_MOST: Duration = Duration::from_secs(10);

/// Seconds until a JWT's `exp`, read without checking the signature (the server checks it);
/// `None` for a token that is not a JWT or has no numeric `exp`.
pub(crate) fn seconds_left(token: &str, now_unix: f64) -> Option<f64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims.get("exp")?.as_f64()? - now_unix)
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How asking the provider ended.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// A token valid long enough (or one whose expiry cannot be read).
    Fresh(String),
    /// The provider failed.
    Failed(TokenError),
    /// The provider handed back [`STALE_ASKS`] tokens in a row that expire too soon.
    Stale(TokenError),
}

/// Asks `ask` for a token until one stays valid for at least `min` (`None`: no check).
pub(crate) async fn fetch_fresh<F, Fut>(mut ask: F, min: Option<Duration>) -> Fetched
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, TokenError>>,
{
    let mut left = 0.0;
    for attempt in 1..=STALE_ASKS {
        let token = match ask().await {
            Ok(t) => t,
            Err(e) => return Fetched::Failed(e),
        };
        let Some(min) = min else {
            return Fetched::Fresh(token);
        };
        match seconds_left(&token, now_unix()) {
            Some(l) if l < min.as_secs_f64() => {
                left = l;
                tracing::warn!(attempt, expires_in_secs = l, "token provider returned a token that expires too soon; asking again once it has expired");
                if attempt < STALE_ASKS {
                    let wait = Duration::from_secs_f64(l.max(0.0)) + Duration::from_millis(100);
                    tokio::time::sleep(wait.min(STALE_WAIT_AT_MOST)).await;
                }
            }
            _ => return Fetched::Fresh(token),
        }
    }
    Fetched::Stale(TokenError(format!(
        "the token provider returned {STALE_ASKS} stale tokens in a row (the last expires in {left:.1} s, less than min_token_validity {:?}): it serves cached tokens past their life",
        min.unwrap_or_default()
    )))
}

/// A provider from closures, for applications that do not want a type of their own.
pub struct FnTokenProvider {
    conn: Arc<dyn Fn() -> BoxFut + Send + Sync>,
    sub: Option<Arc<dyn Fn(String) -> BoxFut + Send + Sync>>,
}

impl FnTokenProvider {
    /// Connection tokens from `f`.
    pub fn new<F, Fut>(f: F) -> FnTokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        FnTokenProvider {
            conn: Arc::new(move || Box::pin(f())),
            sub: None,
        }
    }

    /// Subscription tokens from `f(channel)`.
    pub fn with_subscriptions<F, Fut>(mut self, f: F) -> FnTokenProvider
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.sub = Some(Arc::new(move |c| Box::pin(f(c))));
        self
    }
}

#[async_trait::async_trait]
impl TokenProvider for FnTokenProvider {
    async fn connection_token(&self) -> Result<String, TokenError> {
        (self.conn)().await
    }

    async fn subscription_token(&self, channel: &str) -> Result<String, TokenError> {
        match &self.sub {
            Some(f) => f(channel.to_string()).await,
            None => Err(TokenError(format!(
                "no subscription token provider for channel {channel}"
            ))),
        }
    }
}

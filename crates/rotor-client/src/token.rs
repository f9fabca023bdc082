//! Where credentials come from: the application supplies an async provider. The client asks it
//! for a connection token before connecting when it has none (or the one it has expired), and
//! again before each refresh; the same for subscription tokens per channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

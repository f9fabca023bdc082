//! The rotor server: warp routes for every transport (thin adapters into the core's session),
//! the server HTTP API, health, configuration loading, and the `rotor` command line.
//!
//! Protocol logic belongs in `rotor-core`; this crate only moves bytes between HTTP/WebSocket
//! and the core, and must not decide protocol behaviour itself.

pub mod api;
pub mod cli;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod stream;
pub mod uni;
mod ws;

pub use config::Config;
pub use server::{RunningServer, Server};

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// Errors of the server crate.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] rotor_core::CoreError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Cli(String),
}

/// A browser `Origin` is allowed when it matches one of the patterns (case-insensitive, `*`
/// wildcards). Requests without an `Origin` header (non-browser clients) are always allowed;
/// with an empty list, every request that has one is refused.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    allowed
        .iter()
        .any(|p| api::glob_match(&p.to_ascii_lowercase(), &origin))
}

/// A new id for an emulation or unidirectional session.
pub(crate) fn new_session_id() -> std::sync::Arc<str> {
    std::sync::Arc::from(uuid::Uuid::new_v4().to_string())
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut res = Response::new(text.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut res = Response::new(
        serde_json::to_string(value)
            .expect("json serializes")
            .into(),
    );
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    res
}

/// Awaits a transport write, failing after `limit`. Most writes finish at their first poll
/// (the socket or stream has room): only a write that has to wait gets a timer, boxed, so the
/// common case neither touches the timer wheel nor makes every connection's task carry a
/// timer's state.
pub(crate) async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    write: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut write = std::pin::pin!(write);
    match futures_util::poll!(write.as_mut()) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => Box::pin(tokio::time::timeout(limit, write)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec![
            "https://*.example.com".to_string(),
            "http://localhost:3000".to_string(),
        ];
        assert!(origin_allowed(None, &[]));
        assert!(!origin_allowed(Some("https://app.example.com"), &[]));
        assert!(origin_allowed(Some("https://App.Example.com"), &allowed));
        assert!(origin_allowed(Some("http://localhost:3000"), &allowed));
        assert!(!origin_allowed(Some("http://evil.com"), &allowed));
        assert!(origin_allowed(Some("http://evil.com"), &["*".to_string()]));
    }
}

//! Small HTTP pieces the routes and transports share: plain and JSON responses, the browser
//! origin check, session ids, a write bounded in time, and a request body read in time.

use bytes::Bytes;
use rotor_core::channels::glob_match;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

/// A browser `Origin` is allowed when it matches one of the patterns (case-insensitive, `*`
/// wildcards). Requests without an `Origin` header (non-browser clients) are always allowed;
/// with an empty list, every request that has one is refused.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    allowed
        .iter()
        .any(|p| glob_match(&p.to_ascii_lowercase(), &origin))
}

/// A new id for an emulation or unidirectional session.
pub fn new_session_id() -> std::sync::Arc<str> {
    std::sync::Arc::from(uuid::Uuid::new_v4().to_string())
}

pub fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut res = Response::new(text.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
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

/// The headers of a connection request that the configured proxies pass on to the backend
/// (none, at no cost, without such proxies).
pub fn forwarded(
    node: &rotor_core::Node,
    headers: &HeaderMap,
) -> Option<std::sync::Arc<rotor_core::proxy::ForwardedHeaders>> {
    node.forwarded_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
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

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not all of it within the time allowed (`http_server.body_read_timeout`).
    Timeout,
    /// The client went away mid-body.
    Broken,
}

/// Reads a request body whose length was checked already, all of it within `within`, so a
/// client that trickles or stops sending cannot hold the request forever.
pub async fn read_body(
    stream: impl futures_util::Stream<Item = Result<impl warp::Buf, warp::Error>>,
    within: std::time::Duration,
) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt;
    let read = async {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            // hyper ends the body at Content-Length, which the caller has checked; an error
            // here is a client that went away.
            let mut chunk = chunk.map_err(|_| BodyError::Broken)?;
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(Bytes::from(out))
    };
    match tokio::time::timeout(within, read).await {
        Ok(result) => result,
        Err(_) => {
            tracing::info!(
                "request body not received within http_server.body_read_timeout; answering 408"
            );
            Err(BodyError::Timeout)
        }
    }
}

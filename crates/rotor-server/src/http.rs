//! Small HTTP pieces the routes and transports share: plain and JSON responses, the browser
//! origin check, session ids, and a write bounded in time.

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

//! Where the unidirectional transports find a token besides their connect request: an
//! `Authorization: Bearer` header, or a configured cookie (uni_sse). The connect request
//! itself is parsed by the core ([`rotor_core::session::uni_connect_request`]).

use warp::http::HeaderMap;

/// The token from `Authorization: Bearer <token>`, or from the named cookie.
pub fn token_from_headers(headers: &HeaderMap, cookie: &str) -> Option<String> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(t) = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    if cookie.is_empty() {
        return None;
    }
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == cookie).then(|| value.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_bearer_and_cookie() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; rotor_token=abc; b=2".parse().unwrap());
        assert_eq!(
            token_from_headers(&h, "rotor_token").as_deref(),
            Some("abc")
        );
        assert_eq!(token_from_headers(&h, ""), None);
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(
            token_from_headers(&h, "rotor_token").as_deref(),
            Some("xyz")
        );
    }
}

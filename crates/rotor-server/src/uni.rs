//! Connect requests of the unidirectional transports: from the `cf_connect` query parameter,
//! the request body or the first WebSocket message, with the token optionally taken from an
//! `Authorization: Bearer` header or a configured cookie instead.

use rotor_protocol::ConnectRequest;
use warp::http::HeaderMap;

/// Parses a connect request (`{"token":…,"data":…}`; empty text means `{}`); a token from a
/// header or cookie fills in when the request carries none.
pub fn connect_request(
    text: &str,
    fallback_token: Option<String>,
) -> Result<ConnectRequest, String> {
    let mut req: ConnectRequest = if text.trim().is_empty() {
        ConnectRequest::default()
    } else {
        serde_json::from_str(text).map_err(|e| format!("connect request is not valid JSON: {e}"))?
    };
    if req.token.is_empty() {
        if let Some(t) = fallback_token {
            req.token = t;
        }
    }
    Ok(req)
}

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
        let req = connect_request("", Some("t".into())).unwrap();
        assert_eq!(req.token, "t");
        let req = connect_request(r#"{"token":"own"}"#, Some("t".into())).unwrap();
        assert_eq!(req.token, "own");
        assert!(connect_request("{bad", None).is_err());
    }
}

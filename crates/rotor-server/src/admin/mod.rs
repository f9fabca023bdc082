//! The admin web UI (`admin.*`): its page and assets (built into the binary: `ui/`, no
//! build step), the sign-in, and the JSON endpoints the page calls. Every action goes
//! through the server API's own `api::call`, with the signed-in session as the actor of
//! revocations; the API key never reaches the browser. Served on the internal port unless
//! `admin.external` (see `routes`). Must not decide anything the server API would not.
//!
//! Paths under `admin.handler_prefix` (P): `GET P/` the page, `GET P/admin/static/*` its
//! assets, `GET P/admin/session`, `POST P/admin/auth` (sign-in), `POST P/admin/logout`,
//! `POST P/admin/api/<method>` (a server API method), `GET P/admin/lifecycle` (the token
//! lifecycle charts' numbers). All but the page, its assets, the session read and the
//! sign-in need the session's CSRF token in `X-Rotor-CSRF`.

pub mod auth;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::http::json_response;
use crate::state::AppState;
use auth::{Auth, Refused, Session, COOKIE, CSRF_HEADER};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Largest body an admin API call may send (a publish from the channels page fits).
const BODY_LIMIT: u64 = 1024 * 1024;
/// Largest sign-in body.
const SIGN_IN_LIMIT: u64 = 4096;

/// Server API methods that change nothing (every other call from the UI is logged with
/// its actor).
const READ_ONLY: [&str; 7] = [
    "info",
    "connections",
    "channels",
    "presence",
    "presence_stats",
    "history",
    "revoked_tokens",
];

/// The windows the lifecycle page counts expiring connections in (seconds, label).
const EXPIRING: [(u64, &str); 3] = [(60, "1m"), (300, "5m"), (3600, "1h")];

struct Admin {
    auth: Auth,
    prefix: String,
    /// Cookies get `Secure` when the UI is served over TLS.
    secure_cookie: bool,
}

/// The admin UI's routes; paths it does not know are left to the other routes.
pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let cfg = &state.config;
    let admin = Arc::new(Admin {
        auth: Auth::new(&cfg.admin),
        prefix: cfg.admin.handler_prefix.clone(),
        secure_cookie: cfg.http_server.tls.enabled && cfg.admin_on_main_port(),
    });
    let state = state.clone();
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(peer())
        .and_then(
            move |method: Method, full: warp::path::FullPath, headers: HeaderMap, peer| {
                let admin = admin.clone();
                let state = state.clone();
                async move {
                    let Some(rest) = full.as_str().strip_prefix(admin.prefix.as_str()) else {
                        return Err(warp::reject::not_found());
                    };
                    let rest = rest.to_string();
                    if !known(&method, &rest) {
                        return Err(warp::reject::not_found());
                    }
                    Ok((admin, state, method, rest, headers, peer))
                }
            },
        )
        .untuple_one()
        .and(warp::body::stream())
        .then(
            |admin: Arc<Admin>,
             state: AppState,
             method: Method,
             rest: String,
             headers: HeaderMap,
             peer: Option<IpAddr>,
             body| async move {
                let mut res = handle(&admin, &state, &method, &rest, &headers, peer, body).await;
                harden(res.headers_mut());
                res
            },
        )
        .boxed()
}

/// The client's address: rotor's listener says it (trusted proxies applied); the internal
/// port's server gives the socket's peer.
fn peer() -> impl Filter<Extract = (Option<IpAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<crate::listener::ClientAddr>()
        .and(warp::addr::remote())
        .map(
            |a: Option<crate::listener::ClientAddr>, remote: Option<std::net::SocketAddr>| {
                a.map(|a| a.0).or(remote.map(|r| r.ip()))
            },
        )
}

/// Whether a request is one of the admin UI's (else the other routes get it).
fn known(method: &Method, rest: &str) -> bool {
    match *method {
        Method::GET => matches!(
            rest,
            "" | "/"
                | "/admin/static/app.js"
                | "/admin/static/app.css"
                | "/admin/session"
                | "/admin/lifecycle"
        ),
        Method::POST => {
            matches!(rest, "/admin/auth" | "/admin/logout")
                || rest
                    .strip_prefix("/admin/api/")
                    .is_some_and(|m| !m.is_empty() && !m.contains('/'))
        }
        _ => false,
    }
}

/// Headers every admin answer carries: no framing, no sniffing, no caching, nothing from
/// elsewhere.
fn harden(h: &mut HeaderMap) {
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
}

fn now_unix(state: &AppState) -> u64 {
    state.node.clock().unix()
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut res = Response::new(body.into());
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    res
}

/// A browser request sent from another site: refused whatever it carries (the cookie is
/// SameSite=Strict and the CSRF header is needed too; this is the third fence). Browsers
/// say where a request comes from in `Sec-Fetch-Site`; without it, the `Origin` must name
/// the host the request was sent to (`Host`, or `X-Forwarded-Host` from a proxy that
/// rewrites `Host`).
fn cross_site(headers: &HeaderMap) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header("origin") else {
        return false;
    };
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    ![header("host"), header("x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|host| host.eq_ignore_ascii_case(authority))
}

async fn handle(
    admin: &Admin,
    state: &AppState,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: impl futures_util::Stream<Item = Result<impl warp::Buf, warp::Error>>,
) -> Response {
    let now = now_unix(state);
    if *method == Method::GET {
        return match rest {
            "" => {
                let mut res = Response::new("".into());
                *res.status_mut() = StatusCode::MOVED_PERMANENTLY;
                if let Ok(to) = HeaderValue::from_str(&format!("{}/", admin.prefix)) {
                    res.headers_mut().insert("location", to);
                }
                res
            }
            "/" => static_file(INDEX, "text/html; charset=utf-8"),
            "/admin/static/app.js" => static_file(APP_JS, "text/javascript; charset=utf-8"),
            "/admin/static/app.css" => static_file(APP_CSS, "text/css; charset=utf-8"),
            "/admin/session" => match admin.auth.session(cookie(headers), now) {
                Some(s) => json_response(
                    StatusCode::OK,
                    &json!({"signed_in": true, "csrf": s.csrf, "expires_at": s.expires_at,
                            "insecure": admin.auth.insecure(), "node": state.node.info().name}),
                ),
                None => json_response(StatusCode::OK, &json!({ "signed_in": false })),
            },
            _ => match checked(admin, headers, now) {
                Some(_) => lifecycle(state).await,
                None => error(StatusCode::UNAUTHORIZED, "sign in first"),
            },
        };
    }
    // POSTs: every check before a byte of the body is read.
    if cross_site(headers) {
        tracing::warn!(addr = ?peer, path = rest, "admin request from another site refused");
        return error(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let limit = if rest == "/admin/auth" {
        SIGN_IN_LIMIT
    } else {
        BODY_LIMIT
    };
    match length {
        Some(n) if n > limit => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        None => return error(StatusCode::LENGTH_REQUIRED, "Content-Length required"),
        Some(_) => {}
    }
    let within = state.config.http_server.body_read_timeout;
    if rest == "/admin/auth" {
        return match crate::http::read_body(body, within).await {
            Ok(body) => sign_in(admin, state, peer, &body),
            Err(e) => body_error(e),
        };
    }
    let Some(session) = checked(admin, headers, now) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    if rest == "/admin/logout" {
        admin.auth.sign_out(&session);
        tracing::info!(addr = ?peer, session = %session.sid, "admin signed out");
        let mut res = json_response(StatusCode::OK, &json!({}));
        if let Ok(v) = HeaderValue::from_str(&set_cookie(admin, "", 0)) {
            res.headers_mut().insert("set-cookie", v);
        }
        return res;
    }
    // Room in the server API's body budget, as for `POST /api/<method>`.
    let kib = u32::try_from(length.unwrap_or(0).div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let Ok(Ok(_permit)) =
        tokio::time::timeout(within, state.api_budget.clone().acquire_many_owned(kib)).await
    else {
        tracing::warn!(
            kib,
            "admin call: server API body budget full; answering 503"
        );
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy: try again");
    };
    let body = match crate::http::read_body(body, within).await {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let method = rest.trim_start_matches("/admin/api/");
    api_call(state, &session, peer, method, &body).await
}

fn body_error(e: crate::http::BodyError) -> Response {
    match e {
        crate::http::BodyError::Timeout => error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        ),
        crate::http::BodyError::Broken => error(StatusCode::BAD_REQUEST, "request body broke off"),
    }
}

/// The session of a request that carries its CSRF token.
fn checked(admin: &Admin, headers: &HeaderMap, now: u64) -> Option<Session> {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    admin.auth.checked(cookie(headers), csrf, now)
}

fn set_cookie(admin: &Admin, value: &str, max_age: u64) -> String {
    let path = if admin.prefix.is_empty() {
        "/".to_string()
    } else {
        format!("{}/", admin.prefix)
    };
    let secure = if admin.secure_cookie { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    password: String,
}

fn sign_in(admin: &Admin, state: &AppState, peer: Option<IpAddr>, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<SignIn>(body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"password\": \"...\"}");
    };
    match admin.auth.sign_in(&req.password, peer, now_unix(state)) {
        Ok((session, token)) => {
            tracing::info!(addr = ?peer, session = %session.sid, "admin signed in");
            let mut res = json_response(
                StatusCode::OK,
                &json!({"csrf": session.csrf, "expires_at": session.expires_at}),
            );
            let cookie = set_cookie(admin, &token, admin.auth.ttl().as_secs());
            res.headers_mut().insert(
                "set-cookie",
                HeaderValue::from_str(&cookie).expect("a JWT is a valid header value"),
            );
            res
        }
        Err(Refused::WrongPassword) => {
            tracing::warn!(addr = ?peer, "admin sign-in with a wrong password");
            error(StatusCode::UNAUTHORIZED, "wrong password")
        }
        Err(Refused::TooMany(wait)) => {
            tracing::warn!(addr = ?peer, retry_in = wait.as_secs(), "admin sign-in refused: too many failures");
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed sign-ins; try again later",
            );
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(wait.as_secs().max(1)));
            res
        }
    }
}

/// A server API method called by a signed-in admin: the same code as `POST /api/<method>`,
/// with the session as the actor of revocations.
async fn api_call(
    state: &AppState,
    session: &Session,
    peer: Option<IpAddr>,
    method: &str,
    body: &[u8],
) -> Response {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let params: &serde_json::value::RawValue = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
    };
    let actor = match peer {
        Some(ip) => format!("admin:{}@{ip}", session.sid),
        None => format!("admin:{}", session.sid),
    };
    if !READ_ONLY.contains(&method) {
        tracing::info!(actor, method, "admin action");
    }
    match crate::api::call(&state.node, method, params, Some(&actor)).await {
        Some(Ok(result)) => json_response(StatusCode::OK, &json!({ "result": result })),
        Some(Err(e)) => json_response(
            StatusCode::OK,
            &json!({ "error": crate::api::error_json(&e) }),
        ),
        None => error(StatusCode::NOT_FOUND, "unknown method"),
    }
}

/// The token lifecycle page's numbers: connections expiring soon (all nodes) and this
/// node's last hour of refreshes and expiries, minute by minute.
async fn lifecycle(state: &AppState) -> Response {
    let query = rotor_core::node::ConnectionsQuery {
        expiring_within: EXPIRING.iter().map(|(s, _)| *s).collect(),
        ..Default::default()
    };
    let found = match state.node.connections(query).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let expiring: serde_json::Map<String, Value> = EXPIRING
        .iter()
        .zip(&found.expiring)
        .map(|((_, label), n)| (label.to_string(), json!(n)))
        .collect();
    let minutes = state
        .timeline
        .as_ref()
        .map(|t| t.last_hour())
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "node": state.node.info().name,
            "now": now_unix(state),
            "connections": found.total,
            "with_expiry": found.with_expiry,
            "expiring": expiring,
            "minutes": minutes,
        }),
    )
}

//! The HTTP routes: one function per route group, each returning a boxed filter, composed
//! once by [`routes`] from the configuration (a transport that is off has no route). The
//! handlers behind them live in `api`, `ws` and `stream`; this module only matches requests,
//! reads bounded bodies, applies the origin and CORS rules, and maps rejections to statuses.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use rotor_core::session::Inbound;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::hyper::body::Bytes;
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response;
use warp::Filter;

use crate::http::{json_response, origin_allowed, plain};
use crate::listener::HandOver;
use crate::state::{AppState, Peer, API_BODY_LIMIT};
use crate::stream::{self, Framing};
use crate::{api, uni, ws};

/// A route group.
type Route = BoxedFilter<(Response,)>;

/// Every route the configuration turns on, with the rejection handler and request logging.
pub fn routes(state: AppState) -> Route {
    let cfg = state.config.clone();
    let mut all = health();
    all = all.or(api(&state)).unify().boxed();
    if cfg.internal_addr().is_none() {
        if let Some(route) = metrics(&state) {
            all = all.or(route).unify().boxed();
        }
    }
    if cfg.admin_on_main_port() {
        all = all.or(crate::admin::routes(&state)).unify().boxed();
    }
    if !cfg.websocket.disabled {
        all = all.or(websocket(&state)).unify().boxed();
    }
    if cfg.uni_websocket.enabled {
        all = all.or(uni_websocket(&state)).unify().boxed();
    }
    // Paths browsers reach cross-origin with a preflight first.
    let mut cors_paths: Vec<String> = Vec::new();
    if cfg.http_stream.enabled {
        cors_paths.push(cfg.http_stream.handler_prefix.clone());
        all = all.or(http_stream(&state)).unify().boxed();
    }
    if cfg.sse.enabled {
        cors_paths.push(cfg.sse.handler_prefix.clone());
        all = all.or(sse(&state)).unify().boxed();
    }
    if cfg.http_stream.enabled || cfg.sse.enabled {
        cors_paths.push(cfg.emulation.handler_prefix.clone());
        all = all.or(emulation(&state)).unify().boxed();
    }
    if cfg.uni_http_stream.enabled {
        cors_paths.push(cfg.uni_http_stream.handler_prefix.clone());
        all = all.or(uni_http_stream(&state)).unify().boxed();
    }
    if cfg.uni_sse.enabled {
        cors_paths.push(cfg.uni_sse.handler_prefix.clone());
        all = all.or(uni_sse(&state)).unify().boxed();
    }
    if !cors_paths.is_empty() {
        all = all.or(preflight(&state, cors_paths)).unify().boxed();
    }
    all.recover(rejection)
        .unify()
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
        }))
        .map(warp::Reply::into_response)
        .boxed()
}

/// The routes of the internal port: health, metrics (when on) and the admin UI (when on
/// and not `admin.external`); `None` when it would serve nothing but health.
pub fn internal(state: &AppState) -> Option<Route> {
    let cfg = &state.config;
    let admin = cfg.admin.enabled && !cfg.admin_on_main_port();
    let metrics = metrics(state);
    if metrics.is_none() && !admin {
        return None;
    }
    let mut all = health();
    if let Some(m) = metrics {
        all = all.or(m).unify().boxed();
    }
    if admin {
        all = all.or(crate::admin::routes(state)).unify().boxed();
    }
    Some(all.recover(rejection).unify().boxed())
}

/// `GET /health`.
fn health() -> Route {
    warp::get()
        .and(warp::path!("health"))
        .map(|| json_response(StatusCode::OK, &serde_json::json!({})))
        .boxed()
}

/// `GET` at `prometheus.handler_prefix`, when metrics are on.
fn metrics(state: &AppState) -> Option<Route> {
    if !state.config.prometheus.enabled {
        return None;
    }
    let metrics = state.metrics.clone()?;
    let node = state.node.clone();
    let route = warp::get()
        .and(exact_path(state.config.prometheus.handler_prefix.clone()))
        .map(move || {
            let mut res = Response::new(metrics.render(&node).into());
            res.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        });
    Some(route.boxed())
}

/// `POST <http_api.handler_prefix>/<method>`: the server API.
fn api(state: &AppState) -> Route {
    let prefix = state
        .config
        .http_api
        .handler_prefix
        .trim_end_matches('/')
        .to_string();
    warp::post()
        .and(warp::path::full())
        .and_then(move |full: warp::path::FullPath| {
            let method = full
                .as_str()
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(str::to_string);
            async move {
                match method {
                    Some(m) if !m.is_empty() && !m.contains('/') => Ok(m),
                    _ => Err(warp::reject::not_found()),
                }
            }
        })
        .and(warp::header::headers_cloned())
        .and(
            warp::query::<BTreeMap<String, String>>()
                .or(warp::any().map(BTreeMap::new))
                .unify(),
        )
        .and(with_state(state))
        // The key first, from the headers and the query: a request without it is answered
        // 401 before a byte of its body is read or held.
        .and_then(
            |method: String,
             headers: HeaderMap,
             query: BTreeMap<String, String>,
             state: AppState| async move {
                if api::authorized(&state, &headers, &query) {
                    Ok((method, state))
                } else {
                    tracing::info!(method, "server API request with a wrong or missing key");
                    Err(warp::reject::custom(ApiUnauthorized))
                }
            },
        )
        .untuple_one()
        .and(warp::body::content_length_limit(API_BODY_LIMIT))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |method: String,
                  state: AppState,
                  length: Option<u64>,
                  stream| async move {
                // Room for the body in the API's budget before it is read; held until the
                // request is answered.
                let kib = u32::try_from(length.unwrap_or(0).div_ceil(1024).max(1))
                    .unwrap_or(u32::MAX);
                let budget = state.api_budget.clone();
                let within = state.config.http_server.body_read_timeout;
                let permit = match tokio::time::timeout(within, budget.acquire_many_owned(kib))
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        tracing::warn!(method, kib, "server API body budget full (http_api.max_body_bytes_in_flight); answering 503");
                        return Err(warp::reject::custom(ApiBusy));
                    }
                };
                let body = read_within(stream, within).await?;
                Ok::<_, warp::Rejection>((method, state, body, permit))
            },
        )
        .untuple_one()
        .then(
            |method: String,
             state: AppState,
             body: Bytes,
             permit: tokio::sync::OwnedSemaphorePermit| async move {
                let answer = api::handle(state, method, body).await;
                drop(permit);
                answer
            },
        )
        .boxed()
}

/// A server API request without the right key (401, JSON).
#[derive(Debug)]
struct ApiUnauthorized;
impl warp::reject::Reject for ApiUnauthorized {}

/// The server API's body budget stayed full (503).
#[derive(Debug)]
struct ApiBusy;
impl warp::reject::Reject for ApiBusy {}

/// `GET <websocket.handler_prefix>`: the bidirectional WebSocket.
fn websocket(state: &AppState) -> Route {
    warp::get()
        .and(exact_path(state.config.websocket.handler_prefix.clone()))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(query())
        .and(peer())
        .and(with_state(state))
        .map(
            |headers: HeaderMap,
             on_upgrade,
             q: HashMap<String, String>,
             peer: Peer,
             state: AppState| {
                let mode = ws::Mode::Bidirectional {
                    protocol: ws::protocol_asked(&headers, &q),
                };
                ws::upgrade(state, headers, on_upgrade, peer, mode)
            },
        )
        .boxed()
}

/// `GET <uni_websocket.handler_prefix>`: the unidirectional WebSocket; the connect request
/// in `cf_connect` or the first message, the token possibly in `Authorization`.
fn uni_websocket(state: &AppState) -> Route {
    warp::get()
        .and(exact_path(
            state.config.uni_websocket.handler_prefix.clone(),
        ))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(query())
        .and(peer())
        .and(with_state(state))
        .map(
            |headers: HeaderMap,
             on_upgrade,
             mut q: HashMap<String, String>,
             peer: Peer,
             state: AppState| {
                let mode = ws::Mode::Unidirectional {
                    cf_connect: q.remove("cf_connect"),
                    bearer: uni::token_from_headers(&headers, ""),
                };
                ws::upgrade(state, headers, on_upgrade, peer, mode)
            },
        )
        .boxed()
}

/// `POST <http_stream.handler_prefix>`: the connect request is the body; the response
/// streams.
fn http_stream(state: &AppState) -> Route {
    post_body(state, state.config.http_stream.handler_prefix.clone())
        .and(warp::ext::optional::<HandOver>())
        .map(
            |headers: HeaderMap, body: Bytes, peer: Peer, state: AppState, hand_over| {
                with_origin(&state, &headers, || {
                    let from = (peer, &headers, hand_over);
                    if is_protobuf(&headers) {
                        let connect = Inbound::Binary(body);
                        return stream::emulation(state.clone(), connect, from, Framing::Lines);
                    }
                    match String::from_utf8(body.to_vec()) {
                        Ok(connect) => stream::emulation(
                            state.clone(),
                            Inbound::Frame(connect),
                            from,
                            Framing::Lines,
                        ),
                        Err(_) => plain(StatusCode::BAD_REQUEST, "body is not UTF-8\n"),
                    }
                })
            },
        )
        .boxed()
}

/// `GET <sse.handler_prefix>?cf_connect=…`: the event stream.
fn sse(state: &AppState) -> Route {
    get_query(state, state.config.sse.handler_prefix.clone())
        .and(warp::ext::optional::<HandOver>())
        .map(
            |headers: HeaderMap,
             mut q: HashMap<String, String>,
             peer: Peer,
             state: AppState,
             hand_over| {
                with_origin(&state, &headers, || match q.remove("cf_connect") {
                    Some(connect) => stream::emulation(
                        state.clone(),
                        Inbound::Frame(connect),
                        (peer, &headers, hand_over),
                        Framing::EventStream,
                    ),
                    None => plain(
                        StatusCode::BAD_REQUEST,
                        "cf_connect query parameter required\n",
                    ),
                })
            },
        )
        .boxed()
}

/// `POST <emulation.handler_prefix>`: commands for an http_stream or sse session, here or on
/// another node.
fn emulation(state: &AppState) -> Route {
    post_body(state, state.config.emulation.handler_prefix.clone())
        .then(
            |headers: HeaderMap, body: Bytes, _peer: Peer, state: AppState| async move {
                // Refused origins never reach a session, here or on another node.
                let status = if origin_ok(&state, &headers) {
                    stream::post(&state, &body, is_protobuf(&headers)).await
                } else {
                    StatusCode::FORBIDDEN
                };
                with_origin(&state, &headers, || {
                    let mut res = Response::default();
                    *res.status_mut() = status;
                    res
                })
            },
        )
        .boxed()
}

/// `POST <uni_http_stream.handler_prefix>`: the connect request is the body.
fn uni_http_stream(state: &AppState) -> Route {
    post_body(state, state.config.uni_http_stream.handler_prefix.clone())
        .and(warp::ext::optional::<HandOver>())
        .map(
            |headers: HeaderMap, body: Bytes, peer: Peer, state: AppState, hand_over| {
                with_origin(&state, &headers, || {
                    let bearer = uni::token_from_headers(&headers, "");
                    let text = String::from_utf8_lossy(&body);
                    let from = (peer, &headers, hand_over);
                    stream::unidirectional(state.clone(), &text, bearer, from, Framing::Lines)
                })
            },
        )
        .boxed()
}

/// `GET <uni_sse.handler_prefix>`: the connect request in `cf_connect`, the token possibly in
/// `Authorization` or the configured cookie.
fn uni_sse(state: &AppState) -> Route {
    get_query(state, state.config.uni_sse.handler_prefix.clone())
        .and(warp::ext::optional::<HandOver>())
        .map(
            |headers: HeaderMap,
             mut q: HashMap<String, String>,
             peer: Peer,
             state: AppState,
             hand_over| {
                with_origin(&state, &headers, || {
                    let token =
                        uni::token_from_headers(&headers, &state.config.uni_sse.token_cookie);
                    let text = q.remove("cf_connect").unwrap_or_default();
                    let from = (peer, &headers, hand_over);
                    stream::unidirectional(state.clone(), &text, token, from, Framing::EventStream)
                })
            },
        )
        .boxed()
}

/// `OPTIONS` on the paths browsers call cross-origin: the CORS preflight.
fn preflight(state: &AppState, paths: Vec<String>) -> Route {
    warp::options()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(with_state(state))
        .and_then(
            move |full: warp::path::FullPath, headers: HeaderMap, state: AppState| {
                let known = paths.iter().any(|p| p == full.as_str());
                async move {
                    if !known {
                        return Err(warp::reject::not_found());
                    }
                    Ok(with_origin(&state, &headers, || {
                        let mut res = Response::default();
                        *res.status_mut() = StatusCode::NO_CONTENT;
                        let h = res.headers_mut();
                        h.insert(
                            "access-control-allow-methods",
                            HeaderValue::from_static("GET, POST, OPTIONS"),
                        );
                        h.insert(
                            "access-control-allow-headers",
                            HeaderValue::from_static(
                                "content-type, authorization, accept, cache-control, pragma",
                            ),
                        );
                        h.insert("access-control-max-age", HeaderValue::from_static("300"));
                        res
                    }))
                }
            },
        )
        .boxed()
}

// ----- filters the route groups share -----

fn with_state(state: &AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// The query parameters (none when there is no query string).
fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Infallible> + Clone {
    warp::query::<HashMap<String, String>>()
        .or(warp::any().map(HashMap::new))
        .unify()
}

/// Whether a request's browser origin (if any) is allowed.
fn origin_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    origin_allowed(origin, &state.config.client.allowed_origins)
}

/// Refuses requests from browser origins that are not allowed (403); allowed cross-origin
/// requests get the CORS headers browsers need to read the response.
fn with_origin(
    state: &AppState,
    headers: &HeaderMap,
    respond: impl FnOnce() -> Response,
) -> Response {
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, &state.config.client.allowed_origins) {
        tracing::info!(origin = origin.unwrap_or(""), "origin not allowed");
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let mut res = respond();
    if let Some(o) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        let h = res.headers_mut();
        h.insert("access-control-allow-origin", o);
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        h.insert("vary", HeaderValue::from_static("origin"));
    }
    res
}

/// Whether a request's body is Protobuf: its content type is `application/octet-stream`
/// (what centrifuge-js's Protobuf build sends), as Centrifugo decides.
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(stream::PROTOBUF_CONTENT_TYPE))
}

/// `POST path` with a body of at most `emulation.max_request_body_size`: yields the headers,
/// the body, the client address and the state (the HTTP connect and emulation endpoints).
fn post_body(
    state: &AppState,
    path: String,
) -> impl Filter<Extract = (HeaderMap, Bytes, Peer, AppState), Error = warp::Rejection> + Clone {
    let limit = state.config.emulation.max_request_body_size as u64;
    let within = state.config.http_server.body_read_timeout;
    warp::post()
        .and(exact_path(path))
        .and(warp::header::headers_cloned())
        .and(body(limit, within))
        .and(peer())
        .and(with_state(state))
}

/// `GET path`: yields the headers, the query parameters, the client address and the state
/// (the event-stream endpoints).
fn get_query(
    state: &AppState,
    path: String,
) -> impl Filter<
    Extract = (HeaderMap, HashMap<String, String>, Peer, AppState),
    Error = warp::Rejection,
> + Clone {
    warp::get()
        .and(exact_path(path))
        .and(warp::header::headers_cloned())
        .and(query())
        .and(peer())
        .and(with_state(state))
}

/// A request body that did not arrive within `http_server.body_read_timeout` (408).
#[derive(Debug)]
struct BodyTimeout;
impl warp::reject::Reject for BodyTimeout {}

/// A request body that broke off.
#[derive(Debug)]
struct BodyBroken;
impl warp::reject::Reject for BodyBroken {}

/// The request body: a `Content-Length` of at most `limit` bytes (413 beyond, 411 without
/// one), all of it within `within` (408 otherwise), so a client that trickles or stops
/// sending its body cannot hold the request forever.
fn body(
    limit: u64,
    within: Duration,
) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::body::content_length_limit(limit)
        .and(warp::body::stream())
        .and_then(move |stream| read_within(stream, within))
}

async fn read_within(
    stream: impl futures_util::Stream<Item = Result<impl warp::Buf, warp::Error>>,
    within: Duration,
) -> Result<Bytes, warp::Rejection> {
    crate::http::read_body(stream, within)
        .await
        .map_err(|e| match e {
            crate::http::BodyError::Timeout => warp::reject::custom(BodyTimeout),
            crate::http::BodyError::Broken => warp::reject::custom(BodyBroken),
        })
}

/// The client's address the listener found (see [`crate::listener::client_addr`]).
fn peer() -> impl Filter<Extract = (Peer,), Error = Infallible> + Clone {
    warp::ext::optional::<crate::listener::ClientAddr>()
        .map(|a: Option<_>| a.map(|a: crate::listener::ClientAddr| a.0))
}

/// Matches one configured path exactly.
fn exact_path(path: String) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(move |full: warp::path::FullPath| {
            let ok = full.as_str() == path;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
}

/// Requests no route took: 404 for unknown paths (warp would say 405 when some route
/// matched another method), 413 for bodies over the limit, 400 otherwise.
async fn rejection(err: warp::Rejection) -> Result<Response, Infallible> {
    // Specific rejections first: a request that reached its route and failed there also
    // carries the not-found and method rejections of the routes it did not match.
    if err.find::<ApiUnauthorized>().is_some() {
        return Ok(api::unauthorized());
    }
    let (status, text) = if err.find::<ApiBusy>().is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "server API busy: too many request bodies in flight\n",
        )
    } else if err.find::<BodyTimeout>().is_some() {
        (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        )
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "content-length required\n")
    } else if err.is_not_found() || err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::NOT_FOUND, "not found\n")
    } else {
        tracing::debug!(?err, "bad request");
        (StatusCode::BAD_REQUEST, "bad request\n")
    };
    Ok(plain(status, text))
}

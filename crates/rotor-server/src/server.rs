//! Assembles the node and the warp routes, listens, and shuts down in a bounded time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rotor_core::broker::LocalBroker;
use rotor_core::Node;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::hyper::body::Bytes;
use warp::Filter;

use crate::config::Config;
use crate::stream::{self, Framing};
use crate::{api, json_response, origin_allowed, ws, ServerError};

/// Refuses requests from browser origins that are not allowed (403); allowed cross-origin
/// requests get the CORS headers browsers need to read the response.
fn origin_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    origin_allowed(origin, &state.config.client.allowed_origins)
}

fn with_origin(
    state: &AppState,
    headers: &HeaderMap,
    respond: impl FnOnce() -> warp::reply::Response,
) -> warp::reply::Response {
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, &state.config.client.allowed_origins) {
        tracing::info!(origin = origin.unwrap_or(""), "origin not allowed");
        return crate::plain(StatusCode::FORBIDDEN, "origin not allowed\n");
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

/// What every route handler gets.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub config: Arc<Config>,
    /// Emulation sessions on this node, for routing `/emulation` POSTs.
    pub sessions: Arc<crate::stream::Sessions>,
    /// Set when `prometheus.enabled`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Set when the broker is Redis: routes emulation requests to other nodes and lists nodes.
    pub redis: Option<Arc<rotor_broker_redis::RedisBroker>>,
}

/// `POST path` with a body of at most `limit` bytes: yields the headers, the body and the
/// state (the HTTP connect and emulation endpoints).
fn post_body(
    path: String,
    limit: u64,
    state: AppState,
) -> impl Filter<Extract = (HeaderMap, Bytes, Peer, AppState), Error = warp::Rejection> + Clone {
    let within = state.config.http_server.body_read_timeout;
    warp::post()
        .and(exact_path(path))
        .and(warp::header::headers_cloned())
        .and(body(limit, within))
        .and(peer())
        .and(warp::any().map(move || state.clone()))
}

/// A request body that did not arrive within `http_server.body_read_timeout` (408).
#[derive(Debug)]
struct BodyTimeout;
impl warp::reject::Reject for BodyTimeout {}

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
    use futures_util::StreamExt;
    let read = async {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            // hyper ends the body at Content-Length, which content_length_limit has
            // checked; an error here is a client that went away.
            let mut chunk = chunk.map_err(|_| warp::reject::custom(BodyBroken))?;
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
            Err(warp::reject::custom(BodyTimeout))
        }
    }
}

/// A request body that broke off.
#[derive(Debug)]
struct BodyBroken;
impl warp::reject::Reject for BodyBroken {}

/// The client's address (see [`crate::listener::client_addr`]); `None` only where rotor did
/// not accept the connection itself (warp's test harness).
pub type Peer = Option<std::net::IpAddr>;

fn peer() -> impl Filter<Extract = (Peer,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<crate::listener::ClientAddr>()
        .map(|a: Option<_>| a.map(|a: crate::listener::ClientAddr| a.0))
}

/// `GET /metrics` (at `prometheus.handler_prefix`), when metrics are on.
fn metrics_route(state: &AppState) -> Option<warp::filters::BoxedFilter<(warp::reply::Response,)>> {
    let metrics = state.metrics.clone()?;
    let node = state.node.clone();
    let route = warp::get()
        .and(exact_path(state.config.prometheus.handler_prefix.clone()))
        .map(move || {
            let mut res = warp::reply::Response::new(metrics.render(&node).into());
            res.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        });
    Some(route.boxed())
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

fn routes(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let health = warp::get()
        .and(warp::path!("health"))
        .map(|| json_response(StatusCode::OK, &serde_json::json!({})));

    let api_prefix = state
        .config
        .http_api
        .handler_prefix
        .trim_end_matches('/')
        .to_string();
    let api = warp::post()
        .and(warp::path::full())
        .and_then(move |full: warp::path::FullPath| {
            let method = full
                .as_str()
                .strip_prefix(&api_prefix)
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
        .and(body(
            16 * 1024 * 1024,
            state.config.http_server.body_read_timeout,
        ))
        .and(with_state.clone())
        .then(
            |method: String,
             headers: HeaderMap,
             query: BTreeMap<String, String>,
             body: Bytes,
             state: AppState| { api::handle(state, method, headers, query, body) },
        );

    let mut all = health.boxed().or(api).unify().boxed();
    if state.config.prometheus.internal_port == 0 {
        if let Some(route) = metrics_route(&state) {
            all = all.or(route).unify().boxed();
        }
    }
    let cfg = state.config.clone();
    let query = || {
        warp::query::<HashMap<String, String>>()
            .or(warp::any().map(HashMap::new))
            .unify()
    };
    let body_limit = cfg.emulation.max_request_body_size as u64;
    let mut cors_paths: Vec<String> = Vec::new();
    if !cfg.websocket.disabled {
        let websocket = warp::get()
            .and(exact_path(cfg.websocket.handler_prefix.clone()))
            .and(warp::header::headers_cloned())
            .and(warp::ext::optional::<warp::hyper::upgrade::OnUpgrade>())
            .and(peer())
            .and(with_state.clone())
            .map(|headers, on_upgrade, peer: Peer, state: AppState| {
                ws::upgrade(state, headers, on_upgrade, peer, ws::Mode::Bidirectional)
            });
        all = all.or(websocket).unify().boxed();
    }
    if cfg.uni_websocket.enabled {
        let uni_ws = warp::get()
            .and(exact_path(cfg.uni_websocket.handler_prefix.clone()))
            .and(warp::header::headers_cloned())
            .and(warp::ext::optional::<warp::hyper::upgrade::OnUpgrade>())
            .and(query())
            .and(peer())
            .and(with_state.clone())
            .map(
                |headers: HeaderMap,
                 on_upgrade,
                 mut q: HashMap<String, String>,
                 peer: Peer,
                 state: AppState| {
                    let bearer = crate::uni::token_from_headers(&headers, "");
                    let mode = ws::Mode::Unidirectional {
                        cf_connect: q.remove("cf_connect"),
                        bearer,
                    };
                    ws::upgrade(state, headers, on_upgrade, peer, mode)
                },
            );
        all = all.or(uni_ws).unify().boxed();
    }
    if cfg.http_stream.enabled {
        cors_paths.push(cfg.http_stream.handler_prefix.clone());
        let http_stream = post_body(
            cfg.http_stream.handler_prefix.clone(),
            body_limit,
            state.clone(),
        )
        .map(
            |headers: HeaderMap, body: Bytes, peer: Peer, state: AppState| {
                with_origin(&state, &headers, || {
                    match String::from_utf8(body.to_vec()) {
                        Ok(connect) => {
                            stream::emulation(state.clone(), connect, peer, Framing::Lines)
                        }
                        Err(_) => crate::plain(StatusCode::BAD_REQUEST, "body is not UTF-8\n"),
                    }
                })
            },
        );
        all = all.or(http_stream).unify().boxed();
    }
    if cfg.sse.enabled {
        cors_paths.push(cfg.sse.handler_prefix.clone());
        let sse = warp::get()
            .and(exact_path(cfg.sse.handler_prefix.clone()))
            .and(warp::header::headers_cloned())
            .and(query())
            .and(peer())
            .and(with_state.clone())
            .map(
                |headers: HeaderMap,
                 mut q: HashMap<String, String>,
                 peer: Peer,
                 state: AppState| {
                    with_origin(&state, &headers, || match q.remove("cf_connect") {
                        Some(connect) => {
                            stream::emulation(state.clone(), connect, peer, Framing::EventStream)
                        }
                        None => crate::plain(
                            StatusCode::BAD_REQUEST,
                            "cf_connect query parameter required\n",
                        ),
                    })
                },
            );
        all = all.or(sse).unify().boxed();
    }
    if cfg.http_stream.enabled || cfg.sse.enabled {
        cors_paths.push(cfg.emulation.handler_prefix.clone());
        let emulation = post_body(
            cfg.emulation.handler_prefix.clone(),
            body_limit,
            state.clone(),
        )
        .then(
            |headers: HeaderMap, body: Bytes, _peer: Peer, state: AppState| async move {
                // Refused origins never reach a session, here or on another node.
                let status = if origin_ok(&state, &headers) {
                    stream::post(&state, &body).await
                } else {
                    StatusCode::FORBIDDEN
                };
                with_origin(&state, &headers, || {
                    let mut res = warp::reply::Response::default();
                    *res.status_mut() = status;
                    res
                })
            },
        );
        all = all.or(emulation).unify().boxed();
    }
    if cfg.uni_http_stream.enabled {
        cors_paths.push(cfg.uni_http_stream.handler_prefix.clone());
        let uni_http_stream = post_body(
            cfg.uni_http_stream.handler_prefix.clone(),
            body_limit,
            state.clone(),
        )
        .map(
            |headers: HeaderMap, body: Bytes, peer: Peer, state: AppState| {
                with_origin(&state, &headers, || {
                    let bearer = crate::uni::token_from_headers(&headers, "");
                    match crate::uni::connect_request(&String::from_utf8_lossy(&body), bearer) {
                        Ok(req) => stream::unidirectional(state.clone(), req, peer, Framing::Lines),
                        Err(e) => {
                            tracing::info!(error = %e, "uni_http_stream: bad connect request");
                            crate::plain(StatusCode::BAD_REQUEST, "bad connect request\n")
                        }
                    }
                })
            },
        );
        all = all.or(uni_http_stream).unify().boxed();
    }
    if cfg.uni_sse.enabled {
        cors_paths.push(cfg.uni_sse.handler_prefix.clone());
        let uni_sse = warp::get()
            .and(exact_path(cfg.uni_sse.handler_prefix.clone()))
            .and(warp::header::headers_cloned())
            .and(query())
            .and(peer())
            .and(with_state.clone())
            .map(
                |headers: HeaderMap,
                 mut q: HashMap<String, String>,
                 peer: Peer,
                 state: AppState| {
                    with_origin(&state, &headers, || {
                        let token = crate::uni::token_from_headers(
                            &headers,
                            &state.config.uni_sse.token_cookie,
                        );
                        match crate::uni::connect_request(
                            &q.remove("cf_connect").unwrap_or_default(),
                            token,
                        ) {
                            Ok(req) => stream::unidirectional(
                                state.clone(),
                                req,
                                peer,
                                Framing::EventStream,
                            ),
                            Err(e) => {
                                tracing::info!(error = %e, "uni_sse: bad connect request");
                                crate::plain(StatusCode::BAD_REQUEST, "bad connect request\n")
                            }
                        }
                    })
                },
            );
        all = all.or(uni_sse).unify().boxed();
    }
    if !cors_paths.is_empty() {
        let preflight = warp::options()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(with_state.clone())
            .and_then(
                move |full: warp::path::FullPath, headers: HeaderMap, state: AppState| {
                    let known = cors_paths.iter().any(|p| p == full.as_str());
                    async move {
                        if !known {
                            return Err(warp::reject::not_found());
                        }
                        Ok(with_origin(&state, &headers, || {
                            let mut res = warp::reply::Response::default();
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
            );
        all = all.or(preflight).unify().boxed();
    }
    all.recover(rejection)
        .unify()
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
        }))
        .map(warp::Reply::into_response)
        .boxed()
}

/// Requests no route took: 404 for unknown paths (warp would say 405 when some route
/// matched another method), 413 for bodies over the limit, 400 otherwise.
async fn rejection(
    err: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    // Specific rejections first: a request that reached its route and failed there also
    // carries the not-found and method rejections of the routes it did not match.
    let (status, text) = if err.find::<BodyTimeout>().is_some() {
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
    Ok(crate::plain(status, text))
}

/// A configured server, not yet listening.
pub struct Server {
    config: Arc<Config>,
    node: Node,
    background: Background,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    redis: Option<Arc<rotor_broker_redis::RedisBroker>>,
}

/// Binds a listening socket with `TCP_NODELAY` set, which Linux passes on to every accepted
/// socket. Without it, Nagle's
/// algorithm holds a small push back until the client's delayed ACK: ~40 ms at p99 under
/// fan-out (rotor-bench fanout, 100 subscribers).
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        match socket.bind(a) {
            // A deep backlog so bursts of connects wait in the kernel, not in RST.
            Ok(()) => return socket.listen(4096),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to bind")
    }))
}

/// Connections to each distinct Redis the configuration names, made once.
#[derive(Default)]
struct RedisConnections(Vec<(crate::config::RedisConfig, rotor_broker_redis::Shards)>);

impl RedisConnections {
    async fn get(
        &mut self,
        cfg: &crate::config::RedisConfig,
    ) -> Result<rotor_broker_redis::Shards, ServerError> {
        if let Some((_, s)) = self.0.iter().find(|(c, _)| c == cfg) {
            return Ok(s.clone());
        }
        let cluster = !cfg.cluster_address.is_empty();
        let opts = rotor_broker_redis::RedisOptions {
            addresses: if cluster {
                cfg.cluster_address.clone()
            } else {
                cfg.address.clone()
            },
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            cluster,
        };
        let shards = rotor_broker_redis::Shards::connect(&opts)
            .await
            .map_err(|e| {
                let addresses: Vec<String> = opts
                    .addresses
                    .iter()
                    .map(|a| crate::config::redact_url(a))
                    .collect();
                ServerError::Storage(format!("redis {addresses:?}: {e}"))
            })?;
        self.0.push((cfg.clone(), shards.clone()));
        Ok(shards)
    }
}

/// Storage housekeeping that runs while the server does.
enum Background {
    Memory(Arc<rotor_store_memory::MemoryHistory>),
    Postgres(rotor_store_postgres::PgPool),
}

/// A listening server.
pub struct RunningServer {
    addr: SocketAddr,
    node: Node,
    config: Arc<Config>,
    stop_accepting: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Builds the node from the configuration (connecting to and migrating the database when
    /// storage is Postgres).
    pub async fn new(config: Config) -> Result<Server, ServerError> {
        Server::with_observer(config, Arc::new(rotor_core::events::NoObserver)).await
    }

    /// Builds the node with an observer of core events (metrics).
    pub async fn with_observer(
        config: Config,
        observer: Arc<dyn rotor_core::events::Observer>,
    ) -> Result<Server, ServerError> {
        let (mut storage, background) = match config.storage.kind.as_str() {
            "postgres" => {
                let pg = &config.storage.postgres;
                let opts = pg.options();
                let pool = rotor_store_postgres::connect(&opts)
                    .await
                    .map_err(|e| ServerError::Storage(e.to_string()))?;
                if pg.migrate_on_start {
                    rotor_store_postgres::migrate(&pool)
                        .await
                        .map_err(|e| ServerError::Storage(e.to_string()))?;
                }
                (
                    rotor_store_postgres::storage(pool.clone(), &opts),
                    Background::Postgres(pool),
                )
            }
            _ => {
                let history = rotor_store_memory::MemoryHistory::new();
                let storage = rotor_core::storage::Storage {
                    history: history.clone(),
                    presence: rotor_store_memory::MemoryPresence::new(),
                    revocations: rotor_store_memory::MemoryRevocations::new(),
                };
                (storage, Background::Memory(history))
            }
        };
        let mut redis = RedisConnections::default();
        if let Some(r) = config.history_redis() {
            storage.history = rotor_broker_redis::RedisHistory::new(redis.get(r).await?);
        }
        if let Some(r) = config.presence_redis() {
            storage.presence =
                Arc::new(rotor_broker_redis::RedisPresence::new(redis.get(r).await?));
        }
        let node_uid = uuid::Uuid::new_v4().to_string();
        let redis_broker = match config.broker_redis() {
            Some(r) => Some(rotor_broker_redis::RedisBroker::start(
                redis.get(r).await?,
                &node_uid,
            )),
            None => None,
        };
        let broker: Arc<dyn rotor_core::broker::Broker> = match &redis_broker {
            Some(b) => b.clone(),
            None => Arc::new(LocalBroker::default()),
        };
        let metrics = config.prometheus.enabled.then(|| {
            Arc::new(crate::metrics::Metrics::new(
                config.prometheus.centrifugo_aliases,
            ))
        });
        let storage = match &metrics {
            Some(m) => {
                let backend = if config.storage.kind == "postgres" {
                    "postgres"
                } else if config.history_redis().is_some() {
                    "redis"
                } else {
                    "memory"
                };
                m.instrument(storage, backend)
            }
            None => storage,
        };
        let observer: Arc<dyn rotor_core::events::Observer> = match &metrics {
            Some(m) => Arc::new(rotor_core::events::Fanout(vec![m.clone(), observer])),
            None => observer,
        };
        let mut core = config.core();
        core.node_uid = node_uid;
        let node = Node::new(core, storage, broker, observer)?;
        Ok(Server {
            config: Arc::new(config),
            node,
            background,
            metrics,
            redis: redis_broker,
        })
    }

    /// Checks everything the node checks (namespaces, token keys) without touching storage.
    pub fn check(config: &Config) -> Result<(), ServerError> {
        Node::new(
            config.core(),
            rotor_store_memory::storage(),
            Arc::new(LocalBroker::default()),
            Arc::new(rotor_core::events::NoObserver),
        )?;
        Ok(())
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Binds the configured address and starts serving.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let addr = format!(
            "{}:{}",
            self.config.http_server.address, self.config.http_server.port
        );
        let listener = listen(&addr).await.map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState {
            node: self.node.clone(),
            config: self.config.clone(),
            sessions: Default::default(),
            metrics: self.metrics.clone(),
            redis: self.redis.clone(),
        };
        if let Some(redis) = &self.redis {
            redis.set_node_message_handler(Arc::new(crate::stream::ForwardedEmulation(
                state.sessions.clone(),
            )));
            spawn_heartbeat(self.node.clone(), redis.clone());
        }
        // Revocations from storage are in force before the first client connects.
        if let Err(e) = self.node.sync_revocations().await {
            tracing::warn!(error = %e, "could not load the revocation list; retrying every sync interval");
        }
        spawn_revocation_sync(self.node.clone(), self.config.revocation.sync_interval);
        let stop_accepting = CancellationToken::new();
        let stop = stop_accepting.clone();
        let prom = &self.config.prometheus;
        if prom.internal_port > 0 {
            if let Some(route) = metrics_route(&state) {
                let addr = format!("{}:{}", prom.internal_address, prom.internal_port);
                let internal = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                let health = warp::get()
                    .and(warp::path!("health"))
                    .map(|| json_response(StatusCode::OK, &serde_json::json!({})));
                let routes = route.or(health).unify().recover(rejection).unify();
                let stop = stop_accepting.clone();
                tokio::spawn(async move {
                    warp::serve(routes)
                        .incoming(internal)
                        .graceful(async move { stop.cancelled().await })
                        .run()
                        .await;
                });
                tracing::info!(address = %addr, "metrics on the internal port");
            }
        }
        let serving = crate::listener::Serving::new(&self.config.http_server, &stop)?;
        let tls = serving.tls.is_some();
        let task = tokio::spawn(crate::listener::serve(
            listener,
            routes(state),
            serving,
            stop,
        ));
        match &self.background {
            Background::Memory(history) => {
                spawn_history_sweeper(self.node.clone(), history.clone())
            }
            Background::Postgres(pool) => {
                let pg = &self.config.storage.postgres;
                let stop = self.node.shutdown_token();
                rotor_store_postgres::spawn_retention(
                    pool.clone(),
                    pg.retention_interval,
                    i64::from(pg.retention_batch_size.max(1)),
                    async move { stop.cancelled().await },
                );
            }
        }
        tracing::info!(address = %local, tls, version = env!("CARGO_PKG_VERSION"), "rotor listening");
        Ok(RunningServer {
            addr: local,
            node: self.node,
            config: self.config,
            stop_accepting,
            task,
        })
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops accepting, closes every connection with 3001 (shutdown) and waits for them, all
    /// within `shutdown.timeout`.
    pub async fn shutdown(self) {
        let timeout = self.config.shutdown.timeout;
        let started = tokio::time::Instant::now();
        // New connections are refused; requests in flight (an API publish waiting for its
        // history commit, say) are finished and answered.
        self.stop_accepting.cancel();
        let left = self.node.shutdown(timeout).await;
        if left > 0 {
            tracing::warn!(
                left,
                "connections still open at the end of the shutdown timeout"
            );
        }
        let rest = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(rest, self.task).await.is_err() {
            tracing::warn!("HTTP requests still running after shutdown; abandoning them");
        }
        tracing::info!("rotor stopped");
    }
}

/// How often a node reports itself in the Redis node registry, and how old a report may be
/// before the node counts as gone.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(10);

/// Keeps this node in the Redis node registry while it runs; leaves it at shutdown.
fn spawn_heartbeat(node: Node, redis: Arc<rotor_broker_redis::RedisBroker>) {
    let stop = node.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = redis.heartbeat(&node.info()).await {
                        tracing::debug!(error = %e, "node heartbeat to Redis failed");
                    }
                }
                _ = stop.cancelled() => {
                    let _ = redis.leave_registry().await;
                    return;
                }
            }
        }
    });
}

/// Drops expired publications and forgotten streams from in-memory history once a minute, so
/// channels nobody reads again do not keep memory.
fn spawn_history_sweeper(node: Node, history: Arc<rotor_store_memory::MemoryHistory>) {
    let stop = node.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let left = history.sweep(|ch| node.channel_options(ch).ok().map(|o| o.history_ttl));
                    tracing::debug!(streams = left, "history sweep");
                }
            }
        }
    });
}

/// Reloads the revocation list from storage every `interval` until shutdown.
fn spawn_revocation_sync(node: Node, interval: Duration) {
    let stop = node.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => if let Err(e) = node.sync_revocations().await {
                    tracing::warn!(error = %e, "revocation sync failed; keeping the list in memory");
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    /// Every accepted connection has Nagle's algorithm off (inherited from the listener).
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = super::listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on accepted sockets"
        );
        assert!(
            !client.nodelay().unwrap(),
            "the client's own socket is untouched"
        );
    }
}

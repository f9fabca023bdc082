//! Assembles the node and the warp routes, listens, and shuts down in a bounded time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rotor_core::broker::LocalBroker;
use rotor_core::Node;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, StatusCode};
use warp::hyper::body::Bytes;
use warp::Filter;

use crate::config::Config;
use crate::{api, json_response, ws, ServerError};

/// What every route handler gets.
#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub config: Arc<Config>,
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
        .and(warp::body::content_length_limit(16 * 1024 * 1024))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(
            |method: String,
             headers: HeaderMap,
             query: BTreeMap<String, String>,
             body: Bytes,
             state: AppState| { api::handle(state, method, headers, query, body) },
        );

    let mut all = health.boxed().or(api).unify().boxed();
    if !state.config.websocket.disabled {
        let websocket = warp::get()
            .and(exact_path(state.config.websocket.handler_prefix.clone()))
            .and(warp::header::headers_cloned())
            .and(warp::ext::optional::<warp::hyper::upgrade::OnUpgrade>())
            .and(with_state.clone())
            .map(|headers, on_upgrade, state: AppState| ws::upgrade(state, headers, on_upgrade));
        all = all.or(websocket).unify().boxed();
    }
    all.with(warp::log::custom(|info| {
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
    }))
    .map(warp::Reply::into_response)
    .boxed()
}

/// A configured server, not yet listening.
pub struct Server {
    config: Arc<Config>,
    node: Node,
    history: Arc<rotor_store_memory::MemoryHistory>,
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
    /// Builds the node from the configuration.
    pub fn new(config: Config) -> Result<Server, ServerError> {
        let history = rotor_store_memory::MemoryHistory::new();
        let storage = rotor_core::storage::Storage {
            history: history.clone(),
            presence: rotor_store_memory::MemoryPresence::new(),
            revocations: rotor_store_memory::MemoryRevocations::new(),
        };
        let node = Node::new(
            config.core(),
            storage,
            Arc::new(LocalBroker::default()),
            Arc::new(rotor_core::events::NoObserver),
        )?;
        Ok(Server {
            config: Arc::new(config),
            node,
            history,
        })
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
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState {
            node: self.node.clone(),
            config: self.config.clone(),
        };
        let stop_accepting = CancellationToken::new();
        let stop = stop_accepting.clone();
        let task = tokio::spawn(async move {
            warp::serve(routes(state))
                .incoming(listener)
                .graceful(async move { stop.cancelled().await })
                .run()
                .await;
        });
        spawn_history_sweeper(self.node.clone(), self.history.clone());
        tracing::info!(address = %local, version = env!("CARGO_PKG_VERSION"), "rotor listening");
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
        self.stop_accepting.cancel();
        let left = self.node.shutdown(timeout).await;
        if left > 0 {
            tracing::warn!(
                left,
                "connections still open at the end of the shutdown timeout"
            );
        }
        if tokio::time::timeout(Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP requests still running after shutdown; abandoning them");
        }
        tracing::info!("rotor stopped");
    }
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

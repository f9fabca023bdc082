//! rotor's proxies to the application backend over HTTP: rotor-core's [`Proxy`] trait,
//! carried as Centrifugo's proxy protocol (a JSON POST per call, an answer with `result`,
//! `error` or `disconnect`).
//!
//! The core decides when to ask and what an answer means; this crate only asks. Every call
//! is bounded: at most `max_in_flight` at once per proxy (waiting for room counts against
//! the call's `timeout`), and the whole exchange within `timeout`. Whatever goes wrong on
//! the way (refused connection, timeout, a status other than 200, an answer that is not the
//! protocol's) is a [`ProxyError`], never a panic.

#[cfg(test)]
mod tests;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use rotor_core::config::ProxyConfig;
use rotor_core::proxy::{
    Answer, Caller, ConnectCall, ConnectGrant, Proxy, ProxyError, ProxyResult, PublishGrant,
    RefreshGrant, SubscribeCall, SubscribeGrant,
};
use rotor_protocol::Raw;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use wire::{Body, ChannelBody, Common, ConnectBody, NoFields, Payload, RpcBody};

/// The largest answer read from a backend (a proxy answer is a few hundred bytes; a
/// broken backend must not make every connection that asks hold megabytes).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// One backend endpoint reached over HTTP.
pub struct HttpProxy {
    endpoint: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    /// Lower-case names of the connection request's headers passed on.
    http_headers: Vec<String>,
    /// Lower-case names of the connect command's headers passed on.
    emulated_headers: Vec<String>,
    static_headers: HeaderMap,
    binary: bool,
    include_meta: bool,
    in_flight: Semaphore,
    /// Statuses the backend answers on purpose: the answer they stand for.
    transforms: Vec<(u16, Transformed)>,
}

/// What a transformed status answers.
#[derive(Clone)]
enum Transformed {
    Error(rotor_protocol::Error),
    Disconnect(rotor_protocol::Disconnect),
}

impl HttpProxy {
    /// A proxy for one configuration section; fails on an endpoint that is not an http(s)
    /// URL or a static header that is not a valid header.
    pub fn new(config: &ProxyConfig) -> Result<HttpProxy, String> {
        let endpoint = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| format!("endpoint {:?} is not a URL: {e}", config.endpoint))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(format!(
                "endpoint {:?}: only http:// and https:// proxies are supported (no gRPC)",
                config.endpoint
            ));
        }
        let mut static_headers = HeaderMap::new();
        for (name, value) in &config.http.static_headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("http.static_headers: {name:?} is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("http.static_headers: the value of {name} is not valid"))?;
            static_headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.max_in_flight.min(255))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let transforms = config
            .http
            .status_to_code_transforms
            .iter()
            .map(transform)
            .collect::<Result<_, _>>()?;
        let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(HttpProxy {
            endpoint,
            client,
            timeout: config.timeout,
            http_headers: lower(&config.http_headers),
            emulated_headers: lower(&config.emulated_headers),
            static_headers,
            binary: config.binary_encoding,
            include_meta: config.include_connection_meta,
            in_flight: Semaphore::new(config.max_in_flight),
            transforms,
        })
    }

    /// The headers of a call: static ones, then the connect command's, then the connection
    /// request's (each later one wins), then the content type.
    fn headers(&self, caller: &Caller) -> HeaderMap {
        let mut h = self.static_headers.clone();
        if let Some(fwd) = &caller.headers {
            for (names, list) in [
                (&self.emulated_headers, &fwd.emulated),
                (&self.http_headers, &fwd.http),
            ] {
                // Every value of a header the client repeated, replacing what an earlier
                // source gave for that name.
                let mut replaced: Vec<&str> = Vec::new();
                for (name, value) in list {
                    if !names.contains(name) {
                        continue;
                    }
                    let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) else {
                        continue;
                    };
                    if !replaced.contains(&name.as_str()) {
                        replaced.push(name);
                        h.remove(&n);
                    }
                    h.append(n, v);
                }
            }
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    fn common<'a>(&self, caller: &'a Caller, user: bool) -> Common<'a> {
        Common::new(caller, self.binary, user, self.include_meta)
    }

    /// POSTs `body` and parses the answer with `grant`.
    async fn call<B: Serialize, W: DeserializeOwned, T>(
        &self,
        caller: &Caller,
        body: &B,
        grant: impl FnOnce(W) -> Result<T, ProxyError>,
    ) -> ProxyResult<T> {
        let started = Instant::now();
        let body = serde_json::to_vec(body)
            .map_err(|e| ProxyError(format!("cannot encode the call: {e}")))?;
        let _permit = tokio::time::timeout(self.timeout, self.in_flight.acquire())
            .await
            .map_err(|_| {
                ProxyError(format!(
                    "no room among max_in_flight calls within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|_| ProxyError("the proxy is closed".into()))?;
        let left = self.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(ProxyError(format!("no answer within {:?}", self.timeout)));
        }
        let response = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers(caller))
            .timeout(left)
            .body(body)
            .send()
            .await
            .map_err(|e| ProxyError(describe(&e, self.timeout)))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let code = status.as_u16();
            return match self.transforms.iter().find(|(s, _)| *s == code) {
                Some((_, Transformed::Error(e))) => Ok(Answer::Error(e.clone())),
                Some((_, Transformed::Disconnect(d))) => Ok(Answer::Disconnect(d.clone())),
                None => Err(ProxyError(format!("the backend answered HTTP {status}"))),
            };
        }
        let mut response = response;
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ProxyError(describe(&e, self.timeout)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ProxyError(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        wire::answer(&body, grant)
    }
}

/// Checks one of `http.status_to_code_transforms` (Centrifugo's rules: a status, and exactly
/// one of an error code and a disconnect code; ASCII texts of at most 123 bytes).
fn transform(t: &rotor_core::config::StatusTransform) -> Result<(u16, Transformed), String> {
    let key = "http.status_to_code_transforms";
    if t.status_code == 0 {
        return Err(format!("{key}: status_code is required"));
    }
    let text_ok = |s: &str| s.is_ascii() && s.len() <= 123;
    match (t.to_error.code, t.to_disconnect.code) {
        (0, 0) | (1.., 1..) => Err(format!(
            "{key}: status {} needs exactly one of to_error.code and to_disconnect.code",
            t.status_code
        )),
        (code, 0) if text_ok(&t.to_error.message) => Ok((
            t.status_code,
            Transformed::Error(rotor_protocol::Error {
                code,
                message: t.to_error.message.clone(),
                temporary: t.to_error.temporary,
            }),
        )),
        (0, code) if text_ok(&t.to_disconnect.reason) => Ok((
            t.status_code,
            Transformed::Disconnect(rotor_protocol::Disconnect {
                code,
                reason: t.to_disconnect.reason.clone().into(),
            }),
        )),
        _ => Err(format!(
            "{key}: status {}: the message or reason must be ASCII, at most 123 bytes",
            t.status_code
        )),
    }
}

/// A reqwest error in words: a timeout says so.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

#[async_trait]
impl Proxy for HttpProxy {
    async fn connect(&self, caller: &Caller, call: &ConnectCall) -> ProxyResult<ConnectGrant> {
        let body = Body {
            common: self.common(caller, false),
            call: ConnectBody {
                payload: Payload::new(call.data.as_ref(), self.binary)?,
                name: &call.name,
                version: &call.version,
                channels: &call.channels,
            },
        };
        self.call(caller, &body, wire::connect_grant).await
    }

    async fn refresh(&self, caller: &Caller) -> ProxyResult<RefreshGrant> {
        let body = Body {
            common: self.common(caller, true),
            call: NoFields {},
        };
        self.call(caller, &body, wire::refresh_grant).await
    }

    async fn subscribe(
        &self,
        caller: &Caller,
        call: &SubscribeCall,
    ) -> ProxyResult<SubscribeGrant> {
        let body = Body {
            common: self.common(caller, true),
            call: ChannelBody {
                channel: &call.channel,
                payload: Payload::new(call.data.as_ref(), self.binary)?,
            },
        };
        self.call(caller, &body, wire::subscribe_grant).await
    }

    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &Raw,
    ) -> ProxyResult<PublishGrant> {
        let body = Body {
            common: self.common(caller, true),
            call: ChannelBody {
                channel,
                payload: Payload::new(Some(data), self.binary)?,
            },
        };
        self.call(caller, &body, wire::publish_grant).await
    }

    async fn sub_refresh(&self, caller: &Caller, channel: &str) -> ProxyResult<RefreshGrant> {
        let body = Body {
            common: self.common(caller, true),
            call: ChannelBody {
                channel,
                payload: Payload::default(),
            },
        };
        self.call(caller, &body, wire::refresh_grant).await
    }

    async fn rpc(
        &self,
        caller: &Caller,
        method: &str,
        data: Option<&Raw>,
    ) -> ProxyResult<Option<Raw>> {
        let body = Body {
            common: self.common(caller, true),
            call: RpcBody {
                method,
                payload: Payload::new(data, self.binary)?,
            },
        };
        self.call(caller, &body, wire::rpc_grant).await
    }
}

/// Builds [`HttpProxy`]s for [`rotor_core::proxy::Proxies::from_config`].
pub fn factory(_name: &str, config: &ProxyConfig) -> Result<Arc<dyn Proxy>, String> {
    Ok(Arc::new(HttpProxy::new(config)?))
}

//! Proxies to the application backend, end to end: the real server, a real HTTP backend
//! started here (an "application" that authenticates by cookie and answers every proxy), and
//! centrifuge-js and centrifuge-python as clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor_core::config::{NamespaceConfig, ProxyConfig, RpcOptions, ToggledProxyConfig};
use rotor_tests::*;
use serde_json::{json, Value};
use warp::Filter;

use super::sdk::cmd;

const T: Duration = Duration::from_secs(10);

/// How the backend behaves right now.
const NORMAL: u8 = 0;
/// Every call answered HTTP 503.
const DOWN: u8 = 1;
/// Every call answered after 3 s (the proxies' timeout is 500 ms).
const SLOW: u8 = 2;

/// One call the backend received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    body: Value,
    headers: HashMap<String, String>,
}

/// The application backend: `POST /centrifugo/<kind>`.
///
/// - connect: the `session` cookie (or an `Authorization: Bearer` emulated header) names the
///   user; `banned` is refused with disconnect 4501; `shortlived` expires in 2 s; no
///   credentials: no result.
/// - refresh, sub_refresh: the first of a connection extends by 2 s, the second says expired.
/// - subscribe: `px:secret` is refused with error 1403, `px:expiring` expires in 2 s,
///   anything else allowed with data.
/// - publish: text `spam` is refused with error 1400, `ephemeral` is kept out of history,
///   anything else upper-cased.
/// - rpc: `add` sums `a` and `b`, `fail` is error 1500, `echo` answers `b64data` with itself.
struct Backend {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    mode: Arc<AtomicU8>,
}

impl Backend {
    async fn start() -> Backend {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let mode = Arc::new(AtomicU8::new(NORMAL));
        let refreshes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let (log, m) = (calls.clone(), mode.clone());
        let route = warp::post()
            .and(warp::path!("centrifugo" / String))
            .and(warp::header::headers_cloned())
            .and(warp::body::json())
            .then(
                move |kind: String, headers: warp::http::HeaderMap, body: Value| {
                    let (log, mode, refreshes) = (log.clone(), m.clone(), refreshes.clone());
                    async move {
                        let headers: HashMap<String, String> = headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        log.lock().unwrap().push(Call {
                            path: kind.clone(),
                            body: body.clone(),
                            headers: headers.clone(),
                        });
                        match mode.load(Ordering::SeqCst) {
                            DOWN => {
                                return warp::http::Response::builder()
                                    .status(503)
                                    .body(String::new())
                                    .unwrap()
                            }
                            SLOW => tokio::time::sleep(Duration::from_secs(3)).await,
                            _ => {}
                        }
                        let answer = app(&kind, &body, &headers, &refreshes);
                        warp::http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(answer.to_string())
                            .unwrap()
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Backend { addr, calls, mode }
    }

    fn url(&self, kind: &str) -> String {
        format!("http://{}/centrifugo/{kind}", self.addr)
    }

    fn calls(&self, kind: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.path == kind).cloned().collect()
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// What the application answers.
fn app(
    kind: &str,
    body: &Value,
    headers: &HashMap<String, String>,
    refreshes: &Mutex<HashMap<String, u32>>,
) -> Value {
    match kind {
        "connect" => {
            let from_cookie = headers
                .get("cookie")
                .and_then(|c| c.strip_prefix("session="))
                .map(str::to_string);
            let from_bearer = headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string);
            match from_cookie.or(from_bearer).as_deref() {
                None => json!({}),
                Some("banned") => json!({"disconnect": {"code": 4501, "reason": "banned"}}),
                Some("shortlived") => json!({"result": {
                    "user": "shortlived", "expire_at": now() + 2, "data": {"welcome": "shortlived"}
                }}),
                Some(user) => json!({"result": {
                    "user": user, "data": {"welcome": user}, "info": {"name": user.to_uppercase()}
                }}),
            }
        }
        "refresh" | "sub_refresh" => {
            let client = format!("{kind}/{}", body["client"].as_str().unwrap_or(""));
            let mut r = refreshes.lock().unwrap();
            let n = r.entry(client).or_default();
            *n += 1;
            if *n == 1 {
                json!({"result": {"expire_at": now() + 2}})
            } else {
                json!({"result": {"expired": true}})
            }
        }
        "subscribe" => match body["channel"].as_str() {
            Some("px:secret") => json!({"error": {"code": 1403, "message": "not for you"}}),
            Some("px:expiring") => json!({"result": {"expire_at": now() + 2}}),
            Some(ch) => json!({"result": {"data": {"room": ch}, "info": {"role": "member"}}}),
            None => json!({}),
        },
        "publish" => match body["data"]["text"].as_str() {
            Some("spam") => json!({"error": {"code": 1400, "message": "no spam"}}),
            Some("ephemeral") => json!({"result": {"skip_history": true}}),
            // The backend names the order: a client's retry publishes nothing.
            Some(t) if t.starts_with("order-") => json!({"result": {"idempotency_key": t}}),
            Some(text) => {
                json!({"result": {"data": {"text": text.to_uppercase(), "checked": true}}})
            }
            None => json!({}),
        },
        "rpc" => match body["method"].as_str() {
            Some("add") => json!({"result": {"data": {
                "sum": body["data"]["a"].as_i64().unwrap_or(0) + body["data"]["b"].as_i64().unwrap_or(0)
            }}}),
            Some("fail") => json!({"error": {"code": 1500, "message": "boom"}}),
            // With binary_encoding: the payload's bytes, back as they came.
            Some("echo") => json!({"result": {"b64data": body["b64data"]}}),
            _ => json!({"error": {"code": 1404, "message": "no such method"}}),
        },
        _ => json!({"error": {"code": 1000, "message": "unknown proxy"}}),
    }
}

/// The test config with every proxy on `backend` (timeout 500 ms): connect with the
/// `Cookie` header and the emulated `Authorization` header, namespace `px` asking the
/// backend for subscribe and publish, RPC without namespace.
fn config(backend: &Backend) -> rotor_server::Config {
    let mut c = test_config();
    let proxy = |kind: &str| ProxyConfig {
        endpoint: backend.url(kind),
        timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    c.client.proxy.connect = ToggledProxyConfig {
        enabled: true,
        endpoint: backend.url("connect"),
        timeout: Duration::from_millis(500),
        http_headers: vec!["Cookie".into()],
        emulated_headers: vec!["Authorization".into()],
        ..ToggledProxyConfig::default()
    };
    c.channel.proxy.subscribe = proxy("subscribe");
    c.channel.proxy.publish = proxy("publish");
    c.channel.namespaces.push(NamespaceConfig {
        name: "px".into(),
        subscribe_proxy_enabled: true,
        publish_proxy_enabled: true,
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        ..NamespaceConfig::default()
    });
    c.rpc.proxy = proxy("rpc");
    c.rpc.without_namespace = RpcOptions {
        proxy_enabled: true,
        ..RpcOptions::default()
    };
    c.prometheus.enabled = true;
    c
}

fn js(server: &TestServer, cookie: &str) -> Script {
    Script::node(
        "client.js",
        &[("BASE", server.http_url()), ("COOKIE", cookie.into())],
    )
}

async fn connected(s: &mut Script) -> Value {
    s.expect("ready", T).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    s.expect("connected", T).await
}

/// The `text` of every publication in a channel's history, oldest first.
async fn history_texts(server: &TestServer, channel: &str) -> Vec<String> {
    let (_, h) = server
        .api("history", json!({"channel": channel, "limit": 10}))
        .await;
    h["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .map(|p| p["data"]["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn js_connects_by_cookie_and_the_backend_decides_subscribe_publish_and_rpc() {
    if !sdks_available("js_connects_by_cookie") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let mut s = js(&server, "session=alice");
    let c = connected(&mut s).await;
    assert_eq!(c["data"], json!({"welcome": "alice"}), "{c}");
    let call = &backend.calls("connect")[0];
    assert_eq!(call.headers["cookie"], "session=alice");
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["protocol"], "json");
    assert!(call.body.get("user").is_none(), "{:?}", call.body);

    // Subscribe: allowed with the backend's data, or refused with its code.
    s.send(&json!({"op": "subscribe", "channel": "px:public"}).to_string())
        .await;
    let sub = s.expect("subscribed", T).await;
    assert_eq!(sub["data"], json!({"room": "px:public"}), "{sub}");
    s.send(&json!({"op": "subscribe", "channel": "px:secret"}).to_string())
        .await;
    let refused = s
        .expect_where("unsubscribed", |v| v["channel"] == "px:secret", T)
        .await;
    assert_eq!(refused["code"], 1403, "{refused}");
    let sub_calls = backend.calls("subscribe");
    assert_eq!(sub_calls[0].body["user"], "alice");
    // The connection's headers go with every call of the proxy that lists them only.
    assert!(!sub_calls[0].headers.contains_key("cookie"));

    // Publish: the backend's data goes out; a refusal is the backend's error.
    cmd(
        &mut s,
        json!({"op": "publish", "channel": "px:public", "data": {"text": "hello"}}),
    )
    .await;
    let p = s.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "HELLO", "checked": true}), "{p}");
    assert_eq!(p["info"]["connInfo"], json!({"name": "ALICE"}), "{p}");
    s.send(&json!({"op": "publish", "channel": "px:public", "data": {"text": "spam"}}).to_string())
        .await;
    let e = s.expect("op_error", T).await;
    assert_eq!(
        (e["code"].clone(), e["message"].clone()),
        (json!(1400), json!("no spam"))
    );

    // Kept out of history when the backend says so: delivered, not stored.
    cmd(
        &mut s,
        json!({"op": "publish", "channel": "px:public", "data": {"text": "ephemeral"}}),
    )
    .await;
    let p = s.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "ephemeral"}), "{p}");
    assert_eq!(history_texts(&server, "px:public").await, ["HELLO"]);

    // An idempotency key from the backend: the retry is answered, nothing is published.
    for _ in 0..2 {
        cmd(
            &mut s,
            json!({"op": "publish", "channel": "px:public", "data": {"text": "order-7"}}),
        )
        .await;
    }
    assert_eq!(
        history_texts(&server, "px:public").await,
        ["HELLO", "order-7"]
    );
    let p = s.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "order-7"}), "{p}");

    // RPC: the backend's data, or its error.
    let r = cmd(
        &mut s,
        json!({"op": "rpc", "method": "add", "data": {"a": 2, "b": 3}}),
    )
    .await;
    assert_eq!(r["data"], json!({"sum": 5}), "{r}");
    s.send(&json!({"op": "rpc", "method": "fail", "data": {}}).to_string())
        .await;
    let e = s.expect("op_error", T).await;
    assert_eq!(
        (e["code"].clone(), e["message"].clone()),
        (json!(1500), json!("boom"))
    );

    // Every call is counted per proxy.
    let m = metrics(server.addr).await;
    for (kind, n) in [
        ("connect", 1.0),
        ("subscribe", 2.0),
        // hello, spam, ephemeral, and order-7 twice (the backend is asked each time).
        ("publish", 5.0),
        ("rpc", 2.0),
    ] {
        let key = format!("rotor_proxy_calls_total{{name=\"default\",type=\"{kind}\"}}");
        assert_eq!(m.get(&key), Some(&n), "{key}");
    }
    assert!(m.contains_key("rotor_proxy_duration_seconds_count{name=\"default\",type=\"rpc\"}"));

    // `send` has no handler (as in Centrifugo v6): 3508, which the SDK does not retry.
    s.send(&json!({"op": "send", "data": {"x": 1}}).to_string())
        .await;
    let d = s.expect("disconnected", T).await;
    assert_eq!(d["code"], 3508, "{d}");
    s.finish(T).await;
}

#[tokio::test]
async fn python_connects_by_cookie_publishes_and_calls_rpc() {
    if !sdks_available("python_connects_by_cookie") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let mut s = Script::python(
        "client.py",
        &[
            ("BASE", server.http_url()),
            ("COOKIE", "session=bob".into()),
        ],
    );
    let c = connected(&mut s).await;
    assert_eq!(c["data"], json!({"welcome": "bob"}), "{c}");
    assert_eq!(backend.calls("connect")[0].headers["cookie"], "session=bob");
    s.send(&json!({"op": "subscribe", "channel": "px:py"}).to_string())
        .await;
    s.expect("result", T).await;
    s.expect("subscribed", T).await;
    cmd(
        &mut s,
        json!({"op": "publish", "channel": "px:py", "data": {"text": "from python"}}),
    )
    .await;
    let p = s.expect("publication", T).await;
    assert_eq!(
        p["data"],
        json!({"text": "FROM PYTHON", "checked": true}),
        "{p}"
    );
    assert_eq!(p["info"]["user"], "bob");
    let r = cmd(
        &mut s,
        json!({"op": "rpc", "method": "add", "data": {"a": 40, "b": 2}}),
    )
    .await;
    assert_eq!(r["data"], json!({"sum": 42}), "{r}");
    s.send(&json!({"op": "rpc", "method": "fail", "data": {}}).to_string())
        .await;
    let e = s.expect("op_error", T).await;
    assert_eq!(e["code"], 1500, "{e}");
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
}

#[tokio::test]
async fn emulated_headers_authenticate_an_http_stream_client() {
    if !sdks_available("emulated_headers_authenticate") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let mut s = Script::node(
        "client.js",
        &[
            ("BASE", server.http_url()),
            ("TRANSPORT", "http_stream".into()),
            (
                "HEADERS",
                json!({"Authorization": "Bearer carol"}).to_string(),
            ),
        ],
    );
    let c = connected(&mut s).await;
    assert_eq!(c["data"], json!({"welcome": "carol"}), "{c}");
    assert_eq!(c["transport"], "http_stream");
    let call = &backend.calls("connect")[0];
    assert_eq!(call.headers["authorization"], "Bearer carol");
    assert_eq!(call.body["transport"], "http_stream");
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
}

#[tokio::test]
async fn a_45xx_disconnect_from_the_backend_is_terminal_for_the_sdk() {
    if !sdks_available("a_45xx_disconnect_is_terminal") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let mut s = js(&server, "session=banned");
    s.expect("ready", T).await;
    s.send(&json!({"op": "connect"}).to_string()).await;
    let d = s.expect("disconnected", T).await;
    assert_eq!(
        (d["code"].clone(), d["reason"].clone()),
        (json!(4501), json!("banned"))
    );
    // The SDK does not try again (its reconnect delay is 100-500 ms here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend.calls("connect").len(), 1);
    // Nor does a client without credentials get in: no result is 3501.
    let mut anonymous = Script::node("client.js", &[("BASE", server.http_url())]);
    anonymous.expect("ready", T).await;
    anonymous.send(&json!({"op": "connect"}).to_string()).await;
    let d = anonymous.expect("disconnected", T).await;
    assert_eq!(d["code"], 3501, "{d}");
    s.send(&json!({"op": "quit"}).to_string()).await;
    anonymous.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
    anonymous.finish(T).await;
}

#[tokio::test]
async fn the_refresh_proxy_extends_once_then_expired_closes_with_3005() {
    if !sdks_available("the_refresh_proxy_extends_once") {
        return;
    }
    let backend = Backend::start().await;
    let mut c = config(&backend);
    c.client.proxy.refresh = ToggledProxyConfig {
        enabled: true,
        endpoint: backend.url("refresh"),
        timeout: Duration::from_millis(500),
        ..ToggledProxyConfig::default()
    };
    let server = TestServer::start(c).await;
    let mut s = js(&server, "session=shortlived");
    let started = Instant::now();
    let first = connected(&mut s).await;
    // Closed with 3005 (the SDK reconnects: the backend is asked to connect again).
    let d = s
        .expect_where("connecting", |v| v["code"] == 3005, Duration::from_secs(15))
        .await;
    assert_eq!(d["reason"], "connection expired", "{d}");
    let took = started.elapsed();
    // Expiry in 2 s (whole seconds: 1-2 s), extended by 2 s once, then expired: well
    // after the first expiry.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    let refreshes: Vec<Call> = backend
        .calls("refresh")
        .into_iter()
        .filter(|c| c.body["client"] == first["client"])
        .collect();
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert_eq!(refreshes[0].body["user"], "shortlived");
    let again = s.expect("connected", T).await;
    assert_ne!(again["client"], first["client"]);
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
}

#[tokio::test]
async fn a_backend_down_or_slow_gets_temporary_errors_and_other_clients_keep_receiving() {
    if !sdks_available("a_backend_down_or_slow") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    // A bystander on a channel the backend is not asked about.
    let mut bystander = js(&server, "session=dave");
    connected(&mut bystander).await;
    bystander
        .send(&json!({"op": "subscribe", "channel": "open:news"}).to_string())
        .await;
    bystander.expect("subscribed", T).await;
    let mut s = js(&server, "session=erin");
    connected(&mut s).await;

    backend.set(SLOW);
    let started = Instant::now();
    s.send(&json!({"op": "rpc", "method": "add", "data": {"a": 1, "b": 1}}).to_string())
        .await;
    // While the backend is slow, publications still reach the bystander at once.
    let (status, _) = server
        .api("publish", json!({"channel": "open:news", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200);
    let p = bystander
        .expect("publication", Duration::from_secs(2))
        .await;
    assert_eq!(p["data"], json!({"n": 1}));
    let e = s.expect("op_error", T).await;
    assert_eq!(
        e["code"], 100,
        "temporary internal error past the 500 ms timeout: {e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    backend.set(DOWN);
    s.send(
        &json!({"op": "client_publish", "channel": "px:room", "data": {"text": "hi"}}).to_string(),
    )
    .await;
    let e = s.expect("op_error", T).await;
    assert_eq!(e["code"], 100, "{e}");
    // A connect while the backend is down: error 100, and the SDK keeps trying.
    let mut late = Script::python(
        "client.py",
        &[
            ("BASE", server.http_url()),
            ("COOKIE", "session=frank".into()),
        ],
    );
    late.expect("ready", T).await;
    late.send(&json!({"op": "connect"}).to_string()).await;
    let e = late.expect("error", T).await;
    assert!(e["error"].as_str().unwrap_or("").contains("100"), "{e}");
    let before = backend.calls("connect").len();
    let deadline = Instant::now() + T;
    while backend.calls("connect").len() == before {
        assert!(Instant::now() < deadline, "the SDK retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backend.set(NORMAL);
    late.expect("connected", T).await;

    // The bystander saw everything, the connection that hit the errors is still up.
    let (status, _) = server
        .api("publish", json!({"channel": "open:news", "data": {"n": 2}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        bystander.expect("publication", T).await["data"],
        json!({"n": 2})
    );
    let r = cmd(
        &mut s,
        json!({"op": "rpc", "method": "add", "data": {"a": 1, "b": 1}}),
    )
    .await;
    assert_eq!(r["data"], json!({"sum": 2}));
    let m = metrics(server.addr).await;
    let errors = |kind: &str| {
        m.get(&format!(
            "rotor_proxy_errors_total{{name=\"default\",type=\"{kind}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert!(errors("rpc") >= 1.0 && errors("publish") >= 1.0 && errors("connect") >= 1.0);
    for mut script in [bystander, s, late] {
        script.send(&json!({"op": "quit"}).to_string()).await;
        script.finish(T).await;
    }
}

#[tokio::test]
async fn invalidate_user_tokens_cuts_off_a_proxied_user() {
    if !sdks_available("invalidate_user_tokens_cuts_off") {
        return;
    }
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let mut s = js(&server, "session=mallory");
    connected(&mut s).await;
    // Kept out for an hour, whatever the backend says.
    let (status, body) = server
        .api(
            "invalidate_user_tokens",
            json!({"user": "mallory", "issued_before": now() + 3600, "expire_at": now() + 3600,
                   "reason": "leaked session cookie"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = s.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "{d}");
    let mut again = js(&server, "session=mallory");
    again.expect("ready", T).await;
    again.send(&json!({"op": "connect"}).to_string()).await;
    let d = again.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "refused after the backend said yes: {d}");
    assert_eq!(backend.calls("connect").len(), 2);
    // Other users are not touched.
    let mut other = js(&server, "session=alice");
    connected(&mut other).await;
    for mut script in [s, again, other] {
        script.send(&json!({"op": "quit"}).to_string()).await;
        script.finish(T).await;
    }
}

/// The example in docs/proxy.md, as documented: docs/examples/proxy_backend.py (Python's
/// standard library) and docs/examples/proxy.toml, with centrifuge-js.
#[tokio::test]
async fn the_documented_example_backend_works_as_the_docs_say() {
    if !sdks_available("the_documented_example_backend") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let port = free_port();
    let mut backend = tokio::process::Command::new("python3")
        .arg(root.join("docs/examples/proxy_backend.py"))
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example backend");
    let mut out = tokio::io::BufReader::new(backend.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        T,
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("the backend starts")
    .unwrap();
    assert!(line.contains("listening"), "{line}");
    let text = std::fs::read_to_string(root.join("docs/examples/proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{port}"));
    let dir = std::env::temp_dir().join(format!("rotor-proxy-example-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let config = rotor_server::Config::load(
        Some(&path),
        std::iter::empty(),
        &["http_server.port=0".to_string()],
    )
    .expect("the documented config loads");
    let server = TestServer::start(config).await;

    let mut alice = js(&server, "session=alice-secret");
    let c = connected(&mut alice).await;
    assert_eq!(c["data"], json!({"greeting": "hello alice"}), "{c}");
    let personal = alice.expect("server_subscribed", T).await;
    assert_eq!(personal["channel"], "personal:#alice");
    alice
        .send(&json!({"op": "subscribe", "channel": "chat:lobby"}).to_string())
        .await;
    alice.expect("subscribed", T).await;
    cmd(
        &mut alice,
        json!({"op": "publish", "channel": "chat:lobby", "data": {"text": " hi all "}}),
    )
    .await;
    let p = alice.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "hi all", "by": "alice"}), "{p}");
    assert_eq!(p["info"]["connInfo"], json!({"name": "Alice"}), "{p}");
    let r = cmd(
        &mut alice,
        json!({"op": "rpc", "method": "whoami", "data": {}}),
    )
    .await;
    assert_eq!(r["data"], json!({"user": "alice"}));
    alice
        .send(&json!({"op": "subscribe", "channel": "admin:ops"}).to_string())
        .await;
    alice.expect("subscribed", T).await;

    let mut bob = js(&server, "session=bob-secret");
    connected(&mut bob).await;
    bob.send(&json!({"op": "subscribe", "channel": "admin:ops"}).to_string())
        .await;
    let refused = bob.expect("unsubscribed", T).await;
    assert_eq!(refused["code"], 1403, "{refused}");

    let mut stranger = js(&server, "session=guessed");
    stranger.expect("ready", T).await;
    stranger.send(&json!({"op": "connect"}).to_string()).await;
    assert_eq!(stranger.expect("disconnected", T).await["code"], 4501);
    for mut s in [alice, bob, stranger] {
        s.send(&json!({"op": "quit"}).to_string()).await;
        s.finish(T).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_sub_refresh_proxy_extends_a_subscription_then_the_sdk_resubscribes() {
    if !sdks_available("the_sub_refresh_proxy_extends") {
        return;
    }
    let backend = Backend::start().await;
    let mut c = config(&backend);
    c.channel.proxy.sub_refresh = ProxyConfig {
        endpoint: backend.url("sub_refresh"),
        timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let px = c
        .channel
        .namespaces
        .iter_mut()
        .find(|n| n.name == "px")
        .unwrap();
    px.sub_refresh_proxy_enabled = true;
    let server = TestServer::start(c).await;
    let mut s = js(&server, "session=gina");
    connected(&mut s).await;
    let started = Instant::now();
    s.send(&json!({"op": "subscribe", "channel": "px:expiring"}).to_string())
        .await;
    s.expect("subscribed", T).await;
    // Extended once (at ~2 s), then expired (at ~4 s): unsubscribed with 2501, and the SDK
    // subscribes again (the backend is asked to subscribe again).
    let again = s
        .expect_where(
            "subscribing",
            |v| v["code"] == 2501,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(again["channel"], "px:expiring");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    s.expect("subscribed", T).await;
    let calls = backend.calls("sub_refresh");
    assert!(calls.len() >= 2, "{calls:?}");
    assert_eq!(calls[0].body["channel"], "px:expiring");
    assert_eq!(calls[0].body["user"], "gina");
    assert_eq!(backend.calls("subscribe").len(), 2);
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
}

#[tokio::test]
async fn unidirectional_clients_connect_by_cookie_and_refusals_are_disconnects() {
    let backend = Backend::start().await;
    let server = TestServer::start(config(&backend)).await;
    let request = |cookie: &str| {
        format!(
            "POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nCookie: {cookie}\r\n\r\n{{}}"
        )
    };
    let mut s = HttpStream::open(server.addr, &request("session=henry")).await;
    assert_eq!(s.status, 200);
    let connect = s.push().await.unwrap();
    assert_eq!(
        connect["connect"]["data"],
        json!({"welcome": "henry"}),
        "{connect}"
    );
    assert_eq!(
        backend.calls("connect")[0].body["transport"],
        "uni_http_stream"
    );

    let mut banned = HttpStream::open(server.addr, &request("session=banned")).await;
    let d = banned.push().await.unwrap();
    assert_eq!(d["disconnect"]["code"], 4501, "{d}");
    assert!(banned.line().await.is_none(), "the stream ends");

    // A backend that cannot be asked: 3004 (a unidirectional connect has no reply to carry
    // error 100).
    backend.set(DOWN);
    let mut down = HttpStream::open(server.addr, &request("session=henry")).await;
    let d = down.push().await.unwrap();
    assert_eq!(d["disconnect"]["code"], 3004, "{d}");
    server.shutdown().await;
}

#[tokio::test]
async fn protobuf_clients_send_bytes_through_a_binary_encoding_proxy() {
    if !sdks_available("protobuf_clients_send_bytes") {
        return;
    }
    let backend = Backend::start().await;
    let mut c = config(&backend);
    c.rpc.proxy.binary_encoding = true;
    let server = TestServer::start(c).await;
    let mut s = Script::node(
        "client.js",
        &[
            ("BASE", server.http_url()),
            ("COOKIE", "session=ivan".into()),
            ("PROTOBUF", "1".into()),
        ],
    );
    connected(&mut s).await;
    // Bytes that are not JSON (not even UTF-8).
    let r = cmd(
        &mut s,
        json!({"op": "rpc", "method": "echo", "b64": "AP/+AQ=="}),
    )
    .await;
    assert_eq!(r["data_b64"], "AP/+AQ==", "{r}");
    let call = &backend.calls("rpc")[0];
    assert_eq!(call.body["encoding"], "binary");
    assert_eq!(call.body["protocol"], "protobuf");
    assert_eq!(call.body["b64data"], "AP/+AQ==");
    assert!(call.body.get("data").is_none(), "{:?}", call.body);
    s.send(&json!({"op": "quit"}).to_string()).await;
    s.finish(T).await;
}

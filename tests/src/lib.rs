//! Harness for rotor's end-to-end tests: starts the real server on `127.0.0.1:0`, makes
//! tokens, speaks raw HTTP and WebSocket, and runs the official SDKs (centrifuge-js under
//! Node, centrifuge-python and cent under Python) as child processes.
//!
//! SDK tests need `tests/sdk/install.sh` to have run. Locally they skip with a loud message
//! when the SDKs are missing; under `CI=true` they fail instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rotor_core::config::{ChannelOptions, NamespaceConfig};
pub use rotor_core::conformance::{in_ci, skip};
use rotor_server::{Config, RunningServer, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub const SECRET: &str = "e2e-secret";
pub const API_KEY: &str = "e2e-api-key";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A configuration for tests: HMAC secret, API key, every transport on, and namespaces:
/// - `chat`: presence, join/leave, history (100, 5m), forced recovery, subscriber permissions;
/// - `open`: anyone connected may subscribe and publish, no history;
/// - `locked`: nothing allowed without a token.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.http_server.address = "127.0.0.1".into();
    c.http_server.port = 0;
    c.client.token.hmac_secret_key = SECRET.into();
    c.http_api.key = API_KEY.into();
    c.shutdown.timeout = Duration::from_secs(5);
    c.http_stream.enabled = true;
    c.sse.enabled = true;
    c.uni_websocket.enabled = true;
    c.uni_sse.enabled = true;
    c.uni_sse.token_cookie = "rotor_token".into();
    c.uni_http_stream.enabled = true;
    c.channel.without_namespace = ChannelOptions {
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        ..ChannelOptions::default()
    };
    c.channel.namespaces = vec![
        NamespaceConfig {
            name: "chat".into(),
            presence: true,
            join_leave: true,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            force_recovery: true,
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            ..NamespaceConfig::default()
        },
        NamespaceConfig {
            name: "open".into(),
            allow_subscribe_for_client: true,
            allow_publish_for_client: true,
            ..NamespaceConfig::default()
        },
        NamespaceConfig {
            name: "locked".into(),
            ..NamespaceConfig::default()
        },
    ];
    c
}

/// The real server, running in this process on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    running: Option<RunningServer>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_observed(config, std::sync::Arc::new(rotor_core::events::NoObserver))
            .await
    }

    /// Starts with an observer of core events.
    pub async fn start_observed(
        config: Config,
        observer: std::sync::Arc<dyn rotor_core::events::Observer>,
    ) -> TestServer {
        let running = Server::with_observer(config, observer)
            .await
            .expect("valid config")
            .start()
            .await
            .expect("server starts");
        TestServer {
            addr: running.addr(),
            running: Some(running),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn node(&self) -> &rotor_core::Node {
        self.running.as_ref().expect("running").node()
    }

    /// Calls the server API with the right key; returns the HTTP status and the JSON body.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        http_post(
            self.addr,
            &format!("/api/{method}"),
            &[("X-API-Key", API_KEY)],
            &body.to_string(),
        )
        .await
    }

    /// Graceful shutdown (clients get 3001).
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// An HS256 token signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    rotor_auth::sign_hmac(&claims, SECRET).unwrap()
}

/// A connection token for `user` valid for an hour.
pub fn user_token(user: &str) -> String {
    token(json!({"sub": user, "exp": now() + 3600}))
}

/// Raw HTTP/1.1 POST; returns status and body parsed as JSON (Null when not JSON).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut extra = String::new();
    for (k, v) in headers {
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let (status, body) = http_raw(addr, &req).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Sends a raw request and reads the whole response (the request must ask to close).
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    parse_response(&buf)
}

/// The status and body of a raw HTTP/1.1 response (status 0 when there is none).
pub fn parse_response(bytes: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(bytes);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A TCP port free right now on 127.0.0.1 (for a process that must come back on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Calls the server API of the node at `addr`, asserts HTTP 200 and returns the body.
pub async fn api_at(addr: SocketAddr, method: &str, body: Value) -> Value {
    let (status, v) = http_post(
        addr,
        &format!("/api/{method}"),
        &[("X-API-Key", API_KEY)],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Whether a Redis answers at `addr`. A missing Redis skips the test loudly, except under
/// `CI=true`, where it fails it.
pub async fn redis_available(test: &str, addr: &str) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("Redis at {addr}"), &e);
            false
        }
    }
}

/// Where the SDK packages live.
pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Whether the official SDKs are installed. Missing SDKs skip the test loudly, except under
/// `CI=true`, where they fail it.
pub fn sdks_available(test: &str) -> bool {
    let dir = sdk_dir();
    let ok = dir.join("node_modules/centrifuge/package.json").exists()
        && dir.join(".venv/bin/python").exists();
    if !ok {
        skip(
            test,
            "official SDKs",
            &format!(
                "not installed in {}; run tests/sdk/install.sh (or tests/run)",
                dir.display()
            ),
        );
    }
    ok
}

/// Whether a headless Chromium can be driven: Debian's `chromium` (or `$CHROMIUM`) and
/// playwright-core (installed by tests/sdk/install.sh). Missing, the test skips loudly,
/// except under `CI=true`, where it fails.
pub fn chromium_available(test: &str) -> bool {
    browser_available(test, "CHROMIUM", "/usr/bin/chromium", "playwright-core")
}

/// Whether a headless Firefox can be driven: Debian's `firefox-esr` (or `$FIREFOX`) and
/// puppeteer-core (WebDriver BiDi), both installed by tests/sdk/install.sh.
pub fn firefox_available(test: &str) -> bool {
    browser_available(test, "FIREFOX", "/usr/bin/firefox-esr", "puppeteer-core")
}

fn browser_available(test: &str, var: &str, default: &str, driver: &str) -> bool {
    if !sdks_available(test) {
        return false;
    }
    let browser = std::env::var(var).unwrap_or_else(|_| default.into());
    let driver = sdk_dir().join(format!("node_modules/{driver}/package.json"));
    let missing = [
        (!std::path::Path::new(&browser).exists()).then(|| browser.clone()),
        (!driver.exists()).then(|| driver.display().to_string()),
    ];
    let missing: Vec<String> = missing.into_iter().flatten().collect();
    if !missing.is_empty() {
        skip(
            test,
            "a headless browser",
            &format!(
                "missing {}; run tests/sdk/install.sh (or tests/run)",
                missing.join(", ")
            ),
        );
        return false;
    }
    true
}

/// A running SDK script: JSON lines on stdout are events; lines on stdin are go-signals.
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Every event so far, in order.
    pub seen: Vec<Value>,
    /// Events read but not yet taken by `expect`.
    pending: std::collections::VecDeque<Value>,
    name: String,
}

impl Script {
    /// Starts `node <script>` from `tests/sdk` with `env`.
    pub fn node(script: &str, env: &[(&str, String)]) -> Script {
        Script::spawn("node", script, env)
    }

    /// Starts the virtualenv's `python <script>` from `tests/sdk` with `env`.
    pub fn python(script: &str, env: &[(&str, String)]) -> Script {
        let py = sdk_dir().join(".venv/bin/python");
        Script::spawn(py.to_str().unwrap(), script, env)
    }

    fn spawn(program: &str, script: &str, env: &[(&str, String)]) -> Script {
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .current_dir(sdk_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {script}: {e}"));
        let stdout = child.stdout.take().unwrap();
        Script {
            stdin: child.stdin.take(),
            lines: BufReader::new(stdout).lines(),
            child,
            seen: Vec::new(),
            pending: Default::default(),
            name: script.to_string(),
        }
    }

    /// Takes the oldest not-yet-taken event whose `event` field is `name`, waiting for it if
    /// needed (each event is taken at most once, in order). Panics after `timeout`, listing
    /// what was seen.
    pub async fn expect(&mut self, name: &str, timeout: Duration) -> Value {
        self.expect_where(name, |_| true, timeout).await
    }

    /// The oldest not-yet-taken event named any of `names`.
    pub async fn expect_any(&mut self, names: &[&str], timeout: Duration) -> Value {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.expect_where(
            "",
            move |v| names.iter().any(|n| v["event"] == n.as_str()),
            timeout,
        )
        .await
    }

    /// Like [`Script::expect`], for the oldest `name` event that also satisfies `pred`
    /// (an empty `name` matches any event).
    pub async fn expect_where(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let named = |v: &Value| name.is_empty() || v["event"] == name;
        if let Some(i) = self.pending.iter().position(|v| named(v) && pred(v)) {
            return self.pending.remove(i).expect("found above");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => panic!(
                    "{}: exited before {name:?}; seen: {:#?}",
                    self.name, self.seen
                ),
                Ok(Err(e)) => panic!("{}: read error {e}", self.name),
                Err(_) => panic!(
                    "{}: no {name:?} within {timeout:?}; seen: {:#?}",
                    self.name, self.seen
                ),
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("[{}] {line}", self.name);
                continue;
            };
            self.seen.push(v.clone());
            if named(&v) && pred(&v) {
                return v;
            }
            if v["event"] == "fail" {
                panic!(
                    "{}: script failed: {}; seen: {:#?}",
                    self.name, v["error"], self.seen
                );
            }
            self.pending.push_back(v);
        }
    }

    /// Sends a go-signal line to the script.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the script to exit successfully.
    pub async fn finish(mut self, timeout: Duration) -> Vec<Value> {
        drop(self.stdin.take());
        while let Ok(Ok(Some(line))) = tokio::time::timeout(timeout, self.lines.next_line()).await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["event"] == "fail" {
                    panic!(
                        "{}: script failed: {}; seen: {:#?}",
                        self.name, v["error"], self.seen
                    );
                }
                self.seen.push(v);
            } else {
                eprintln!("[{}] {line}", self.name);
            }
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("script exits")
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status}; seen: {:#?}",
            self.name,
            self.seen
        );
        self.seen
    }
}

/// Runs `cent` (the official server-API client) for one call and returns its result as JSON.
pub async fn cent(server: &TestServer, method: &str, request: Value) -> Value {
    let mut s = Script::python(
        "cent_call.py",
        &[
            ("API_URL", format!("{}/api", server.http_url())),
            ("API_KEY", API_KEY.into()),
            ("METHOD", method.into()),
            ("REQUEST", request.to_string()),
        ],
    );
    let v = s.expect("result", Duration::from_secs(20)).await;
    s.finish(Duration::from_secs(10)).await;
    v["result"].clone()
}

/// A raw WebSocket client speaking JSON text frames, for tests below the SDKs.
pub struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What a raw client received.
#[derive(Debug)]
pub enum Received {
    /// The messages of one text frame (pings `{}` included).
    Messages(Vec<Value>),
    /// A close frame.
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

impl RawWs {
    pub async fn connect(url: &str) -> RawWs {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        RawWs { ws }
    }

    /// Connects and sends a connect command with `token`; returns the connect reply.
    pub async fn connected(url: &str, token: &str) -> (RawWs, Value) {
        let mut ws = RawWs::connect(url).await;
        ws.send(&json!({"id": 1, "connect": {"token": token}}).to_string())
            .await;
        let reply = ws.reply().await;
        assert!(
            reply["connect"]["client"].is_string(),
            "connect failed: {reply}"
        );
        (ws, reply)
    }

    pub async fn send(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                bytes.into(),
            ))
            .await
            .expect("send");
    }

    /// The next text frame as it came (pings included); panics on anything else.
    pub async fn text_frame(&mut self, timeout: Duration) -> String {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(_) => panic!("nothing received within {timeout:?}"),
            }
        }
    }

    /// The next binary frame (a Protobuf connection's), or the close code and reason.
    pub async fn binary_frame(&mut self, timeout: Duration) -> Result<Vec<u8>, (u16, String)> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => return Ok(b.to_vec()),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Err((f.code.into(), f.reason.to_string()))
                }
                Ok(Some(Ok(Message::Close(None)))) => return Err((1005, String::new())),
                Ok(Some(Ok(Message::Text(t)))) => {
                    panic!("a Protobuf connection never gets text frames: {t:?}")
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return Err((1006, String::new())),
                Err(_) => panic!("nothing received within {timeout:?}"),
            }
        }
    }

    pub async fn recv(&mut self, timeout: Duration) -> Received {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => return Received::Ended,
                Err(_) => panic!("nothing received within {timeout:?}"),
            };
            match msg {
                Message::Text(t) => {
                    assert!(
                        !t.ends_with('\n') && !t.contains("\n\n"),
                        "frames never hold blank lines: {t:?}"
                    );
                    return Received::Messages(
                        t.split('\n')
                            .map(|l| serde_json::from_str(l).expect("JSON message"))
                            .collect(),
                    );
                }
                Message::Close(Some(f)) => {
                    return Received::Close(f.code.into(), f.reason.to_string())
                }
                Message::Close(None) => return Received::Close(1005, String::new()),
                Message::Binary(_) => {
                    panic!("the server must never send binary frames to JSON clients")
                }
                _ => continue,
            }
        }
    }

    /// The next non-ping message.
    pub async fn message(&mut self) -> Value {
        loop {
            match self.recv(Duration::from_secs(10)).await {
                Received::Messages(ms) => {
                    if let Some(m) = ms
                        .into_iter()
                        .find(|m| m.as_object().is_some_and(|o| !o.is_empty()))
                    {
                        return m;
                    }
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next reply (a message with an id).
    pub async fn reply(&mut self) -> Value {
        loop {
            let m = self.message().await;
            if m.get("id").is_some() {
                return m;
            }
        }
    }

    /// Waits for the close frame, skipping messages; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.recv(Duration::from_secs(10)).await {
                Received::Messages(_) => continue,
                Received::Close(code, reason) => return (code, reason),
                Received::Ended => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// A streamed HTTP response read incrementally (chunked transfer encoding), for the
/// HTTP-streaming and SSE transports.
pub struct HttpStream {
    stream: tokio::net::TcpStream,
    pub status: u16,
    pub headers: String,
    raw: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
}

impl HttpStream {
    /// Sends `request` (a full HTTP/1.1 request) and reads the response head.
    pub async fn open(addr: SocketAddr, request: &str) -> HttpStream {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        HttpStream::open_on(stream, request).await
    }

    /// [`HttpStream::open`] on a connection that is open already (and may have served
    /// other requests).
    pub async fn open_on(mut stream: tokio::net::TcpStream, request: &str) -> HttpStream {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut s = HttpStream {
            stream,
            status: 0,
            headers: String::new(),
            raw: Vec::new(),
            body: Vec::new(),
            ended: false,
        };
        loop {
            if let Some(pos) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&s.raw[..pos]).to_string();
                s.raw.drain(..pos + 4);
                s.status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                s.headers = head.to_ascii_lowercase();
                break;
            }
            assert!(
                s.fill(Duration::from_secs(10)).await,
                "connection closed before the response head"
            );
        }
        if !s.headers.contains("transfer-encoding: chunked") {
            // Whole body (error responses): read to the end.
            while s.fill(Duration::from_secs(10)).await {}
            s.body = std::mem::take(&mut s.raw);
            s.ended = true;
        }
        s
    }

    async fn fill(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(timeout, self.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(_) => panic!("stream idle for {timeout:?}"),
        }
    }

    /// Moves complete chunks from `raw` to `body`; returns false at the last chunk.
    fn dechunk(&mut self) -> bool {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            self.body
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// Whether the body ended with its last chunk (`0\r\n\r\n`), rather than the
    /// connection just closing.
    pub fn ended_with_last_chunk(&self) -> bool {
        self.ended
    }

    /// The next line of the body (HTTP streaming), or `None` when the body ended.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if !self.ended {
                self.dechunk();
            }
            if let Some(pos) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&line[..line.len() - 1]).to_string());
            }
            if self.ended || !self.fill(Duration::from_secs(10)).await {
                return None;
            }
        }
    }

    /// The next JSON message: a line for HTTP streaming, a `data:` event for SSE.
    pub async fn message(&mut self) -> Option<Value> {
        loop {
            let line = self.line().await?;
            let text = line.strip_prefix("data: ").unwrap_or(&line).trim();
            if text.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}")),
            );
        }
    }

    /// The next message that is not a ping (`{}`).
    pub async fn push(&mut self) -> Option<Value> {
        loop {
            let m = self.message().await?;
            if m.as_object().is_some_and(|o| !o.is_empty()) {
                return Some(m);
            }
        }
    }
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl HttpStream {
    /// The next reply or push, skipping pings.
    pub async fn push_or_reply(&mut self) -> Value {
        self.push().await.expect("stream ended")
    }
}

/// A fresh Postgres schema for one test, dropped by [`PgSchema::drop_now`].
pub struct PgSchema {
    pub dsn: String,
    pub schema: String,
    pool: rotor_store_postgres::PgPool,
}

impl PgSchema {
    /// Creates and migrates a schema, or returns `None` (skip loudly) when Postgres is not
    /// reachable; under `CI=true` a missing Postgres fails the test instead.
    pub async fn create(test: &str) -> Option<PgSchema> {
        let dsn = std::env::var("TEST_PG_DSN")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("e2e_{test}_{}", std::process::id());
        let opts = rotor_store_postgres::PgOptions {
            dsn: dsn.clone(),
            schema: schema.clone(),
            pool_size: 2,
            acquire_timeout: Duration::from_secs(5),
            batch_max_size: 16,
        };
        match rotor_store_postgres::connect(&opts).await {
            Ok(pool) => {
                // A schema left over from an earlier, interrupted run starts afresh.
                let _ = rotor_store_postgres::drop_schema(&pool, &schema).await;
                pool.close().await;
                let pool = rotor_store_postgres::connect(&opts).await.unwrap();
                rotor_store_postgres::migrate(&pool).await.unwrap();
                Some(PgSchema { dsn, schema, pool })
            }
            Err(e) => {
                skip(test, &format!("Postgres at {dsn}"), &e);
                None
            }
        }
    }

    /// Points a config at this schema.
    pub fn configure(&self, config: &mut Config) {
        config.storage.kind = rotor_server::config::StorageKind::Postgres;
        config.storage.postgres.dsn = self.dsn.clone();
        config.storage.postgres.schema = self.schema.clone();
    }

    pub async fn drop_now(self) {
        let _ = rotor_store_postgres::drop_schema(&self.pool, &self.schema).await;
    }
}

/// The server's `/metrics` as series (name with labels) -> value; asserts it answers 200.
pub async fn metrics(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Starts the `rotor` binary (`bin`, from `CARGO_BIN_EXE_…`) with a config file and waits
/// until it prints the address it listens on. Killed when the returned child is dropped.
pub async fn spawn_rotor(bin: &str, config: &std::path::Path) -> (Child, SocketAddr) {
    spawn_rotor_with(bin, config, Some("warn"), Stdio::inherit()).await
}

/// [`spawn_rotor`] with `RUST_LOG` set to `rust_log` (`None`: unset, so the config's level
/// applies) and stderr sent to `stderr` (a file, to read the log afterwards).
pub async fn spawn_rotor_with(
    bin: &str,
    config: &std::path::Path,
    rust_log: Option<&str>,
    stderr: Stdio,
) -> (Child, SocketAddr) {
    let mut command = Command::new(bin);
    command
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    match rust_log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("rotor starts in time")
        .expect("stdout readable")
        .expect("rotor printed its address");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (child, addr)
}

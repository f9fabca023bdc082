//! The admin web UI and the `connections` API: a real headless Chromium signs in, sees a
//! live centrifuge-js client with its transport and expiry, revokes its token from the page
//! (the client gets 3500, the audit row names the reason and the admin session), watches
//! the refresh chart move, and publishes from the channels page; screenshots of every page
//! land in docs/admin/. Then the fences without a browser: rate-limited sign-in, CSRF,
//! cross-site requests, expiring sessions, the internal port, no API key in anything served.

use std::net::SocketAddr;
use std::time::Duration;

use rotor_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(15);
const PASSWORD: &str = "e2e-admin-password";

fn admin_config() -> rotor_server::Config {
    let mut c = test_config();
    c.admin.enabled = true;
    c.admin.password = PASSWORD.into();
    c.admin.secret = "e2e-admin-secret".into();
    c
}

fn jti_token(user: &str, jti: &str, exp_in: u64) -> String {
    token(json!({"sub": user, "jti": jti, "iat": now(), "exp": now() + exp_in}))
}

/// A raw HTTP/1.1 request: status, head and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut extra = String::new();
    for (k, v) in headers {
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Signs in; the cookie header to send back and the CSRF token.
async fn sign_in(addr: SocketAddr) -> (String, String) {
    let (status, head, body) = request(
        addr,
        "POST",
        "/admin/auth",
        &[],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let set = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie: "))
        .expect("a session cookie");
    let cookie = set["set-cookie: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    (cookie, csrf)
}

/// Sends one command to the browser driver and returns its result (failing on an error).
async fn step(ui: &mut Script, cmd: Value) -> Value {
    let op = cmd["op"].as_str().unwrap().to_string();
    ui.send(&cmd.to_string()).await;
    let v = ui
        .expect_any(&["result", "op_error"], Duration::from_secs(40))
        .await;
    assert_eq!(v["event"], "result", "{op} failed: {v}");
    assert_eq!(v["op"], op.as_str());
    v["result"].clone()
}

#[tokio::test]
async fn admin_ui_in_chromium_lists_a_live_client_revokes_it_and_charts_refreshes() {
    let test = "admin_ui_in_chromium";
    if !chromium_available(test) {
        return;
    }
    let server = TestServer::start(admin_config()).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin");
    std::fs::create_dir_all(&shots).unwrap();
    let mut ui = Script::node(
        "admin_ui.js",
        &[
            ("ADMIN_URL", format!("{}/", server.http_url())),
            ("SHOTS", shots.display().to_string()),
        ],
    );
    ui.expect("ready", T).await;

    // Sign-in: a wrong password shows an error and nothing of the admin's data.
    let opened = step(&mut ui, json!({"op": "open"})).await;
    assert_eq!(opened, json!({"signin": true, "app": false}));
    let _ = step(&mut ui, json!({"op": "screenshot", "file": "signin.png"})).await;
    let refused = step(&mut ui, json!({"op": "sign_in", "password": "guess"})).await;
    assert_eq!(refused["app"], false, "{refused}");
    assert_eq!(refused["error"], "Wrong password.", "{refused}");
    assert_eq!(refused["leaked"], 0);
    let signed = step(&mut ui, json!({"op": "sign_in", "password": PASSWORD})).await;
    assert_eq!(signed["app"], true, "{signed}");

    // Nothing refreshed yet.
    let before = step(&mut ui, json!({"op": "chart", "name": "refreshes"})).await;
    assert_eq!(before["total"], 0, "{before}");

    // A centrifuge-js client whose first token expires in 3 s: the SDK asks for a new one
    // (jti "admin-e2e-2", an hour) and refreshes over its live connection.
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", server.http_url()),
            ("TOKEN", jti_token("alice", "admin-e2e-1", 3)),
            ("GET_TOKEN", "1".into()),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "subscribe", "channel": "chat:lobby"}).to_string())
        .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("subscribed", T).await;
    js.expect("get_token", T).await;
    let fresh_exp = now() + 3600;
    let fresh =
        token(json!({"sub": "alice", "jti": "admin-e2e-2", "iat": now(), "exp": fresh_exp}));
    js.send(&json!({"op": "token", "token": fresh}).to_string())
        .await;

    // The refresh chart moves (the page polls every 2 s).
    let after = step(
        &mut ui,
        json!({"op": "chart", "name": "refreshes", "above": 0, "timeout": 20000}),
    )
    .await;
    assert!(after["total"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["bars"].as_u64().unwrap() >= 1, "{after}");
    assert_eq!(
        after["expiring"], 1,
        "alice expires within the hour: {after}"
    );
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "lifecycle", "file": "lifecycle.png"}),
    )
    .await;

    // The overview counts her connection by transport.
    let overview = step(&mut ui, json!({"op": "overview", "connections": 1})).await;
    assert_eq!(overview["connections"], 1, "{overview}");
    assert_eq!(overview["transports"], json!(["websocket"]), "{overview}");
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "overview", "file": "overview.png"}),
    )
    .await;

    // Listed on the connections page with transport, protocol, the refreshed token's jti
    // and expiry, counting down.
    let row = step(&mut ui, json!({"op": "row", "user": "alice"})).await;
    assert_eq!(row["transport"], "websocket", "{row}");
    assert_eq!(row["protocol"], "json", "{row}");
    assert_eq!(row["jti"], "admin-e2e-2", "{row}");
    assert_eq!(row["subscriptions"], json!(["chat:lobby"]), "{row}");
    let expire_at = row["expire_at"].as_u64().unwrap();
    assert!(expire_at.abs_diff(fresh_exp) <= 1, "{row}");
    // "in 59m 58s (22:41:58)": counting down (minutes vary with how slow the machine is).
    assert!(row["expires"].as_str().unwrap().starts_with("in "), "{row}");
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "connections", "file": "connections.png"}),
    )
    .await;

    // Publish from the channels page: the client gets it.
    let published = step(
        &mut ui,
        json!({"op": "publish", "channel": "chat:lobby", "data": {"text": "from the admin"}}),
    )
    .await;
    assert!(
        published["flash"]
            .as_str()
            .unwrap()
            .starts_with("Published to chat:lobby"),
        "{published}"
    );
    let p = js.expect("publication", T).await;
    assert_eq!(p["data"], json!({"text": "from the admin"}), "{p}");
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "channels", "file": "channels.png"}),
    )
    .await;

    // A phone-width screen: the pages lay out in one column (tables become cards).
    let phone = step(&mut ui, json!({"op": "open", "width": 390, "height": 844})).await;
    assert_eq!(
        phone["signin"], true,
        "a new browser context signs in again"
    );
    let _ = step(&mut ui, json!({"op": "sign_in", "password": PASSWORD})).await;
    let on_phone = step(&mut ui, json!({"op": "row", "user": "alice"})).await;
    assert_eq!(on_phone["jti"], "admin-e2e-2", "{on_phone}");
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "connections", "file": "phone-connections.png"}),
    )
    .await;
    let _ = step(&mut ui, json!({"op": "open"})).await;
    let _ = step(&mut ui, json!({"op": "sign_in", "password": PASSWORD})).await;

    // Revoke from the row: the row goes about a second after the click at most (the page
    // reloads the list once the revocation is done; 2.5 s leaves room for a busy machine), the client is
    // closed with 3500, and the audit trail names the reason and the admin session.
    let revoked = step(
        &mut ui,
        json!({"op": "revoke", "client": row["client"], "reason": "leaked in a screenshot"}),
    )
    .await;
    assert!(
        revoked["gone_after_ms"].as_u64().unwrap() < 2500,
        "{revoked}"
    );
    let d = js.expect("disconnected", T).await;
    assert_eq!(d["code"], 3500, "{d}");
    let audit = step(&mut ui, json!({"op": "audit", "jti": "admin-e2e-2"})).await;
    assert_eq!(audit["rows"], 1, "search by jti: {audit}");
    assert_eq!(audit["reason"], "leaked in a screenshot", "{audit}");
    assert!(
        audit["actor"].as_str().unwrap().starts_with("admin:"),
        "{audit}"
    );
    assert_eq!(audit["kicked"], 1, "{audit}");
    let _ = step(
        &mut ui,
        json!({"op": "screenshot", "page": "revocations", "file": "revocations.png"}),
    )
    .await;
    // The same entry through the server API, as `rotor revocations` reads it.
    let (_, listed) = server
        .api("revoked_tokens", json!({"jti": "admin-e2e-2"}))
        .await;
    assert_eq!(
        listed["result"]["tokens"][0]["actor"], audit["actor"],
        "{listed}"
    );

    ui.send(&json!({"op": "quit"}).to_string()).await;
    ui.finish(T).await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    server.shutdown().await;
}

#[tokio::test]
async fn admin_ui_in_firefox_at_desktop_and_phone_width() {
    let test = "admin_ui_in_firefox";
    if !firefox_available(test) {
        return;
    }
    let server = TestServer::start(admin_config()).await;
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", server.http_url()),
            ("TOKEN", jti_token("fox", "admin-ff-1", 600)),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("connected", T).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin");
    std::fs::create_dir_all(&shots).unwrap();
    let mut ff = Script::node(
        "admin_firefox.js",
        &[
            ("ADMIN_URL", format!("{}/", server.http_url())),
            ("PASSWORD", PASSWORD.to_string()),
            ("USER", "fox".to_string()),
            ("SHOTS", shots.display().to_string()),
        ],
    );
    let ready = ff.expect("ready", Duration::from_secs(60)).await;
    assert!(
        ready["version"].as_str().unwrap().starts_with("firefox"),
        "{ready}"
    );
    for (width, cards) in [(1280, false), (390, true)] {
        let refused = ff.expect("refused", T).await;
        assert_eq!(refused["width"], width);
        assert_eq!(refused["error"], "Wrong password.", "{refused}");
        assert_eq!(refused["app"], false, "{refused}");
        let row = ff.expect("row", T).await;
        assert_eq!(row["transport"], "websocket", "{row}");
        assert_eq!(row["jti"], "admin-ff-1", "{row}");
        assert!(row["expires"].as_str().unwrap().starts_with("in "), "{row}");
        assert_eq!(row["header_shown"], !cards, "cards at phone width: {row}");
        assert_eq!(
            row["overflow"], false,
            "nothing wider than the screen: {row}"
        );
        let chart = ff.expect("chart", T).await;
        assert_eq!(chart["total"], 0, "{chart}");
    }
    let revoked = ff.expect("revoked", T).await;
    assert!(
        revoked["gone_after_ms"].as_u64().unwrap() < 2500,
        "{revoked}"
    );
    assert_eq!(js.expect("disconnected", T).await["code"], 3500);
    ff.expect("done", T).await;
    ff.finish(T).await;
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    let (_, audit) = server
        .api("revoked_tokens", json!({"jti": "admin-ff-1"}))
        .await;
    assert_eq!(
        audit["result"]["tokens"][0]["reason"], "revoked from firefox",
        "{audit}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn admin_sign_in_is_rate_limited_and_every_call_needs_session_and_csrf() {
    let mut cfg = admin_config();
    cfg.admin.session_ttl = Duration::from_secs(3);
    let server = TestServer::start(cfg).await;
    let addr = server.addr;

    // Nothing the browser is served holds the API key.
    for path in [
        "/",
        "/admin/static/app.js",
        "/admin/static/app.css",
        "/admin/session",
    ] {
        let (status, head, body) = request(addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains(API_KEY) && !head.contains(API_KEY), "{path}");
        assert!(
            head.to_lowercase().contains("x-frame-options: deny"),
            "{path}: {head}"
        );
    }
    let (_, _, session) = request(addr, "GET", "/admin/session", &[], "").await;
    assert_eq!(session, r#"{"signed_in":false}"#);

    // Without a session, nothing.
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &[], "{}").await;
    assert_eq!(status, 401);
    let (status, _, _) = request(addr, "GET", "/admin/lifecycle", &[], "").await;
    assert_eq!(status, 401);

    let (cookie, csrf) = sign_in(addr).await;
    let with = [("Cookie", cookie.as_str()), ("X-Rotor-CSRF", csrf.as_str())];
    let (status, _, body) = request(addr, "POST", "/admin/api/info", &with, "{}").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"nodes\""), "{body}");
    // The cookie alone is not enough (CSRF), nor from another site.
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &with[..1], "{}").await;
    assert_eq!(status, 401);
    let cross = [with[0], with[1], ("Origin", "https://evil.example")];
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &cross, "{}").await;
    assert_eq!(status, 403);
    let cross = [with[0], with[1], ("Sec-Fetch-Site", "cross-site")];
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &cross, "{}").await;
    assert_eq!(status, 403);
    // Behind a proxy that rewrites Host, the browser's own word counts.
    let proxied = [
        with[0],
        with[1],
        ("Origin", "https://admin.example"),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &proxied, "{}").await;
    assert_eq!(status, 200);
    // Signed out, the same cookie is refused (before it would expire).
    let (cookie2, csrf2) = sign_in(addr).await;
    let with2 = [
        ("Cookie", cookie2.as_str()),
        ("X-Rotor-CSRF", csrf2.as_str()),
    ];
    let (status, _, _) = request(addr, "POST", "/admin/logout", &with2, "").await;
    assert_eq!(status, 200);
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &with2, "{}").await;
    assert_eq!(status, 401, "signed out");
    // Bodies are read only for a signed-in caller, and only so big.
    let big = "x".repeat(5000);
    let (status, _, _) = request(addr, "POST", "/admin/auth", &[], &big).await;
    assert_eq!(status, 413);
    // The session expires (admin.session_ttl = 3 s here; whole seconds, so at most 3 s on).
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (status, _, _) = request(addr, "POST", "/admin/api/info", &with, "{}").await;
    assert_eq!(status, 401, "expired session");

    // Five wrong passwords, then even the right one waits.
    for _ in 0..5 {
        let (status, _, _) = request(
            addr,
            "POST",
            "/admin/auth",
            &[],
            &json!({"password": "guess"}).to_string(),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, head, _) = request(
        addr,
        "POST",
        "/admin/auth",
        &[],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_lowercase().contains("retry-after: "), "{head}");
    server.shutdown().await;
}

#[tokio::test]
async fn admin_is_on_the_internal_port_unless_external() {
    let mut cfg = admin_config();
    let internal = free_port();
    cfg.http_server.internal_port = internal;
    cfg.http_server.internal_address = "127.0.0.1".into();
    let server = TestServer::start(cfg.clone()).await;
    let internal_addr: SocketAddr = format!("127.0.0.1:{internal}").parse().unwrap();
    let (status, _, _) = request(server.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 404, "not on the main port");
    let (status, _, body) = request(internal_addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("rotor admin"));
    // Signing in works there too (the rate limit sees the socket's address).
    let (cookie, csrf) = sign_in(internal_addr).await;
    let with = [("Cookie", cookie.as_str()), ("X-Rotor-CSRF", csrf.as_str())];
    let (status, _, _) = request(internal_addr, "GET", "/admin/lifecycle", &with, "").await;
    assert_eq!(status, 200);
    server.shutdown().await;

    cfg.admin.external = true;
    cfg.admin.handler_prefix = "/ops".into();
    cfg.http_server.internal_port = free_port();
    let server = TestServer::start(cfg).await;
    let (status, head, _) = request(server.addr, "GET", "/ops", &[], "").await;
    assert_eq!(status, 301);
    assert!(head.contains("location: /ops/"), "{head}");
    let (status, _, body) = request(server.addr, "GET", "/ops/", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("admin/static/app.js"));
    let (status, _, _) = request(server.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 404, "only under the prefix");
    server.shutdown().await;
}

#[test]
fn admin_needs_a_password_and_secret_unless_insecure() {
    let err =
        rotor_server::Config::load_with_warnings(None, Vec::new(), &["admin.enabled=true".into()])
            .unwrap_err()
            .to_string();
    assert!(err.contains("admin.password and admin.secret"), "{err}");
    let (_, warnings) = rotor_server::Config::load_with_warnings(
        None,
        Vec::new(),
        &["admin.enabled=true".into(), "admin.insecure=true".into()],
    )
    .unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("admin.insecure")),
        "{warnings:?}"
    );
}

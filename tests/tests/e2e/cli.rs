//! The `rotor` binary as a process: gentoken output accepted by serve, config errors naming the
//! key, environment overrides, and SIGTERM closing clients with 3001.

use std::process::Stdio;
use std::time::Duration;

use rotor_tests::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");
const T: Duration = Duration::from_secs(15);

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rotor-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn gentoken_output_is_accepted_by_serve_and_sigterm_sends_3001() {
    let config = temp_config(
        "rotor.toml",
        "[client.token]\nhmac_secret_key = \"cli-secret\"\n[http_server]\naddress = \"127.0.0.1\"\nport = 0\n[channel.without_namespace]\nallow_subscribe_for_client = true\n",
    );
    let path = config.to_str().unwrap();
    let (ok, token, err) = run(
        &[
            "--config", path, "gentoken", "--user", "dave", "--ttl", "10m",
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let token = token.trim().to_string();
    let (ok, out, err) = run(&["--config", path, "checktoken", &token], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"dave\""), "{out}");

    let mut serve = Command::new(BIN)
        .args(["--config", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let (mut ws, reply) =
        RawWs::connected(&format!("ws://{addr}/connection/websocket"), &token).await;
    assert_eq!(reply["connect"]["expires"], true);
    let ttl = reply["connect"]["ttl"].as_u64().unwrap();
    assert!((590..=600).contains(&ttl), "gentoken --ttl 10m: {ttl}");
    ws.send(r#"{"id":2,"subscribe":{"channel":"news"}}"#).await;
    assert!(ws.reply().await["subscribe"].is_object());

    let pid = serve.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(ws.closed().await, (3001, "shutdown".to_string()));
    let status = tokio::time::timeout(Duration::from_secs(10), serve.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status}");
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let bad = temp_config("bad.json", r#"{"client": {"tokn": {}}}"#);
    let (ok, _, err) = run(&["--config", bad.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(!ok);
    assert!(err.contains("client") && err.contains("tokn"), "{err}");

    let bad = temp_config("bad.yaml", "client:\n  ping_interval: 5 parsecs\n");
    let (ok, _, err) = run(&["--config", bad.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(!ok);
    assert!(err.contains("client.ping_interval"), "{err}");

    // The CLI's own variables are not taken for configuration keys.
    let (ok, _, err) = run(&["checkconfig"], &[("ROTOR_API_KEY_FOR_CLI", "k")]).await;
    assert!(ok, "{err}");
    // A variable that names no key is a warning naming it, not a refusal (other programs'
    // variables share the prefix).
    let (ok, _, err) = run(&["checkconfig"], &[("ROTOR_CLIENT_NO_SUCH_KEY", "1")]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("ROTOR_CLIENT_NO_SUCH_KEY"),
        "{err}"
    );

    let good = temp_config("good.yaml", "http_api:\n  key: k\n");
    let (ok, out, err) = run(&["--config", good.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"));
}

#[tokio::test]
async fn environment_overrides_the_file_and_set_overrides_the_environment() {
    let config = temp_config(
        "env.json",
        r#"{"client": {"token": {"hmac_secret_key": "from-file"}}}"#,
    );
    let path = config.to_str().unwrap();
    let t = rotor_auth::sign_hmac(&json!({"sub": "e"}), "from-env").unwrap();
    let (ok, _, err) = run(
        &["--config", path, "checktoken", &t],
        &[("ROTOR_CLIENT_TOKEN_HMAC_SECRET_KEY", "from-env")],
    )
    .await;
    assert!(ok, "the environment wins over the file: {err}");
    let (ok, _, _) = run(&["--config", path, "checktoken", &t], &[]).await;
    assert!(!ok, "without the variable the file's secret is used");
    let t2 = rotor_auth::sign_hmac(&json!({"sub": "e"}), "from-flag").unwrap();
    let (ok, _, err) = run(
        &[
            "--config",
            path,
            "--set",
            "client.token.hmac_secret_key=from-flag",
            "checktoken",
            &t2,
        ],
        &[("ROTOR_CLIENT_TOKEN_HMAC_SECRET_KEY", "from-env")],
    )
    .await;
    assert!(ok, "--set wins over the environment: {err}");
}

#[tokio::test]
async fn genconfig_output_is_a_valid_config() {
    let (ok, out, err) = run(&["genconfig"], &[]).await;
    assert!(ok, "{err}");
    let path = temp_config("generated.json", &out);
    let (ok, _, err) = run(&["--config", path.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["client"]["token"]["hmac_secret_key"]
            .as_str()
            .is_some_and(|s| s.len() >= 32),
        "fresh secret"
    );
    assert!(
        v["http_api"]["key"].as_str().is_some_and(|s| s.len() >= 32),
        "fresh API key"
    );
    let (password, secret) = (
        v["admin"]["password"].as_str().unwrap_or_default(),
        v["admin"]["secret"].as_str().unwrap_or_default(),
    );
    assert!(
        password.len() >= 32 && secret.len() >= 32 && password != secret,
        "fresh admin password and secret: {}",
        v["admin"]
    );
    assert_eq!(
        v["admin"]["enabled"], false,
        "the UI stays off until enabled"
    );
}

#[test]
fn example_config_lists_every_key_at_its_default() {
    fn leaves(v: &serde_json::Value, prefix: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    leaves(child, format!("{prefix}.{k}"), out);
                }
            }
            _ => out.push(prefix),
        }
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rotor.example.toml");
    let raw: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (mut in_file, mut all) = (Vec::new(), Vec::new());
    leaves(
        &serde_json::to_value(raw).unwrap(),
        String::new(),
        &mut in_file,
    );
    leaves(
        &serde_json::to_value(rotor_server::Config::default()).unwrap(),
        String::new(),
        &mut all,
    );
    in_file.sort();
    all.sort();
    assert_eq!(
        in_file, all,
        "config/rotor.example.toml must list every key"
    );
    let loaded = rotor_server::Config::load(Some(&path), std::iter::empty(), &[]).unwrap();
    assert_eq!(
        loaded,
        rotor_server::Config::default(),
        "and every value at its default"
    );
}

#[test]
fn dev_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.toml");
    let c = rotor_server::Config::load(Some(&path), std::iter::empty(), &[]).unwrap();
    assert_eq!(c.storage.kind, rotor_server::config::StorageKind::Memory);
    assert!(!c.client.token.hmac_secret_key.is_empty());
}

#[tokio::test]
async fn centrifugo_variables_configure_rotor_and_stray_rotor_variables_only_warn() {
    // A script's own ROTOR_* variable does not stop the server; the warning names it.
    let (ok, out, err) = run(&["checkconfig"], &[("ROTOR_BIN", "/usr/local/bin/rotor")]).await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("ROTOR_BIN") && err.contains("warning"),
        "{err}"
    );
    // A Centrifugo deployment's variable sets the same key: a token signed with its secret
    // verifies against rotor's name for it.
    let (ok, token, err) = run(
        &["gentoken", "--user", "erin"],
        &[("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", "carried-over")],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &["checktoken", token.trim()],
        &[("ROTOR_CLIENT_TOKEN_HMAC_SECRET_KEY", "carried-over")],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"erin\""), "{out}");
    // Both names set: rotor's wins, and a warning says which was ignored.
    let (ok, _, err) = run(
        &["checktoken", token.trim()],
        &[
            ("ROTOR_CLIENT_TOKEN_HMAC_SECRET_KEY", "carried-over"),
            ("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", "something-else"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY is ignored"),
        "{err}"
    );
}

#[tokio::test]
async fn a_centrifugo_v5_config_loads_with_warnings_and_its_problems_are_listed_at_once() {
    // Centrifugo v5's flat names: read as their v6 keys, each with a warning.
    let v5 = temp_config(
        "v5.json",
        r#"{
  "token_hmac_secret_key": "v5-secret",
  "api_key": "v5-api",
  "admin": true,
  "admin_password": "pw",
  "admin_secret": "s",
  "allowed_origins": ["https://app.example"],
  "port": "8123",
  "presence": true,
  "history_size": 10,
  "history_ttl": "60s",
  "client_expire": true,
  "namespaces": [{"name": "chat", "join_leave": true, "proxy_subscribe": false}]
}"#,
    );
    let (ok, out, err) = run(&["--config", v5.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    for (old, new) in [
        ("token_hmac_secret_key", "client.token.hmac_secret_key"),
        ("api_key", "http_api.key"),
        ("admin", "admin.enabled"),
        ("allowed_origins", "client.allowed_origins"),
        ("port", "http_server.port"),
        ("presence", "channel.without_namespace.presence"),
        ("proxy_subscribe", "subscribe_proxy_enabled"),
    ] {
        assert!(
            err.contains(&format!("{old}` is Centrifugo's older name of `{new}`")),
            "no warning for {old}: {err}"
        );
    }
    // What was read is what v5 meant: the token signed with the v5 secret is accepted.
    let token =
        rotor_auth::sign_hmac(&json!({"sub": "u5", "exp": now() + 60}), "v5-secret").unwrap();
    let (ok, out, err) = run(
        &["--config", v5.to_str().unwrap(), "checktoken", &token],
        &[],
    )
    .await;
    assert!(ok && out.contains("\"u5\""), "{out} {err}");

    // Typos, settings that no longer exist and a bad value: every one listed, each with its
    // hint.
    let bad = temp_config(
        "bad-many.toml",
        "client_expire = false\n[http_server]\nadress = \"127.0.0.1\"\n[client]\nping_interval = \"5 parsecs\"\n[client.token]\nhmac_secret = \"s\"\n[[channel.namespaces]]\nname = \"chat\"\npresense = true\n",
    );
    let (ok, _, err) = run(&["--config", bad.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(!ok);
    assert!(err.contains("5 problems"), "{err}");
    for hint in [
        "`client_expire` is Centrifugo's older setting",
        "did you mean `http_server.address`?",
        "did you mean `client.token.hmac_secret_key`?",
        "did you mean `channel.namespaces[0].presence`?",
        "client.ping_interval",
    ] {
        assert!(err.contains(hint), "missing {hint:?}: {err}");
    }
}

#[tokio::test]
async fn cli_version_defaults_configdoc_and_subscription_tokens() {
    let (ok, out, _) = run(&["version"], &[]).await;
    assert!(
        ok && out.starts_with("rotor ") && out.contains(env!("CARGO_PKG_VERSION")),
        "{out}"
    );

    // defaultconfig in each format is a configuration rotor loads as it is.
    for format in ["json", "toml", "yaml"] {
        let (ok, out, err) = run(&["defaultconfig", "--format", format], &[]).await;
        assert!(ok, "{format}: {err}");
        let path = temp_config(&format!("default.{format}"), &out);
        let (ok, _, err) = run(&["--config", path.to_str().unwrap(), "checkconfig"], &[]).await;
        assert!(ok, "{format}: {err}");
    }

    // defaultenv: every key as a variable; set back, they change nothing.
    let (ok, env, _) = run(&["defaultenv"], &[]).await;
    assert!(ok);
    assert!(env.contains("ROTOR_HTTP_SERVER_PORT=8000\n"), "{env}");
    let vars: Vec<(String, String)> = env
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('\'').to_string())
        })
        .collect();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, _, err) = run(&["checkconfig"], &pairs).await;
    assert!(ok, "{err}");
    assert!(
        !err.contains("environment variable"),
        "every variable names a key: {err}"
    );
    let (ok, env, _) = run(&["defaultenv", "--centrifugo"], &[]).await;
    assert!(
        ok && env.contains("CENTRIFUGO_CLIENT_PING_INTERVAL=25s\n"),
        "{env}"
    );

    // configdoc: every key of defaultenv, with its type and meaning.
    let (ok, doc, _) = run(&["configdoc"], &[]).await;
    assert!(ok);
    assert!(
        doc.contains("client.ping_interval (duration, default \"25s\")"),
        "{doc}"
    );
    assert_eq!(
        doc.lines().filter(|l| l.contains(", default ")).count(),
        vars.len(),
        "one entry per key"
    );

    // gensubtoken / checksubtoken with the connection keys, then with keys of their own.
    let shared = temp_config("sub.toml", "[client.token]\nhmac_secret_key = \"conn\"\n");
    let (ok, token, err) = run(
        &[
            "--config",
            shared.to_str().unwrap(),
            "gensubtoken",
            "-u",
            "ann",
            "-s",
            "$news",
            "-t",
            "10m",
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &[
            "--config",
            shared.to_str().unwrap(),
            "checksubtoken",
            token.trim(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("\"ann\"") && out.contains("\"$news\""),
        "{out}"
    );
    let own = temp_config(
        "sub-own.toml",
        "[client.token]\nhmac_secret_key = \"conn\"\n[client.subscription_token]\nenabled = true\nhmac_secret_key = \"subs\"\n",
    );
    let (ok, _, err) = run(
        &[
            "--config",
            own.to_str().unwrap(),
            "checksubtoken",
            token.trim(),
        ],
        &[],
    )
    .await;
    assert!(
        !ok,
        "signed with the connection key, refused where subscriptions have their own"
    );
    assert!(err.contains("token rejected"), "{err}");
}

/// Connects a raw WebSocket client with `token`: `Ok(client id)` or `Err(close code)`.
async fn connect_with(addr: std::net::SocketAddr, token: &str) -> Result<String, u16> {
    let mut ws = RawWs::connect(&format!("ws://{addr}/connection/websocket")).await;
    ws.send(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    match ws.recv(Duration::from_secs(10)).await {
        Received::Messages(ms) => Ok(ms[0]["connect"]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("{ms:?}"))
            .to_string()),
        Received::Close(code, _) => Err(code),
        Received::Ended => Err(0),
    }
}

#[tokio::test]
async fn sighup_rotates_token_keys_and_namespaces_under_live_connections() {
    let test = "sighup_rotates_token_keys";
    if !sdks_available(test) {
        return;
    }
    let write = |secret: &str, extra: &str| {
        temp_config(
            "reload.toml",
            &format!(
                "[http_server]\naddress = \"127.0.0.1\"\nport = {{PORT}}\n[client.token]\nhmac_secret_key = \"{secret}\"\n[[channel.namespaces]]\nname = \"chat\"\nallow_subscribe_for_client = true\n{extra}"
            ),
        )
    };
    let port = free_port();
    let fix_port = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p)
            .unwrap()
            .replace("{PORT}", &port.to_string());
        std::fs::write(p, text).unwrap();
    };
    let path = write("key-a", "");
    fix_port(&path);
    let log_path = path.with_file_name("reload.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, addr) = spawn_rotor_with(BIN, &path, None, log.into()).await;
    let pid = child.id().unwrap().to_string();
    let token_a = |user: &str| {
        rotor_auth::sign_hmac(&json!({"sub": user, "exp": now() + 600}), "key-a").unwrap()
    };
    let token_b =
        rotor_auth::sign_hmac(&json!({"sub": "bee", "exp": now() + 600}), "key-b").unwrap();

    // A centrifuge-js client on key A, subscribed to chat:room.
    let mut js = Script::node(
        "client.js",
        &[
            ("BASE", format!("http://{addr}")),
            ("TOKEN", token_a("ann")),
        ],
    );
    js.expect("ready", T).await;
    js.send(&json!({"op": "subscribe", "channel": "chat:room"}).to_string())
        .await;
    js.send(&json!({"op": "connect"}).to_string()).await;
    js.expect("subscribed", T).await;
    assert_eq!(
        connect_with(addr, &token_b).await,
        Err(3500),
        "key B not yet"
    );
    let (mut raw, _) = RawWs::connected(
        &format!("ws://{addr}/connection/websocket"),
        &token_a("raw"),
    )
    .await;
    raw.send(&json!({"id": 2, "subscribe": {"channel": "news:today"}}).to_string())
        .await;
    assert_eq!(
        raw.message().await["error"]["code"],
        102,
        "no `news` namespace yet"
    );

    // Rotate to key B and add the `news` namespace, then SIGHUP.
    let path = write(
        "key-b",
        "[[channel.namespaces]]\nname = \"news\"\nallow_subscribe_for_client = true\n",
    );
    fix_port(&path);
    let hup = |pid: String| async move {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(ok.success());
    };
    hup(pid.clone()).await;
    let deadline = std::time::Instant::now() + T;
    while connect_with(addr, &token_b).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "key B never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connect_with(addr, &token_a("ann")).await,
        Err(3500),
        "key A refused now"
    );
    // The connection made with key A is still there and still receives.
    js.send(&json!({"op": "subscribe", "channel": "news:today"}).to_string())
        .await;
    js.expect_where("subscribed", |e| e["channel"] == "news:today", T)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !js.seen.iter().any(|e| e["event"] == "disconnected"),
        "the live connection was kept: {:?}",
        js.seen
    );

    // A broken file keeps what is in use, and the log says why.
    let broken = temp_config("reload.toml", "[client.token]\nhmac_secret_kye = \"x\"\n");
    let _ = broken;
    hup(pid.clone()).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if text.contains("keeping the one in use") {
            assert!(
                text.contains("hmac_secret_kye"),
                "the log names the problem: {text}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log line: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        connect_with(addr, &token_b).await.is_ok(),
        "key B still in use"
    );
    js.send(&json!({"op": "quit"}).to_string()).await;
    js.finish(T).await;
    let _ = child.kill().await;
}

#[tokio::test]
async fn a_centrifugo_v6_config_loads_unchanged() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/centrifugo-v6.json");
    let (ok, out, err) = run(&["--config", fixture.to_str().unwrap(), "checkconfig"], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    // Only what rotor does not have (off in the file) or has under one key is mentioned;
    // nothing is an older name.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 4, "{err}");
    for what in [
        "`health.enabled`",
        "`grpc_api`",
        "`usage_stats`",
        "io_timeout",
    ] {
        assert!(warnings.iter().any(|w| w.contains(what)), "{what}: {err}");
    }
    assert!(!err.contains("older name"), "{err}");

    // What the file says is what rotor runs with.
    let (c, _) = rotor_server::Config::load_with_warnings(Some(&fixture), Vec::new(), &[]).unwrap();
    assert_eq!(c.http_server.internal_port, 9000, "a port written as text");
    assert_eq!(
        c.http_server.tls.cert_pem,
        "/etc/centrifugo/tls/fullchain.pem"
    );
    assert_eq!(c.client.token.hmac_secret_key, "v6-connection-secret");
    assert_eq!(c.client.token.audience, "app");
    assert!(c.client.subscription_token.enabled);
    assert_eq!(c.client.channel_limit, 256);
    assert_eq!(c.channel.namespaces.len(), 2);
    let chat = &c.channel.namespaces[0];
    assert!(chat.presence && chat.join_leave && chat.allow_tags_filter);
    assert_eq!(chat.history_size, 100);
    assert_eq!(chat.history_ttl, Duration::from_secs(300));
    assert!(c.channel.namespaces[1].subscribe_proxy_enabled);
    assert_eq!(c.engine.redis.address, ["redis://127.0.0.1:6379"]);
    assert_eq!(c.engine.redis.prefix, "centrifugo");
    assert_eq!(c.engine.redis.timeout, Duration::from_secs(4));
    assert!(c.admin.enabled && c.prometheus.enabled && c.uni_sse.enabled);
    assert_eq!(c.shutdown.timeout, Duration::from_secs(30));
}

//! What a configuration file says that rotor's keys do not, found before the file is read
//! into types, all at once: Centrifugo's older flat names (v5 and before) and typos.
//!
//! An older name whose meaning is the same as a current key is moved there, with a warning
//! that names both (the file still works; rename it at leisure). An older name with no such
//! key is an error that says what to do instead. An unknown key is an error with a
//! did-you-mean when a key of that level (or a key elsewhere with that name) is close. Only
//! the file is reviewed: environment variables and `--set` name keys by path already.

use serde_json::{Map, Value};

/// An older name, and what it became.
enum Older {
    /// The same setting under a current key path.
    Same(&'static str),
    /// No current key means the same: the error says what to do.
    Gone(&'static str),
}

/// Centrifugo's flat top-level names (v5 and before) for what is nested in v6.
const TOP_LEVEL: &[(&str, Older)] = &[
    ("token_hmac_secret_key", Older::Same("client.token.hmac_secret_key")),
    ("token_hmac_previous_secret_key", Older::Same("client.token.hmac_previous_secret_key")),
    ("token_rsa_public_key", Older::Same("client.token.rsa_public_key")),
    ("token_ecdsa_public_key", Older::Same("client.token.ecdsa_public_key")),
    ("token_jwks_public_endpoint", Older::Same("client.token.jwks_public_endpoint")),
    ("token_audience", Older::Same("client.token.audience")),
    ("token_issuer", Older::Same("client.token.issuer")),
    ("subscription_token_hmac_secret_key", Older::Same("client.subscription_token.hmac_secret_key")),
    ("subscription_token_rsa_public_key", Older::Same("client.subscription_token.rsa_public_key")),
    ("subscription_token_ecdsa_public_key", Older::Same("client.subscription_token.ecdsa_public_key")),
    ("subscription_token_jwks_public_endpoint", Older::Same("client.subscription_token.jwks_public_endpoint")),
    ("subscription_token_audience", Older::Same("client.subscription_token.audience")),
    ("subscription_token_issuer", Older::Same("client.subscription_token.issuer")),
    ("separate_subscription_token_config", Older::Same("client.subscription_token.enabled")),
    ("api_key", Older::Same("http_api.key")),
    ("api_insecure", Older::Same("http_api.insecure")),
    ("api_handler_prefix", Older::Same("http_api.handler_prefix")),
    ("allowed_origins", Older::Same("client.allowed_origins")),
    ("address", Older::Same("http_server.address")),
    ("port", Older::Same("http_server.port")),
    ("internal_port", Older::Same("http_server.internal_port")),
    ("internal_address", Older::Same("http_server.internal_address")),
    ("tls", Older::Same("http_server.tls.enabled")),
    ("tls_cert", Older::Same("http_server.tls.cert_pem")),
    ("tls_key", Older::Same("http_server.tls.key_pem")),
    ("log_level", Older::Same("log.level")),
    ("prometheus", Older::Same("prometheus.enabled")),
    ("admin", Older::Same("admin.enabled")),
    ("admin_password", Older::Same("admin.password")),
    ("admin_secret", Older::Same("admin.secret")),
    ("admin_insecure", Older::Same("admin.insecure")),
    ("admin_handler_prefix", Older::Same("admin.handler_prefix")),
    ("admin_external", Older::Same("admin.external")),
    ("namespaces", Older::Same("channel.namespaces")),
    ("channel_max_length", Older::Same("channel.max_length")),
    ("history_meta_ttl", Older::Same("channel.history_meta_ttl")),
    ("client_channel_limit", Older::Same("client.channel_limit")),
    ("client_user_connection_limit", Older::Same("client.user_connection_limit")),
    ("client_connection_limit", Older::Same("client.connection_limit")),
    ("client_queue_max_size", Older::Same("client.queue_max_size")),
    ("client_expired_close_delay", Older::Same("client.expired_close_delay")),
    ("client_expired_sub_close_delay", Older::Same("client.expired_sub_close_delay")),
    ("client_stale_close_delay", Older::Same("client.stale_close_delay")),
    ("client_presence_update_interval", Older::Same("client.presence_update_interval")),
    ("client_history_max_publication_limit", Older::Same("client.history_max_publication_limit")),
    ("client_recovery_max_publication_limit", Older::Same("client.recovery_max_publication_limit")),
    ("client_anonymous", Older::Same("client.allow_anonymous_connect_without_token")),
    ("disallow_anonymous_connection_tokens", Older::Same("client.disallow_anonymous_connection_tokens")),
    ("ping_interval", Older::Same("client.ping_interval")),
    ("pong_timeout", Older::Same("client.pong_timeout")),
    ("websocket_disable", Older::Same("websocket.disabled")),
    ("websocket_read_buffer_size", Older::Same("websocket.read_buffer_size")),
    ("websocket_write_buffer_size", Older::Same("websocket.write_buffer_size")),
    ("websocket_message_size_limit", Older::Same("websocket.message_size_limit")),
    ("websocket_write_timeout", Older::Same("websocket.write_timeout")),
    ("sse", Older::Same("sse.enabled")),
    ("http_stream", Older::Same("http_stream.enabled")),
    ("uni_websocket", Older::Same("uni_websocket.enabled")),
    ("uni_sse", Older::Same("uni_sse.enabled")),
    ("uni_http_stream", Older::Same("uni_http_stream.enabled")),
    ("engine", Older::Same("engine.type")),
    ("redis_address", Older::Same("engine.redis.address")),
    ("redis_cluster_address", Older::Same("engine.redis.cluster_address")),
    ("redis_sentinel_address", Older::Same("engine.redis.sentinel_address")),
    ("redis_sentinel_master_name", Older::Same("engine.redis.sentinel_master_name")),
    ("redis_sentinel_password", Older::Same("engine.redis.sentinel_password")),
    ("redis_prefix", Older::Same("engine.redis.prefix")),
    ("redis_user", Older::Same("engine.redis.user")),
    ("redis_password", Older::Same("engine.redis.password")),
    ("redis_db", Older::Same("engine.redis.db")),
    ("proxy_connect_endpoint", Older::Same("client.proxy.connect.endpoint")),
    ("proxy_connect_timeout", Older::Same("client.proxy.connect.timeout")),
    ("proxy_refresh_endpoint", Older::Same("client.proxy.refresh.endpoint")),
    ("proxy_refresh_timeout", Older::Same("client.proxy.refresh.timeout")),
    ("proxy_subscribe_endpoint", Older::Same("channel.proxy.subscribe.endpoint")),
    ("proxy_subscribe_timeout", Older::Same("channel.proxy.subscribe.timeout")),
    ("proxy_publish_endpoint", Older::Same("channel.proxy.publish.endpoint")),
    ("proxy_publish_timeout", Older::Same("channel.proxy.publish.timeout")),
    ("proxy_sub_refresh_endpoint", Older::Same("channel.proxy.sub_refresh.endpoint")),
    ("proxy_sub_refresh_timeout", Older::Same("channel.proxy.sub_refresh.timeout")),
    ("proxy_rpc_endpoint", Older::Same("rpc.proxy.endpoint")),
    ("proxy_subscribe", Older::Same("channel.without_namespace.subscribe_proxy_enabled")),
    ("proxy_publish", Older::Same("channel.without_namespace.publish_proxy_enabled")),
    ("proxy_sub_refresh", Older::Same("channel.without_namespace.sub_refresh_proxy_enabled")),
    ("proxy_rpc_timeout", Older::Same("rpc.proxy.timeout")),
    (
        "client_expire",
        Older::Gone(
            "connections expire whenever their token has `exp` (Centrifugo v3 and later); remove it",
        ),
    ),
    (
        "v3_use_offset",
        Older::Gone("offsets are always used (Centrifugo v4 and later); remove it"),
    ),
    (
        "use_unlimited_history_by_default",
        Older::Gone("remove it and set `history_size` and `history_ttl` on the namespaces that keep history"),
    ),
    (
        "redis_tls",
        Older::Gone("put the scheme in the address instead: `engine.redis.address = [\"rediss://host:6380\"]`"),
    ),
];

/// Centrifugo's older names of namespace options (a namespace, or the top level for
/// channels without one).
const NAMESPACE: &[(&str, &str)] = &[
    ("proxy_subscribe", "subscribe_proxy_enabled"),
    ("proxy_publish", "publish_proxy_enabled"),
    ("proxy_sub_refresh", "sub_refresh_proxy_enabled"),
];

/// Centrifugo v6 keys rotor has no key for (patterns: `*` is any part of a path, `[]` any
/// list item). `harmless`: dropping it changes nothing a client sees, so it is ignored with
/// a warning; otherwise it is refused unless it is off (false, empty, or `enabled = false`).
const NOT_IN_ROTOR: &[(&str, bool, &str)] = &[
    (
        "grpc_api",
        false,
        "the gRPC server API is not in rotor (use the HTTP API)",
    ),
    (
        "uni_grpc",
        false,
        "the unidirectional gRPC transport is not in rotor",
    ),
    ("webtransport", false, "WebTransport is not in rotor"),
    (
        "consumers",
        false,
        "async consumers (PostgreSQL outbox, Kafka) are not in rotor: publish through the HTTP API",
    ),
    ("usage_stats", true, "rotor sends no usage statistics"),
    (
        "opentelemetry",
        false,
        "OpenTelemetry tracing is not in rotor",
    ),
    (
        "graphite",
        false,
        "Graphite export is not in rotor (Prometheus is)",
    ),
    ("swagger", true, "rotor serves no Swagger UI"),
    ("debug", true, "rotor serves no pprof endpoints"),
    ("init", false, "init is not in rotor"),
    (
        "pid_file",
        false,
        "rotor writes no pid file (systemd tracks it)",
    ),
    ("log.file", false, "rotor logs to standard error only"),
    (
        "http_api.external",
        true,
        "the server API is always on the main port",
    ),
    (
        "http_api.disabled",
        false,
        "the server API cannot be turned off (keep http_api.key secret)",
    ),
    (
        "http_api.error_mode",
        false,
        "rotor answers errors in the body with HTTP 200, Centrifugo's default mode",
    ),
    (
        "http_server.tls_autocert",
        false,
        "automatic certificates (ACME) are not in rotor: give cert_pem and key_pem",
    ),
    (
        "http_server.internal_tls",
        false,
        "TLS on the internal port is not in rotor",
    ),
    (
        "http_server.tls_external",
        false,
        "TLS for the external port only is not in rotor",
    ),
    ("http_server.http3", false, "HTTP/3 is not in rotor"),
    (
        "health.handler_prefix",
        false,
        "`GET /health` is served at /health",
    ),
    (
        "client.insecure",
        false,
        "client.insecure (no token checks at all) is not in rotor",
    ),
    (
        "client.connection_rate_limit",
        false,
        "a connection rate limit is not in rotor",
    ),
    (
        "client.concurrency",
        true,
        "rotor runs each connection's commands in order, publishes overlapping",
    ),
    (
        "client.user_id_http_header",
        false,
        "user ids from a header are not in rotor",
    ),
    (
        "client.*token.user_id_claim",
        false,
        "rotor reads the user from `sub`",
    ),
    (
        "client.*token.audience_regex",
        false,
        "audience patterns are not in rotor (audience is exact)",
    ),
    (
        "client.*token.issuer_regex",
        false,
        "issuer patterns are not in rotor (issuer is exact)",
    ),
    (
        "client.subscribe_to_user_personal_channel",
        false,
        "automatic personal channels are not in rotor",
    ),
    (
        "*.redis.tls",
        false,
        "Redis TLS options are not in rotor: use a rediss:// address",
    ),
    (
        "*.redis.sentinel_tls",
        false,
        "Redis Sentinel TLS options are not in rotor",
    ),
    (
        "*.redis.sentinel_client_name",
        true,
        "rotor names no Redis client",
    ),
    ("*.redis.client_name", true, "rotor names no Redis client"),
    ("*.redis.force_resp2", true, "rotor speaks RESP2"),
    (
        "*.redis.replica_client",
        false,
        "reading from Redis replicas is not in rotor",
    ),
    (
        "*.redis.history_use_lists",
        false,
        "rotor keeps Redis history in streams",
    ),
    (
        "*.redis.presence_ttl",
        false,
        "presence entries expire after client.presence_update_interval plus a margin",
    ),
    (
        "*.redis.presence_hash_field_ttl",
        true,
        "not needed by rotor's presence",
    ),
    (
        "*.redis.presence_user_mapping",
        true,
        "not needed by rotor's presence",
    ),
    ("*.grpc_metadata", true, "gRPC proxies are not in rotor"),
    (
        "*proxy*.grpc",
        false,
        "gRPC proxies are not in rotor: use HTTP endpoints",
    ),
    (
        "channel.proxy.subscribe_stream",
        false,
        "subscribe stream proxies are not in rotor",
    ),
    (
        "channel.proxy.map_*",
        false,
        "map channels are not in rotor",
    ),
    (
        "channel.proxy.shared_poll_refresh",
        false,
        "shared poll channels are not in rotor",
    ),
    (
        "channel.*.subscribe_stream_proxy_*",
        false,
        "subscribe stream proxies are not in rotor",
    ),
    (
        "channel.*.publication_data_format",
        false,
        "rotor passes publication data as it is",
    ),
    (
        "channel.*.subscription_type",
        false,
        "map and shared poll subscriptions are not in rotor",
    ),
    ("channel.*.map", false, "map channels are not in rotor"),
    (
        "channel.*.channel_regex",
        false,
        "channel name patterns per namespace are not in rotor",
    ),
    (
        "channel.*.history_meta_ttl",
        false,
        "use channel.history_meta_ttl (one for all namespaces)",
    ),
    (
        "channel.private_prefix",
        false,
        "private channels start with `$` in rotor",
    ),
    (
        "channel.namespace_boundary",
        false,
        "namespaces end at `:` in rotor",
    ),
    (
        "channel.user_boundary",
        false,
        "user-limited channels use `#` in rotor",
    ),
    (
        "channel.user_separator",
        false,
        "users in channel names are separated by `,` in rotor",
    ),
    ("health.enabled", true, "rotor always serves `GET /health`"),
    (
        "websocket.compression*",
        false,
        "WebSocket compression is not in rotor",
    ),
    (
        "uni_websocket.message_size_limit",
        false,
        "not in rotor for uni_websocket",
    ),
    ("uni_websocket.join_push_messages", false, "not in rotor"),
    (
        "*.max_request_body_size",
        false,
        "use http_server.body_read_timeout and emulation.max_request_body_size",
    ),
    (
        "prometheus.instrument_http_handlers",
        true,
        "rotor does not time HTTP handlers",
    ),
    (
        "prometheus.recovered_publications_histogram",
        true,
        "not in rotor's metrics",
    ),
    (
        "prometheus.native_histograms",
        true,
        "rotor exports classic histograms",
    ),
    ("admin.web_path", false, "the admin UI is built into rotor"),
    (
        "admin.web_proxy_address",
        false,
        "the admin UI is built into rotor",
    ),
];

/// rotor's own older key paths (and Centrifugo v6 keys rotor reads under another name).
const RENAMED: &[(&str, &str)] = &[
    ("http_server.tls.cert_pem_file", "http_server.tls.cert_pem"),
    ("http_server.tls.key_pem_file", "http_server.tls.key_pem"),
];

/// Element templates of lists of objects: their items are reviewed like sections.
pub(super) struct Templates {
    pub namespace: Value,
    pub rpc_namespace: Value,
    pub proxy: Value,
}

/// What the review found.
#[derive(Debug, Default)]
pub(super) struct Review {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Reviews `file` (the file's keys as JSON) against `defaults` (the default configuration
/// as JSON): moves older names to their current keys and lists every problem.
pub(super) fn review(file: &mut Value, defaults: &Value, templates: &Templates) -> Review {
    let mut found = Review::default();
    let Some(top) = file.as_object_mut() else {
        found
            .errors
            .push("the file must hold a table (an object) of keys".into());
        return found;
    };
    let without_namespace = defaults["channel"]["without_namespace"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // `health` (Centrifugo v5's switch for `GET /health`, a section in v6): always on here;
    // the section's keys are reviewed with the v6 keys rotor lacks.
    match top.remove("health") {
        Some(Value::Object(health)) => {
            for (k, v) in health {
                match not_in_rotor(&format!("health.{k}"), &v) {
                    Some(Ok(warning)) => found.warnings.push(warning),
                    Some(Err(error)) => found.errors.push(error),
                    None => found.errors.push(format!(
                        "unknown key `health.{k}` (known here: enabled, handler_prefix)"
                    )),
                }
            }
        }
        Some(_) => found
            .warnings
            .push("`health`: rotor always serves `GET /health`; ignored (remove it)".into()),
        None => {}
    }
    // Sorted, so a flat switch (`admin = true`) is read before the keys that go under it
    // (`admin_password`), whatever order the file has.
    let mut names: Vec<String> = top.keys().cloned().collect();
    names.sort();
    for name in names {
        // A current section under a name that was once a flat key (`engine`, `admin`,
        // `prometheus`, `sse`, ...) is the current key.
        if defaults.get(&name).is_some_and(Value::is_object) && top[&name].is_object() {
            continue;
        }
        let target = TOP_LEVEL
            .iter()
            .find(|(old, _)| *old == name)
            .map(|(_, to)| to);
        let moved_to = match target {
            Some(Older::Same(path)) => path.to_string(),
            Some(Older::Gone(what)) => {
                if name == "client_expire" && top[&name] == Value::Bool(true) {
                    top.remove(&name);
                    found.warnings.push(
                        "`client_expire = true` is Centrifugo's older setting, now how it always works: ignored (remove it)".into(),
                    );
                    continue;
                }
                found
                    .errors
                    .push(format!("`{name}` is Centrifugo's older setting: {what}"));
                top.remove(&name);
                continue;
            }
            // Top-level channel options are Centrifugo v5's options of channels without a
            // namespace.
            None if defaults.get(&name).is_none() && without_namespace.contains_key(&name) => {
                format!("channel.without_namespace.{name}")
            }
            None => continue,
        };
        let value = top.remove(&name).expect("listed above");
        let path: Vec<&str> = moved_to.split('.').collect();
        if get_path_in(top, &path).is_some() {
            found.errors.push(format!(
                "`{name}` (Centrifugo's older name) and `{moved_to}` are both set: keep `{moved_to}`"
            ));
            continue;
        }
        let value = older_value(&moved_to, value, defaults);
        // In v5 an endpoint was all it took to turn the connect or refresh proxy on.
        let turns_on = matches!(
            name.as_str(),
            "proxy_connect_endpoint" | "proxy_refresh_endpoint"
        ) && value.as_str().is_some_and(|s| !s.is_empty());
        set_path_in(top, &path, value);
        if turns_on {
            let enabled: Vec<&str> = path[..path.len() - 1]
                .iter()
                .copied()
                .chain(["enabled"])
                .collect();
            if get_path_in(top, &enabled).is_none() {
                set_path_in(top, &enabled, Value::Bool(true));
            }
        }
        found.warnings.push(format!(
            "`{name}` is Centrifugo's older name of `{moved_to}`: read as `{moved_to}` (rename it)"
        ));
    }
    rename_nested(file, &mut found);
    redis_timeouts(file, &mut found);
    let mut path = Vec::new();
    walk(file, defaults, templates, &mut path, &mut found);
    found
}

fn rename_nested(file: &mut Value, found: &mut Review) {
    let Some(top) = file.as_object_mut() else {
        return;
    };
    for (old, new) in RENAMED {
        let old_path: Vec<&str> = old.split('.').collect();
        let (last, parents) = old_path.split_last().expect("a path");
        let Some(parent) = parents
            .iter()
            .try_fold(&mut *top, |m, k| m.get_mut(*k)?.as_object_mut())
        else {
            continue;
        };
        let Some(value) = parent.remove(*last) else {
            continue;
        };
        let new_path: Vec<&str> = new.split('.').collect();
        if get_path_in(top, &new_path).is_some() {
            found.errors.push(format!(
                "`{old}` (an older name) and `{new}` are both set: keep `{new}`"
            ));
            continue;
        }
        set_path_in(top, &new_path, value);
        found.warnings.push(format!(
            "`{old}` is an older name of `{new}`: read as `{new}` (rename it)"
        ));
    }
}

/// Centrifugo v6's `connect_timeout` and `io_timeout` of a Redis section are rotor's one
/// `timeout` (connect and replies): the longer of the two.
fn redis_timeouts(file: &mut Value, found: &mut Review) {
    for part in ["engine", "broker", "presence_manager"] {
        let Some(redis) = file
            .get_mut(part)
            .and_then(|p| p.get_mut("redis"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let given: Vec<(&str, Value)> = ["connect_timeout", "io_timeout"]
            .into_iter()
            .filter_map(|k| redis.remove(k).map(|v| (k, v)))
            .collect();
        if given.is_empty() {
            continue;
        }
        if redis.contains_key("timeout") {
            found.errors.push(format!(
                "`{part}.redis.timeout` and Centrifugo's `connect_timeout`/`io_timeout` are both set: keep `timeout`"
            ));
            continue;
        }
        let seconds = |v: &Value| match v {
            Value::String(s) => rotor_core::duration::parse(s).ok().map(|d| d.as_secs_f64()),
            Value::Number(n) => n.as_f64(),
            _ => None,
        };
        let longest = given
            .iter()
            .max_by(|a, b| {
                seconds(&a.1)
                    .partial_cmp(&seconds(&b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .expect("not empty");
        let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
        redis.insert("timeout".into(), longest.1.clone());
        found.warnings.push(format!(
            "`{part}.redis.{}`: rotor has one Redis timeout for connecting and for replies; read as `{part}.redis.timeout` = {}",
            names.join("` and `"),
            longest.1
        ));
    }
}

/// Whether a value turns nothing on: false, zero, empty, `enabled = false`, or a section of
/// such values.
fn off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.get("enabled") == Some(&Value::Bool(false)) || m.values().all(off),
    }
}

/// What to say of a key rotor does not know that Centrifugo v6 has: `Some(Ok(warning))`
/// when it can be dropped, `Some(Err(error))` when it cannot, `None` when it is no such key.
fn not_in_rotor(here: &str, value: &Value) -> Option<Result<String, String>> {
    let normal = normalize(here);
    let (_, harmless, what) = NOT_IN_ROTOR
        .iter()
        .find(|(pattern, _, _)| rotor_core::channels::glob_match(pattern, &normal))?;
    // A setting that is already rotor's behaviour (v6's defaults) changes nothing.
    let same_as_rotor = [
        ("channel.private_prefix", "$"),
        ("channel.namespace_boundary", ":"),
        ("channel.user_boundary", "#"),
        ("channel.user_separator", ","),
        ("health.handler_prefix", "/health"),
    ]
    .iter()
    .any(|(k, v)| normal == *k && value.as_str() == Some(v));
    Some(if *harmless || same_as_rotor || off(value) {
        Ok(format!("`{here}` (Centrifugo v6): ignored, {what}"))
    } else {
        Err(format!(
            "`{here}` (Centrifugo v6): {what}; remove it (docs/migrating-from-centrifugo.md)"
        ))
    })
}

/// `channel.namespaces[3].x` -> `channel.namespaces[].x`.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// An older value in the shape the current key takes: ports were strings, and a single
/// Redis address was a string.
fn older_value(path: &str, value: Value, defaults: &Value) -> Value {
    let default = get_path(defaults, &path.split('.').collect::<Vec<_>>());
    match (default, value) {
        (Some(Value::Number(_)), Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or(Value::String(s)),
        (_, v) => v,
    }
}

/// Checks every key of `value` against `defaults` (the same level): unknown keys with a
/// did-you-mean, and booleans or sections given as something else.
fn walk(
    value: &mut Value,
    defaults: &Value,
    templates: &Templates,
    path: &mut Vec<String>,
    found: &mut Review,
) {
    let (Some(map), Some(known)) = (value.as_object_mut(), defaults.as_object()) else {
        return;
    };
    // A section whose default is empty is a map of the user's own keys (`static_headers`).
    if known.is_empty() {
        return;
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{}.{key}", path.join("."))
        };
        let Some(default) = known.get(&key) else {
            match not_in_rotor(&here, &map[&key]) {
                Some(Ok(warning)) => {
                    found.warnings.push(warning);
                    map.remove(&key);
                }
                Some(Err(error)) => {
                    found.errors.push(error);
                    map.remove(&key);
                }
                None => {
                    found.errors.push(unknown(&here, &key, known));
                    map.remove(&key);
                }
            }
            continue;
        };
        // A value reported here is taken out, so typing the rest finds the next problem.
        let mut reported = false;
        let child = map.get_mut(&key).expect("listed above");
        match (default, &*child) {
            (Value::Object(_), Value::Object(_)) => {
                path.push(key.clone());
                walk(child, default, templates, path, found);
                path.pop();
            }
            (Value::Object(_), other) => {
                found.errors.push(format!(
                    "`{here}` is a section of keys, not {}",
                    kind(other)
                ));
                reported = true;
            }
            (Value::Bool(_), Value::Bool(_)) | (_, Value::Null) => {}
            (Value::Bool(_), other) => {
                found.errors.push(format!(
                    "`{here}`: expected true or false, found {}",
                    kind(other)
                ));
                reported = true;
            }
            (Value::Array(_), Value::Array(items)) => {
                let template = match here.as_str() {
                    "channel.namespaces" => Some(&templates.namespace),
                    "rpc.namespaces" => Some(&templates.rpc_namespace),
                    "proxies" => Some(&templates.proxy),
                    _ => None,
                };
                let Some(template) = template else { continue };
                let count = items.len();
                let Value::Array(items) = child else { continue };
                for (i, item) in items.iter_mut().enumerate().take(count) {
                    if here == "channel.namespaces" {
                        rename_namespace_options(item, &format!("{here}[{i}]"), found);
                    }
                    path.push(format!("{key}[{i}]"));
                    walk(item, template, templates, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
        if reported {
            map.remove(&key);
        }
    }
}

fn rename_namespace_options(item: &mut Value, at: &str, found: &mut Review) {
    let Some(map) = item.as_object_mut() else {
        return;
    };
    for (old, new) in NAMESPACE {
        if !map.contains_key(*old) {
            continue;
        }
        if map.contains_key(*new) {
            found.errors.push(format!(
                "`{at}.{old}` (Centrifugo's older name) and `{at}.{new}` are both set: keep `{new}`"
            ));
            map.remove(*old);
            continue;
        }
        let v = map.remove(*old).expect("checked");
        map.insert(new.to_string(), v);
        found.warnings.push(format!(
            "`{at}.{old}` is Centrifugo's older name of `{new}`: read as `{new}` (rename it)"
        ));
    }
}

/// The error for an unknown key, with the closest known key of its level when one is close.
fn unknown(here: &str, key: &str, known: &Map<String, Value>) -> String {
    // Close: a few letters apart, or one name the start of the other (`hmac_secret`).
    let best = known
        .keys()
        .map(|k| {
            let prefix = key.len() >= 4 && (k.starts_with(key) || key.starts_with(k.as_str()));
            (if prefix { 1 } else { distance(key, k) }, k)
        })
        .min_by_key(|(d, _)| *d)
        .filter(|(d, k)| *d <= (k.len().max(key.len()) / 4).max(1));
    match best {
        Some((_, k)) => {
            let at = here
                .rsplit_once('.')
                .map_or(String::new(), |(p, _)| format!("{p}."));
            format!("unknown key `{here}`: did you mean `{at}{k}`?")
        }
        None => {
            let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
            names.sort_unstable();
            format!("unknown key `{here}` (known here: {})", names.join(", "))
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a section",
    }
}

/// Edit distance (insertions, deletions, substitutions) between two short names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(row[j] + 1);
        }
        prev = row;
    }
    prev[b.len()]
}

fn get_path<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k))
}

fn get_path_in<'a>(root: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    get_path(root.get(*first)?, rest)
}

/// Sets `value` at `path` under `root`, making the sections on the way (a non-section in
/// the way is replaced).
pub(super) fn set_path(root: &mut Value, path: &[impl AsRef<str>], value: Value) {
    if !root.is_object() {
        *root = Value::Object(Map::new());
    }
    let path: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    set_path_in(root.as_object_mut().expect("made an object"), &path, value);
}

fn set_path_in(root: &mut Map<String, Value>, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("a path has a key");
    let mut cur = root;
    for key in parents {
        let entry = cur
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        cur = entry.as_object_mut().expect("made an object");
    }
    cur.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn templates() -> Templates {
        Templates {
            namespace: json!({"name": "", "presence": false, "subscribe_proxy_enabled": false}),
            rpc_namespace: json!({"name": ""}),
            proxy: json!({"name": "", "endpoint": ""}),
        }
    }

    fn defaults() -> Value {
        json!({
            "http_server": {"address": "0.0.0.0", "port": 8000},
            "client": {"token": {"hmac_secret_key": ""}, "allowed_origins": []},
            "channel": {"namespaces": [], "without_namespace": {"presence": false, "history_size": 0}},
            "engine": {"type": "memory", "redis": {"address": ["127.0.0.1:6379"], "timeout": "1s"}},
            "rpc": {"namespaces": []},
            "proxies": [],
        })
    }

    #[test]
    fn older_names_move_to_their_keys_with_a_warning() {
        let mut file = json!({
            "token_hmac_secret_key": "s",
            "port": "9000",
            "redis_address": "redis:6379",
            "presence": true,
            "namespaces": [{"name": "chat", "proxy_subscribe": true}],
            "allowed_origins": ["*"],
        });
        let r = review(&mut file, &defaults(), &templates());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(file["client"]["token"]["hmac_secret_key"], "s");
        assert_eq!(file["http_server"]["port"], 9000, "ports were strings");
        assert_eq!(
            file["engine"]["redis"]["address"], "redis:6379",
            "a list or a comma-separated string, as before"
        );
        assert_eq!(file["channel"]["without_namespace"]["presence"], true);
        assert_eq!(
            file["channel"]["namespaces"][0]["subscribe_proxy_enabled"],
            true
        );
        assert_eq!(file["client"]["allowed_origins"], json!(["*"]));
        assert_eq!(r.warnings.len(), 7, "{:?}", r.warnings);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.contains("`token_hmac_secret_key`")
                && w.contains("`client.token.hmac_secret_key`")));
    }

    #[test]
    fn every_problem_is_listed_with_a_hint() {
        let mut file = json!({
            "client_expire": false,
            "http_server": {"adress": "x", "port": 1},
            "client": {"token": {"hmac_secret": "s"}},
            "channel": {"namespaces": [{"name": "a", "presense": true}]},
            "prometheus": true,
            "token_hmac_secret_key": "s",
            "engine": "redis",
            "zzz_unrelated": 1,
        });
        let mut d = defaults();
        d["prometheus"] = json!({"enabled": false});
        let r = review(&mut file, &d, &templates());
        let all = r.errors.join("\n");
        assert!(
            all.contains("`client_expire` is Centrifugo's older setting"),
            "{all}"
        );
        assert!(all.contains("did you mean `http_server.address`?"), "{all}");
        assert!(
            all.contains("did you mean `client.token.hmac_secret_key`?"),
            "{all}"
        );
        assert!(
            all.contains("did you mean `channel.namespaces[0].presence`?"),
            "{all}"
        );
        assert!(
            all.contains("unknown key `zzz_unrelated` (known here:"),
            "{all}"
        );
        assert_eq!(r.errors.len(), 5, "{all}");
        assert_eq!(
            file["engine"]["type"], "redis",
            "v5's `engine` string is `engine.type`"
        );
        assert_eq!(file["prometheus"]["enabled"], true);
    }

    #[test]
    fn client_expire_true_is_how_it_works_now() {
        let mut file = json!({"client_expire": true});
        let r = review(&mut file, &defaults(), &templates());
        assert!(r.errors.is_empty());
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(file, json!({}));
    }

    #[test]
    fn centrifugo_v6_keys_rotor_lacks_are_ignored_when_off_and_refused_when_on() {
        let mut d = defaults();
        d["http_api"] = json!({"key": ""});
        let mut file = json!({
            "grpc_api": {"enabled": false, "port": 10000},
            "usage_stats": {"disabled": false},
            "http_api": {"key": "k", "external": true},
            "engine": {"redis": {"connect_timeout": "1s", "io_timeout": "4s", "tls": {"enabled": false}}},
            "channel": {"namespaces": [{"name": "a", "subscription_type": ""}]},
        });
        let r = review(&mut file, &d, &templates());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            file["engine"]["redis"]["timeout"], "4s",
            "the longer of the two"
        );
        assert!(file.get("grpc_api").is_none() && file["http_api"].get("external").is_none());
        assert_eq!(r.warnings.len(), 6, "{:?}", r.warnings);

        let mut file =
            json!({"grpc_api": {"enabled": true}, "client": {"token": {"user_id_claim": "uid"}}});
        let r = review(&mut file, &d, &templates());
        let all = r.errors.join("\n");
        assert!(
            all.contains("`grpc_api` (Centrifugo v6): the gRPC server API is not in rotor"),
            "{all}"
        );
        assert!(
            all.contains(
                "`client.token.user_id_claim` (Centrifugo v6): rotor reads the user from `sub`"
            ),
            "{all}"
        );
    }

    /// Every older name in the table, against rotor's real configuration: a `Same` lands
    /// on a key that exists (with a warning naming both), a `Gone` is an error with its hint.
    #[test]
    fn every_older_name_has_its_hint() {
        let defaults = serde_json::to_value(crate::config::Config::default()).unwrap();
        let real = super::super::load::templates();
        for (old, to) in TOP_LEVEL {
            // A value of the type the current key takes (a string for anything else).
            let value = match to {
                Older::Same(path) => {
                    let p: Vec<&str> = path.split('.').collect();
                    let current = get_path(&defaults, &p)
                        .unwrap_or_else(|| panic!("`{old}` -> `{path}`: no such key in rotor"));
                    assert!(!current.is_object(), "`{old}` -> `{path}` is a section");
                    current.clone()
                }
                Older::Gone(_) => json!(false),
            };
            let mut file = json!({ *old: value });
            let r = review(&mut file, &defaults, &real);
            match to {
                Older::Same(path) => {
                    assert!(r.errors.is_empty(), "{old}: {:?}", r.errors);
                    assert!(
                        r.warnings
                            .iter()
                            .any(|w| w.contains(&format!("`{old}`"))
                                && w.contains(&format!("`{path}`"))),
                        "{old}: {:?}",
                        r.warnings
                    );
                    let p: Vec<&str> = path.split('.').collect();
                    assert!(get_path(&file, &p).is_some(), "{old} moved to {path}");
                }
                Older::Gone(hint) => {
                    let all = r.errors.join(" ");
                    if *old == "client_expire" {
                        assert!(all.contains(hint), "{old}: {all}");
                    } else {
                        assert!(all.contains(hint) && all.contains(old), "{old}: {all}");
                    }
                }
            }
        }
    }

    /// Lists of sections are reviewed against real items (an RPC namespace's `name` is
    /// written only when set) and maps of the user's own keys are left alone.
    #[test]
    fn real_items_and_free_form_maps_pass() {
        let defaults = serde_json::to_value(crate::config::Config::default()).unwrap();
        let mut file = json!({
            "rpc": {"namespaces": [{"name": "billing", "proxy_enabled": true}]},
            "proxies": [{"name": "billing", "endpoint": "http://b", "http": {"static_headers": {"X-Env": "prod"}}}],
            "client": {"proxy": {"connect": {"http": {"static_headers": {"Authorization": "x"}}}}},
            "proxy_connect_endpoint": "http://backend/connect",
            "proxy_subscribe": true,
            "health": {"enabled": false, "handler_prefix": "/health"},
            "channel": {"private_prefix": "$"},
        });
        let r = review(&mut file, &defaults, &super::super::load::templates());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            file["client"]["proxy"]["connect"]["enabled"], true,
            "v5's endpoint turned it on"
        );
        assert_eq!(
            file["channel"]["without_namespace"]["subscribe_proxy_enabled"],
            true
        );
        let mut file = json!({"health": {"handler_prefix": "/healthz"}});
        let r = review(&mut file, &defaults, &super::super::load::templates());
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("adress", "address"), 1);
        assert_eq!(distance("presense", "presence"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}

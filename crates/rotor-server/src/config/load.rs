//! Reading a configuration: a file (JSON, TOML or YAML, by extension), overridden by
//! `ROTOR_`-prefixed environment variables (and Centrifugo's `CENTRIFUGO_` ones as aliases)
//! and then by command-line `--set` flags, then the checks types cannot express. Unknown
//! keys in the file and in `--set` are errors that name the key; environment variables that
//! name no key are warnings (other programs' variables share the prefix).

use std::path::Path;

use serde_json::Value;

use super::migrate::{self, set_path};
use super::{Config, StorageKind};
use crate::error::ServerError;

/// Centrifugo's environment prefix, read as an alias of `ROTOR_`.
const ALIAS_PREFIX: &str = "CENTRIFUGO_";

impl Config {
    /// Loads a file (or the defaults when `path` is `None`), then applies environment
    /// variables and `--set key=value` overrides. What [`Config::load_with_warnings`] would
    /// warn about is dropped.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ServerError> {
        Config::load_with_warnings(path, env, sets).map(|(config, _)| config)
    }

    /// [`Config::load`], with what the operator should hear about but that does not stop
    /// the server: environment variables that name no key (`ROTOR_BIN` in a script), and
    /// `CENTRIFUGO_*` variables overridden by their `ROTOR_*` twin.
    ///
    /// `CENTRIFUGO_<KEY_PATH>` variables are read as aliases of `ROTOR_<KEY_PATH>` (the same
    /// key path), so a Centrifugo deployment's environment carries over; `ROTOR_*` wins.
    pub fn load_with_warnings(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<(Config, Vec<String>), ServerError> {
        let mut value = match path {
            Some(p) => read_file(p)?,
            None => Value::Object(Default::default()),
        };
        let defaults = serde_json::to_value(Config::default()).expect("config serializes");
        let leaves = leaf_paths(&defaults);
        let mut warnings = Vec::new();
        // The file's older names and typos, every one of them, before anything else.
        let review = migrate::review(&mut value, &defaults, &templates());
        warnings.extend(review.warnings);
        let mut problems = review.errors;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let rotor_names: std::collections::HashSet<&str> = env
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("ROTOR_"))
            .collect();
        // Centrifugo's names first, so rotor's own win.
        let mut ordered: Vec<(&str, &str, &String, &String)> = Vec::new();
        for prefix in [ALIAS_PREFIX, "ROTOR_"] {
            for (name, raw) in &env {
                if let Some(rest) = name.strip_prefix(prefix) {
                    ordered.push((prefix, rest, name, raw));
                }
            }
        }
        for (prefix, rest, name, raw) in ordered {
            let Some((path, default)) = leaves
                .iter()
                .find(|(p, _)| p.join("_").to_uppercase() == rest)
            else {
                warnings.push(format!(
                    "environment variable {name} does not name a configuration key; ignored"
                ));
                continue;
            };
            if prefix == ALIAS_PREFIX && rotor_names.contains(rest) {
                warnings.push(format!(
                    "environment variable {name} is ignored: ROTOR_{rest} is set too, and rotor's own name wins"
                ));
                continue;
            }
            set_path(
                &mut value,
                path,
                parse_like(default, raw)
                    .map_err(|e| ServerError::Config(format!("{name}: {e}")))?,
            );
        }
        for set in sets {
            let (key, raw) = set
                .split_once('=')
                .ok_or_else(|| ServerError::Config(format!("--set {set:?}: expected key=value")))?;
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            let default = leaves
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, d)| d.clone())
                .unwrap_or(Value::Null);
            set_path(
                &mut value,
                &path,
                parse_like(&default, raw)
                    .map_err(|e| ServerError::Config(format!("--set {key}: {e}")))?,
            );
        }
        // The review took out what it reported, so typing the rest finds the next problem
        // (a bad value) and the checks after it, and every one is reported together.
        let typed = serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        });
        let config = match typed {
            Ok(config) => match config.validate() {
                Ok(()) if problems.is_empty() => config,
                Ok(()) => return Err(all_problems(path, problems)),
                Err(ServerError::Config(e)) if !problems.is_empty() => {
                    problems.push(e);
                    return Err(all_problems(path, problems));
                }
                Err(e) if problems.is_empty() => return Err(e),
                Err(e) => {
                    problems.push(e.to_string());
                    return Err(all_problems(path, problems));
                }
            },
            Err(e) if problems.is_empty() => return Err(ServerError::Config(e)),
            Err(e) => {
                problems.push(e);
                return Err(all_problems(path, problems));
            }
        };
        if config.admin.enabled && config.admin.insecure {
            warnings.push("admin.insecure: the admin UI asks for no password; anyone who reaches its port can revoke tokens and publish".into());
        }
        if !config.http_api.insecure && config.http_api.key.is_empty() {
            warnings.push("http_api.key is empty: the server API refuses every request (set a key or http_api.insecure)".into());
        }
        Ok((config, warnings))
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), ServerError> {
        for (key, value) in [
            (
                "http_server.header_read_timeout",
                self.http_server.header_read_timeout,
            ),
            (
                "http_server.body_read_timeout",
                self.http_server.body_read_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ServerError::Config(format!(
                    "{key}: must be above zero (it bounds how long a client may take; 0 would refuse every request)"
                )));
            }
        }
        if self.storage.kind == StorageKind::Postgres && self.storage.postgres.dsn.is_empty() {
            return Err(ServerError::Config(
                "storage.postgres.dsn: required when storage.type is postgres".into(),
            ));
        }
        for redis in [
            self.broker_redis(),
            self.presence_redis(),
            self.history_redis(),
        ]
        .into_iter()
        .flatten()
        {
            if redis.address.is_empty()
                && redis.cluster_address.is_empty()
                && redis.sentinel_address.is_empty()
            {
                return Err(ServerError::Config(
                    "redis address: at least one address (or cluster_address, or sentinel_address) is required".into(),
                ));
            }
            if !redis.sentinel_address.is_empty() && redis.sentinel_master_name.is_empty() {
                return Err(ServerError::Config(
                    "redis sentinel_master_name: required with sentinel_address (the master's name in the Sentinels' configuration)".into(),
                ));
            }
            if redis.sharded_pub_sub_partitions > 0 && redis.cluster_address.is_empty() {
                return Err(ServerError::Config(
                    "redis sharded_pub_sub_partitions: sharded pub/sub needs a Redis Cluster (cluster_address)".into(),
                ));
            }
            if !redis.sentinel_address.is_empty() && !redis.cluster_address.is_empty() {
                return Err(ServerError::Config(
                    "redis: sentinel_address and cluster_address cannot both be set".into(),
                ));
            }
        }
        let admin = &self.admin;
        if admin.enabled
            && !admin.insecure
            && (admin.password.is_empty() || admin.secret.is_empty())
        {
            return Err(ServerError::Config(
                "admin: admin.password and admin.secret are required with admin.enabled (or set admin.insecure behind a gateway that authenticates)".into(),
            ));
        }
        if admin.enabled && admin.session_ttl.is_zero() {
            return Err(ServerError::Config(
                "admin.session_ttl: must be above zero".into(),
            ));
        }
        if !admin.handler_prefix.is_empty()
            && (!admin.handler_prefix.starts_with('/') || admin.handler_prefix.ends_with('/'))
        {
            return Err(ServerError::Config(format!(
                "admin.handler_prefix: {:?} must start with / and not end with one (e.g. /admin-ui)",
                admin.handler_prefix
            )));
        }
        rotor_core::channels::ChannelRules::new(&self.channel).map_err(ServerError::Config)?;
        rotor_auth::TokenVerifier::new(&self.client.token)
            .map_err(|e| ServerError::Config(format!("client.token: {e}")))?;
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Value, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = path.display();
    match ext.as_str() {
        "json" => {
            serde_json::from_str(&text).map_err(|e| ServerError::Config(format!("{name}: {e}")))
        }
        "toml" => {
            toml::from_str::<Value>(&text).map_err(|e| ServerError::Config(format!("{name}: {e}")))
        }
        "yaml" | "yml" => serde_yaml_ng::from_str::<Value>(&text)
            .map_err(|e| ServerError::Config(format!("{name}: {e}"))),
        _ => Err(ServerError::Config(format!(
            "{name}: unknown config format (use .json, .toml, .yaml or .yml)"
        ))),
    }
}

/// Every problem of a file, numbered in one error.
fn all_problems(path: Option<&Path>, problems: Vec<String>) -> ServerError {
    let file = path.map_or("the configuration".to_string(), |p| p.display().to_string());
    let n = problems.len();
    ServerError::Config(format!(
        "{n} problem{} in {file}:\n  - {}",
        if n == 1 { "" } else { "s" },
        problems.join("\n  - ")
    ))
}

/// What an item of each list of sections looks like, for the review of the file.
pub(super) fn templates() -> migrate::Templates {
    // Every key of an item shows only when it is set (a `name` left empty is not written).
    let json = |v: Result<Value, serde_json::Error>| {
        let mut v = v.expect("defaults serialize");
        v["name"] = Value::String("name".into());
        v
    };
    migrate::Templates {
        namespace: json(serde_json::to_value(
            rotor_core::config::NamespaceConfig::default(),
        )),
        rpc_namespace: json(serde_json::to_value(
            rotor_core::config::RpcOptions::default(),
        )),
        proxy: json(serde_json::to_value(
            rotor_core::config::NamedProxyConfig::default(),
        )),
    }
}

/// Every leaf of the default configuration with its default value (arrays and empty maps,
/// such as `static_headers`, count as leaves).
pub(super) fn leaf_paths(value: &Value) -> Vec<(Vec<String>, Value)> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            other => out.push((prefix.clone(), other.clone())),
        }
    }
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Reads a text value as the same type as the default: strings stay strings, numbers,
/// booleans, lists and objects are parsed as JSON.
fn parse_like(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean")),
        },
        Value::Number(_) => {
            serde_json::from_str(raw).map_err(|_| format!("{raw:?} is not a number"))
        }
        _ => Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))),
    }
}

/// The default configuration as pretty JSON (for `rotor genconfig`).
pub fn default_json() -> String {
    serde_json::to_string_pretty(&Config::default()).expect("config serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EngineKind, LogFormat, StorageKind};

    fn load(sets: &[&str]) -> Result<Config, String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, Vec::new(), &sets).map_err(|e| e.to_string())
    }

    #[test]
    fn kinds_are_checked_by_their_types_and_named_in_errors() {
        let err = load(&["storage.type=mongo"]).unwrap_err();
        assert!(
            err.contains("storage.type") && err.contains("memory") && err.contains("postgres"),
            "{err}"
        );
        let err = load(&["engine.type=etcd"]).unwrap_err();
        assert!(
            err.contains("engine.type") && err.contains("redis"),
            "{err}"
        );
        let err = load(&["broker.type=nats"]).unwrap_err();
        assert!(err.contains("broker.type"), "{err}");
        let err = load(&["log.format=xml"]).unwrap_err();
        assert!(err.contains("log.format") && err.contains("json"), "{err}");
        let err = load(&["storage.type=postgres"]).unwrap_err();
        assert!(err.contains("storage.postgres.dsn"), "{err}");
    }

    #[test]
    fn kinds_read_from_files_env_and_sets() {
        let c = load(&[
            "storage.type=postgres",
            "storage.postgres.dsn=postgres://db/x",
        ])
        .unwrap();
        assert_eq!(c.storage.kind, StorageKind::Postgres);
        let env = vec![
            ("ROTOR_ENGINE_TYPE".to_string(), "redis".to_string()),
            ("ROTOR_LOG_FORMAT".to_string(), "json".to_string()),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.engine.kind, EngineKind::Redis);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.history_redis().is_some() && c.broker_redis().is_some());
        let defaults: Value = serde_json::from_str(&default_json()).unwrap();
        assert_eq!(defaults["storage"]["type"], "memory");
        assert_eq!(defaults["log"]["format"], "text");
    }

    #[test]
    fn sentinel_options_take_centrifugos_names_and_need_the_master_name() {
        let env = vars(&[
            ("CENTRIFUGO_ENGINE_TYPE", "redis"),
            (
                "CENTRIFUGO_ENGINE_REDIS_SENTINEL_ADDRESS",
                "127.0.0.1:26379,127.0.0.1:26380",
            ),
            ("CENTRIFUGO_ENGINE_REDIS_SENTINEL_MASTER_NAME", "mymaster"),
            ("CENTRIFUGO_ENGINE_REDIS_SENTINEL_PASSWORD", "s3cret"),
        ]);
        let c = Config::load(None, env, &[]).unwrap();
        let redis = c.broker_redis().unwrap();
        assert_eq!(
            redis.sentinel_address,
            vec!["127.0.0.1:26379", "127.0.0.1:26380"]
        );
        assert_eq!(redis.sentinel_master_name, "mymaster");
        assert!(
            !format!("{redis:?}").contains("s3cret"),
            "the password stays out of logs"
        );
        let err = load(&[
            "engine.type=redis",
            "engine.redis.sentinel_address=127.0.0.1:26379",
        ])
        .unwrap_err();
        assert!(err.contains("sentinel_master_name"), "{err}");
        let err = load(&[
            "engine.type=redis",
            "engine.redis.sharded_pub_sub_partitions=64",
        ])
        .unwrap_err();
        assert!(
            err.contains("sharded_pub_sub_partitions") && err.contains("cluster_address"),
            "{err}"
        );
        let c = load(&[
            "engine.type=redis",
            "engine.redis.cluster_address=127.0.0.1:7000",
            "engine.redis.sharded_pub_sub_partitions=64",
        ])
        .unwrap();
        assert_eq!(c.broker_redis().unwrap().sharded_pub_sub_partitions, 64);
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn centrifugo_variables_are_aliases_and_rotors_win() {
        let env = vars(&[
            ("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", "from-centrifugo"),
            ("CENTRIFUGO_HTTP_API_KEY", "centrifugo-key"),
            ("ROTOR_HTTP_API_KEY", "rotor-key"),
            (
                "CENTRIFUGO_CLIENT_ALLOWED_ORIGINS",
                "[\"https://app.example\"]",
            ),
        ]);
        let (c, warnings) = Config::load_with_warnings(None, env, &[]).unwrap();
        assert_eq!(c.client.token.hmac_secret_key, "from-centrifugo");
        assert_eq!(
            c.client.allowed_origins,
            vec!["https://app.example".to_string()]
        );
        assert_eq!(c.http_api.key, "rotor-key", "ROTOR_ wins");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("CENTRIFUGO_HTTP_API_KEY")
                && warnings[0].contains("ROTOR_HTTP_API_KEY"),
            "{warnings:?}"
        );
        // The order of the environment does not matter.
        let env = vars(&[
            ("ROTOR_HTTP_API_KEY", "rotor-key"),
            ("CENTRIFUGO_HTTP_API_KEY", "centrifugo-key"),
        ]);
        let (c, _) = Config::load_with_warnings(None, env, &[]).unwrap();
        assert_eq!(c.http_api.key, "rotor-key");
    }

    #[test]
    fn variables_that_name_no_key_are_warnings_naming_them() {
        let env = vars(&[
            ("ROTOR_BIN", "/usr/local/bin/rotor"),
            ("CENTRIFUGO_NOT_A_KEY", "x"),
            ("ROTOR_LOG_LEVEL", "debug"),
            ("ROTOR_HTTP_API_KEY", "k"),
        ]);
        let (c, warnings) = Config::load_with_warnings(None, env, &[]).unwrap();
        assert_eq!(c.log.level, "debug");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("ROTOR_BIN")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("CENTRIFUGO_NOT_A_KEY")),
            "{warnings:?}"
        );
        // A bad value is still an error, naming the variable or its key.
        let err = Config::load(
            None,
            vars(&[("CENTRIFUGO_HTTP_SERVER_PORT", "eighty")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CENTRIFUGO_HTTP_SERVER_PORT"), "{err}");
        let err = Config::load(None, vars(&[("CENTRIFUGO_ENGINE_TYPE", "etcd")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.type"), "{err}");
    }

    #[test]
    fn an_empty_api_key_is_a_warning_the_cli_can_show() {
        let (_, warnings) = Config::load_with_warnings(None, Vec::new(), &[]).unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("http_api.key")),
            "{warnings:?}"
        );
        let (_, warnings) =
            Config::load_with_warnings(None, Vec::new(), &["http_api.insecure=true".into()])
                .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

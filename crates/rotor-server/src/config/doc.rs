//! The configuration described from its own definitions, for `rotor configdoc`,
//! `rotor defaultenv` and `rotor defaultconfig`: every key's path, type and default come
//! from `Config::default()`, its meaning from the comments of config/rotor.example.toml
//! (built into the binary; a test holds that file to every key at its default, and another
//! to a meaning for every key). Nothing here reads or writes files.

use serde_json::Value;

use super::Config;

/// The reference configuration with its comments.
const EXAMPLE: &str = include_str!("../../../../config/rotor.example.toml");

/// One key of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    /// `client.token.hmac_secret_key`
    pub path: String,
    /// `boolean`, `integer`, `string`, `duration`, `list`, `number`.
    pub kind: &'static str,
    /// The default as it is written in a TOML file.
    pub default: String,
    /// What it does (the example file's comment above it, or above its group of keys).
    pub meaning: String,
}

/// Every key of the configuration (lists of sections, like `channel.namespaces`, are one
/// key each), in the order of the default configuration.
pub fn keys() -> Vec<KeyDoc> {
    let defaults = serde_json::to_value(Config::default()).expect("config serializes");
    let meanings = meanings(EXAMPLE);
    super::load::leaf_paths(&defaults)
        .into_iter()
        .map(|(path, default)| {
            let path = path.join(".");
            KeyDoc {
                kind: kind(&path, &default),
                default: toml_value(&default),
                meaning: meanings
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default(),
                path,
            }
        })
        .collect()
}

/// `rotor configdoc`: every key with its type, default and meaning.
pub fn render() -> String {
    let mut out = String::from(
        "rotor configuration keys: path (type, default), then what it does.\n\
         Set in a file, as ROTOR_<PATH> (or CENTRIFUGO_<PATH>) in the environment, or with --set path=value.\n\n",
    );
    for k in keys() {
        out.push_str(&format!("{} ({}, default {})\n", k.path, k.kind, k.default));
        for line in k.meaning.lines() {
            out.push_str(&format!("    {line}\n"));
        }
        out.push('\n');
    }
    out
}

/// `rotor defaultenv`: every key as an environment variable with its default.
pub fn default_env(prefix: &str) -> String {
    keys()
        .into_iter()
        .map(|k| {
            let name = format!("{prefix}{}", k.path.replace('.', "_").to_uppercase());
            let value = k.default.trim_matches('"').to_string();
            format!("{name}={}\n", shell_quote(&value))
        })
        .collect()
}

fn shell_quote(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
        && !v.is_empty()
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

fn kind(path: &str, default: &Value) -> &'static str {
    match default {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(s) if looks_like_duration(s) => "duration",
        Value::String(_) if path.ends_with("_ttl") || path.ends_with("timeout") => "duration",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
        Value::Null => "optional",
    }
}

fn looks_like_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty()
        && digits.len() < s.len()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && matches!(&s[digits.len()..], "ms" | "s" | "m" | "h" | "us" | "ns")
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Key path -> the comment that explains it, read from the example file: the comment block
/// right above a key, or else the block above the run of keys it belongs to, or else what
/// explains its section (the comment above the section's header, or its first comment),
/// or else its parent section's.
fn meanings(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Section -> what explains it.
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    let mut comment: Vec<String> = Vec::new();
    let mut group = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            comment.clear();
            group.clear();
            continue;
        }
        if let Some(text) = line.strip_prefix('#') {
            comment.push(text.strip_prefix(' ').unwrap_or(text).to_string());
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            sections.push((section.clone(), comment.join("\n")));
            comment.clear();
            group.clear();
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        if !comment.is_empty() {
            group = comment.join("\n");
            comment.clear();
            if let Some(s) = sections
                .last_mut()
                .filter(|s| s.0 == section && s.1.is_empty())
            {
                s.1 = group.clone();
            }
        }
        let key = key.trim();
        let path = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        out.push((path, group.clone()));
    }
    for (path, meaning) in &mut out {
        let mut at = path.rsplit_once('.').map(|(s, _)| s.to_string());
        while meaning.is_empty() {
            let Some(s) = at.take() else { break };
            if let Some((_, m)) = sections
                .iter()
                .find(|(name, m)| *name == s && !m.is_empty())
            {
                *meaning = m.clone();
            }
            at = s.rsplit_once('.').map(|(p, _)| p.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_type_a_default_and_a_meaning() {
        let keys = keys();
        assert!(keys.len() > 100, "{}", keys.len());
        let undocumented: Vec<&str> = keys
            .iter()
            .filter(|k| k.meaning.trim().is_empty())
            .map(|k| k.path.as_str())
            .collect();
        assert!(
            undocumented.is_empty(),
            "config/rotor.example.toml has no comment for: {undocumented:?}"
        );
        let port = keys.iter().find(|k| k.path == "http_server.port").unwrap();
        assert_eq!((port.kind, port.default.as_str()), ("integer", "8000"));
        let ping = keys
            .iter()
            .find(|k| k.path == "client.ping_interval")
            .unwrap();
        assert_eq!((ping.kind, ping.default.as_str()), ("duration", "\"25s\""));
        assert!(ping.meaning.contains("3012"), "{}", ping.meaning);
    }

    #[test]
    fn defaultenv_names_every_key() {
        let env = default_env("ROTOR_");
        assert!(env.contains("ROTOR_HTTP_SERVER_PORT=8000\n"), "{env}");
        assert!(env.contains("ROTOR_CLIENT_PING_INTERVAL=25s\n"), "{env}");
        assert!(
            env.contains("ROTOR_HTTP_SERVER_TRUSTED_PROXIES='[]'\n"),
            "{env}"
        );
        assert_eq!(env.lines().count(), keys().len());
    }
}

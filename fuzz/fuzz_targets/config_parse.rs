//! rotor-server's configuration loading, `Config::load`: file parsing (TOML, JSON or YAML by
//! extension), `ROTOR_*` environment overrides, `--set key=value` overrides, typed
//! deserialization (durations, one-or-many lists, namespaces, token keys) and `validate`.
//!
//! Only a path-based loader is public, so the input is written to a file in a per-process
//! temporary directory (`$ROTOR_FUZZ_TMP`, else /dev/shm or the
//! system temp dir; rewritten for each input) and loaded from there.
//!
//! Input layout: the text up to a line `#--set` (a TOML/YAML comment, so seeds are plain
//! config files) is the file; each following line is a `--set` value, until a line `#--env`,
//! after which each line is an environment variable `NAME=value`. The format is JSON when
//! the file text starts with `{`, YAML when it starts with `---` or `%YAML`, else TOML.
//!
//! Properties: never panics; a configuration that loads serializes to JSON (what
//! `rotor genconfig` does) and that JSON loads again.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rotor_server::Config;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // run.sh points ROTOR_FUZZ_TMP at a directory it removes afterwards.
        let base = match std::env::var_os("ROTOR_FUZZ_TMP") {
            Some(d) => PathBuf::from(d),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let d = base.join(format!("rotor-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir for config files");
        d
    })
}

fn load(
    name: &str,
    text: &str,
    env: &[(String, String)],
    sets: &[String],
) -> Result<Config, String> {
    let path = dir().join(name);
    std::fs::write(&path, text).expect("write config file");
    Config::load(Some(&path), env.iter().cloned(), sets).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return; // read_to_string refuses non-UTF-8 files before any parsing
    };
    let (file, overrides) = if let Some(rest) = input.strip_prefix("#--set\n") {
        ("", rest)
    } else {
        match input.find("\n#--set\n") {
            Some(i) => (&input[..i + 1], &input[i + "\n#--set\n".len()..]),
            None => (input, ""),
        }
    };
    let (sets, env) = match overrides.find("#--env\n") {
        Some(i) => (&overrides[..i], &overrides[i + "#--env\n".len()..]),
        None => (overrides, ""),
    };
    let sets: Vec<String> = sets
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let trimmed = file.trim_start();
    let name = if trimmed.starts_with('{') {
        "config.json"
    } else if trimmed.starts_with("---") || trimmed.starts_with("%YAML") {
        "config.yaml"
    } else {
        "config.toml"
    };

    if let Ok(config) = load(name, file, &env, &sets) {
        let json = serde_json::to_string_pretty(&config).expect("config serializes");
        if let Err(e) = load("roundtrip.json", &json, &[], &[]) {
            panic!("a loaded configuration does not load again from its own JSON: {e}\n{json}");
        }
    }
});

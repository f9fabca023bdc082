//! The `rotor` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rand::Rng;

use crate::config::Config;
use crate::error::ServerError;
use crate::server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "rotor",
    version,
    about = "rotor: a real-time messaging server speaking the Centrifugo protocol"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Environment variables the command line reads itself (not configuration overrides).
const CLI_ENV: [&str; 2] = ["ROTOR_CONFIG", "ROTOR_API_KEY_FOR_CLI"];

/// Options every command accepts.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Configuration file (.json, .toml, .yaml). Without it, built-in defaults are used.
    #[arg(long, short = 'c', global = true, env = "ROTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set client.ping_interval=10s` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub sets: Vec<String>,
    /// Shorthand for `--set http_server.port=N`.
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Shorthand for `--set http_server.address=A`.
    #[arg(long, global = true)]
    pub address: Option<String>,
    /// Shorthand for `--set log.level=L`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default command).
    Serve,
    /// Print a new configuration with every key at its default and fresh secrets.
    Genconfig {
        /// Write to this file instead of standard output (refuses to overwrite).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Print an HS256 connection token signed with `client.token.hmac_secret_key`.
    Gentoken {
        /// The user id (`sub`); empty for an anonymous token.
        #[arg(long, short = 'u', default_value = "")]
        user: String,
        /// Lifetime, e.g. `3600s`, `1h`; `0` for a token without `exp`.
        #[arg(long, short = 't', default_value = "3600s")]
        ttl: String,
    },
    /// Verify a connection token against the configuration and print its claims.
    Checktoken {
        /// The token.
        token: String,
    },
    /// Print an HS256 subscription token for a user and a channel, signed with
    /// `client.subscription_token.hmac_secret_key` when subscription tokens have their own
    /// keys, else `client.token.hmac_secret_key`.
    Gensubtoken {
        /// The user id (`sub`).
        #[arg(long, short = 'u', default_value = "")]
        user: String,
        /// The channel (`channel`).
        #[arg(long, short = 's')]
        channel: String,
        /// Lifetime, e.g. `3600s`, `1h`; `0` for a token without `exp`.
        #[arg(long, short = 't', default_value = "3600s")]
        ttl: String,
    },
    /// Verify a subscription token against the configuration and print its claims.
    Checksubtoken {
        /// The token.
        token: String,
    },
    /// Print rotor's version.
    Version,
    /// Print the configuration with every key at its default (no secrets: see genconfig).
    Defaultconfig {
        /// json, toml or yaml (default: from --output's extension, else json).
        #[arg(long)]
        format: Option<String>,
        /// Write to this file instead of standard output (refuses to overwrite).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Print every key as an environment variable with its default.
    Defaultenv {
        /// Centrifugo's names (CENTRIFUGO_*), which rotor reads too.
        #[arg(long)]
        centrifugo: bool,
    },
    /// Print every configuration key with its type, default and meaning.
    Configdoc,
    /// Load and check the configuration, then exit.
    Checkconfig,
    /// Apply pending database migrations (storage.type = "postgres"), then exit.
    Migrate,
    /// Revoke a token by its jti on a running server (through its API).
    Revoke {
        /// The token's jti.
        jti: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        /// When the token itself expires (Unix seconds); the entry is dropped after it.
        #[arg(long, default_value_t = 0)]
        expire_at: u64,
        /// Whose token it is, if known.
        #[arg(long, default_value = "")]
        user: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revocations recorded by a running server.
    Revocations {
        #[command(subcommand)]
        command: RevocationsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RevocationsCommand {
    /// List revocations, newest first.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only since this time: Unix seconds, or a duration ago such as 1h.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the server API is; defaults come from the configuration.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// API base URL, e.g. http://127.0.0.1:8000/api (default: from http_server and http_api).
    #[arg(long)]
    pub api_url: Option<String>,
    /// API key (default: http_api.key).
    #[arg(long, env = "ROTOR_API_KEY_FOR_CLI", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ApiArgs {
    fn resolve(&self, config: &Config) -> (String, String) {
        let url = self.api_url.clone().unwrap_or_else(|| {
            let host = match config.http_server.address.as_str() {
                "" | "0.0.0.0" | "::" => "127.0.0.1",
                other => other,
            };
            format!(
                "http://{host}:{}{}",
                config.http_server.port, config.http_api.handler_prefix
            )
        });
        (
            url.trim_end_matches('/').to_string(),
            self.api_key
                .clone()
                .unwrap_or_else(|| config.http_api.key.clone()),
        )
    }
}

/// Calls the server API of a running server.
fn call_api(
    url: &str,
    key: &str,
    method: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, ServerError> {
    block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{url}/{method}"))
            .header("X-API-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| ServerError::Cli(format!("cannot reach {url}: {e}")))?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ServerError::Cli("the server refused the API key".into()));
        }
        if let Some(e) = v.get("error") {
            return Err(ServerError::Cli(format!(
                "{method} failed: {} ({})",
                e["message"].as_str().unwrap_or("?"),
                e["code"]
            )));
        }
        if !status.is_success() {
            return Err(ServerError::Cli(format!(
                "{method} failed with HTTP {status}"
            )));
        }
        Ok(v["result"].clone())
    })
}

/// Runs one async operation of a short-lived command on a current-thread runtime.
fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, ServerError>>,
) -> Result<T, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Cli(e.to_string()))?;
    runtime.block_on(f)
}

fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

impl Common {
    /// The configuration, for commands that do not log: warnings go to standard error.
    fn load(&self) -> Result<Config, ServerError> {
        let (config, warnings) = self.load_with_warnings()?;
        for w in warnings {
            eprintln!("rotor: warning: {w}");
        }
        Ok(config)
    }

    /// The configuration and logging set up from it; warnings go to the log.
    fn load_and_log(&self) -> Result<Config, ServerError> {
        let (config, warnings) = self.load_with_warnings()?;
        init_logging(&config);
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(config)
    }

    fn load_with_warnings(&self) -> Result<(Config, Vec<String>), ServerError> {
        let mut sets = Vec::new();
        if let Some(p) = self.port {
            sets.push(format!("http_server.port={p}"));
        }
        if let Some(a) = &self.address {
            sets.push(format!("http_server.address={a}"));
        }
        if let Some(l) = &self.log_level {
            sets.push(format!("log.level={l}"));
        }
        sets.extend(self.sets.iter().cloned());
        // The CLI's own variables are not configuration keys.
        let env = std::env::vars().filter(|(k, _)| !CLI_ENV.contains(&k.as_str()));
        Config::load_with_warnings(self.config.as_deref(), env, &sets)
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        let level = &config.log.level;
        let spec = if level.contains('=') || level.contains(',') {
            level.clone()
        } else {
            // hyper's per-connection errors (a client that closed a stream mid-response,
            // an incomplete request) are the client's doing, not the server's: not logged
            // at the default level. RUST_LOG or a full spec in log.level brings them back.
            format!(
                "warn,warp::server::run=off,rotor={level},rotor_server={level},rotor_core={level}"
            )
        };
        EnvFilter::new(spec)
    });
    // tungstenite logs the text of every frame at trace level, connection tokens included.
    // When anything is logged at trace, those crates are held to info (a directive of its
    // own would otherwise switch them on at a level the filter did not ask for).
    let trace = filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE);
    let filter = if trace {
        ["tungstenite=info", "tokio_tungstenite=info"]
            .into_iter()
            .fold(filter, |f, d| {
                f.add_directive(d.parse().expect("a valid directive"))
            })
    } else {
        filter
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.format == crate::config::LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// An HS256 token of `claims` with `iat`, `exp` after `ttl` (none for `0`) and the audience
/// and issuer `keys` check, signed with their HMAC secret (checked set by the caller).
fn hs256(
    mut claims: serde_json::Value,
    ttl: &str,
    keys: &rotor_auth::TokenConfig,
) -> Result<String, ServerError> {
    let ttl = rotor_core::duration::parse(ttl).map_err(ServerError::Cli)?;
    claims["iat"] = now().into();
    if !ttl.is_zero() {
        claims["exp"] = (now() + ttl.as_secs().max(1)).into();
    }
    if !keys.audience.is_empty() {
        claims["aud"] = keys.audience.clone().into();
    }
    if !keys.issuer.is_empty() {
        claims["iss"] = keys.issuer.clone().into();
    }
    rotor_auth::sign_hmac(&claims, &keys.hmac_secret_key)
        .map_err(|e| ServerError::Cli(e.to_string()))
}

/// When a verified token expires, as the check commands say it.
fn expires(at: Option<u64>) -> String {
    match at {
        Some(at) => format!("in {}s (at {at})", at.saturating_sub(now())),
        None => "never".to_string(),
    }
}

/// Writes `text` to a new file (never over an existing one), or prints it.
fn write_or_print(output: Option<PathBuf>, text: &str) -> Result<(), ServerError> {
    match output {
        Some(path) => {
            if path.exists() {
                return Err(ServerError::Cli(format!(
                    "{} exists; not overwriting it",
                    path.display()
                )));
            }
            std::fs::write(&path, text)
                .map_err(|e| ServerError::Cli(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor: {}", crate::error::report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), ServerError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = cli.common.load_and_log()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| ServerError::Cli(e.to_string()))?;
            runtime.block_on(serve(config, &cli.common))
        }
        Command::Genconfig { output } => {
            let mut config = Config::default();
            config.client.token.hmac_secret_key = secret();
            config.http_api.key = secret();
            // Ready for the admin UI: setting admin.enabled is all it takes.
            config.admin.password = secret();
            config.admin.secret = secret();
            let text = serde_json::to_string_pretty(&config).expect("config serializes") + "\n";
            write_or_print(output, &text)
        }
        Command::Gentoken { user, ttl } => {
            let config = cli.common.load()?;
            let secret = &config.client.token.hmac_secret_key;
            if secret.is_empty() {
                return Err(ServerError::Cli(
                    "client.token.hmac_secret_key is not set; gentoken signs HS256 tokens with it"
                        .into(),
                ));
            }
            let claims = serde_json::json!({ "sub": user });
            println!("{}", hs256(claims, &ttl, &config.client.token)?);
            Ok(())
        }
        Command::Checktoken { token } => {
            let config = cli.common.load()?;
            let verifier = rotor_auth::TokenVerifier::new(&config.client.token)
                .map_err(|e| ServerError::Config(e.to_string()))?;
            let t = block_on(async {
                verifier
                    .verify_connect(&token, now())
                    .await
                    .map_err(|e| ServerError::Cli(format!("token rejected: {e}")))
            })?;
            println!(
                "valid token for user {:?}, expires {}",
                t.user,
                expires(t.expire_at)
            );
            if let Some(jti) = &t.jti {
                println!("jti: {jti}");
            }
            if !t.channels.is_empty() {
                println!("channels: {}", t.channels.join(", "));
            }
            Ok(())
        }
        Command::Gensubtoken { user, channel, ttl } => {
            let config = cli.common.load()?;
            let keys = config
                .client
                .subscription_token
                .token_config(&config.client.token);
            if keys.hmac_secret_key.is_empty() {
                return Err(ServerError::Cli(
                    "no HMAC secret for subscription tokens (client.subscription_token.hmac_secret_key, or client.token.hmac_secret_key when subscription tokens share its keys)".into(),
                ));
            }
            let claims = serde_json::json!({ "sub": user, "channel": channel });
            println!("{}", hs256(claims, &ttl, &keys)?);
            Ok(())
        }
        Command::Checksubtoken { token } => {
            let config = cli.common.load()?;
            let keys = config
                .client
                .subscription_token
                .token_config(&config.client.token);
            let verifier = rotor_auth::TokenVerifier::new(&keys)
                .map_err(|e| ServerError::Config(e.to_string()))?;
            let t = block_on(async {
                verifier
                    .verify_subscribe(&token, now())
                    .await
                    .map_err(|e| ServerError::Cli(format!("token rejected: {e}")))
            })?;
            println!(
                "valid subscription token for user {:?} and channel {:?}, expires {}",
                t.user,
                t.channel,
                expires(t.expire_at)
            );
            Ok(())
        }
        Command::Version => {
            println!(
                "rotor {} (Centrifugo client protocol v2, JSON and Protobuf; Centrifugo v6 server API and configuration)",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Command::Defaultconfig { format, output } => {
            let format = format
                .or_else(|| {
                    output
                        .as_ref()
                        .and_then(|p| p.extension())
                        .map(|e| e.to_string_lossy().to_lowercase())
                })
                .unwrap_or_else(|| "json".into());
            let config = Config::default();
            let text = match format.as_str() {
                "json" => serde_json::to_string_pretty(&config).expect("config serializes") + "\n",
                "toml" => {
                    toml::to_string(&config).map_err(|e| ServerError::Cli(format!("toml: {e}")))?
                }
                "yaml" | "yml" => serde_yaml_ng::to_string(&config)
                    .map_err(|e| ServerError::Cli(format!("yaml: {e}")))?,
                other => {
                    return Err(ServerError::Cli(format!(
                        "unknown format {other:?}: use json, toml or yaml"
                    )))
                }
            };
            write_or_print(output, &text)
        }
        Command::Defaultenv { centrifugo } => {
            let prefix = if centrifugo { "CENTRIFUGO_" } else { "ROTOR_" };
            print!("{}", crate::config::doc::default_env(prefix));
            Ok(())
        }
        Command::Configdoc => {
            print!("{}", crate::config::doc::render());
            Ok(())
        }
        Command::Checkconfig => {
            let config = cli.common.load()?;
            Server::check(&config)?;
            println!("configuration OK");
            Ok(())
        }
        Command::Revoke {
            jti,
            reason,
            expire_at,
            user,
            api,
        } => {
            let config = cli.common.load()?;
            let (url, key) = api.resolve(&config);
            call_api(
                &url,
                &key,
                "revoke_token",
                serde_json::json!({"uid": jti, "reason": reason, "expire_at": expire_at, "user": user, "actor": cli_actor()}),
            )?;
            println!("revoked {jti}");
            Ok(())
        }
        Command::Revocations {
            command:
                RevocationsCommand::List {
                    user,
                    since,
                    limit,
                    json,
                    api,
                },
        } => {
            let config = cli.common.load()?;
            let (url, key) = api.resolve(&config);
            let since = match since {
                None => None,
                Some(s) => Some(match s.parse::<u64>() {
                    Ok(t) => t,
                    Err(_) => now().saturating_sub(
                        rotor_core::duration::parse(&s)
                            .map_err(ServerError::Cli)?
                            .as_secs(),
                    ),
                }),
            };
            let result = call_api(
                &url,
                &key,
                "revoked_tokens",
                serde_json::json!({"user": user, "since": since, "limit": limit}),
            )?;
            let tokens = result["tokens"].as_array().cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tokens).expect("serializes")
                );
                return Ok(());
            }
            println!(
                "{:<20} {:<24} {:<16} {:>12} {:>6} {:<16} REASON",
                "REVOKED", "JTI", "USER", "TOKEN_EXPIRY", "KICKED", "ACTOR"
            );
            for t in &tokens {
                let ago = now().saturating_sub(t["revoked_at"].as_u64().unwrap_or(0));
                let expiry = match t["expire_at"].as_u64().unwrap_or(0) {
                    0 => "-".to_string(),
                    at => at.to_string(),
                };
                println!(
                    "{:<20} {:<24} {:<16} {:>12} {:>6} {:<16} {}",
                    format!("{ago}s ago"),
                    t["jti"].as_str().unwrap_or(""),
                    t["user"].as_str().unwrap_or(""),
                    expiry,
                    t["kicked"],
                    t["actor"].as_str().unwrap_or(""),
                    t["reason"].as_str().unwrap_or("")
                );
            }
            if tokens.is_empty() {
                println!("(no revocations)");
            }
            Ok(())
        }
        Command::Migrate => {
            let config = cli.common.load_and_log()?;
            if config.storage.kind != crate::config::StorageKind::Postgres {
                return Err(ServerError::Cli(
                    "migrate needs storage.type = \"postgres\"".into(),
                ));
            }
            block_on(async {
                let pool =
                    rotor_store_postgres::connect(&config.storage.postgres.options()).await?;
                rotor_store_postgres::migrate(&pool).await?;
                println!(
                    "migrations applied (schema {:?})",
                    config.storage.postgres.schema
                );
                Ok(())
            })
        }
    }
}

async fn serve(config: Config, common: &Common) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal handlers go in before anyone can connect, so an early SIGTERM is still graceful
    // and an early SIGHUP is not the end of the process.
    let stop = shutdown_signal();
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the configuration is read at start only");
            None
        }
    };
    let running = Server::new(config).await?.start().await?;
    // The address on its own line, for scripts and tests that start rotor on port 0.
    println!("listening on {}", running.addr());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = async { hup.as_mut()?.recv().await } => reload(common, running.node()),
        }
    }
    tracing::info!("shutting down: closing connections with 3001");
    running.shutdown().await;
    Ok(())
}

/// SIGHUP: reads the configuration again (file, environment, flags) and hands the node its
/// token keys and channel options (`Node::reload`); connections stay. A configuration that
/// does not load or check keeps the one in use, and the log says why.
fn reload(common: &Common, node: &rotor_core::Node) {
    let loaded = common.load_with_warnings().and_then(|(config, warnings)| {
        Server::check(&config)?;
        Ok((config, warnings))
    });
    let (config, warnings) = match loaded {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %crate::error::report(&e), "SIGHUP: the configuration does not load; keeping the one in use");
            return;
        }
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    match node.reload(&config.core()) {
        Ok(()) => tracing::info!(
            namespaces = config.channel.namespaces.len(),
            "SIGHUP: token keys and channel options reloaded; connections kept"
        ),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the new configuration was refused; keeping the one in use")
        }
    }
}

/// Installs SIGINT/SIGTERM handlers now; the returned future completes on either signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

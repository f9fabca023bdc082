//! The `rotor` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rand::Rng;

use crate::config::Config;
use crate::server::Server;
use crate::ServerError;

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
    /// Load and check the configuration, then exit.
    Checkconfig,
    /// Apply pending database migrations (storage.type = "postgres"), then exit.
    Migrate,
}

impl Common {
    fn load(&self) -> Result<Config, ServerError> {
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
        let env = std::env::vars().filter(|(k, _)| k != "ROTOR_CONFIG");
        Config::load(self.config.as_deref(), env, &sets)
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        let level = &config.log.level;
        let spec = if level.contains('=') || level.contains(',') {
            level.clone()
        } else {
            format!("warn,rotor={level},rotor_server={level},rotor_core={level}")
        };
        EnvFilter::new(spec)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
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
            eprintln!("rotor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), ServerError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = cli.common.load()?;
            init_logging(&config);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| ServerError::Cli(e.to_string()))?;
            runtime.block_on(serve(config))
        }
        Command::Genconfig { output } => {
            let mut config = Config::default();
            config.client.token.hmac_secret_key = secret();
            config.http_api.key = secret();
            let text = serde_json::to_string_pretty(&config).expect("config serializes") + "\n";
            match output {
                Some(path) => {
                    if path.exists() {
                        return Err(ServerError::Cli(format!(
                            "{} exists; not overwriting it",
                            path.display()
                        )));
                    }
                    std::fs::write(&path, text).map_err(|e| {
                        ServerError::Cli(format!("cannot write {}: {e}", path.display()))
                    })?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
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
            let ttl = rotor_core::duration::parse(&ttl).map_err(ServerError::Cli)?;
            let mut claims = serde_json::json!({ "sub": user, "iat": now() });
            if !ttl.is_zero() {
                claims["exp"] = (now() + ttl.as_secs().max(1)).into();
            }
            if !config.client.token.audience.is_empty() {
                claims["aud"] = config.client.token.audience.clone().into();
            }
            if !config.client.token.issuer.is_empty() {
                claims["iss"] = config.client.token.issuer.clone().into();
            }
            let token = rotor_auth::sign_hmac(&claims, secret)
                .map_err(|e| ServerError::Cli(e.to_string()))?;
            println!("{token}");
            Ok(())
        }
        Command::Checktoken { token } => {
            let config = cli.common.load()?;
            let verifier = rotor_auth::TokenVerifier::new(&config.client.token)
                .map_err(|e| ServerError::Config(e.to_string()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ServerError::Cli(e.to_string()))?;
            let t = runtime
                .block_on(verifier.verify_connect(&token, now()))
                .map_err(|e| ServerError::Cli(format!("token rejected: {e}")))?;
            let expires = match t.expire_at {
                Some(at) => format!("in {}s (at {at})", at.saturating_sub(now())),
                None => "never".to_string(),
            };
            println!("valid token for user {:?}, expires {expires}", t.user);
            if let Some(jti) = &t.jti {
                println!("jti: {jti}");
            }
            if !t.channels.is_empty() {
                println!("channels: {}", t.channels.join(", "));
            }
            Ok(())
        }
        Command::Checkconfig => {
            let config = cli.common.load()?;
            Server::check(&config)?;
            println!("configuration OK");
            Ok(())
        }
        Command::Migrate => {
            let config = cli.common.load()?;
            init_logging(&config);
            if config.storage.kind != "postgres" {
                return Err(ServerError::Cli(
                    "migrate needs storage.type = \"postgres\"".into(),
                ));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ServerError::Cli(e.to_string()))?;
            runtime.block_on(async {
                let pool = rotor_store_postgres::connect(&config.storage.postgres.options())
                    .await
                    .map_err(|e| ServerError::Storage(e.to_string()))?;
                rotor_store_postgres::migrate(&pool)
                    .await
                    .map_err(|e| ServerError::Storage(e.to_string()))?;
                println!(
                    "migrations applied (schema {:?})",
                    config.storage.postgres.schema
                );
                Ok(())
            })
        }
    }
}

async fn serve(config: Config) -> Result<(), ServerError> {
    // Signal handlers go in before anyone can connect, so an early SIGTERM is still graceful.
    let signal = shutdown_signal();
    let running = Server::new(config).await?.start().await?;
    // The address on its own line, for scripts and tests that start rotor on port 0.
    println!("listening on {}", running.addr());
    signal.await;
    tracing::info!("shutting down: closing connections with 3001");
    running.shutdown().await;
    Ok(())
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

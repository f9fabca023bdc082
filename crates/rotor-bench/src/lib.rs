//! Benchmark and load tooling for rotor. Everything here is a *client* of a running rotor
//! server: it starts the `rotor` binary as a process and talks to it over HTTP and
//! WebSocket, the way users do. It must not link the server's crates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The `rotor` binary: `$ROTOR_BIN`, else `target/release/rotor` of this workspace.
pub fn rotor_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ROTOR_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/rotor");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release -p rotor-server` first (or set ROTOR_BIN)",
        p.display()
    );
    p
}

/// A rotor process started from a configuration file; killed on drop.
pub struct RotorProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl RotorProcess {
    /// Writes `config` (TOML) to a temporary file, starts rotor with it and waits until it
    /// listens. The config should use `port = 0`.
    pub async fn start(name: &str, config: &str) -> RotorProcess {
        let path =
            std::env::temp_dir().join(format!("rotor-bench-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(rotor_binary())
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("start rotor");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("rotor starts in time")
            .expect("read stdout")
            .expect("rotor printed its address");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected output {line:?}"))
            .parse()
            .expect("address");
        RotorProcess { child, addr }
    }

    /// The server's process id (for reading its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A keep-alive HTTP/1.1 client for rotor's server API.
pub struct ApiClient {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    key: String,
}

impl ApiClient {
    pub async fn connect(addr: SocketAddr, key: &str) -> ApiClient {
        let stream = TcpStream::connect(addr).await.expect("connect to rotor");
        stream.set_nodelay(true).expect("nodelay");
        ApiClient {
            stream: BufReader::new(stream),
            addr,
            key: key.to_string(),
        }
    }

    /// Calls `POST /api/<method>` and returns the JSON body.
    pub async fn call(&mut self, method: &str, body: &str) -> Value {
        let req = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.key,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write request");
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .await
                .expect("read response");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("content length");
            }
        }
        let mut buf = vec![0u8; length];
        self.stream.read_exact(&mut buf).await.expect("read body");
        serde_json::from_slice(&buf).expect("JSON body")
    }
}

/// Runs `psql` with one statement against `dsn` (used to reset benchmark schemas).
pub fn psql(dsn: &str, sql: &str) -> bool {
    std::process::Command::new("psql")
        .args([dsn, "-q", "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

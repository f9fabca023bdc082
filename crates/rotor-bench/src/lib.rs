//! Benchmark and load tooling for rotor. Everything here is a *client* of a running rotor
//! server: it starts the `rotor` binary as a process and talks to it over HTTP and
//! WebSocket, the way users do. It must not link the server's crates.
//!
//! The peers it measures rotor against are started the same way: `bench-ceiling` (this
//! crate's minimal tokio-tungstenite broadcast server, the practical ceiling) and
//! `nats-server` with its WebSocket listener.

pub mod load;
pub mod payload;
pub mod procfs;
pub mod tokens;

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

/// A server under test (rotor, the minimal broadcast ceiling or nats-server), killed on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Extra files to remove when the process ends.
    files: Vec<PathBuf>,
}

/// The server processes of this crate used to be only rotor; the name stays for the benches.
pub type RotorProcess = ServerProcess;

fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

async fn first_line_address(child: &mut Child, what: &str) -> SocketAddr {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} starts in time"))
        .expect("read stdout")
        .unwrap_or_else(|| panic!("{what} printed its address"));
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line.strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .parse()
        .expect("address")
}

/// A port that was free a moment ago (for servers that cannot report the one they took).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl ServerProcess {
    /// Writes `config` (TOML) to a temporary file, starts rotor with it and waits until it
    /// listens. The config should use `port = 0`.
    pub async fn start(name: &str, config: &str) -> ServerProcess {
        Self::rotor(name, config, None).await
    }

    /// rotor, optionally pinned to `cpus` (a `taskset -c` list).
    pub async fn rotor(name: &str, config: &str, cpus: Option<&str>) -> ServerProcess {
        let path =
            std::env::temp_dir().join(format!("rotor-bench-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, config).expect("write config");
        let mut child = command(&rotor_binary(), cpus)
            // rotor reads `ROTOR_*` variables as configuration (and warns about unknown ones).
            .env_remove("ROTOR_BIN")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start rotor");
        let addr = first_line_address(&mut child, "rotor").await;
        ServerProcess {
            child,
            addr,
            files: vec![path],
        }
    }

    /// The minimal tokio + tokio-tungstenite broadcast server (`bench-ceiling`).
    pub async fn ceiling(cpus: Option<&str>) -> ServerProcess {
        let bin = std::env::current_exe()
            .expect("own path")
            .with_file_name("bench-ceiling");
        assert!(
            bin.exists(),
            "{} not found: build rotor-bench",
            bin.display()
        );
        let mut child = command(&bin, cpus)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start bench-ceiling");
        let addr = first_line_address(&mut child, "bench-ceiling").await;
        ServerProcess {
            child,
            addr,
            files: vec![],
        }
    }

    /// `nats-server` with its WebSocket listener (plain ws, no auth); `addr` is the WebSocket
    /// address.
    pub async fn nats(cpus: Option<&str>) -> ServerProcess {
        let (port, ws_port) = (free_port(), free_port());
        let path =
            std::env::temp_dir().join(format!("rotor-bench-{}-nats.conf", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 1048576\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n  compression: false\n}}\n"
            ),
        )
        .expect("write nats config");
        let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = command(Path::new(&bin), cpus)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server (Debian package nats-server)");
        let addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse().expect("addr");
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                return ServerProcess {
                    child,
                    addr,
                    files: vec![path],
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not open its WebSocket port {ws_port}");
    }

    /// The server's process id (for reading its memory and CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
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

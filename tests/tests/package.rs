//! Packaging: `cargo install` from the repository, and the `.deb` built with cargo-deb,
//! installed with dpkg on this machine, serving `/health` as its `rotor` user with the
//! configuration its first install wrote, and purged again.
//!
//! A test binary of its own: cargo runs test binaries one after another, so the builds these
//! tests start never compete with the timing-sensitive end-to-end tests for the cores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rotor_tests::*;
use tokio::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command to completion; its success and output (stdout then stderr).
async fn sh(program: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn cargo_install_from_the_repository_gives_a_working_rotor() {
    let root = std::env::temp_dir().join(format!("rotor-install-{}", std::process::id()));
    let target = workspace().join("target");
    // Debug, into the workspace's target directory: what the tests built is reused.
    let (ok, out) = sh(
        &cargo(),
        &[
            "install",
            "--path",
            "crates/rotor-server",
            "--debug",
            "--locked",
            "--root",
            root.to_str().unwrap(),
        ],
        &[("CARGO_TARGET_DIR", target.to_str().unwrap())],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = sh(root.join("bin/rotor").to_str().unwrap(), &["version"], &[]).await;
    assert!(ok && out.starts_with("rotor "), "{out}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Removes a file however the test ends.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn the_deb_installs_with_dpkg_and_serves_health() {
    let test = "the_deb_installs_with_dpkg_and_serves_health";
    let root = sh("id", &["-u"], &[]).await.1.trim() == "0";
    let (deb_tool, _) = sh(&cargo(), &["deb", "--version"], &[]).await;
    let (dpkg, _) = sh("dpkg", &["--version"], &[]).await;
    if !(root && deb_tool && dpkg) {
        skip(
            test,
            "root, dpkg and cargo-deb",
            &format!(
                "root {root}, cargo-deb {deb_tool}, dpkg {dpkg}; tests/sdk/install.sh installs cargo-deb"
            ),
        );
        return;
    }
    let (installed, _) = sh("dpkg", &["-s", "rotor"], &[]).await;
    if installed {
        skip(
            test,
            "a machine without the rotor package",
            &"rotor is installed here already; not touching it",
        );
        return;
    }
    // The binary the package holds: a debug build (linking only, after the tests' build).
    let (ok, out) = sh(
        &cargo(),
        &["build", "-p", "rotor-server", "--bin", "rotor"],
        &[],
    )
    .await;
    assert!(ok, "{out}");
    let deb = std::env::temp_dir().join(format!("rotor-{}.deb", std::process::id()));
    let _removed = Removed(deb.clone());
    let (ok, out) = sh(
        &cargo(),
        &[
            "deb",
            "-p",
            "rotor-server",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-o",
            deb.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}");

    let (ok, out) = sh("dpkg", &["-i", deb.to_str().unwrap()], &[]).await;
    let purge = || sh("dpkg", &["--purge", "rotor"], &[]);
    if !ok {
        let _ = purge().await;
        panic!("dpkg -i: {out}");
    }
    let checks = async {
        assert!(Path::new("/usr/bin/rotor").exists());
        assert!(
            Path::new("/lib/systemd/system/rotor.service").exists()
                || Path::new("/usr/lib/systemd/system/rotor.service").exists()
        );
        let (ok, out) = sh("stat", &["-c", "%U:%G %a", "/etc/rotor/config.json"], &[]).await;
        assert_eq!(
            (ok, out.trim()),
            (true, "root:rotor 640"),
            "first install writes the config"
        );
        let (ok, out) = sh(
            "/usr/bin/rotor",
            &["--config", "/etc/rotor/config.json", "checkconfig"],
            &[],
        )
        .await;
        assert!(ok, "{out}");
        // Serves as its own user (uid and gid of `rotor`) with the configuration the package
        // wrote.
        let port = free_port().to_string();
        let id = |flag: &'static str| async move {
            sh("id", &[flag, "rotor"], &[])
                .await
                .1
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        let (uid, gid) = (id("-u").await, id("-g").await);
        let mut server = Command::new("/usr/bin/rotor")
            .args([
                "--config",
                "/etc/rotor/config.json",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
            ])
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                drop(s);
                let (status, _) = http_raw(
                    addr,
                    &format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
                )
                .await;
                assert_eq!(status, 200);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the packaged rotor never listened"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = server.kill().await;
        let _ = server.wait().await;
    };
    // Purged whatever happened above, so the machine is left as it was.
    let outcome = tokio::spawn(checks).await;
    let (ok, out) = purge().await;
    assert!(ok, "dpkg --purge: {out}");
    assert!(
        !Path::new("/etc/rotor").exists(),
        "purge removes the configuration"
    );
    let (user_left, _) = sh("id", &["rotor"], &[]).await;
    assert!(!user_left, "purge removes the rotor user");
    let (group_left, _) = sh("getent", &["group", "rotor"], &[]).await;
    assert!(!group_left, "purge removes the rotor group");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

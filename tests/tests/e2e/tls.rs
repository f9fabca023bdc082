//! TLS on the server port: HTTPS and WebSocket over TLS with a certificate from files, which
//! is swapped without a restart on SIGHUP or when the files change; a broken replacement
//! keeps the old certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rotor_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and leaf certificates for 127.0.0.1 signed by it.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            skip(
                test,
                "openssl command",
                &"install the Debian package openssl",
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("rotor-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=rotor test CA",
            ],
        );
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        Some(Pki { dir })
    }

    /// Issues a leaf certificate; returns (cert path, key path).
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "1",
                "-extfile",
                "leaf.ext",
            ],
        );
        (self.dir.join(cert), self.dir.join(key))
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.dir.join("ca.pem")).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn handshake(pki: &Pki, server: &TestServer) -> Tls {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    pki.client()
        .connect(ServerName::try_from("127.0.0.1").unwrap().to_owned(), tcp)
        .await
        .expect("TLS handshake with a certificate the CA signed")
}

/// The DER of the certificate the server presents now.
async fn served(pki: &Pki, server: &TestServer) -> Vec<u8> {
    let tls = handshake(pki, server).await;
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Waits (up to 5 s) until the server presents the certificate in `cert`.
async fn wait_until_served(pki: &Pki, server: &TestServer, cert: &Path, failure: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while served(pki, server).await != der(cert) {
        assert!(tokio::time::Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGHUP to this process (the TLS servers it runs reload their certificates).
fn sighup() {
    let sent = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn tls_config(cert: &Path, key: &Path, watch: Duration) -> rotor_server::Config {
    let mut config = test_config();
    config.http_server.tls.enabled = true;
    config.http_server.tls.cert_pem = cert.display().to_string();
    config.http_server.tls.key_pem = key.display().to_string();
    config.http_server.tls.watch_interval = watch;
    config
}

fn install(from: &(PathBuf, PathBuf), to: &(PathBuf, PathBuf)) {
    // Written next to the target and renamed, as deployment tools do.
    for (src, dst) in [(&from.0, &to.0), (&from.1, &to.1)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test]
async fn https_and_wss_with_a_certificate_reloaded_on_sighup() {
    let Some(pki) = Pki::new("sighup") else {
        return;
    };
    let one = pki.leaf("one");
    let two = pki.leaf("two");
    let live = (pki.dir.join("live.pem"), pki.dir.join("live.key"));
    install(&one, &live);
    let server = TestServer::start(tls_config(&live.0, &live.1, Duration::ZERO)).await;

    // HTTPS.
    let mut tls = handshake(&pki, &server).await;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP on the TLS port is not served.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // WebSocket over TLS, with the protocol on top.
    let tls = handshake(&pki, &server).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://127.0.0.1/connection/websocket", tls)
        .await
        .expect("websocket over TLS");
    ws.send(
        json!({"id": 1, "connect": {"token": user_token("u")}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    let reply: Value = match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
            serde_json::from_str(&t).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    // An HTTP stream over TLS: hyper writes the response head, rotor the chunked body
    // through the TLS stream it was handed.
    let mut tls = handshake(&pki, &server).await;
    let body = json!({"token": user_token("s")}).to_string();
    let request = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"client\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("the connect push within 5 s")
            .unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");

    // New files alone change nothing (no watching here)...
    assert_eq!(served(&pki, &server).await, der(&one.0));
    install(&two, &live);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(&pki, &server).await, der(&one.0));
    // ...SIGHUP loads them, and the open WebSocket stays up.
    sighup();
    wait_until_served(&pki, &server, &two.0, "SIGHUP did not reload").await;
    ws.send(r#"{"id":2,"ping":{}}"#.into()).await.unwrap();
    match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
            assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["id"], 2)
        }
        other => panic!("the WebSocket did not survive the reload: {other:?}"),
    }

    // A broken certificate file is refused and the current one stays.
    std::fs::write(&live.0, "not a certificate").unwrap();
    sighup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(&pki, &server).await, der(&two.0));
    server.shutdown().await;
}

#[tokio::test]
async fn certificate_files_are_watched() {
    let Some(pki) = Pki::new("watch") else { return };
    let one = pki.leaf("one");
    let two = pki.leaf("two");
    let live = (pki.dir.join("live.pem"), pki.dir.join("live.key"));
    install(&one, &live);
    let server = TestServer::start(tls_config(&live.0, &live.1, Duration::from_millis(100))).await;
    assert_eq!(served(&pki, &server).await, der(&one.0));
    // File times have a coarse grain on some filesystems; make sure they move.
    tokio::time::sleep(Duration::from_millis(20)).await;
    install(&two, &live);
    wait_until_served(&pki, &server, &two.0, "the change was not picked up").await;
    server.shutdown().await;
}

/// The error a server with `config` stops at when it starts listening.
async fn startup_error(config: rotor_server::Config) -> String {
    match rotor_server::Server::new(config)
        .await
        .unwrap()
        .start()
        .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with a broken TLS setup"),
    }
}

#[tokio::test]
async fn a_bad_tls_setup_is_a_startup_error_that_names_the_file() {
    let Some(pki) = Pki::new("bad") else { return };
    let one = pki.leaf("one");
    let other = pki.leaf("other");
    let missing = pki.dir.join("missing.pem");
    let err = startup_error(tls_config(&missing, &one.1, Duration::ZERO)).await;
    assert!(err.contains("missing.pem"), "{err}");
    // A key that does not belong to the certificate.
    let err = startup_error(tls_config(&one.0, &other.1, Duration::ZERO)).await;
    assert!(err.contains("do not go together"), "{err}");
    let key_text = std::fs::read_to_string(&other.1).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(
        !err.contains(key_body),
        "the key leaked into the error: {err}"
    );
}

#[tokio::test]
async fn the_certificate_and_key_inline_as_pem_or_base64_as_in_centrifugo_v6() {
    let Some(pki) = Pki::new("inline") else {
        return;
    };
    let one = pki.leaf("one");
    let cert = std::fs::read_to_string(&one.0).unwrap();
    let key = std::fs::read_to_string(&one.1).unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (cert_value, key_value) in [(cert.clone(), key.clone()), (b64(&cert), b64(&key))] {
        let mut config = test_config();
        config.http_server.tls.enabled = true;
        config.http_server.tls.cert_pem = cert_value;
        config.http_server.tls.key_pem = key_value;
        // The inline key is a secret: Debug does not show it, in either form.
        let shown = format!("{:?}", config.http_server.tls);
        assert!(
            !shown.contains("PRIVATE KEY")
                && !shown.contains(&config.http_server.tls.key_pem[..40]),
            "{shown}"
        );
        let server = TestServer::start(config).await;
        assert_eq!(served(&pki, &server).await, der(&one.0));
        server.shutdown().await;
    }
}

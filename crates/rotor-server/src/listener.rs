//! The server port's accept loop: plain TCP or TLS (rustls, certificate reloaded on SIGHUP or
//! when its files change), a bound on how long a connection may take to send its headers,
//! the client's address (from the socket, or from proxy headers sent by a trusted proxy), and
//! a graceful stop. warp's own server offers none of these, so rotor serves warp's routes on
//! hyper connections it accepts itself.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use warp::http::HeaderMap;

use crate::config::{HttpServerConfig, TlsConfig};
use crate::error::ServerError;
use crate::socket;

/// The client's address as rotor believes it, put into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// One entry of `http_server.trusted_proxies`: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| {
            format!("http_server.trusted_proxies: {s:?} is not an IP address or CIDR")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| {
                    format!("http_server.trusted_proxies: bad prefix length in {s:?}")
                })?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer itself, unless the peer is a trusted proxy; then the
/// right-most address in `X-Forwarded-For` that is not a trusted proxy (what the first
/// proxy saw), or `X-Real-IP`. Forwarding headers from untrusted peers are ignored, so a
/// client cannot pick its own address.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if lines.is_empty() {
        // Only without X-Forwarded-For: a client can add X-Real-IP too, and a proxy that
        // appends to X-Forwarded-For may pass it through untouched.
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_hop(v.as_bytes()))
            .unwrap_or(peer);
    }
    // From the right: trusted proxies' hops are skipped; the first other address is the
    // client as the outermost trusted proxy saw it. An entry that does not parse ends the
    // walk at the last hop that did (what is left of it was written by the client).
    let mut last = peer;
    for entry in lines.iter().rev().flat_map(|l| l.rsplit(|b| *b == b',')) {
        match parse_hop(entry) {
            Some(ip) if is_trusted(ip) => last = ip,
            Some(ip) => return ip,
            None => return last,
        }
    }
    last
}

/// One `X-Forwarded-For` entry: an IP address, possibly with a port (`1.2.3.4:5678`,
/// `[::1]:5678`).
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The certificate and key, swapped in place when the files change.
#[derive(Debug)]
pub struct Certificates {
    cert: Pem,
    key: Pem,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

/// Where a certificate or key comes from: a file (watched), or the configuration itself
/// (the PEM, or the PEM in base64, as Centrifugo v6 also accepts).
enum Pem {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => write!(f, "{}", p.display()),
            Pem::Inline(_) => f.write_str("(inline PEM)"),
        }
    }
}

impl Pem {
    fn from_config(value: &str) -> Pem {
        const BEGIN: &[u8] = b"-----BEGIN";
        let holds_pem = |b: &[u8]| b.windows(BEGIN.len()).any(|w| w == BEGIN);
        if holds_pem(value.as_bytes()) {
            return Pem::Inline(value.as_bytes().to_vec());
        }
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        use base64::Engine;
        let compact: String = value.split_whitespace().collect();
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(compact.as_bytes()) {
                if holds_pem(&bytes) {
                    return Pem::Inline(bytes);
                }
            }
        }
        Pem::File(PathBuf::from(value))
    }

    fn read(&self, key: &str) -> Result<Vec<u8>, String> {
        match self {
            // A key that is neither a path nor PEM may be a key all the same: its value is
            // never repeated in a message.
            Pem::File(p) if key == "key_pem" => std::fs::read(p).map_err(|e| {
                format!("http_server.tls.key_pem: not PEM, and not a file that can be read ({e})")
            }),
            Pem::File(p) => {
                std::fs::read(p).map_err(|e| format!("http_server.tls.{key} {}: {e}", p.display()))
            }
            Pem::Inline(b) => Ok(b.clone()),
        }
    }

    /// A file's modification time; the same time always for inline PEM.
    fn modified(&self) -> Option<SystemTime> {
        match self {
            Pem::File(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            Pem::Inline(_) => Some(SystemTime::UNIX_EPOCH),
        }
    }
}

/// The certificate's and the key's modification times.
type Stamp = Option<(SystemTime, SystemTime)>;

/// Both files' modification times (a copy that keeps an older time still changes the pair).
fn modified(cert: &Pem, key: &Pem) -> Stamp {
    Some((cert.modified()?, key.modified()?))
}

fn load_certified_key(cert: &Pem, key: &Pem) -> Result<CertifiedKey, String> {
    let cert_pem = cert.read("cert_pem")?;
    let key_pem = key.read("key_pem")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("http_server.tls.cert_pem {cert:?}: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "http_server.tls.cert_pem {cert:?}: no certificate in it"
        ));
    }
    // The key's bytes never reach an error message.
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        format!(
            "http_server.tls.key_pem {key:?}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM)"
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
        format!("http_server.tls: certificate {cert:?} and key {key:?} do not go together: {e}")
    })
}

impl Certificates {
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Certificates>, String> {
        let cert = Pem::from_config(&cfg.cert_pem);
        let key = Pem::from_config(&cfg.key_pem);
        // Stamped before reading: a change while loading is seen by the next check.
        let stamp = modified(&cert, &key);
        let certified = load_certified_key(&cert, &key)?;
        Ok(Arc::new(Certificates {
            cert,
            key,
            current: RwLock::new((Arc::new(certified), stamp)),
        }))
    }

    /// Loads the files again. A broken pair is logged and the old certificate stays in use.
    pub fn reload(&self, why: &str) -> bool {
        let stamp = modified(&self.cert, &self.key);
        match load_certified_key(&self.cert, &self.key) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(key), stamp);
                tracing::info!(cert = ?self.cert, reason = why, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, reason = why, "TLS certificate not reloaded; the previous one stays in use");
                false
            }
        }
    }

    /// Reloads when either file's modification time moved.
    fn reload_if_changed(&self) {
        let seen = self.current.read().unwrap_or_else(|e| e.into_inner()).1;
        let now = modified(&self.cert, &self.key);
        if now.is_some() && now != seen {
            self.reload("files changed");
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

/// A TLS acceptor whose certificate follows the files; reloads on SIGHUP and on change.
pub fn tls_acceptor(
    cfg: &TlsConfig,
    stop: CancellationToken,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let certs = Certificates::load(cfg).map_err(ServerError::Config)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Config(format!("http_server.tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let watch = cfg.watch_interval;
    let watched = certs;
    // Registered before returning, so a SIGHUP sent once the server is up never meets the
    // default action (which would end the process).
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are only watched");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = (!watch.is_zero()).then(|| tokio::time::interval(watch));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    watched.reload("SIGHUP");
                }
                _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                    watched.reload_if_changed();
                }
            }
        }
    });
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What the accept loop needs besides the routes.
pub struct Serving {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub header_read_timeout: Duration,
    pub trusted_proxies: Arc<Vec<Cidr>>,
}

impl Serving {
    pub fn new(cfg: &HttpServerConfig, stop: &CancellationToken) -> Result<Serving, ServerError> {
        let trusted_proxies = cfg
            .trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServerError::Config)?;
        let tls = if cfg.tls.enabled {
            Some(tls_acceptor(&cfg.tls, stop.clone())?)
        } else {
            None
        };
        Ok(Serving {
            tls,
            header_read_timeout: cfg.header_read_timeout,
            trusted_proxies: Arc::new(trusted_proxies),
        })
    }
}

/// How long a closed connection reads and drops what the client still sends, waiting for it
/// to close its side.
pub const CLOSE_DRAIN: Duration = Duration::from_millis(900);

/// Most bytes a closing connection reads and drops.
const DRAIN_AT_MOST: usize = 64 << 20;

/// Reads and drops what the peer sends until it closes its side, an error, `within` or
/// 64 MiB, whichever comes first. A socket closed with bytes unread is reset by the kernel,
/// and the reset fails the client's writes before it reads the answer it was sent (a 413,
/// a 401, a WebSocket close frame).
///
/// The buffer is allocated here, not held in the future: a WebSocket session's future
/// embeds this one, and 8 KiB inline would be 8 KiB more for every open connection.
pub async fn drain(io: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 8192];
    let mut total = 0;
    let _ = tokio::time::timeout(within, async {
        while total < DRAIN_AT_MOST {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The socket of a streaming response once hyper has written its head: the TCP stream, or
/// the TLS stream over it.
pub type StreamIo = socket::Io<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

/// A connection's socket as a streaming response takes it over.
pub trait IntoStreamIo {
    fn into_stream_io(self) -> StreamIo;
}

impl IntoStreamIo for tokio::net::TcpStream {
    fn into_stream_io(self) -> StreamIo {
        Either::Left(self)
    }
}

impl IntoStreamIo for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn into_stream_io(self) -> StreamIo {
        Either::Right(Box::new(self))
    }
}

/// Lets a streaming response (http_stream, sse and their unidirectional kinds) take its
/// connection over from hyper: hyper writes the response head and is done with the
/// connection (the response says `connection: close` and has no body of its own), then
/// the socket goes to the session, which writes the body's chunks itself. So a stream that
/// lives for hours does not keep hyper's read and write buffers (~16 KiB) all that time.
/// One per HTTP/1.1 connection, in each request's extensions.
#[derive(Clone, Default)]
pub struct HandOver(Arc<HandOverSlot>);

#[derive(Default)]
struct HandOverSlot {
    /// Read on every write hyper makes: cheaper than the lock.
    claimed: std::sync::atomic::AtomicBool,
    session: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<StreamIo>>>,
}

impl HandOver {
    /// Asks for the connection once hyper has answered this request: from now on hyper
    /// writes only the response head (whatever it writes after it is dropped) and does not
    /// shut the connection.
    pub fn claim(&self) -> tokio::sync::oneshot::Receiver<StreamIo> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.0.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.0
            .claimed
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    fn claimed(&self) -> bool {
        self.0.claimed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The claimant's sender, once (taken when the connection is handed over).
    fn take(&self) -> Option<tokio::sync::oneshot::Sender<StreamIo>> {
        if !self.claimed() {
            return None;
        }
        self.0
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// An accepted connection that, when hyper is done with it, lingers: its write side is
/// shut and what the client still sends is drained ([`drain`], in a task of its own) before
/// the socket closes, so an answer sent before a request body was read (413, 401) reaches
/// the client. A connection taken over by a WebSocket is taken out with
/// [`into_inner`](Self::into_inner) and closes the WebSocket's way; one claimed by a
/// streaming response ([`HandOver`]) goes to its session instead of lingering.
pub struct Lingering<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> {
    io: Option<T>,
    hand_over: HandOver,
    /// How the socket goes to a streaming session that claimed it.
    into_stream: fn(T) -> StreamIo,
    /// Once claimed: how much of the `\r\n\r\n` that ends the response head has been
    /// written (4: all of it; hyper's later writes are dropped).
    head_end: u8,
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    pub fn new(io: T, hand_over: HandOver) -> Lingering<T>
    where
        T: IntoStreamIo,
    {
        Lingering {
            io: Some(io),
            hand_over,
            into_stream: T::into_stream_io,
            head_end: 0,
        }
    }

    /// A write while the connection is claimed: up to the end of the response head, then
    /// nothing (the chunked body's end hyper writes is the session's to write, later).
    fn poll_write_head(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        const END: &[u8; 4] = b"\r\n\r\n";
        if self.head_end == 4 {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        // Where the head ends in `buf`, if it does.
        let mut matched = self.head_end;
        let mut upto = buf.len();
        for (i, b) in buf.iter().enumerate() {
            matched = next_match(matched, *b, END);
            if matched == 4 {
                upto = i + 1;
                break;
            }
        }
        let n = std::task::ready!(std::pin::Pin::new(self.io()).poll_write(cx, &buf[..upto]))?;
        for b in &buf[..n] {
            self.head_end = next_match(self.head_end, *b, END);
        }
        std::task::Poll::Ready(Ok(n))
    }

    /// The connection itself; nothing lingers any more.
    pub fn into_inner(mut self) -> T {
        self.io.take().expect("a connection until taken")
    }

    fn io(&mut self) -> &mut T {
        self.io.as_mut().expect("a connection until taken")
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Drop
    for Lingering<T>
{
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        if let Some(session) = self.hand_over.take() {
            // A session that is gone already drops it (its client is gone too).
            let _ = session.send((self.into_stream)(io));
            return;
        }
        // Only inside a runtime (always, but for a connection dropped while it shuts down).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(CLOSE_DRAIN, io.shutdown()).await;
                drain(&mut io, CLOSE_DRAIN).await;
            });
        }
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> tokio::io::AsyncRead
    for Lingering<T>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.io()).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> tokio::io::AsyncWrite
    for Lingering<T>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.hand_over.claimed() {
            return self.poll_write_head(cx, buf);
        }
        std::pin::Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.hand_over.claimed() {
            // The stream goes on: the session ends the connection.
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(self.io()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.hand_over.claimed() {
            // One slice at a time (a vectored write may write less than it was given).
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write_head(cx, first);
        }
        std::pin::Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

/// How much of `end` has been seen after `byte`, having seen `matched` of it before.
fn next_match(matched: u8, byte: u8, end: &[u8; 4]) -> u8 {
    if byte == end[usize::from(matched)] {
        matched + 1
    } else if byte == end[0] {
        1
    } else {
        0
    }
}

/// Accepts connections until `stop`, then waits for the HTTP requests in flight (WebSocket
/// sessions are closed by the node's own shutdown).
pub async fn serve(
    listener: TcpListener,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    serving: Serving,
    stop: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    let serving = Arc::new(serving);
    let mut accept_errors = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => continue,
                Err(e) => {
                    // Out of file descriptors (EMFILE) or similar: wait a little instead of
                    // spinning; connections already open keep working.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::error!(error = %e, count = accept_errors, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let serving = serving.clone();
        let routes = routes.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let hand_over = HandOver::default();
            let svc = WithClientAddr {
                inner: hyper_util::service::TowerToHyperService::new(warp::service(routes)),
                peer: peer.ip(),
                trusted: serving.trusted_proxies.clone(),
                hand_over: hand_over.clone(),
            };
            // hyper's own HTTP/1 server: its header timer starts as soon as the connection
            // is served, so a socket that never sends a byte is closed too (hyper-util's
            // protocol-sniffing builder waits for the first bytes without a timer).
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(serving.header_read_timeout);
            let result = match &serving.tls {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(Lingering::new(tcp, hand_over)), svc)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        serving.header_read_timeout,
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(Lingering::new(tls, hand_over)), svc)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection; at `stop` it finishes the request in flight and closes.
async fn until_stopped<I, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Puts [`ClientAddr`] into each request before warp sees it.
#[derive(Clone)]
struct WithClientAddr<S> {
    inner: S,
    peer: IpAddr,
    trusted: Arc<Vec<Cidr>>,
    /// Offered to HTTP/1.1 requests (an HTTP/1.0 response cannot be chunked).
    hand_over: HandOver,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithClientAddr<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<B>) -> Self::Future {
        let addr = client_addr(self.peer, req.headers(), &self.trusted);
        req.extensions_mut().insert(ClientAddr(addr));
        if req.version() == hyper::Version::HTTP_11 {
            req.extensions_mut().insert(self.hand_over.clone());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped IPv6");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("proxy.local").is_err());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"),
        );
        // From a trusted proxy: the right-most untrusted hop (the client the first proxy
        // saw); the left-most entry was written by the client and is not believed.
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // From anyone else the headers are ignored.
        assert_eq!(
            client_addr(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // No trusted proxies configured: always the peer.
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), &real, &trusted),
            ip("203.0.113.9")
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_addr(ip("10.0.0.1"), &junk, &trusted), ip("10.0.0.1"));
        // A client's unparsable prefix, with X-Real-IP beside it, cannot hide the address
        // the proxy appended, nor choose its own.
        let mut spoof = HeaderMap::new();
        spoof.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.50").unwrap(),
        );
        spoof.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), &spoof, &trusted),
            ip("203.0.113.50")
        );
        let mut garbage_last = HeaderMap::new();
        garbage_last.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, junk"));
        garbage_last.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), &garbage_last, &trusted),
            ip("10.0.0.1")
        );
        // Ports in entries are accepted.
        let mut ported = HeaderMap::new();
        ported.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7:4711"),
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &ported, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn redacts_passwords_in_urls() {
        use crate::config::redact_url;
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:<redacted>@cache:6379/0"
        );
        assert_eq!(
            redact_url("postgres://rotor:s3cret@db/rotor?sslmode=require"),
            "postgres://rotor:<redacted>@db/rotor?sslmode=require"
        );
        assert_eq!(redact_url("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
    }
}

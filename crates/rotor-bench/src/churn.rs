//! `churn`: connects per second with HS256 or RS256 tokens, or refreshes of expiring tokens
//! on long-lived connections.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rotor_bench::load;
use rotor_bench::tokens::{unix_now, Signer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Alg, Common};
use crate::harness::{emit, Servers};

/// Opens one rotor WebSocket connection, connects with `token` and returns it with the
/// connect reply.
pub(crate) async fn rotor_connect(
    addr: SocketAddr,
    token: &str,
) -> Result<(load::Ws, Value), String> {
    connect_with(addr, &format!("{{\"token\":\"{token}\"}}")).await
}

/// Opens one rotor WebSocket connection and sends `request` (a connect request's JSON).
async fn connect_with(addr: SocketAddr, request: &str) -> Result<(load::Ws, Value), String> {
    let mut ws = load::ws_connect(addr, "/connection/websocket").await?;
    ws.send(Message::text(format!("{{\"id\":1,\"connect\":{request}}}")))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                return Ok((ws, v));
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

pub(crate) async fn churn(
    common: Common,
    alg: Alg,
    duration: f64,
    concurrency: usize,
    refresh: Option<usize>,
    ttl: u64,
) {
    assert!(
        common.target.is_rotor(),
        "churn measures rotor's token checks"
    );
    let signer = Arc::new(if alg == Alg::Rs256 {
        Signer::rs256()
    } else {
        Signer::hs256()
    });
    let alg_name = match alg {
        Alg::Hs256 => "HS256",
        Alg::Rs256 => "RS256",
        Alg::Proxy => "proxy",
    };
    assert!(
        alg != Alg::Proxy || refresh.is_none(),
        "--refresh measures token refreshes, not the proxy"
    );
    let backend = match alg {
        Alg::Proxy => Some(crate::backend::start().await),
        _ => None,
    };
    let extra = match &backend {
        Some((at, _)) => format!(
            "[client.proxy.connect]\nenabled = true\nendpoint = \"http://{at}/connect\"\ntimeout = \"5s\"\n"
        ),
        None => String::new(),
    };
    let servers = Servers::start_with(&common, &signer, "", &extra).await;
    let addr = servers.addrs()[0];
    // A pool of connect requests (distinct users) for churn, tokens signed before the clock
    // starts; without tokens, the backend reads the user from the connect's data.
    let tokens: Arc<Vec<String>> = Arc::new(match (refresh, alg) {
        (Some(_), _) => Vec::new(),
        (None, Alg::Proxy) => (0..1000)
            .map(|i| format!("{{\"data\":{{\"user\":\"u{i}\"}}}}"))
            .collect(),
        (None, _) => (0..1000)
            .map(|i| format!("{{\"token\":\"{}\"}}", signer.token(&format!("u{i}"), None)))
            .collect(),
    });
    let (cpu0, t0) = (servers.cpu_seconds(), Instant::now());
    let deadline = t0 + Duration::from_secs_f64(duration);
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    match refresh {
        None => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (ok, failed, tokens) = (ok.clone(), failed.clone(), tokens.clone());
                    tokio::spawn(async move {
                        let mut k = t;
                        while Instant::now() < deadline {
                            k += concurrency;
                            match connect_with(addr, &tokens[k % tokens.len()]).await {
                                Ok((mut ws, _)) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    let _ = ws.close(None).await;
                                }
                                Err(e) => {
                                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                        eprintln!("connect failed: {e}");
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            futures_util::future::join_all(tasks).await;
        }
        Some(n) => {
            let disconnected = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (ok, failed, signer, disconnected) =
                        (ok.clone(), failed.clone(), signer.clone(), disconnected.clone());
                    tokio::spawn(async move {
                        let user = format!("u{i}");
                        // Spread expiries over the first period.
                        tokio::time::sleep(Duration::from_millis((i as u64 * 1000 * ttl) / n as u64)).await;
                        let token = signer.token(&user, Some(unix_now() + ttl));
                        let Ok((mut ws, reply)) = rotor_connect(addr, &token).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let mut ttl_s = reply["connect"]["ttl"].as_u64().unwrap_or(ttl);
                        let mut id = 1;
                        loop {
                            // Refresh a second before expiry, answering pings meanwhile.
                            let at = tokio::time::Instant::now()
                                + Duration::from_secs(ttl_s.saturating_sub(1).max(1));
                            if Instant::now() >= deadline {
                                return;
                            }
                            loop {
                                tokio::select! {
                                    _ = tokio::time::sleep_until(at) => break,
                                    m = ws.next() => match m {
                                        Some(Ok(Message::Text(t))) if t.as_str() == "{}" => {
                                            let _ = ws.send(Message::text("{}")).await;
                                        }
                                        Some(Ok(_)) => {}
                                        _ => { disconnected.fetch_add(1, Ordering::Relaxed); return; }
                                    },
                                }
                            }
                            id += 1;
                            let token = signer.token(&user, Some(unix_now() + ttl));
                            let cmd = format!("{{\"id\":{id},\"refresh\":{{\"token\":\"{token}\"}}}}");
                            if ws.send(Message::text(cmd)).await.is_err() {
                                disconnected.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            loop {
                                match ws.next().await {
                                    Some(Ok(Message::Text(t))) if t.contains("\"refresh\"") => {
                                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                                        ttl_s = v["refresh"]["ttl"].as_u64().unwrap_or(ttl);
                                        ok.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    Some(Ok(_)) => {}
                                    _ => { disconnected.fetch_add(1, Ordering::Relaxed); return; }
                                }
                            }
                        }
                    })
                })
                .collect();
            futures_util::future::join_all(tasks).await;
            let d = disconnected.load(Ordering::Relaxed);
            if d > 0 {
                println!("connections lost during refresh churn: {d}");
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu_s = servers.cpu_seconds() - cpu0;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if let Some((_, calls)) = &backend {
        let calls = calls.load(Ordering::Relaxed);
        assert!(calls >= ok, "{ok} connects but only {calls} backend calls");
    }
    let what = if refresh.is_some() {
        "refreshes"
    } else {
        "connects"
    };
    println!(
        "# churn {} {alg_name}: {ok} {what} ({failed} failed) in {wall:.1} s = {:.0}/s; server CPU {:.0}% = {:.0} {what} per server CPU-second",
        common.target.name(),
        ok as f64 / wall,
        100.0 * cpu_s / wall,
        ok as f64 / cpu_s.max(1e-9)
    );
    emit(
        &common,
        json!({"scenario": if refresh.is_some() { "refresh" } else { "churn" },
               "target": common.target.name(), "alg": alg_name, "ok": ok, "failed": failed,
               "per_s": ok as f64 / wall, "server_cpu_pct": 100.0 * cpu_s / wall,
               "per_server_cpu_s": ok as f64 / cpu_s.max(1e-9), "connections": refresh}),
    );
    servers.stop().await;
}

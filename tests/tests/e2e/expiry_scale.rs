//! Expiry at scale, on tokio's paused clock: 10,000 connections with staggered expiries are
//! each closed with 3005 within their grace window, and a connection without expiry is not
//! disturbed. Sessions run in-process through the core (no sockets), so the clock can jump.

use std::time::Duration;

use rotor_core::testing::{self as mem, Out};
use rotor_protocol::Disconnect;
use rotor_tests::*;
use serde_json::json;

const N: usize = 10_000;
const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn ten_thousand_staggered_expiries_close_within_their_grace() {
    let mut config = test_config();
    config.client.expired_close_delay = GRACE;
    config.client.ping_interval = Duration::ZERO;
    let server = rotor_server::Server::new(config).await.unwrap();
    let node = server.node().clone();
    let clock = node.clock();
    let base = clock.unix();

    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let exp = base + 10 + (i as u64 % 300);
        let (tx, rx) = mem::session(&node);
        let t = token(json!({"sub": format!("u{i}"), "exp": exp}));
        tx.send(json!({"id": 1, "connect": {"token": t}}).to_string())
            .unwrap();
        conns.push((tx, rx, exp));
    }
    let (keeper_tx, mut keeper_rx) = mem::session(&node);
    keeper_tx
        .send(json!({"id": 1, "connect": {"token": token(json!({"sub": "keeper"}))}}).to_string())
        .unwrap();
    keeper_tx
        .send(json!({"id": 2, "subscribe": {"channel": "chat:keep"}}).to_string())
        .unwrap();
    for (_, rx, _) in conns.iter_mut() {
        match rx.recv().await {
            Some(Out::Messages(m)) => assert!(m[0].contains("\"connect\""), "{m:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(node.info().num_clients, N + 1);

    tokio::time::sleep(Duration::from_secs(10 + 300 + 10)).await;

    for (i, (_tx, rx, exp)) in conns.iter_mut().enumerate() {
        let mut closed = None;
        while let Ok(out) = rx.try_recv() {
            if let Out::Closed(d, at) = out {
                closed = Some((d, at));
            }
        }
        let (d, at) = closed.unwrap_or_else(|| panic!("connection {i} was not closed"));
        assert_eq!(d, Disconnect::EXPIRED, "connection {i}");
        let due = clock.instant_at(*exp) + GRACE;
        assert!(
            at >= due,
            "connection {i} closed {:?} before expiry + grace",
            due - at
        );
        assert!(
            at - due < Duration::from_secs(1),
            "connection {i} closed {:?} late",
            at - due
        );
    }
    assert_eq!(node.info().num_clients, 1, "only the keeper is left");

    // The connection without expiry was not disturbed and still receives publications.
    node.publish(
        "chat:keep",
        rotor_protocol::Raw::from_value(&"hello"),
        Default::default(),
    )
    .await
    .unwrap();
    let mut got = false;
    while let Ok(out) = keeper_rx.try_recv() {
        match out {
            Out::Closed(d, _) => panic!("keeper closed with {d:?}"),
            Out::Messages(m) => got |= m.iter().any(|x| x.contains("\"hello\"")),
        }
    }
    if !got {
        match tokio::time::timeout(Duration::from_secs(1), keeper_rx.recv()).await {
            Ok(Some(Out::Messages(m))) => {
                assert!(m.iter().any(|x| x.contains("\"hello\"")), "{m:?}")
            }
            other => panic!("keeper got no publication: {other:?}"),
        }
    }
}

/// Counts what the core reports, for the metrics that will be built on it.
#[derive(Default)]
struct Counter {
    expired: std::sync::atomic::AtomicUsize,
    refreshes: std::sync::Mutex<
        Vec<(
            rotor_core::events::TokenKind,
            rotor_core::events::RefreshOutcome,
            Option<f64>,
        )>,
    >,
}

impl rotor_core::events::Observer for Counter {
    fn connection_expired(&self, _transport: &'static str) {
        self.expired
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn refresh(
        &self,
        kind: rotor_core::events::TokenKind,
        outcome: rotor_core::events::RefreshOutcome,
        lag: Option<f64>,
    ) {
        self.refreshes.lock().unwrap().push((kind, outcome, lag));
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_expiries_and_refreshes_with_their_lag() {
    use rotor_core::events::{RefreshOutcome, TokenKind};
    let mut config = test_config();
    config.client.expired_close_delay = GRACE;
    config.client.ping_interval = Duration::ZERO;
    let counter = std::sync::Arc::new(Counter::default());
    let node = rotor_core::Node::new(
        config.core(),
        rotor_store_memory::storage(),
        std::sync::Arc::new(rotor_core::broker::LocalBroker::default()),
        counter.clone(),
    )
    .unwrap();
    let base = node.clock().unix();

    // Refreshed 3s after expiry (inside the grace): lag about +3s.
    let (tx, mut rx) = mem::session(&node);
    tx.send(
        json!({"id": 1, "connect": {"token": token(json!({"sub": "o", "exp": base + 2}))}})
            .to_string(),
    )
    .unwrap();
    rx.recv().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.send(
        json!({"id": 2, "refresh": {"token": token(json!({"sub": "o", "exp": base + 100}))}})
            .to_string(),
    )
    .unwrap();
    match rx.recv().await {
        Some(Out::Messages(m)) => assert!(m[0].contains("\"refresh\""), "{m:?}"),
        other => panic!("{other:?}"),
    }
    // A refresh for another user ends the connection.
    tx.send(
        json!({"id": 3, "refresh": {"token": token(json!({"sub": "x", "exp": base + 100}))}})
            .to_string(),
    )
    .unwrap();
    loop {
        if let Some(Out::Closed(d, _)) = rx.recv().await {
            assert_eq!(d, Disconnect::INVALID_TOKEN);
            break;
        }
    }
    // One that is never refreshed expires.
    let (tx2, mut rx2) = mem::session(&node);
    tx2.send(json!({"id": 1, "connect": {"token": token(json!({"sub": "p", "exp": node.clock().unix() + 1}))}}).to_string()).unwrap();
    rx2.recv().await;
    tokio::time::sleep(GRACE + Duration::from_secs(3)).await;

    assert_eq!(counter.expired.load(std::sync::atomic::Ordering::SeqCst), 1);
    let refreshes = counter.refreshes.lock().unwrap().clone();
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert_eq!(
        (refreshes[0].0, refreshes[0].1),
        (TokenKind::Connection, RefreshOutcome::Ok)
    );
    let lag = refreshes[0].2.unwrap();
    assert!(
        (2.0..=4.0).contains(&lag),
        "refreshed about 3s after expiry: {lag}"
    );
    assert_eq!(refreshes[1].1, RefreshOutcome::Mismatch);
}

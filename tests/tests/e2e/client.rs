//! rotor-client (the Rust SDK) against the real server on every transport: refresh in place,
//! bounded re-authentication, terminal disconnects, recovery across a server restart, and the
//! same scenario driven by the official centrifuge-js client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rotor_client::{
    Client, ClientConfig, ClientState, Error, Event, Events, FnTokenProvider, SubscriptionOptions,
    TokenError, Transport,
};
use rotor_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

pub(crate) fn endpoint(addr: std::net::SocketAddr, transport: Transport) -> String {
    match transport {
        Transport::WebSocket => format!("ws://{addr}/connection/websocket"),
        Transport::HttpStream => format!("http://{addr}/connection/http_stream"),
        Transport::Sse => format!("http://{addr}/connection/sse"),
    }
}

/// A provider that hands out `tokens(n)` for its n-th call (from 0) and counts the calls.
pub(crate) fn provider(
    tokens: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (FnTokenProvider, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let tokens = Arc::new(tokens);
    let p = FnTokenProvider::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let t = tokens(n);
        async move { Ok::<_, TokenError>(t) }
    });
    (p, calls)
}

pub(crate) fn client_config(addr: std::net::SocketAddr, transport: Transport) -> ClientConfig {
    let mut c = ClientConfig::new(transport, endpoint(addr, transport));
    c.min_reconnect_delay = Duration::from_millis(50);
    c.max_reconnect_delay = Duration::from_millis(500);
    c.timeout = Duration::from_secs(5);
    c
}

/// A server whose expired connections are closed one second after expiry, so a client that
/// failed to refresh would be noticed quickly.
async fn strict_server() -> TestServer {
    let mut c = test_config();
    c.client.expired_close_delay = Duration::from_secs(1);
    c.client.expired_sub_close_delay = Duration::from_secs(1);
    TestServer::start(c).await
}

fn short_token(user: &str, secs: u64) -> String {
    token(json!({"sub": user, "exp": now() + secs}))
}

fn expired_token(user: &str) -> String {
    token(json!({"sub": user, "exp": now() - 30}))
}

/// Everything the client reported, and a way to wait for more.
pub(crate) struct Recorder {
    events: Events,
    pub(crate) seen: Vec<Event>,
    /// Read but not yet taken by `until`.
    pending: std::collections::VecDeque<Event>,
}

impl Recorder {
    pub(crate) fn new(events: Events) -> Recorder {
        Recorder {
            events,
            seen: Vec::new(),
            pending: Default::default(),
        }
    }

    /// Takes the oldest not-yet-taken event matching `pred`, waiting for it if needed; panics
    /// with the history after `T`.
    pub(crate) async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("found above");
        }
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                    self.pending.push_back(e);
                }
                Ok(None) => panic!("client gone before {what}; seen {:#?}", self.seen),
                Err(_) => panic!("no {what} within {T:?}; seen {:#?}", self.seen),
            }
        }
    }

    /// Collects whatever arrives for `d`.
    pub(crate) async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.seen.push(e.clone());
            self.pending.push_back(e);
        }
    }

    pub(crate) fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e)).count()
    }

    pub(crate) async fn publication(&mut self, channel: &str) -> Value {
        let e = self
            .until(
                "publication",
                |e| matches!(e, Event::Publication { channel: c, .. } if c == channel),
            )
            .await;
        let Event::Publication { publication, .. } = e else {
            unreachable!()
        };
        let mut v: Value = publication.data.parse().unwrap();
        v["_offset"] = json!(publication.offset);
        v
    }

    /// Waits for a subscription that was recovering to be subscribed again; returns
    /// whether everything missed was recovered.
    pub(crate) async fn resubscribed(&mut self) -> bool {
        let e = self
            .until("resubscribed", |e| {
                matches!(
                    e,
                    Event::Subscribed {
                        was_recovering: true,
                        ..
                    }
                )
            })
            .await;
        let Event::Subscribed { recovered, .. } = e else {
            unreachable!()
        };
        recovered
    }
}

pub(crate) fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}

/// Runs one scenario on every transport, each as its own test.
macro_rules! on_every_transport {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[tokio::test]
            async fn websocket() {
                super::$scenario(Transport::WebSocket).await
            }
            #[tokio::test]
            async fn http_stream() {
                super::$scenario(Transport::HttpStream).await
            }
            #[tokio::test]
            async fn sse() {
                super::$scenario(Transport::Sse).await
            }
        }
    };
}

on_every_transport!(refresh_in_place_across_several_expiries);
on_every_transport!(a_caching_provider_is_asked_again_when_its_token_is_about_to_expire);
on_every_transport!(a_provider_serving_only_stale_tokens_is_reported_then_auth_expired);
on_every_transport!(one_automatic_reauth_then_success);
on_every_transport!(two_expired_credentials_surface_auth_expired_once);
on_every_transport!(revocation_is_terminal);
on_every_transport!(recovers_after_a_server_restart);

/// Tokens live 3 s; over several lifetimes the client refreshes in place: one connect, one
/// client id, no reconnect, and the subscription keeps delivering.
async fn refresh_in_place_across_several_expiries(transport: Transport) {
    let server = strict_server().await;
    let (p, calls) = provider(|_| short_token("rene", 3));
    let (client, events) =
        Client::new(client_config(server.addr, transport).with_token_provider(p));
    let mut rec = Recorder::new(events);
    let sub = client.subscribe("chat:refresh", SubscriptionOptions::default());
    client.connect();
    client.ready().await.unwrap();
    sub.ready().await.unwrap();
    let id = client.client_id().expect("a client id");
    for round in 1..=3u64 {
        rec.until("refresh", |e| matches!(e, Event::Refreshed { .. }))
            .await;
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "chat:refresh", "data": {"round": round}}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(rec.publication("chat:refresh").await["round"], round);
    }
    assert_eq!(client.client_id(), Some(id), "same connection throughout");
    assert_eq!(rec.count(is_connected), 1, "{:#?}", rec.seen);
    assert_eq!(
        rec.count(|e| {
            matches!(e, Event::Connecting { code, .. } if *code != 0)
                || matches!(e, Event::Disconnected { .. })
        }),
        0,
        "no reconnect: {:#?}",
        rec.seen
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "one token to connect and one per refresh"
    );
    // The server agrees: still one connection for the user.
    let (_, info) = server
        .api("presence", json!({"channel": "chat:refresh"}))
        .await;
    assert_eq!(
        info["result"]["presence"].as_object().unwrap().len(),
        1,
        "{info}"
    );
    client.disconnect();
    server.shutdown().await;
}

/// A provider that caches (the seed's Geode rule: it "can return existing tokens (which are
/// about to expire)"): it hands back its 3 s token until that has expired. At the refresh
/// (~0.6 s before expiry) it returns the same token; the client sees it is nearly expired,
/// waits until it has, and asks again, getting a new one: refreshed in place, one
/// connection, no 3005, no AuthExpired (before: the stale token's refresh ended in 3005).
async fn a_caching_provider_is_asked_again_when_its_token_is_about_to_expire(transport: Transport) {
    let server = strict_server().await;
    let cache: Arc<std::sync::Mutex<Option<(String, u64)>>> = Default::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, n) = (cache.clone(), calls.clone());
    let p = FnTokenProvider::new(move || {
        n.fetch_add(1, Ordering::SeqCst);
        let mut cached = c.lock().unwrap();
        let t = match &*cached {
            Some((t, exp)) if *exp > now() => t.clone(),
            _ => {
                let exp = now() + 3;
                let t = token(json!({"sub": "gina", "exp": exp}));
                *cached = Some((t.clone(), exp));
                t
            }
        };
        async move { Ok::<_, TokenError>(t) }
    });
    let (client, events) =
        Client::new(client_config(server.addr, transport).with_token_provider(p));
    let mut rec = Recorder::new(events);
    client.connect();
    client.ready().await.unwrap();
    let id = client.client_id();
    for _ in 0..2 {
        rec.until("refresh", |e| matches!(e, Event::Refreshed { .. }))
            .await;
    }
    assert_eq!(client.client_id(), id, "refreshed in place");
    // No refresh carried the nearly expired token (the server would answer ttl 0: before,
    // the client sent the cached token and the connection ran out of time).
    assert_eq!(
        rec.count(|e| matches!(e, Event::Refreshed { ttl: Some(t) } if *t < 1)),
        0,
        "{:#?}",
        rec.seen
    );
    assert_eq!(rec.count(is_connected), 1, "{:#?}", rec.seen);
    assert_eq!(
        rec.count(
            |e| matches!(e, Event::Connecting { code, .. } if *code != 0)
                || matches!(e, Event::Error(Error::AuthExpired { .. }))
        ),
        0,
        "no expiry, no re-authentication: {:#?}",
        rec.seen
    );
    // One to connect, one per refresh, and at least one more: a refresh that got the
    // cached, nearly expired token and asked again.
    assert!(
        calls.load(Ordering::SeqCst) >= 4,
        "the provider was asked again: {}",
        calls.load(Ordering::SeqCst)
    );
    client.disconnect();
    server.shutdown().await;
}

/// A provider that only ever has stale tokens (expiring within the second): the client does
/// not send them; after three asks it reports the provider as stale (an error naming it),
/// counts that as expired credentials, retries once, then stops with AuthExpired, once.
async fn a_provider_serving_only_stale_tokens_is_reported_then_auth_expired(transport: Transport) {
    let server = strict_server().await;
    let (p, calls) = provider(|_| token(json!({"sub": "sal", "exp": now()})));
    let (client, events) =
        Client::new(client_config(server.addr, transport).with_token_provider(p));
    let mut rec = Recorder::new(events);
    client.connect();
    assert_eq!(
        client.ready().await,
        Err(Error::AuthExpired { channel: None })
    );
    rec.drain_for(Duration::from_millis(500)).await;
    let stale_reports =
        rec.count(|e| matches!(e, Event::Error(Error::Token(m)) if m.contains("stale tokens")));
    assert_eq!(
        stale_reports, 2,
        "reported at the connect and at the one retry: {:#?}",
        rec.seen
    );
    assert_eq!(
        rec.count(|e| matches!(e, Event::Error(Error::AuthExpired { .. }))),
        1
    );
    assert_eq!(calls.load(Ordering::SeqCst), 6, "three asks, twice");
    assert_eq!(rec.count(is_connected), 0, "no stale token was sent");

    // The same for a subscription's tokens: AuthExpired for that channel, after three asks
    // twice; the connection is not touched.
    let sub_calls = Arc::new(AtomicUsize::new(0));
    let counter = sub_calls.clone();
    let (p, _) = provider(|_| user_token("sal"));
    let p = p.with_subscriptions(move |channel| {
        counter.fetch_add(1, Ordering::SeqCst);
        let t = token(json!({"sub": "sal", "channel": channel, "exp": now()}));
        async move { Ok::<_, TokenError>(t) }
    });
    let (client, _events) =
        Client::new(client_config(server.addr, transport).with_token_provider(p));
    client.connect();
    client.ready().await.unwrap();
    let id = client.client_id();
    let secret = client.subscribe(
        "$chat:vault",
        SubscriptionOptions {
            token_required: true,
            ..SubscriptionOptions::default()
        },
    );
    assert_eq!(
        secret.ready().await,
        Err(Error::AuthExpired {
            channel: Some("$chat:vault".into())
        })
    );
    assert_eq!(sub_calls.load(Ordering::SeqCst), 6, "three asks, twice");
    assert_eq!(client.client_id(), id, "the connection stays");
    client.disconnect();
    server.shutdown().await;
}

/// The provider's first token is already expired (109 at connect), the second works; later a
/// refresh is answered 3005 because the provider handed out an expired token, and one more
/// fresh token brings the client back. Each time exactly one re-authentication, no error
/// surfaced.
async fn one_automatic_reauth_then_success(transport: Transport) {
    let server = strict_server().await;
    let (p, calls) = provider(|n| match n {
        0 | 2 => expired_token("rita"),
        1 => short_token("rita", 3),
        _ => short_token("rita", 3600),
    });
    // The expired tokens are meant to reach the server (its 109 and 3005 drive the
    // re-authentication under test): the client's own check of `exp` is off.
    let mut config = client_config(server.addr, transport).with_token_provider(p);
    config.min_token_validity = None;
    let (client, events) = Client::new(config);
    let mut rec = Recorder::new(events);
    let sub = client.subscribe("chat:reauth", SubscriptionOptions::default());
    client.connect();
    client
        .ready()
        .await
        .expect("connected after one re-authentication");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    rec.until("connecting after 109", |e| {
        matches!(e, Event::Connecting { code: 109, .. })
    })
    .await;
    rec.until("connected", is_connected).await;

    // The refresh at about 2.4 s gets the expired token: the server closes with 3005, the
    // client asks once more and reconnects.
    rec.until("connecting after 3005", |e| {
        matches!(e, Event::Connecting { code: 3005, .. })
    })
    .await;
    rec.until("connected again", is_connected).await;
    sub.ready().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "{:#?}", rec.seen);
    server
        .api(
            "publish",
            json!({"channel": "chat:reauth", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(rec.publication("chat:reauth").await["n"], 1);
    assert_eq!(
        rec.count(|e| matches!(e, Event::Error(Error::AuthExpired { .. }))),
        0,
        "{:#?}",
        rec.seen
    );
    assert_eq!(client.state(), ClientState::Connected);
    client.disconnect();
    server.shutdown().await;
}

/// Every token the provider has is expired: one automatic retry, then `AuthExpired` exactly
/// once, and the client stops instead of looping.
async fn two_expired_credentials_surface_auth_expired_once(transport: Transport) {
    let server = strict_server().await;
    let (p, calls) = provider(|_| expired_token("sam"));
    // The server's 109 is under test: the client's own check of `exp` is off (see
    // a_provider_serving_only_stale_tokens_is_reported_then_auth_expired for it on).
    let mut config = client_config(server.addr, transport).with_token_provider(p);
    config.min_token_validity = None;
    let (client, events) = Client::new(config);
    let mut rec = Recorder::new(events);
    client.connect();
    assert_eq!(
        client.ready().await,
        Err(Error::AuthExpired { channel: None })
    );
    rec.until("disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    rec.drain_for(Duration::from_millis(1500)).await;
    assert_eq!(
        rec.count(|e| matches!(e, Event::Error(Error::AuthExpired { .. }))),
        1,
        "{:#?}",
        rec.seen
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked once, retried once");
    assert_eq!(rec.count(is_connected), 0);
    assert_eq!(client.state(), ClientState::Disconnected);
    // Requests fail with the same reason instead of waiting.
    assert_eq!(
        client.publish("chat:x", json!({})).await,
        Err(Error::AuthExpired { channel: None })
    );
    server.shutdown().await;
}

/// A revoked token's connection is closed with 3500 and the client does not come back.
async fn revocation_is_terminal(transport: Transport) {
    let server = strict_server().await;
    let jti = format!("client-{}", transport.name());
    let tok = token(json!({"sub": "vic", "jti": jti, "exp": now() + 3600}));
    let (p, calls) = provider(move |_| tok.clone());
    let (client, events) =
        Client::new(client_config(server.addr, transport).with_token_provider(p));
    let mut rec = Recorder::new(events);
    client.connect();
    client.ready().await.unwrap();
    let (status, _) = server
        .api("revoke_token", json!({"uid": jti, "reason": "leaked"}))
        .await;
    assert_eq!(status, 200);
    let e = rec
        .until("disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    let Event::Disconnected { code, reason } = e else {
        unreachable!()
    };
    assert_eq!((code, reason.as_str()), (3500, "token revoked"));
    assert!(
        rec.seen
            .iter()
            .any(|e| matches!(e, Event::Error(Error::Disconnected { code: 3500, .. }))),
        "the terminal error is surfaced: {:#?}",
        rec.seen
    );
    rec.drain_for(Duration::from_millis(1000)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no reconnect attempt");
    assert_eq!(client.state(), ClientState::Disconnected);
    assert_eq!(
        client.ready().await,
        Err(Error::Disconnected {
            code: 3500,
            reason: "token revoked".into()
        })
    );
    server.shutdown().await;
}

fn pg_config_file(pg: &PgSchema, port: u16, name: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[http_server]
address = "127.0.0.1"
port = {port}
[client.token]
hmac_secret_key = "{SECRET}"
[http_api]
key = "{API_KEY}"
[http_stream]
enabled = true
[sse]
enabled = true
[storage]
type = "postgres"
[storage.postgres]
dsn = "{dsn}"
schema = "{schema}"
[[channel.namespaces]]
name = "chat"
history_size = 100
history_ttl = "10m"
force_recovery = true
allow_subscribe_for_client = true
"#,
        dsn = pg.dsn,
        schema = pg.schema
    );
    let path =
        std::env::temp_dir().join(format!("rotor-client-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

const BIN: &str = env!("CARGO_BIN_EXE_rotor-under-test");

/// The server is killed (no goodbye) and comes back on its port; meanwhile another node on the
/// same database takes publications. The client reconnects by itself and recovers exactly the
/// missed publications from the stream position it tracked.
async fn recovers_after_a_server_restart(transport: Transport) {
    let Some(pg) = PgSchema::create(&format!("rc_{}", transport.name())).await else {
        return;
    };
    let port = free_port();
    let main_cfg = pg_config_file(&pg, port, &format!("{}-main", transport.name()));
    let (mut a, addr) = spawn_rotor(BIN, &main_cfg).await;
    let mut config = client_config(addr, transport);
    config.token = Some(user_token("remy"));
    let (client, events) = Client::new(config);
    let mut rec = Recorder::new(events);
    let sub = client.subscribe("chat:durable", SubscriptionOptions::default());
    client.connect();
    sub.ready().await.unwrap();
    let publish = |addr, n: u64| async move {
        api_at(
            addr,
            "publish",
            json!({"channel": "chat:durable", "data": {"n": n}}),
        )
        .await;
    };
    publish(addr, 1).await;
    assert_eq!(rec.publication("chat:durable").await["_offset"], 1);

    a.kill().await.unwrap();
    rec.until("connecting after the kill", |e| {
        matches!(e, Event::Connecting { .. })
    })
    .await;
    let (mut other, other_addr) = spawn_rotor(
        BIN,
        &pg_config_file(&pg, 0, &format!("{}-other", transport.name())),
    )
    .await;
    for n in 2..=4 {
        publish(other_addr, n).await;
    }
    let (mut b, _) = spawn_rotor(BIN, &main_cfg).await;
    let recovered = rec.resubscribed().await;
    assert!(recovered, "{:#?}", rec.seen);
    for n in 2..=4u64 {
        let p = rec.publication("chat:durable").await;
        assert_eq!(
            (p["n"].as_u64(), p["_offset"].as_u64()),
            (Some(n), Some(n)),
            "{p}"
        );
    }
    publish(addr, 5).await;
    assert_eq!(rec.publication("chat:durable").await["n"], 5, "live again");
    assert_eq!(rec.count(is_connected), 2, "{:#?}", rec.seen);
    client.disconnect();
    let _ = b.kill().await;
    let _ = other.kill().await;
    pg.drop_now().await;
}

/// The same token sequence as `one_automatic_reauth_then_success`, driven by the official
/// centrifuge-js client on every transport: the server's answers (109 at connect, 3005 when a
/// refresh brings an expired token) are what the official SDK expects too, and it ends up
/// connected and receiving.
#[tokio::test]
async fn centrifuge_js_passes_the_same_reauth_scenario() {
    if !sdks_available("centrifuge_js_passes_the_same_reauth_scenario") {
        return;
    }
    let server = strict_server().await;
    let mut runs = Vec::new();
    for transport in ["websocket", "http_stream", "sse"] {
        let base = server.http_url();
        runs.push(async move {
            let mut js = Script::node(
                "client.js",
                &[
                    ("BASE", base),
                    ("TRANSPORT", transport.to_string()),
                    ("GET_TOKEN", "1".to_string()),
                ],
            );
            js.expect("ready", T).await;
            js.send(&json!({"op": "subscribe", "channel": "chat:js-reauth"}).to_string())
                .await;
            js.send(&json!({"op": "connect"}).to_string()).await;
            // 1st token: expired -> 109 -> the SDK asks again.
            js.expect("get_token", T).await;
            js.send(&json!({"op": "token", "token": expired_token("rita")}).to_string())
                .await;
            js.expect("get_token", T).await;
            js.send(&json!({"op": "token", "token": short_token("rita", 3)}).to_string())
                .await;
            js.expect("connected", T).await;
            js.expect("subscribed", T).await;
            // The refresh brings an expired token: the server closes with 3005.
            js.expect("get_token", T).await;
            js.send(&json!({"op": "token", "token": expired_token("rita")}).to_string())
                .await;
            js.expect_where("connecting", |e| e["code"] == 3005, T)
                .await;
            // centrifuge-js reconnects with the token it has, gets 109, and asks once more.
            js.expect("get_token", T).await;
            js.send(&json!({"op": "token", "token": short_token("rita", 3600)}).to_string())
                .await;
            js.expect("connected", T).await;
            js.expect("subscribed", T).await;
            (js, transport)
        });
    }
    let done = futures_util::future::join_all(runs).await;
    let (status, _) = server
        .api(
            "publish",
            json!({"channel": "chat:js-reauth", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    for (mut js, transport) in done {
        let p = js.expect("publication", T).await;
        assert_eq!(p["data"]["n"], 1, "{transport}");
        assert!(
            js.seen
                .iter()
                .any(|e| e["event"] == "error" && e["error"]["code"] == 109),
            "{transport}: the SDK saw 109 at connect: {:#?}",
            js.seen
        );
        js.send(&json!({"op": "quit"}).to_string()).await;
        js.finish(T).await;
    }
    server.shutdown().await;
}

on_every_transport!(requests_pings_and_subscription_reauth);

/// Requests and their results, server pings answered (the server pings every 500 ms and would
/// close with 3012 without pongs; the client would close with "no ping" if pings stopped), and
/// the bounded re-authentication for subscription tokens.
async fn requests_pings_and_subscription_reauth(transport: Transport) {
    let mut config = test_config();
    config.client.ping_interval = Duration::from_millis(500);
    config.client.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;
    let sub_calls = Arc::new(AtomicUsize::new(0));
    let counter = sub_calls.clone();
    let (p, _) = provider(|_| user_token("pia"));
    let p = p.with_subscriptions(move |channel| {
        counter.fetch_add(1, Ordering::SeqCst);
        let t = token(json!({"sub": "pia", "channel": channel, "exp": now() - 30}));
        async move { Ok::<_, TokenError>(t) }
    });
    let mut cfg = client_config(server.addr, transport).with_token_provider(p);
    cfg.max_server_ping_delay = Duration::from_millis(700);
    // The expired subscription tokens are meant to reach the server (its 109 drives the
    // subscription's re-authentication): the client's own check of `exp` is off.
    cfg.min_token_validity = None;
    let (client, events) = Client::new(cfg);
    let mut rec = Recorder::new(events);
    let sub = client.subscribe(
        "chat:calls",
        SubscriptionOptions {
            join_leave: true,
            ..SubscriptionOptions::default()
        },
    );
    client.connect();
    sub.ready().await.unwrap();
    let me = client.client_id().unwrap();

    sub.publish(json!({"said": "hi"})).await.unwrap();
    assert_eq!(rec.publication("chat:calls").await["said"], "hi");
    let presence = sub.presence().await.unwrap();
    assert_eq!(presence[&me].user, "pia");
    let stats = sub.presence_stats().await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    let h = sub.history(-1, None, false).await.unwrap();
    assert_eq!(h.publications.len(), 1);
    assert_eq!(h.publications[0].data.get(), r#"{"said":"hi"}"#);
    assert_eq!(h.offset, 1);
    assert_eq!(
        client.rpc("anything", json!({})).await.unwrap_err().code(),
        Some(108),
        "no RPC handler on this server: not available"
    );
    // Not allowed to publish into a namespace without permission: the server's error.
    assert_eq!(
        client
            .publish("locked:room", json!(1))
            .await
            .unwrap_err()
            .code(),
        Some(103)
    );

    // Subscription tokens the provider has are all expired: one retry, then AuthExpired for
    // that subscription only.
    let secret = client.subscribe(
        "$chat:vault",
        SubscriptionOptions {
            token_required: true,
            ..SubscriptionOptions::default()
        },
    );
    assert_eq!(
        secret.ready().await,
        Err(Error::AuthExpired {
            channel: Some("$chat:vault".into())
        })
    );
    assert_eq!(sub_calls.load(Ordering::SeqCst), 2);

    // Several ping intervals later the connection is the same one.
    rec.drain_for(Duration::from_secs(3)).await;
    assert_eq!(client.client_id(), Some(me), "{:#?}", rec.seen);
    assert_eq!(
        rec.count(|e| matches!(e, Event::Connecting { code, .. } if *code != 0)),
        0,
        "{:#?}",
        rec.seen
    );
    assert_eq!(
        rec.count(|e| matches!(e, Event::Error(Error::AuthExpired { channel: Some(_) }))),
        0,
        "a subscription's failure is reported on the subscription: {:#?}",
        rec.seen
    );
    assert_eq!(
        rec.count(|e| matches!(
            e,
            Event::SubscriptionError {
                error: Error::AuthExpired { .. },
                ..
            }
        )),
        1
    );
    assert_eq!(sub_calls.load(Ordering::SeqCst), 2, "no retry loop");
    client.disconnect();
    server.shutdown().await;
}

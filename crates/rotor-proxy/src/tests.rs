//! The HTTP proxy against a real local backend (warp on 127.0.0.1): what a call sends, how
//! answers are read, and every way a backend can fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor_core::config::ProxyConfig;
use rotor_core::proxy::{
    Answer, Caller, ConnectCall, ForwardedHeaders, Proxy, ProxyResult, SubscribeCall,
};
use rotor_protocol::{Protocol, Raw};
use serde_json::{json, Value};
use warp::Filter;

use super::HttpProxy;

/// What the backend saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    body: Value,
    headers: BTreeMap<String, String>,
}

/// A backend that records every call and answers with `answer(body)` as HTTP `status`
/// after `delay`.
async fn backend(
    status: u16,
    delay: Duration,
    answer: impl Fn(&Value) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    let route = warp::post()
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                // A repeated header's values, joined as HTTP allows.
                let headers = headers.keys().fold(BTreeMap::new(), |mut m, k| {
                    let values: Vec<&str> = headers
                        .get_all(k)
                        .iter()
                        .map(|v| v.to_str().unwrap_or(""))
                        .collect();
                    m.insert(k.to_string(), values.join(", "));
                    m
                });
                log.lock().unwrap().push(Seen {
                    body: body.clone(),
                    headers,
                });
                tokio::time::sleep(delay).await;
                warp::http::Response::builder()
                    .status(status)
                    .body(answer(&body))
                    .unwrap()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, seen)
}

fn config(addr: SocketAddr) -> ProxyConfig {
    ProxyConfig {
        endpoint: format!("http://{addr}/proxy"),
        ..ProxyConfig::default()
    }
}

fn caller() -> Caller {
    Caller {
        client: Arc::from("c1"),
        transport: "websocket",
        protocol: Protocol::Json,
        user: Arc::from("alice"),
        meta: Some(Raw::from_json(r#"{"plan":"pro"}"#).unwrap()),
        headers: Some(Arc::new(ForwardedHeaders {
            http: vec![
                ("cookie".into(), "session=abc".into()),
                ("x-other".into(), "no".into()),
            ],
            emulated: vec![("authorization".into(), "Bearer emulated".into())],
        })),
    }
}

fn granted<T: std::fmt::Debug>(r: ProxyResult<T>) -> T {
    match r {
        Ok(Answer::Granted(g)) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_sends_the_protocol_fields_and_reads_every_grant_field() {
    let (addr, seen) = backend(200, Duration::ZERO, |_| {
        json!({"result": {
            "user": "alice", "expire_at": 4_000_000_000u64, "info": {"name": "Alice"},
            "b64data": "aGVsbG8=", "channels": ["news"],
            "subs": {"chat:1": {"info": {"role": "admin"}, "override": {"presence": {"value": true}}}},
            "meta": {"tenant": 7}
        }})
        .to_string()
    })
    .await;
    let proxy = HttpProxy::new(&config(addr)).unwrap();
    let call = ConnectCall {
        data: Some(Raw::from_json(r#"{"hello":1}"#).unwrap()),
        name: "js".into(),
        version: "5.8.0".into(),
        channels: vec!["chat:1".into()],
    };
    let g = granted(proxy.connect(&caller(), &call).await);
    assert_eq!(g.user, "alice");
    assert_eq!(g.expire_at, Some(4_000_000_000));
    assert_eq!(g.info.unwrap().get(), r#"{"name":"Alice"}"#);
    assert_eq!(g.data.unwrap().as_bytes(), b"hello");
    assert_eq!(g.channels, vec!["news".to_string()]);
    let sub = &g.subs["chat:1"];
    assert_eq!(sub.info.as_ref().unwrap().get(), r#"{"role":"admin"}"#);
    assert!(sub.override_.presence.unwrap().value);
    assert_eq!(g.meta.unwrap().get(), r#"{"tenant":7}"#);
    let body = &seen.lock().unwrap()[0].body;
    assert_eq!(
        *body,
        json!({"client": "c1", "transport": "websocket", "protocol": "json", "encoding": "json",
               "data": {"hello": 1}, "name": "js", "version": "5.8.0", "channels": ["chat:1"]}),
        "a connect call carries no user and no meta"
    );
}

#[tokio::test]
async fn calls_after_connect_carry_the_user_and_meta_only_when_asked() {
    let (addr, seen) = backend(200, Duration::ZERO, |_| "{}".into()).await;
    let plain = HttpProxy::new(&config(addr)).unwrap();
    let with_meta = HttpProxy::new(&ProxyConfig {
        include_connection_meta: true,
        ..config(addr)
    })
    .unwrap();
    let mut anonymous = caller();
    anonymous.user = Arc::from("");
    assert!(matches!(plain.refresh(&anonymous).await, Ok(Answer::Empty)));
    with_meta.sub_refresh(&caller(), "chat:1").await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].body["user"], "", "user is present even when empty");
    assert!(seen[0].body.get("meta").is_none());
    assert_eq!(seen[1].body["meta"], json!({"plan": "pro"}));
    assert_eq!(seen[1].body["channel"], "chat:1");
}

#[tokio::test]
async fn binary_encoding_sends_base64_and_json_refuses_binary_payloads() {
    let (addr, seen) = backend(200, Duration::ZERO, |_| {
        json!({"result": {"b64data": "AAEC"}}).to_string()
    })
    .await;
    let binary = HttpProxy::new(&ProxyConfig {
        binary_encoding: true,
        ..config(addr)
    })
    .unwrap();
    let bytes = Raw::binary(&[0, 1, 2]);
    let data = granted(binary.rpc(&caller(), "m", Some(&bytes)).await).unwrap();
    assert_eq!(data.as_bytes(), &[0, 1, 2]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].body["encoding"], "binary");
        assert_eq!(seen[0].body["b64data"], "AAEC");
        assert!(seen[0].body.get("data").is_none());
    }
    let json_proxy = HttpProxy::new(&config(addr)).unwrap();
    let err = json_proxy
        .publish(&caller(), "ch", &bytes)
        .await
        .unwrap_err();
    assert!(err.0.contains("binary_encoding"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing was sent");
}

#[tokio::test]
async fn headers_pass_only_when_listed_and_the_connection_request_wins() {
    let (addr, seen) = backend(200, Duration::ZERO, |_| "{}".into()).await;
    let mut static_headers = BTreeMap::new();
    static_headers.insert("X-Static".to_string(), "s".to_string());
    static_headers.insert("Cookie".to_string(), "from-static".to_string());
    let proxy = HttpProxy::new(&ProxyConfig {
        http_headers: vec!["Cookie".into(), "Authorization".into()],
        emulated_headers: vec!["authorization".into()],
        http: rotor_core::config::ProxyHttpConfig {
            static_headers,
            ..Default::default()
        },
        ..config(addr)
    })
    .unwrap();
    proxy.refresh(&caller()).await.unwrap();
    let h = &seen.lock().unwrap()[0].headers;
    assert_eq!(h["cookie"], "session=abc", "the connection's cookie wins");
    assert_eq!(h["authorization"], "Bearer emulated");
    assert_eq!(h["x-static"], "s");
    assert_eq!(h["content-type"], "application/json");
    assert!(!h.contains_key("x-other"), "unlisted headers stay behind");
}

#[tokio::test]
async fn errors_and_disconnects_from_the_backend_reach_the_core() {
    let (addr, _) = backend(200, Duration::ZERO, |b| {
        match b["channel"].as_str() {
            Some("err") => json!({"error": {"code": 1001, "message": "nope", "temporary": true}}),
            _ => json!({"disconnect": {"code": 4501, "reason": "banned"}, "error": {"code": 1}}),
        }
        .to_string()
    })
    .await;
    let proxy = HttpProxy::new(&config(addr)).unwrap();
    let call = |channel: &str| SubscribeCall {
        channel: channel.into(),
        data: None,
    };
    match proxy.subscribe(&caller(), &call("err")).await {
        Ok(Answer::Error(e)) => {
            assert_eq!(
                (e.code, e.message.as_str(), e.temporary),
                (1001, "nope", true)
            )
        }
        other => panic!("{other:?}"),
    }
    match proxy.subscribe(&caller(), &call("bye")).await {
        Ok(Answer::Disconnect(d)) => assert_eq!((d.code, &*d.reason), (4501, "banned")),
        other => panic!("a disconnect wins over an error: {other:?}"),
    }
}

#[tokio::test]
async fn publish_data_present_replaces_even_when_null() {
    let (addr, _) = backend(200, Duration::ZERO, |b| {
        match b["channel"].as_str() {
            Some("null") => json!({"result": {"data": null}}),
            Some("b64") => json!({"result": {"b64data": "eyJ4IjoxfQ==", "skip_history": true}}),
            Some("keyed") => json!({"result": {"idempotency_key": "k1", "delta": true}}),
            Some("nulls") => json!({"result": {"idempotency_key": null, "delta": null}}),
            _ => json!({"result": {}}),
        }
        .to_string()
    })
    .await;
    let proxy = HttpProxy::new(&config(addr)).unwrap();
    let data = Raw::from_json("1").unwrap();
    let g = granted(proxy.publish(&caller(), "null", &data).await);
    assert_eq!(g.data.unwrap().get(), "null");
    let g = granted(proxy.publish(&caller(), "b64", &data).await);
    assert_eq!(g.data.unwrap().get(), r#"{"x":1}"#);
    assert!(g.skip_history);
    let g = granted(proxy.publish(&caller(), "keep", &data).await);
    assert!(g.data.is_none() && !g.skip_history);
    assert!(g.idempotency_key.is_none() && !g.delta);
    let g = granted(proxy.publish(&caller(), "keyed", &data).await);
    assert_eq!((g.idempotency_key.as_deref(), g.delta), (Some("k1"), true));
    let g = granted(proxy.publish(&caller(), "nulls", &data).await);
    assert!(g.idempotency_key.is_none() && !g.delta);
}

#[tokio::test]
async fn every_failure_is_an_error_not_a_grant() {
    // A status other than 200.
    let (addr, _) = backend(503, Duration::ZERO, |_| "{}".into()).await;
    let err = HttpProxy::new(&config(addr))
        .unwrap()
        .refresh(&caller())
        .await
        .unwrap_err();
    assert!(err.0.contains("503"), "{err}");
    // An answer that is not the protocol's.
    for bad in [
        "not json",
        r#"{"result": {"expire_at": "soon"}}"#,
        r#"{"result": {"b64info": "%%%"}}"#,
    ] {
        let (addr, _) = backend(200, Duration::ZERO, move |_| bad.into()).await;
        let r = HttpProxy::new(&config(addr))
            .unwrap()
            .refresh(&caller())
            .await;
        assert!(r.is_err(), "{bad}: {r:?}");
    }
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = HttpProxy::new(&config(closed))
        .unwrap()
        .refresh(&caller())
        .await
        .unwrap_err();
    assert!(err.0.contains("connect"), "{err}");
}

#[tokio::test]
async fn a_slow_backend_is_cut_off_at_the_timeout() {
    let (addr, _) = backend(200, Duration::from_secs(5), |_| "{}".into()).await;
    let proxy = HttpProxy::new(&ProxyConfig {
        timeout: Duration::from_millis(300),
        ..config(addr)
    })
    .unwrap();
    let started = Instant::now();
    let err = proxy.refresh(&caller()).await.unwrap_err();
    assert!(err.0.contains("within"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn calls_in_flight_are_bounded_and_the_rest_wait_their_turn() {
    let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let route = warp::post().then(move || {
        let (n, p) = (n.clone(), p.clone());
        async move {
            use std::sync::atomic::Ordering::SeqCst;
            let inside = n.fetch_add(1, SeqCst) + 1;
            p.fetch_max(inside, SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            n.fetch_sub(1, SeqCst);
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let proxy = Arc::new(
        HttpProxy::new(&ProxyConfig {
            timeout: Duration::from_secs(5),
            max_in_flight: 2,
            ..config(addr)
        })
        .unwrap(),
    );
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let p = proxy.clone();
            tokio::spawn(async move { p.refresh(&caller()).await })
        })
        .collect();
    for c in calls {
        assert!(matches!(c.await.unwrap(), Ok(Answer::Empty)));
    }
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "{peak} calls at once");
}

#[test]
fn endpoints_must_be_http() {
    for bad in ["grpc://localhost:10000", "localhost:3000", ""] {
        let c = ProxyConfig {
            endpoint: bad.into(),
            ..ProxyConfig::default()
        };
        assert!(HttpProxy::new(&c).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn statuses_the_backend_means_become_errors_or_disconnects() {
    use rotor_core::config::{StatusTransform, TransformDisconnect, TransformError};
    let (addr, _) = backend(200, Duration::ZERO, |_| "{}".into()).await;
    let status_backend =
        |status: u16| async move { backend(status, Duration::ZERO, |_| String::new()).await.0 };
    let transforms = vec![
        StatusTransform {
            status_code: 403,
            to_error: TransformError {
                code: 1403,
                message: "forbidden".into(),
                temporary: false,
            },
            ..StatusTransform::default()
        },
        StatusTransform {
            status_code: 401,
            to_disconnect: TransformDisconnect {
                code: 4501,
                reason: "unauthorized".into(),
            },
            ..StatusTransform::default()
        },
    ];
    let with = |addr| {
        HttpProxy::new(&ProxyConfig {
            http: rotor_core::config::ProxyHttpConfig {
                status_to_code_transforms: transforms.clone(),
                ..Default::default()
            },
            ..config(addr)
        })
        .unwrap()
    };
    match with(status_backend(403).await).refresh(&caller()).await {
        Ok(Answer::Error(e)) => assert_eq!((e.code, e.message.as_str()), (1403, "forbidden")),
        other => panic!("{other:?}"),
    }
    match with(status_backend(401).await).refresh(&caller()).await {
        Ok(Answer::Disconnect(d)) => assert_eq!((d.code, &*d.reason), (4501, "unauthorized")),
        other => panic!("{other:?}"),
    }
    // A status no transform names is still a failed call.
    assert!(with(status_backend(500).await)
        .refresh(&caller())
        .await
        .is_err());
    assert!(matches!(
        with(addr).refresh(&caller()).await,
        Ok(Answer::Empty)
    ));
    // Exactly one of the two codes.
    let mut both = transforms[0].clone();
    both.to_disconnect.code = 4000;
    for bad in [both, StatusTransform::default()] {
        let c = ProxyConfig {
            http: rotor_core::config::ProxyHttpConfig {
                status_to_code_transforms: vec![bad],
                ..Default::default()
            },
            ..config(addr)
        };
        assert!(HttpProxy::new(&c).is_err());
    }
}

#[tokio::test]
async fn nulls_read_as_nothing_as_go_backends_send_them() {
    let (addr, _) = backend(200, Duration::ZERO, |b| {
        match b["channel"].as_str() {
            Some(_) => json!({"error": {"code": 1001, "message": null, "temporary": null}}),
            None => json!({"result": {"user": null, "channels": null, "subs": null,
                                      "info": null, "expire_at": null, "meta": null}}),
        }
        .to_string()
    })
    .await;
    let proxy = HttpProxy::new(&config(addr)).unwrap();
    let g = granted(proxy.connect(&caller(), &ConnectCall::default()).await);
    assert_eq!(g.user, "");
    assert!(g.channels.is_empty() && g.subs.is_empty() && g.info.is_none());
    assert_eq!(g.expire_at, None);
    let call = SubscribeCall {
        channel: "x".into(),
        data: None,
    };
    match proxy.subscribe(&caller(), &call).await {
        Ok(Answer::Error(e)) => {
            assert_eq!((e.code, e.message.as_str(), e.temporary), (1001, "", false))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_value_of_a_repeated_header_goes_and_answers_are_bounded() {
    let (addr, seen) = backend(200, Duration::ZERO, |_| "{}".into()).await;
    let proxy = HttpProxy::new(&ProxyConfig {
        http_headers: vec!["x-tag".into()],
        ..config(addr)
    })
    .unwrap();
    let mut c = caller();
    c.headers = Some(Arc::new(ForwardedHeaders {
        http: vec![("x-tag".into(), "a".into()), ("x-tag".into(), "b".into())],
        emulated: Vec::new(),
    }));
    proxy.refresh(&c).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0].headers["x-tag"], "a, b");

    let (big, _) = backend(200, Duration::ZERO, |_| {
        format!(
            r#"{{"result": {{"info": "{}"}}}}"#,
            "x".repeat(2 * 1024 * 1024)
        )
    })
    .await;
    let err = HttpProxy::new(&config(big))
        .unwrap()
        .refresh(&caller())
        .await
        .unwrap_err();
    assert!(err.0.contains("larger than"), "{err}");
}

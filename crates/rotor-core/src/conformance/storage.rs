//! The storage conformance suite: what every history, presence and revocation store must
//! do. Each function takes a fresh store and panics with a message on the first violation;
//! [`crate::history_suite`], [`crate::presence_suite`] and [`crate::revocation_suite`] stamp
//! them as tests for a backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rotor_protocol::{ClientInfo, Publication, Raw, StreamPosition};

use crate::storage::*;
use crate::CoreError;

fn publication(n: u64) -> Publication {
    Publication {
        delta: false,
        data: Raw::from_value(&serde_json::json!({ "n": n })),
        info: None,
        offset: 0,
        tags: BTreeMap::new(),
        time: 0,
    }
}

fn opts(size: usize, ttl: Duration) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl,
        meta_ttl: Duration::from_secs(3600),
    }
}

fn numbers(pubs: &[Publication]) -> Vec<u64> {
    pubs.iter()
        .map(|p| {
            p.data.parse::<serde_json::Value>().unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn offsets(pubs: &[Publication]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

/// Offsets start at 1 and grow by one; the epoch is stable; limit 0 gives the position only.
pub async fn history_offsets_and_epoch(store: Arc<dyn HistoryStore>) {
    let o = opts(100, Duration::from_secs(60));
    let empty = store
        .read("c1", &HistoryFilter::default(), &o)
        .await
        .unwrap();
    assert_eq!(empty.position.offset, 0, "a new stream starts at offset 0");
    assert!(
        !empty.position.epoch.is_empty(),
        "a stream has an epoch from the start"
    );
    let mut last = StreamPosition::default();
    for n in 1..=5 {
        last = store.add("c1", publication(n), &o).await.unwrap();
        assert_eq!(last.offset, n, "offsets are sequential");
    }
    assert_eq!(
        last.epoch, empty.position.epoch,
        "the epoch does not change while the stream lives"
    );
    let all = store
        .read(
            "c1",
            &HistoryFilter {
                limit: 100,
                ..HistoryFilter::default()
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&all.publications), vec![1, 2, 3, 4, 5]);
    assert_eq!(numbers(&all.publications), vec![1, 2, 3, 4, 5]);
    assert_eq!(all.position, last);
    let top = store
        .read("c1", &HistoryFilter::default(), &o)
        .await
        .unwrap();
    assert!(
        top.publications.is_empty(),
        "limit 0 returns no publications"
    );
    assert_eq!(top.position, last);
    let other = store
        .read("c2", &HistoryFilter::default(), &o)
        .await
        .unwrap();
    assert_eq!(other.position.offset, 0, "channels have separate streams");
}

/// `since`, `reverse` and `limit` select the right slice; a foreign epoch is refused, an
/// empty one matches any.
pub async fn history_since_reverse_limit(store: Arc<dyn HistoryStore>) {
    let o = opts(100, Duration::from_secs(60));
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = store.add("s", publication(n), &o).await.unwrap().epoch;
    }
    let since = |offset| {
        Some(StreamPosition {
            offset,
            epoch: epoch.clone(),
        })
    };
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: since(7),
                limit: 100,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), vec![8, 9, 10]);
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: since(3),
                limit: 2,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), vec![4, 5]);
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: None,
                limit: 3,
                reverse: true,
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), vec![10, 9, 8]);
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: since(4),
                limit: 2,
                reverse: true,
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), vec![3, 2]);
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: since(10),
                limit: 10,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap();
    assert!(page.publications.is_empty());
    let wrong = Some(StreamPosition {
        offset: 2,
        epoch: "not-the-epoch".into(),
    });
    let err = store
        .read(
            "s",
            &HistoryFilter {
                since: wrong,
                limit: 10,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap_err();
    assert_eq!(err, CoreError::UnrecoverablePosition);
    // An empty epoch matches any (centrifuge's rule): from offset 0 is everything.
    let any = Some(StreamPosition {
        offset: 0,
        epoch: String::new(),
    });
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: any.clone(),
                limit: 3,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), vec![1, 2, 3]);
    // Also when only the position is asked for.
    let page = store
        .read(
            "s",
            &HistoryFilter {
                since: any,
                limit: 0,
                reverse: false,
            },
            &o,
        )
        .await
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(
        (page.position.offset, page.position.epoch),
        (10, epoch.clone())
    );
}

/// History keeps at most `size` publications and none older than `ttl`.
pub async fn history_trims_by_size_and_ttl(store: Arc<dyn HistoryStore>) {
    let o = opts(3, Duration::from_secs(60));
    for n in 1..=5 {
        store.add("t", publication(n), &o).await.unwrap();
    }
    let page = store
        .read(
            "t",
            &HistoryFilter {
                limit: 100,
                ..HistoryFilter::default()
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(
        offsets(&page.publications),
        vec![3, 4, 5],
        "trimmed to size"
    );
    assert_eq!(page.position.offset, 5);

    let short = opts(100, Duration::from_secs(1));
    store.add("ttl", publication(1), &short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.add("ttl", publication(2), &short).await.unwrap();
    let page = store
        .read(
            "ttl",
            &HistoryFilter {
                limit: 100,
                ..HistoryFilter::default()
            },
            &short,
        )
        .await
        .unwrap();
    assert_eq!(
        offsets(&page.publications),
        vec![2],
        "expired publications are gone"
    );
    assert_eq!(page.position.offset, 2, "the position survives expiry");
}

/// `remove` deletes publications but keeps the position, so clients see they missed data.
pub async fn history_remove_keeps_position(store: Arc<dyn HistoryStore>) {
    let o = opts(10, Duration::from_secs(60));
    store.add("r", publication(1), &o).await.unwrap();
    let pos = store.add("r", publication(2), &o).await.unwrap();
    store.remove("r").await.unwrap();
    let page = store
        .read(
            "r",
            &HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            },
            &o,
        )
        .await
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, pos);
    let next = store.add("r", publication(3), &o).await.unwrap();
    assert_eq!(next.offset, 3);
}

/// Concurrent publishers get distinct, gap-free offsets.
pub async fn history_concurrent_adds_are_gap_free(store: Arc<dyn HistoryStore>) {
    let o = opts(10_000, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25u64 {
                got.push(
                    store
                        .add("conc", publication(t * 100 + i), &o)
                        .await
                        .unwrap()
                        .offset,
                );
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    let page = store
        .read(
            "conc",
            &HistoryFilter {
                limit: 1000,
                ..HistoryFilter::default()
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page.publications), (1..=200).collect::<Vec<_>>());
}

/// Client `c3`'s info is binary (a Protobuf client's `b64info`), the others' JSON.
fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: Some(if client == "c3" {
            Raw::binary(&[0x80, 0x00, 0x01])
        } else {
            Raw::from_value(&serde_json::json!({"n": client}))
        }),
        chan_info: (client == "c3").then(|| Raw::from_json(r#""text""#).unwrap()),
    }
}

/// Binary payloads (Protobuf clients', `b64data`) come back binary and byte for byte, beside
/// JSON ones, with binary info; a JSON string that looks like base64 stays a JSON string.
pub async fn history_keeps_binary_payloads(store: Arc<dyn HistoryStore>) {
    let o = opts(100, Duration::from_secs(60));
    let sent = vec![
        Publication {
            data: Raw::from_bytes(&[0x00, 0x01, 0xfe, 0xff]),
            info: Some(info("u2", "c3")),
            ..publication(0)
        },
        Publication {
            data: Raw::from_json(r#""AAH+/w==""#).unwrap(),
            ..publication(0)
        },
        publication(3),
    ];
    for p in &sent {
        store.add("bin", p.clone(), &o).await.unwrap();
    }
    let page = store
        .read(
            "bin",
            &HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            },
            &o,
        )
        .await
        .unwrap();
    let got: Vec<(bool, Vec<u8>)> = page
        .publications
        .iter()
        .map(|p| (p.data.is_json(), p.data.as_bytes().to_vec()))
        .collect();
    let want: Vec<(bool, Vec<u8>)> = sent
        .iter()
        .map(|p| (p.data.is_json(), p.data.as_bytes().to_vec()))
        .collect();
    assert_eq!(got, want, "payloads byte for byte, binary stays binary");
    assert_eq!(page.publications[0].info, sent[0].info, "binary info kept");
}

/// Presence add, get, stats (distinct users) and remove.
pub async fn presence_basics(store: Arc<dyn PresenceStore>) {
    let ttl = Duration::from_secs(60);
    store.add("p", &info("u1", "c1"), ttl).await.unwrap();
    store.add("p", &info("u1", "c2"), ttl).await.unwrap();
    store.add("p", &info("u2", "c3"), ttl).await.unwrap();
    store.add("p", &info("u2", "c3"), ttl).await.unwrap();
    let got = store.get("p").await.unwrap();
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["c1", "c2", "c3"]
    );
    assert_eq!(got["c1"], info("u1", "c1"), "info is kept as given");
    assert_eq!(
        got["c3"],
        info("u2", "c3"),
        "binary info comes back binary, a JSON string stays a JSON string"
    );
    assert_eq!(store.stats("p").await.unwrap(), (3, 2));
    store.remove("p", "c2").await.unwrap();
    assert_eq!(store.stats("p").await.unwrap(), (2, 2));
    store.remove("p", "missing").await.unwrap();
    assert!(store.get("other").await.unwrap().is_empty());
    assert_eq!(store.stats("other").await.unwrap(), (0, 0));
}

/// Entries that are not refreshed within their TTL disappear.
pub async fn presence_expires(store: Arc<dyn PresenceStore>) {
    store
        .add("pe", &info("u1", "gone"), Duration::from_secs(1))
        .await
        .unwrap();
    store
        .add("pe", &info("u2", "stays"), Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let got = store.get("pe").await.unwrap();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), vec!["stays"]);
    assert_eq!(store.stats("pe").await.unwrap(), (1, 1));
}

fn revoked(jti: &str, user: &str, revoked_at: u64, expire_at: u64) -> RevokedToken {
    RevokedToken {
        jti: jti.into(),
        user: user.into(),
        expire_at,
        revoked_at,
        reason: format!("leak {jti}"),
        actor: "test".into(),
        kicked: 1,
    }
}

/// Revocations are listed newest first with filters, and purged after the token's expiry.
pub async fn revocations(store: Arc<dyn RevocationStore>) {
    store.revoke(revoked("a", "u1", 100, 1000)).await.unwrap();
    store.revoke(revoked("b", "u2", 200, 2000)).await.unwrap();
    store.revoke(revoked("c", "u1", 300, 0)).await.unwrap();
    let all = store
        .list(&RevocationFilter {
            limit: 10,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        vec!["c", "b", "a"]
    );
    assert_eq!(
        all[2],
        revoked("a", "u1", 100, 1000),
        "audit fields are kept"
    );
    let u1 = store
        .list(&RevocationFilter {
            user: Some("u1".into()),
            limit: 10,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        u1.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        vec!["c", "a"]
    );
    let one = store
        .list(&RevocationFilter {
            jti: Some("b".into()),
            limit: 10,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(one, vec![revoked("b", "u2", 200, 2000)], "found by jti");
    let window = store
        .list(&RevocationFilter {
            since: Some(150),
            until: Some(250),
            limit: 10,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    let page = store
        .list(&RevocationFilter {
            limit: 1,
            offset: 1,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    let active = store.active(1500).await.unwrap();
    let mut jtis: Vec<_> = active.iter().map(|r| r.jti.as_str()).collect();
    jtis.sort_unstable();
    assert_eq!(
        jtis,
        vec!["b", "c"],
        "expired entries are not active; expire_at 0 never expires"
    );
    assert_eq!(store.purge_expired(1500).await.unwrap(), 1);
    assert_eq!(
        store
            .list(&RevocationFilter {
                limit: 10,
                ..RevocationFilter::default()
            })
            .await
            .unwrap()
            .len(),
        2
    );
    // Revoking the same jti again updates the entry instead of duplicating it.
    store.revoke(revoked("b", "u2", 400, 3000)).await.unwrap();
    let all = store
        .list(&RevocationFilter {
            limit: 10,
            ..RevocationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        vec!["b", "c"]
    );
}

fn invalidation(user: &str, channel: &str, issued_before: u64, expire_at: u64) -> UserInvalidation {
    UserInvalidation {
        user: user.into(),
        issued_before,
        channel: channel.into(),
        expire_at,
        invalidated_at: 50,
        reason: "compromised".into(),
        actor: "test".into(),
        kicked: 2,
    }
}

/// User invalidations: replaced per (user, channel), filtered by expiry, purged.
pub async fn user_invalidations(store: Arc<dyn RevocationStore>) {
    store
        .invalidate_user(invalidation("u1", "", 100, 1000))
        .await
        .unwrap();
    store
        .invalidate_user(invalidation("u1", "", 200, 2000))
        .await
        .unwrap();
    store
        .invalidate_user(invalidation("u1", "chat:x", 150, 0))
        .await
        .unwrap();
    store
        .invalidate_user(invalidation("u2", "", 100, 500))
        .await
        .unwrap();
    let mut active = store.active_invalidations(600).await.unwrap();
    active.sort_by(|a, b| {
        (a.user.clone(), a.channel.clone()).cmp(&(b.user.clone(), b.channel.clone()))
    });
    assert_eq!(
        active,
        vec![
            invalidation("u1", "", 200, 2000),
            invalidation("u1", "chat:x", 150, 0)
        ],
        "the newer replaces the older; expired ones are not active"
    );
    assert!(store.purge_expired(600).await.unwrap() >= 1);
    assert_eq!(store.active_invalidations(0).await.unwrap().len(), 2);
}

fn position(offset: u64) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: "ep".into(),
    }
}

const PENDING: Duration = Duration::from_secs(10);

/// The first claim of a key wins; a repeat sees it on its way, then its result; keys are
/// per channel; a released claim can be made again.
pub async fn idempotency_first_claim_wins(store: Arc<dyn IdempotencyStore>) {
    assert_eq!(
        store.claim("ia", "k1", PENDING).await.unwrap(),
        Claim::First
    );
    assert_eq!(
        store.claim("ia", "k1", PENDING).await.unwrap(),
        Claim::InProgress
    );
    let ttl = Duration::from_secs(60);
    store.settle("ia", "k1", &position(7), ttl).await.unwrap();
    assert_eq!(
        store.claim("ia", "k1", PENDING).await.unwrap(),
        Claim::Done(position(7))
    );
    // A late release (of a claim that lapsed) leaves a settled result alone.
    store.release("ia", "k1").await.unwrap();
    assert_eq!(
        store.claim("ia", "k1", PENDING).await.unwrap(),
        Claim::Done(position(7))
    );
    // Without history the result is an empty position, kept all the same.
    assert_eq!(
        store.claim("ia", "k2", PENDING).await.unwrap(),
        Claim::First
    );
    store
        .settle("ia", "k2", &StreamPosition::default(), ttl)
        .await
        .unwrap();
    assert_eq!(
        store.claim("ia", "k2", PENDING).await.unwrap(),
        Claim::Done(StreamPosition::default())
    );
    assert_eq!(
        store.claim("ib", "k1", PENDING).await.unwrap(),
        Claim::First,
        "keys are per channel"
    );
    store.release("ib", "k1").await.unwrap();
    assert_eq!(
        store.claim("ib", "k1", PENDING).await.unwrap(),
        Claim::First,
        "a released claim is free again"
    );
}

/// A result is kept for its TTL only, and a claim nobody settles lapses.
pub async fn idempotency_results_expire(store: Arc<dyn IdempotencyStore>) {
    let short = Duration::from_secs(1);
    assert_eq!(
        store.claim("ie", "done", PENDING).await.unwrap(),
        Claim::First
    );
    store
        .settle("ie", "done", &position(1), short)
        .await
        .unwrap();
    assert_eq!(
        store.claim("ie", "stuck", short).await.unwrap(),
        Claim::First
    );
    assert_eq!(
        store.claim("ie", "done", PENDING).await.unwrap(),
        Claim::Done(position(1))
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        store.claim("ie", "done", PENDING).await.unwrap(),
        Claim::First
    );
    assert_eq!(
        store.claim("ie", "stuck", PENDING).await.unwrap(),
        Claim::First
    );
}

/// Of many callers claiming one key at once, exactly one publishes.
pub async fn idempotency_concurrent_claims_have_one_winner(store: Arc<dyn IdempotencyStore>) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.claim("ic", "same", PENDING).await.unwrap()
        }));
    }
    let mut first = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::First => first += 1,
            Claim::InProgress => {}
            Claim::Done(p) => panic!("nothing was settled, got {p:?}"),
        }
    }
    assert_eq!(first, 1, "exactly one caller gets to publish");
}

/// The edges of a history read (centrifuge's rules): a channel never published to still
/// has a position (offset 0, an epoch that stays); a `since` at or past the top reads
/// nothing; a `since` whose next publication was trimmed reads from the oldest kept;
/// newest first from offset 1 reads nothing.
pub async fn history_read_edges(store: Arc<dyn HistoryStore>) {
    let o = opts(3, Duration::from_secs(60));
    let all = |since: Option<StreamPosition>, reverse| HistoryFilter {
        since,
        limit: 100,
        reverse,
    };
    let empty = store.read("never", &all(None, false), &o).await.unwrap();
    assert!(empty.publications.is_empty());
    assert_eq!(empty.position.offset, 0);
    assert!(
        !empty.position.epoch.is_empty(),
        "a stream has an epoch before its first publication"
    );
    let again = store.read("never", &all(None, false), &o).await.unwrap();
    assert_eq!(again.position, empty.position, "the epoch stays");

    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = store.add("edges", publication(n), &o).await.unwrap().epoch;
    }
    let at = |offset| {
        Some(StreamPosition {
            offset,
            epoch: epoch.clone(),
        })
    };
    let page = store.read("edges", &all(at(1), false), &o).await.unwrap();
    assert_eq!(
        offsets(&page.publications),
        vec![3, 4, 5],
        "from the oldest kept"
    );
    for past in [5, 9] {
        let page = store
            .read("edges", &all(at(past), false), &o)
            .await
            .unwrap();
        assert!(page.publications.is_empty(), "since {past}");
        assert_eq!(page.position.offset, 5);
    }
    let page = store.read("edges", &all(at(1), true), &o).await.unwrap();
    assert!(page.publications.is_empty(), "nothing before offset 1");
    let page = store.read("edges", &all(at(5), true), &o).await.unwrap();
    assert_eq!(offsets(&page.publications), vec![4, 3]);
}

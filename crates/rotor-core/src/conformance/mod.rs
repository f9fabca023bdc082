//! One conformance suite per core trait, stamped as tests for every implementation: the
//! storage traits ([`storage`]: history, presence, revocations) and the broker ([`broker`]).
//! A backend's tests invoke the macros with a function that makes a fresh subject:
//!
//! ```ignore
//! async fn history(test: &'static str) -> Option<Subject<dyn HistoryStore>> { ... }
//! rotor_core::history_suite!(history);
//! ```
//!
//! The function returns `None` to skip when its service is missing, after calling [`skip`]
//! (which fails the test instead under `CI=true`). Behind the `testing` feature: test
//! machinery, never part of a server build.

pub mod broker;
pub mod storage;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use broker::*;
pub use storage::*;

/// Whether this run is CI (`CI=true` or `CI=1`): a test whose service is missing fails there
/// instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says that `test` cannot reach `service` (`why`): under CI this panics, so the test fails;
/// elsewhere it prints a loud SKIPPED line and the caller returns.
pub fn skip(test: &str, service: &str, why: &dyn std::fmt::Display) {
    if in_ci() {
        panic!("{test}: {service} is required under CI: {why}");
    }
    eprintln!("\n!!!!! SKIPPED {test}: no {service} ({why}) !!!!!\n");
}

/// What a suite test runs against: the store, and what to do once the test passed (drop a
/// database schema, say).
pub struct Subject<T: ?Sized> {
    pub store: Arc<T>,
    teardown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<T: ?Sized> Subject<T> {
    pub fn new(store: Arc<T>) -> Subject<T> {
        Subject {
            store,
            teardown: None,
        }
    }

    /// Runs `teardown` when the test is over.
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.teardown = Some(Box::pin(teardown));
        self
    }

    pub async fn finish(self) {
        if let Some(t) = self.teardown {
            t.await;
        }
    }
}

/// One suite function as a test: `$make(test name)` gives the subject (or `None`: skip).
/// The clock: `[]` threads (the default), `[paused_clock]` tokio's paused clock, `[threads]`
/// threads whatever the suite was asked for.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($make:path, [paused_clock], $name:ident) => {
        $crate::__conformance_test!(@test $make, #[tokio::test(start_paused = true)], $name);
    };
    ($make:path, [], $name:ident) => {
        $crate::__conformance_test!($make, [threads], $name);
    };
    ($make:path, [threads], $name:ident) => {
        $crate::__conformance_test!(
            @test $make,
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)],
            $name
        );
    };
    (@test $make:path, #[$attr:meta], $name:ident) => {
        #[$attr]
        async fn $name() {
            let Some(subject) = $make(stringify!($name)).await else {
                return;
            };
            $crate::conformance::$name(subject.store.clone()).await;
            subject.finish().await;
        }
    };
}

/// The history store suite. `$make`: `async fn(&'static str) -> Option<Subject<dyn
/// HistoryStore>>`. With `paused_clock`, the tests that wait run on tokio's paused clock
/// (stores whose time is tokio's).
#[macro_export]
macro_rules! history_suite {
    ($make:path $(, $clock:ident)?) => {
        $crate::__conformance_test!($make, [$($clock)?], history_offsets_and_epoch);
        $crate::__conformance_test!($make, [$($clock)?], history_since_reverse_limit);
        $crate::__conformance_test!($make, [$($clock)?], history_trims_by_size_and_ttl);
        $crate::__conformance_test!($make, [$($clock)?], history_remove_keeps_position);
        $crate::__conformance_test!($make, [$($clock)?], history_keeps_binary_payloads);
        $crate::__conformance_test!($make, [$($clock)?], history_read_edges);
        // Concurrency needs threads, whatever the clock.
        $crate::__conformance_test!($make, [threads], history_concurrent_adds_are_gap_free);
    };
}

/// The presence store suite (see [`history_suite`] for `$make` and `paused_clock`).
#[macro_export]
macro_rules! presence_suite {
    ($make:path $(, $clock:ident)?) => {
        $crate::__conformance_test!($make, [$($clock)?], presence_basics);
        $crate::__conformance_test!($make, [$($clock)?], presence_expires);
    };
}

/// The revocation store suite (see [`history_suite`] for `$make` and `paused_clock`).
#[macro_export]
macro_rules! revocation_suite {
    ($make:path $(, $clock:ident)?) => {
        $crate::__conformance_test!($make, [$($clock)?], revocations);
        $crate::__conformance_test!($make, [$($clock)?], user_invalidations);
    };
}

/// The idempotent publish results suite (see [`history_suite`] for `$make` and
/// `paused_clock`).
#[macro_export]
macro_rules! idempotency_suite {
    ($make:path $(, $clock:ident)?) => {
        $crate::__conformance_test!($make, [$($clock)?], idempotency_first_claim_wins);
        $crate::__conformance_test!($make, [$($clock)?], idempotency_results_expire);
        $crate::__conformance_test!($make, [threads], idempotency_concurrent_claims_have_one_winner);
    };
}

/// Every storage suite, for a backend that implements every store.
#[macro_export]
macro_rules! storage_suite {
    (history: $h:path, presence: $p:path, revocations: $r:path, idempotency: $i:path $(, $clock:ident)? $(,)?) => {
        $crate::history_suite!($h $(, $clock)?);
        $crate::presence_suite!($p $(, $clock)?);
        $crate::revocation_suite!($r $(, $clock)?);
        $crate::idempotency_suite!($i $(, $clock)?);
    };
}

/// The broker suite. `$make`: `async fn(&'static str, &[&str]) -> Option<Vec<Arc<dyn
/// Broker>>>`, brokers sharing one backend, one per node uid given (ready to use: their
/// connections up). Every broker runs the single-node tests; with `cluster`, the broker's
/// nodes reach each other and the multi-node tests run too.
#[macro_export]
macro_rules! broker_suite {
    ($make:path) => {
        $crate::__broker_test!($make, 1, broker_delivers_publications_in_order_and_intact);
        $crate::__broker_test!(
            $make,
            1,
            broker_keeps_the_order_of_calls_not_of_confirmations
        );
        $crate::__broker_test!($make, 1, broker_delivers_join_and_leave);
        $crate::__broker_test!($make, 1, broker_delivers_every_control_to_its_own_node);
        $crate::__broker_test!($make, 1, broker_reaches_no_node_that_is_not_up);
    };
    ($make:path, cluster) => {
        $crate::broker_suite!($make);
        $crate::__broker_test!($make, 2, brokers_deliver_publications_only_where_subscribed);
        $crate::__broker_test!($make, 2, brokers_deliver_controls_to_every_node);
        $crate::__broker_test!($make, 2, node_messages_reach_their_node_only);
        $crate::__broker_test!($make, 2, nodes_are_listed_until_they_shut_down);
    };
}

/// One broker suite function as a test, with brokers for the first `$nodes` of
/// [`broker::NODES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __broker_test {
    ($make:path, $nodes:literal, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let uids = &$crate::conformance::broker::NODES[..$nodes];
            let Some(brokers) = $make(stringify!($name), uids).await else {
                return;
            };
            $crate::conformance::$name(brokers).await;
        }
    };
}

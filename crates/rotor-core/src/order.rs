//! Per-channel publication order: publications are delivered to the broker in the order
//! they were submitted to the history store, while many of them may be in flight at once
//! (so the store can commit them in groups). Subscribers that need a consistent position
//! take the channel exclusively.
//!
//! Channels are striped over a fixed number of slots; channels sharing a slot share one
//! order, which is harmless.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

const SLOTS: usize = 256;

#[derive(Default)]
struct State {
    next_ticket: u64,
    next_deliver: u64,
    /// Finished tickets not yet reached by `next_deliver`.
    done: BTreeSet<u64>,
}

#[derive(Default)]
struct Slot {
    /// Publishers share it; a subscriber that recovers holds it exclusively.
    gate: RwLock<()>,
    state: Mutex<State>,
    turn: Notify,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Sequencer {
    slots: Box<[Slot]>,
    hasher: RandomState,
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// A publication's place in its channel's order. Passing it (handed to the broker) or
/// dropping it (delivered, failed or cancelled) lets the next one through; a subscriber
/// waiting for the channel exclusively waits until it is dropped.
pub(crate) struct Ticket<'a> {
    slot: &'a Slot,
    n: u64,
    passed: bool,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Sequencer {
    fn slot(&self, channel: &str) -> &Slot {
        &self.slots[self.hasher.hash_one(channel) as usize % SLOTS]
    }

    /// Takes the next ticket of the channel and runs `submit` while holding it, so that the
    /// order of `submit` calls is the order of tickets.
    pub async fn submit<T>(&self, channel: &str, submit: impl FnOnce() -> T) -> (Ticket<'_>, T) {
        let slot = self.slot(channel);
        let gate = slot.gate.read().await;
        let mut st = lock(&slot.state);
        let n = st.next_ticket;
        st.next_ticket += 1;
        let out = submit();
        drop(st);
        (
            Ticket {
                slot,
                n,
                passed: false,
                _gate: gate,
            },
            out,
        )
    }

    /// Waits until no publication of the channel is in flight and keeps new ones out.
    pub async fn exclusive(&self, channel: &str) -> RwLockWriteGuard<'_, ()> {
        self.slot(channel).gate.write().await
    }
}

impl Ticket<'_> {
    /// Waits until every earlier ticket of the channel has finished.
    pub async fn turn(&self) {
        loop {
            let notified = self.slot.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.slot.state).next_deliver == self.n {
                return;
            }
            notified.await;
        }
    }
}

impl Ticket<'_> {
    /// Lets the channel's next publication take its turn, while this one still keeps
    /// exclusive waiters out until it is dropped.
    pub fn pass(&mut self) {
        if std::mem::replace(&mut self.passed, true) {
            return;
        }
        let mut st = lock(&self.slot.state);
        st.done.insert(self.n);
        loop {
            let next = st.next_deliver;
            if !st.done.remove(&next) {
                break;
            }
            st.next_deliver += 1;
        }
        drop(st);
        self.slot.turn.notify_waiters();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.pass();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delivery_follows_submission_even_when_storage_finishes_out_of_order() {
        let seq = Arc::new(Sequencer::default());
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let (seq, delivered) = (seq.clone(), delivered.clone());
            // Later submissions "commit" sooner.
            let delay = Duration::from_millis(100 - i * 5);
            tasks.push(tokio::spawn(async move {
                let (ticket, _) = seq.submit("c", || ()).await;
                tokio::time::sleep(delay).await;
                ticket.turn().await;
                delivered.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*delivered.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_ticket_does_not_block_the_next() {
        let seq = Sequencer::default();
        let (first, _) = seq.submit("c", || ()).await;
        let (second, _) = seq.submit("c", || ()).await;
        drop(first); // failed or cancelled before its turn
        tokio::time::timeout(Duration::from_secs(1), second.turn())
            .await
            .expect("second gets its turn");
    }

    #[tokio::test(start_paused = true)]
    async fn exclusive_waits_for_publications_in_flight() {
        let seq = Arc::new(Sequencer::default());
        let (ticket, _) = seq.submit("c", || ()).await;
        let s2 = seq.clone();
        let waiter = tokio::spawn(async move {
            let _g = s2.exclusive("c").await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "a subscriber waits while a publication is in flight"
        );
        drop(ticket);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_ticket_lets_the_next_through_but_still_holds_off_exclusive() {
        let seq = Arc::new(Sequencer::default());
        let (mut first, _) = seq.submit("c", || ()).await;
        let (second, _) = seq.submit("c", || ()).await;
        first.pass(); // handed to the broker, not yet confirmed
        tokio::time::timeout(Duration::from_secs(1), second.turn())
            .await
            .expect("the next publication does not wait for the confirmation");
        drop(second);
        let s2 = seq.clone();
        let waiter = tokio::spawn(async move {
            let _g = s2.exclusive("c").await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "a subscriber still waits for the unconfirmed publication"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}

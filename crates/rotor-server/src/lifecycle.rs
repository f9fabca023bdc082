//! The last hour of this node's token lifecycle, minute by minute: refreshes by outcome and
//! connections closed at expiry (3005), for the admin UI's charts. An observer of the core's
//! events beside `metrics::Metrics`: the same events `rotor_refreshes_total` and
//! `rotor_connection_expirations_total` count. It listens to nothing else, so turning the
//! admin UI on adds nothing to the fan-out or connect path. No IO.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use rotor_core::events::{Observer, RefreshOutcome, TokenKind};
use serde::Serialize;

/// How many minutes are kept.
pub const MINUTES: u64 = 60;

/// One minute of events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Minute {
    /// Unix seconds of the minute's start.
    pub at: u64,
    /// Token refreshes (connection and subscription) by outcome: `ok`, `expired`,
    /// `invalid`, `revoked`, ...
    pub refreshes: BTreeMap<&'static str, u64>,
    /// Connections closed with 3005 at their expiry.
    pub expired: u64,
}

/// Minutes with events, oldest first; older than [`MINUTES`] are dropped as time goes on.
#[derive(Default)]
pub struct Timeline(Mutex<VecDeque<Minute>>);

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Timeline {
    fn record(&self, now: u64, apply: impl FnOnce(&mut Minute)) {
        let at = now - now % 60;
        let mut minutes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while minutes.front().is_some_and(|m| m.at + MINUTES * 60 <= at) {
            minutes.pop_front();
        }
        if minutes.back().is_none_or(|m| m.at < at) {
            minutes.push_back(Minute {
                at,
                ..Minute::default()
            });
        }
        // A clock that stepped back counts into the newest minute.
        apply(minutes.back_mut().expect("just ensured"));
    }

    /// A refresh with `outcome` happened now.
    pub fn refresh(&self, outcome: &'static str) {
        self.refresh_at(now_unix(), outcome);
    }

    /// A connection was closed at expiry now.
    pub fn expired(&self) {
        self.expired_at(now_unix());
    }

    fn refresh_at(&self, now: u64, outcome: &'static str) {
        self.record(now, |m| *m.refreshes.entry(outcome).or_default() += 1);
    }

    fn expired_at(&self, now: u64) {
        self.record(now, |m| m.expired += 1);
    }

    /// The last [`MINUTES`] minutes, every one of them (zero where nothing happened),
    /// oldest first, the current minute last.
    pub fn last_hour(&self) -> Vec<Minute> {
        self.last_hour_at(now_unix())
    }

    fn last_hour_at(&self, now: u64) -> Vec<Minute> {
        let current = now - now % 60;
        let first = current.saturating_sub((MINUTES - 1) * 60);
        let minutes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (0..MINUTES)
            .map(|i| first + i * 60)
            .map(|at| {
                minutes
                    .iter()
                    .find(|m| m.at == at)
                    .cloned()
                    .unwrap_or(Minute {
                        at,
                        ..Minute::default()
                    })
            })
            .collect()
    }
}

impl Observer for Timeline {
    fn connection_expired(&self, _transport: &'static str) {
        self.expired();
    }

    fn refresh(&self, _kind: TokenKind, outcome: RefreshOutcome, _lag: Option<f64>) {
        self.refresh(outcome.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_minute_and_forgets_after_an_hour() {
        let t = Timeline::default();
        let start: u64 = 1_800_000_000; // a minute's start (divisible by 60)
        t.refresh_at(start + 5, "ok");
        t.refresh_at(start + 59, "ok");
        t.refresh_at(start + 61, "expired");
        t.expired_at(start + 62);
        let hour = t.last_hour_at(start + 70);
        assert_eq!(hour.len(), MINUTES as usize);
        let last = &hour[hour.len() - 1];
        assert_eq!(last.at, start + 60);
        assert_eq!(last.refreshes.get("expired"), Some(&1));
        assert_eq!(last.expired, 1);
        assert_eq!(hour[hour.len() - 2].refreshes.get("ok"), Some(&2));
        // An hour on, the first minute is out of the window and out of memory.
        t.refresh_at(start + 3600 + 1, "ok");
        let hour = t.last_hour_at(start + 3600 + 1);
        assert!(hour.iter().all(|m| m.refreshes.get("ok") != Some(&2)));
        assert_eq!(
            t.0.lock().unwrap().len(),
            2,
            "the minute an hour old was dropped"
        );
    }
}

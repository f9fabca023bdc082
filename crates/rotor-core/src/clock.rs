//! Token time: Unix time derived from tokio's clock, so that tests on tokio's paused clock
//! move token expiry too. Everything that compares a token's `exp` with now asks this.

use std::time::Duration;

/// Unix time derived from tokio's clock, so that tests with a paused clock move token time too.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_unix_ms: unix,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn unix_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }

    pub fn unix(&self) -> u64 {
        self.unix_ms() / 1000
    }

    /// The tokio instant at which Unix time reaches `unix` seconds.
    pub fn instant_at(&self, unix: u64) -> tokio::time::Instant {
        let target_ms = unix.saturating_mul(1000);
        self.base + Duration::from_millis(target_ms.saturating_sub(self.base_unix_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

//! Reconnect delays: exponential growth from a minimum to a maximum with "equal jitter" (a
//! random point in the upper half of the step), so a fleet of clients does not come back in
//! lockstep after a server restart.

use std::time::Duration;

use rand::Rng;

pub(crate) fn delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 2u64.saturating_pow(attempt.min(30));
    let step = min
        .as_millis()
        .saturating_mul(u128::from(factor))
        .min(max.as_millis()) as u64;
    if step == 0 {
        return Duration::ZERO;
    }
    let half = step / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=step - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stays_in_the_upper_half() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let step = (100u64 << attempt.min(30)).min(5000);
            for _ in 0..50 {
                let d = delay(attempt, min, max).as_millis() as u64;
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d} vs {step}"
                );
            }
        }
        assert_eq!(delay(3, Duration::ZERO, max), Duration::ZERO);
    }
}

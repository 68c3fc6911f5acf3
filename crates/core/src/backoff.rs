//! Exponential backoff, shared by failed polls and failed deliveries.

use std::time::Duration;

/// The delay before retry number `attempt` (1 for the first retry): `base`, doubling each
/// attempt, never above `cap`.
pub fn exponential(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    base.saturating_mul(factor).min(cap)
}

/// A uniformly random duration in `min..=max` (`min` when the range is empty).
pub fn uniform(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    let nanos = rand::random_range(min.as_nanos() as u64..=max.as_nanos() as u64);
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let delays: Vec<_> = (1..=6).map(|n| exponential(n, s(5), s(60))).collect();
        assert_eq!(delays, [s(5), s(10), s(20), s(40), s(60), s(60)]);
        assert_eq!(exponential(200, s(5), s(60)), s(60));
    }

    #[test]
    fn uniform_stays_in_range() {
        let (lo, hi) = (Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..1000 {
            let d = uniform(lo, hi);
            assert!(lo <= d && d <= hi);
        }
        assert_eq!(uniform(hi, lo), hi);
    }
}

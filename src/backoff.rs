//! Exponential backoff: `base`, doubled per attempt, capped at `max`; with optional full jitter
//! (a uniform pick in `0..=delay`), so clients retrying together spread out.

use std::time::Duration;

/// Delays between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after the `attempt`-th failure (1-based): `base * 2^(attempt-1)`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// [`delay`](Self::delay) with full jitter.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.delay(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_millis(700),
    };

    #[test]
    fn doubles_then_caps() {
        let delays: Vec<_> = (1..=5).map(|n| B.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(B.delay(u32::MAX), Duration::from_millis(700));
        assert_eq!(
            Backoff {
                base: Duration::ZERO,
                max: Duration::ZERO
            }
            .delay(3),
            Duration::ZERO
        );
    }

    #[test]
    fn jitter_stays_within_the_delay_and_varies() {
        let picks: std::collections::HashSet<_> = (0..200).map(|_| B.jittered(2)).collect();
        assert!(picks.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(picks.len() > 100, "picks vary: {}", picks.len());
        assert_eq!(
            Backoff {
                base: Duration::ZERO,
                max: Duration::ZERO
            }
            .jittered(1),
            Duration::ZERO
        );
    }
}

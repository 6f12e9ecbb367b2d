//! The pause daprd's Service Bus binding takes after a failed message. Service Bus makes an
//! abandoned message available again at once; what spaces out its redeliveries is the binding's
//! `maxRetriableErrorsPerSec` (default 10): after each failed app call, its subscription takes a
//! token from a `go.uber.org/ratelimit` limiter before it receives again (components-contrib
//! `common/component/azure/servicebus/subscription.go`, `handleMessages`). This is that limiter:
//! permits spaced `1s / rate` apart, with up to 10 intervals of idle time ("slack") usable as a
//! burst, so a poison message on an idle subscription goes through its deliveries in about a
//! second, and a steady stream of failures is held to the rate.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// ratelimit's default slack, in intervals.
const SLACK: u32 = 10;

#[derive(Debug)]
pub struct RateLimiter {
    per_request: Duration,
    max_slack: Duration,
    /// When the last permit was issued; `None` before the first.
    last: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter of `per_second` permits; `None` for 0, which the binding takes as "no limit".
    pub fn new(per_second: u32) -> Option<Self> {
        let per_request = Duration::from_secs(1).checked_div(per_second)?;
        Some(Self {
            per_request,
            max_slack: per_request * SLACK,
            last: Mutex::new(None),
        })
    }

    /// Takes a permit; returns when the caller may go on (now, or later: sleep until then).
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut last = self.last.lock();
        let issued = match *last {
            None => now,
            // Long idle: keep at most `max_slack` of it as a burst.
            Some(at) if now > at + self.per_request + self.max_slack => {
                now.checked_sub(self.max_slack).unwrap_or(now)
            }
            Some(at) => at + self.per_request,
        };
        *last = Some(issued);
        issued.max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_no_limit() {
        assert!(RateLimiter::new(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_permits_and_allows_a_bounded_burst_after_idle() {
        let limiter = RateLimiter::new(10).expect("a limit");
        let start = Instant::now();
        // From the first permit on, one per 100 ms.
        let waits: Vec<_> = (0..3).map(|_| limiter.reserve() - start).collect();
        assert_eq!(waits, [0, 100, 200].map(Duration::from_millis));
        // Idle for long: 10 intervals of slack come back as a burst, then the pace again.
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        let burst = (0..12)
            .map(|_| limiter.reserve())
            .take_while(|at| *at == now)
            .count();
        assert_eq!(burst, 11, "the permit due now and 10 of slack");
        assert_eq!(limiter.reserve() - now, Duration::from_millis(200));
    }
}

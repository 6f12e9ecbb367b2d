//! The simulated work done for each message, and the line the original sample logged for it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Timestamp format of the original sample's log line (`12/24/2019 14:42:42`), in UTC.
const TIMESTAMP_FORMAT: &str = "%m/%d/%Y %H:%M:%S";

/// When one message's work started and ended.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Wall-clock start, as printed.
    pub received: DateTime<Utc>,
    /// Wall-clock end, as printed.
    pub finished: DateTime<Utc>,
    /// Measured on the monotonic clock, so a wall-clock step cannot make it negative.
    pub elapsed: Duration,
}

/// Works on one message for `duration`; the original sample slept, and so do we.
pub async fn simulate(duration: Duration) -> Done {
    let received = Utc::now();
    let start = Instant::now();
    // tokio's timer rounds every deadline up to the next millisecond, so even a zero sleep
    // waits for the timer wheel: up to 1 ms per event (WORK_DURATION=0 ran at 25k events/s
    // instead of 41k in the pipeline benchmark).
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
    Done {
        received,
        finished: Utc::now(),
        elapsed: start.elapsed(),
    }
}

/// The original sample's line, byte for byte:
/// `Hello World -- Received at: 12/24/2019 14:42:42 -- Finished at: 12/24/2019 14:42:47`.
pub fn log_line(text: &str, received: DateTime<Utc>, finished: DateTime<Utc>) -> String {
    format!(
        "{text} -- Received at: {} -- Finished at: {}",
        received.format(TIMESTAMP_FORMAT),
        finished.format(TIMESTAMP_FORMAT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_the_original_line() {
        let received = Utc.with_ymd_and_hms(2019, 12, 24, 14, 42, 42).unwrap();
        let finished = Utc.with_ymd_and_hms(2019, 12, 24, 14, 42, 47).unwrap();
        assert_eq!(
            log_line("Hello World", received, finished),
            "Hello World -- Received at: 12/24/2019 14:42:42 -- Finished at: 12/24/2019 14:42:47"
        );
    }

    #[test]
    fn pads_single_digits_and_uses_24_hours() {
        let received = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let finished = Utc.with_ymd_and_hms(2024, 1, 2, 23, 0, 0).unwrap();
        assert_eq!(
            log_line("x", received, finished),
            "x -- Received at: 01/02/2024 03:04:05 -- Finished at: 01/02/2024 23:00:00"
        );
    }

    #[tokio::test]
    async fn zero_work_does_not_wait_for_the_timer() {
        // A zero sleep is pending on its first poll: it waits for the timer's next millisecond.
        use futures::FutureExt;
        assert!(simulate(Duration::ZERO).now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn takes_the_configured_duration() {
        let done = simulate(Duration::from_secs(5)).await;
        assert!(done.elapsed >= Duration::from_secs(5), "{:?}", done.elapsed);
        assert!(done.finished >= done.received);
    }
}

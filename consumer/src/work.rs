//! The simulated work done for each message, and the line the original sample logged for it.

use std::{fmt, time::Duration};

use chrono::{DateTime, Datelike, Timelike, Utc};
use pipeline::telemetry::clock::{self, SecondCache};
use tokio::time::Instant;

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
    // waits for the timer wheel: up to 1 ms per event, which would cap WORK_DURATION=0.
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
    Done {
        received,
        finished: Utc::now(),
        elapsed: start.elapsed(),
    }
}

/// The original sample's line, byte for byte, as `Display`:
/// `Hello World -- Received at: 12/24/2019 14:42:42 -- Finished at: 12/24/2019 14:42:47`
/// (`MM/DD/YYYY HH:MM:SS`, UTC). Formatted straight into the log line, without a `String` of
/// its own: at zero work, logging it is most of what the consumer does per message.
pub struct LogLine<'a> {
    /// The message's text.
    pub text: &'a str,
    /// When its work started.
    pub received: DateTime<Utc>,
    /// When its work ended.
    pub finished: DateTime<Utc>,
}

impl fmt::Display for LogLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -- Received at: {} -- Finished at: {}",
            self.text,
            Timestamp(self.received),
            Timestamp(self.finished)
        )
    }
}

/// `12/24/2019 14:42:42`, what chrono's `%m/%d/%Y %H:%M:%S` gives. Both timestamps of a line
/// fall in the same second, as do the lines of many messages: each thread formats a second once
/// and copies it from then on.
struct Timestamp(DateTime<Utc>);

/// `MM/DD/YYYY HH:MM:SS`.
const LAYOUT: usize = 19;

thread_local! {
    static SECONDS: SecondCache<LAYOUT> = const { SecondCache::new() };
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        // chrono holds a leap second as second 59 plus a second of nanoseconds; %S prints 60.
        let leap = t.nanosecond() >= 1_000_000_000;
        if leap || !(0..=9999).contains(&t.year()) {
            return write!(
                f,
                "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
                t.month(),
                t.day(),
                t.year(),
                t.hour(),
                t.minute(),
                t.second() + u32::from(leap)
            );
        }
        let text = SECONDS.with(|seconds| seconds.get(t.timestamp(), layout));
        // Digits and separators only: always UTF-8.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// The second `second` (since the Unix epoch, of a year from 0 to 9999) in [`Timestamp`]'s
/// layout.
fn layout(second: i64) -> [u8; LAYOUT] {
    let t = DateTime::<Utc>::from_timestamp(second, 0).unwrap_or_default();
    let mut text = Vec::with_capacity(LAYOUT);
    for (value, width, then) in [
        (t.month(), 2, b'/'),
        (t.day(), 2, b'/'),
        (t.year().unsigned_abs(), 4, b' '),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (t.second(), 2, b'\n'),
    ] {
        clock::push_digits(&mut text, value, width);
        text.push(then);
    }
    text.pop();
    text.try_into().unwrap_or([b'0'; LAYOUT])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn line(text: &str, received: DateTime<Utc>, finished: DateTime<Utc>) -> String {
        LogLine {
            text,
            received,
            finished,
        }
        .to_string()
    }

    #[test]
    fn formats_the_original_line() {
        let received = Utc.with_ymd_and_hms(2019, 12, 24, 14, 42, 42).unwrap();
        let finished = Utc.with_ymd_and_hms(2019, 12, 24, 14, 42, 47).unwrap();
        assert_eq!(
            line("Hello World", received, finished),
            "Hello World -- Received at: 12/24/2019 14:42:42 -- Finished at: 12/24/2019 14:42:47"
        );
    }

    #[test]
    fn pads_single_digits_and_uses_24_hours() {
        let received = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let finished = Utc.with_ymd_and_hms(2024, 1, 2, 23, 0, 0).unwrap();
        assert_eq!(
            line("x", received, finished),
            "x -- Received at: 01/02/2024 03:04:05 -- Finished at: 01/02/2024 23:00:00"
        );
    }

    #[test]
    fn a_leap_second_reads_60() {
        let leap = Utc
            .with_ymd_and_hms(2016, 12, 31, 23, 59, 59)
            .unwrap()
            .with_nanosecond(1_500_000_000)
            .unwrap();
        assert_eq!(Timestamp(leap).to_string(), "12/31/2016 23:59:60");
    }

    #[test]
    fn each_second_is_formatted_as_its_own() {
        let second = Utc.with_ymd_and_hms(2019, 12, 24, 14, 42, 42).unwrap();
        for (offset_ms, expected) in [
            (0, "12/24/2019 14:42:42"),
            (999, "12/24/2019 14:42:42"),
            (1_000, "12/24/2019 14:42:43"),
            (0, "12/24/2019 14:42:42"),
            (86_400_000, "12/25/2019 14:42:42"),
        ] {
            let time = second + chrono::Duration::milliseconds(offset_ms);
            assert_eq!(Timestamp(time).to_string(), expected);
        }
    }

    proptest::proptest! {
        #[test]
        fn timestamps_read_as_chrono_formats_them(
            seconds in -62_167_219_200i64..253_402_300_800, // years 0 to 9999
            nanos in 0u32..2_000_000_000, // above a billion: a leap second
        ) {
            let time = DateTime::from_timestamp(seconds, nanos)
                .unwrap_or_else(|| DateTime::from_timestamp(seconds, 0).unwrap());
            proptest::prop_assert_eq!(
                Timestamp(time).to_string(),
                time.format("%m/%d/%Y %H:%M:%S").to_string()
            );
        }
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

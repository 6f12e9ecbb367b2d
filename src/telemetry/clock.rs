//! Timestamps for log lines without formatting a date for every line: the date and time change
//! once a second, so each thread formats them once a second ([`SecondCache`]) and writes only
//! the fraction for each line. A line is written by the thread that logs it, so the cache is per
//! thread and needs no lock.

use std::{
    cell::Cell,
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Text made from a whole second (a date and time in some layout), kept for as long as the
/// second asked for stays the same. Meant for a `thread_local!`.
#[derive(Debug)]
pub struct SecondCache<const N: usize> {
    second: Cell<i64>,
    text: Cell<[u8; N]>,
}

impl<const N: usize> SecondCache<N> {
    /// An empty cache: the first second asked for is made.
    pub const fn new() -> Self {
        Self {
            second: Cell::new(i64::MIN),
            text: Cell::new([0; N]),
        }
    }

    /// The text for `second` (seconds since the Unix epoch), made by `make` unless it is the
    /// second asked for last.
    pub fn get(&self, second: i64, make: impl FnOnce(i64) -> [u8; N]) -> [u8; N] {
        if self.second.get() != second {
            self.text.set(make(second));
            self.second.set(second);
        }
        self.text.get()
    }
}

impl<const N: usize> Default for SecondCache<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The last second this thread logged at, as `2026-11-29T23:27:51.`.
const PREFIX: usize = 20;
/// Up to the end of year 9999, the last a four-digit year holds.
const LAST_SECOND: i64 = 253_402_300_799;

thread_local! {
    static PREFIXES: SecondCache<PREFIX> = const { SecondCache::new() };
}

/// Appends the time now as tracing-subscriber's `SystemTime` timer writes it, RFC 3339 in UTC
/// to the microsecond: `2026-11-29T23:27:51.238515Z`.
pub fn write_now(out: &mut Vec<u8>) {
    write_rfc3339(out, SystemTime::now());
}

/// Appends `time` as [`write_now`] does.
pub fn write_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok().and_then(|d| {
        let second = i64::try_from(d.as_secs()).ok()?;
        (second <= LAST_SECOND).then_some((second, d.subsec_micros()))
    });
    let Some((second, micros)) = since_epoch else {
        // A clock before 1970 or past 9999: formatted in full, the rare way.
        return write_uncached(out, time);
    };
    out.extend_from_slice(&PREFIXES.with(|p| p.get(second, prefix)));
    push_digits(out, micros, 6);
    out.push(b'Z');
}

/// `2026-11-29T23:27:51.` for `second`, which [`write_rfc3339`] keeps within years 1970 to 9999.
fn prefix(second: i64) -> [u8; PREFIX] {
    let t = DateTime::<Utc>::from_timestamp(second, 0).unwrap_or_default();
    let mut text = Vec::with_capacity(PREFIX);
    push_digits(&mut text, u32::try_from(t.year()).unwrap_or(0), 4);
    text.push(b'-');
    push_digits(&mut text, t.month(), 2);
    text.push(b'-');
    push_digits(&mut text, t.day(), 2);
    text.push(b'T');
    push_digits(&mut text, t.hour(), 2);
    text.push(b':');
    push_digits(&mut text, t.minute(), 2);
    text.push(b':');
    push_digits(&mut text, t.second(), 2);
    text.push(b'.');
    text.try_into().unwrap_or([b'0'; PREFIX])
}

/// Appends the last `width` (at most 10) decimal digits of `value`, zero-padded.
pub fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let width = width.min(digits.len());
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

fn write_uncached(out: &mut Vec<u8>, time: SystemTime) {
    let time = DateTime::<Utc>::from(time);
    let mut text = String::new();
    let _ = write!(text, "{}", time.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

    use super::*;

    fn rfc3339(time: SystemTime) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, time);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_tracing_subscribers_timer_writes() {
        // The timer reads the clock itself: both are read within the same second but for a
        // second that turns in between, which the loop retries.
        for _ in 0..3 {
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut ours = Vec::new();
            write_now(&mut ours);
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("the second turned three times");
    }

    #[test]
    fn the_same_second_reuses_its_prefix_and_the_next_makes_its_own() {
        let second = UNIX_EPOCH + Duration::from_secs(1_764_458_871);
        assert_eq!(rfc3339(second), "2025-11-29T23:27:51.000000Z");
        assert_eq!(
            rfc3339(second + Duration::from_micros(238_515)),
            "2025-11-29T23:27:51.238515Z"
        );
        assert_eq!(
            rfc3339(second + Duration::from_nanos(1_999_999_999)),
            "2025-11-29T23:27:52.999999Z"
        );
        assert_eq!(rfc3339(second), "2025-11-29T23:27:51.000000Z");
    }

    #[test]
    fn clocks_out_of_the_cached_range_are_formatted_in_full() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_micros(1)),
            "1969-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(LAST_SECOND as u64 + 1)),
            "+10000-01-01T00:00:00.000000Z"
        );
    }

    proptest::proptest! {
        #[test]
        fn reads_as_chrono_formats_it(seconds in 0..=LAST_SECOND, nanos in 0u32..1_000_000_000) {
            let time = UNIX_EPOCH + Duration::new(seconds as u64, nanos);
            let expected = DateTime::<Utc>::from(time).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            proptest::prop_assert_eq!(rfc3339(time), expected);
        }
    }

    #[test]
    fn a_cache_makes_each_second_once() {
        let cache = SecondCache::<1>::new();
        let made = Cell::new(0);
        let make = |s: i64| {
            made.set(made.get() + 1);
            [s as u8]
        };
        assert_eq!(cache.get(7, make), [7]);
        assert_eq!(cache.get(7, make), [7]);
        assert_eq!(cache.get(8, make), [8]);
        assert_eq!(made.get(), 2);
    }
}

//! When messages arrive: bursts (`--burst 50@10s`: 50 messages at 10 s), steady rates
//! (`--rate 2/s:10m@1h`: 2 a second for 10 minutes from 1 h), and CSV files of `time,count` rows
//! (`--arrivals FILE`), as many of each as given, together.

use std::{fmt, path::Path, str::FromStr, time::Duration};

use anyhow::{Context, bail};
use serde::Serialize;

use super::distribution::duration;
use crate::scaling::clock::secs;

/// The most messages one plan simulates: a day at 100 a second. Each is a few words of memory
/// and a few events; the bound keeps a typo (`1000000/s`) from taking the machine.
pub const MOST_MESSAGES: u64 = 8_640_000;

/// Some messages arriving.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// `count` messages at once, at `at`.
    Burst { count: u64, at: Duration },
    /// `per_second` messages a second, evenly spaced, for `lasting` from `from`.
    Rate {
        per_second: f64,
        lasting: Duration,
        from: Duration,
    },
    /// The rows of a CSV file: `count` messages at `time` on each.
    Rows {
        file: String,
        rows: Vec<(Duration, u64)>,
    },
}

impl Arrival {
    /// How many messages.
    pub fn count(&self) -> u64 {
        match self {
            Self::Burst { count, .. } => *count,
            Self::Rate {
                per_second,
                lasting,
                ..
            } => (per_second * lasting.as_secs_f64() + 1e-9).floor() as u64,
            Self::Rows { rows, .. } => rows.iter().map(|(_, n)| n).sum(),
        }
    }

    /// Each message's arrival time, into `times`.
    fn times(&self, times: &mut Vec<Duration>) {
        match self {
            Self::Burst { count, at } => {
                times.extend(std::iter::repeat_n(*at, *count as usize));
            }
            Self::Rate {
                per_second, from, ..
            } => {
                let every = 1.0 / per_second;
                times.extend(
                    (0..self.count()).map(|i| *from + Duration::from_secs_f64(i as f64 * every)),
                );
            }
            Self::Rows { rows, .. } => {
                for (at, n) in rows {
                    times.extend(std::iter::repeat_n(*at, *n as usize));
                }
            }
        }
    }

    /// Reads the CSV file at `path`: one `time,count` row a line, the time in seconds (`90`,
    /// `1.5`) or as a duration (`90s`, `1h`); blank lines, `#` comments and a `time,count` header
    /// are skipped. An error names the file and the line.
    pub fn csv(path: &Path) -> anyhow::Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{file}: cannot read the arrivals file"))?;
        Self::csv_text(&file, &text)
    }

    fn csv_text(file: &str, text: &str) -> anyhow::Result<Self> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{file}:{}", i + 1);
            let Some((time, count)) = line.split_once(',') else {
                bail!("{}: {line:?} is not a time,count row", at());
            };
            let (time, count) = (time.trim(), count.trim());
            if rows.is_empty() && time.eq_ignore_ascii_case("time") {
                continue;
            }
            let time = match time.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
                Ok(_) => bail!(
                    "{}: time {time:?} is negative: a time is 0 or more seconds",
                    at()
                ),
                Err(_) => duration(time).map_err(|e| anyhow::anyhow!("{}: time {e}", at()))?,
            };
            let count: u64 = count.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{}: count {count:?} is not a whole number of messages",
                    at()
                )
            })?;
            rows.push((time, count));
        }
        if rows.is_empty() {
            bail!("{file}: no time,count row");
        }
        Ok(Self::Rows {
            file: file.to_owned(),
            rows,
        })
    }
}

/// `50 at 0s`, `2/s for 10m from 1h`, `arrivals.csv (24 rows)`.
impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Burst { count, at } => write!(f, "burst of {count} at {}", secs(*at)),
            Self::Rate {
                per_second,
                lasting,
                from,
            } => write!(
                f,
                "{per_second}/s for {} from {}",
                humantime::format_duration(*lasting),
                secs(*from)
            ),
            Self::Rows { file, rows } => write!(f, "{file} ({} rows)", rows.len()),
        }
    }
}

impl Serialize for Arrival {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `--burst N[@T]`.
pub fn burst(text: &str) -> Result<Arrival, String> {
    let (count, at) = match text.split_once('@') {
        Some((count, at)) => (count, duration(at)?),
        None => (text, Duration::ZERO),
    };
    let count = count.trim().parse().map_err(|_| {
        format!("{text:?}: {count:?} is not a number of messages (e.g. 50, or 50@10s)")
    })?;
    Ok(Arrival::Burst { count, at })
}

/// `--rate R/s:D[@T]` (also `/m`, `/h`).
pub fn rate(text: &str) -> Result<Arrival, String> {
    let shape =
        || format!("{text:?} is not a rate: R/s:DURATION[@START] (e.g. 1/s:24h, 30/m:10m@1h)");
    let (rate, rest) = text.split_once(':').ok_or_else(shape)?;
    let (count, unit) = rate.split_once('/').ok_or_else(shape)?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "{text:?}: {other:?} is not a unit of time (s, m or h)"
            ));
        }
    };
    let count: f64 = count.trim().parse().map_err(|_| shape())?;
    if !count.is_finite() || count <= 0.0 {
        return Err(format!("{text:?}: the rate must be above 0"));
    }
    let (lasting, from) = match rest.split_once('@') {
        Some((lasting, from)) => (duration(lasting)?, duration(from)?),
        None => (duration(rest)?, Duration::ZERO),
    };
    Ok(Arrival::Rate {
        per_second: count / per,
        lasting,
        from,
    })
}

impl FromStr for Arrival {
    type Err = String;

    /// A burst (`50`, `50@10s`) or a rate (`1/s:24h`).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.contains('/') {
            true => rate(text),
            false => burst(text),
        }
    }
}

/// Every message's arrival time, in order, from `arrivals`; an error past [`MOST_MESSAGES`].
pub fn times(arrivals: &[Arrival]) -> anyhow::Result<Vec<Duration>> {
    let total: u64 = arrivals.iter().map(Arrival::count).sum();
    if total > MOST_MESSAGES {
        bail!(
            "the arrivals send {total} messages; a plan simulates at most {MOST_MESSAGES} (a day at 100 a second)"
        );
    }
    let mut times = Vec::with_capacity(total as usize);
    for arrival in arrivals {
        arrival.times(&mut times);
    }
    times.sort_unstable();
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn bursts_and_rates_read_as_written() {
        assert_eq!(
            burst("50"),
            Ok(Arrival::Burst {
                count: 50,
                at: s(0)
            })
        );
        assert_eq!(
            burst("50@10s"),
            Ok(Arrival::Burst {
                count: 50,
                at: s(10)
            })
        );
        let day = rate("1/s:24h").unwrap();
        assert_eq!(day.count(), 86_400);
        assert_eq!(day.to_string(), "1/s for 1day from 0s");
        let r = rate("30/m:10m@1h").unwrap();
        assert_eq!(
            r,
            Arrival::Rate {
                per_second: 0.5,
                lasting: s(600),
                from: s(3600)
            }
        );
        assert_eq!(r.count(), 300);
        assert_eq!("2/s:1s".parse::<Arrival>().unwrap().count(), 2);
        assert_eq!("7".parse::<Arrival>(), burst("7"));
    }

    #[test]
    fn malformed_arrivals_are_errors_naming_them() {
        for (result, error) in [
            (
                burst("fifty"),
                "\"fifty\": \"fifty\" is not a number of messages (e.g. 50, or 50@10s)",
            ),
            (
                burst("50@-1s"),
                "\"-1s\" is negative: a duration is 0 or more (e.g. 5s, 250ms)",
            ),
            (
                burst("-5"),
                "\"-5\": \"-5\" is not a number of messages (e.g. 50, or 50@10s)",
            ),
            (
                rate("1/s"),
                "\"1/s\" is not a rate: R/s:DURATION[@START] (e.g. 1/s:24h, 30/m:10m@1h)",
            ),
            (
                rate("1/d:1h"),
                "\"1/d:1h\": \"d\" is not a unit of time (s, m or h)",
            ),
            (rate("0/s:1h"), "\"0/s:1h\": the rate must be above 0"),
            (
                rate("1/s:-1h"),
                "\"-1h\" is negative: a duration is 0 or more (e.g. 5s, 250ms)",
            ),
        ] {
            assert_eq!(result, Err(error.to_owned()));
        }
    }

    #[test]
    fn csv_rows_read_with_a_header_comments_and_either_kind_of_time() {
        let text = "time,count\n# a comment\n0,10\n\n1.5,2\n1m,3\n";
        let rows = Arrival::csv_text("a.csv", text).unwrap();
        assert_eq!(
            rows,
            Arrival::Rows {
                file: "a.csv".into(),
                rows: vec![(s(0), 10), (Duration::from_millis(1500), 2), (s(60), 3)]
            }
        );
        assert_eq!(rows.count(), 15);
        assert_eq!(rows.to_string(), "a.csv (3 rows)");
    }

    #[test]
    fn a_malformed_csv_is_an_error_naming_the_file_and_line() {
        for (text, error) in [
            ("0,10\n5\n", "a.csv:2: \"5\" is not a time,count row"),
            (
                "0,10\n-3,1\n",
                "a.csv:2: time \"-3\" is negative: a time is 0 or more seconds",
            ),
            (
                "x,1\n",
                "a.csv:1: time \"x\" is not a duration (e.g. 5s, 250ms, 1m30s)",
            ),
            (
                "0,ten\n",
                "a.csv:1: count \"ten\" is not a whole number of messages",
            ),
            ("# nothing\n", "a.csv: no time,count row"),
        ] {
            let got = Arrival::csv_text("a.csv", text).unwrap_err().to_string();
            assert_eq!(got, error, "{text:?}");
        }
    }

    #[test]
    fn times_merge_every_arrival_in_order_and_refuse_too_many() {
        let arrivals = [
            burst("2@3s").unwrap(),
            rate("1/s:3s").unwrap(),
            burst("1").unwrap(),
        ];
        assert_eq!(
            times(&arrivals).unwrap(),
            [s(0), s(0), s(1), s(2), s(3), s(3)]
        );
        let error = times(&[rate("1000/s:1day").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("86400000 messages"), "{error}");
    }
}

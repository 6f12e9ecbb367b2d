//! How long something takes, per message or per pod: a fixed duration, or drawn from a uniform or
//! an exponential distribution with the plan's seed. Written `5s` (fixed), `uniform:2s..8s`,
//! `exponential:5s` (its mean).

use std::{fmt, str::FromStr, time::Duration};

use crate::scaling::clock::secs;

/// A duration, fixed or drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    Fixed(Duration),
    /// Every duration from the low end to the high end alike.
    Uniform(Duration, Duration),
    /// Memoryless, with this mean: most short, a few long.
    Exponential(Duration),
}

impl Distribution {
    /// One duration: the fixed one, or a draw from `rng`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(low, high) => low + (high - low).mul_f64(rng.f64()),
            // Inverse transform sampling; 1 - f64() is in (0, 1], so the logarithm is finite.
            Self::Exponential(mean) => mean.mul_f64(-(1.0 - rng.f64()).ln()),
        }
    }

    /// The mean duration.
    pub fn mean(&self) -> Duration {
        match *self {
            Self::Fixed(d) | Self::Exponential(d) => d,
            Self::Uniform(low, high) => (low + high) / 2,
        }
    }
}

/// `5s`, `uniform 2s..8s`, `exponential, mean 5s`.
impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Fixed(d) => write!(f, "{}", secs(d)),
            Self::Uniform(low, high) => {
                write!(f, "uniform {}..{}", secs(low), secs(high))
            }
            Self::Exponential(mean) => write!(f, "exponential, mean {}", secs(mean)),
        }
    }
}

/// A duration of 0 or more: `5s`, `250ms`, `1m30s`. A negative one is an error that says so.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "{text:?} is negative: a duration is 0 or more (e.g. 5s, 250ms)"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is not a duration (e.g. 5s, 250ms, 1m30s)"))
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let Some((kind, rest)) = text.split_once(':') else {
            return duration(text).map(Self::Fixed);
        };
        match kind {
            "fixed" => duration(rest).map(Self::Fixed),
            "uniform" => {
                let Some((low, high)) = rest.split_once("..") else {
                    return Err(format!(
                        "{text:?}: a uniform distribution is uniform:LOW..HIGH (e.g. uniform:2s..8s)"
                    ));
                };
                let (low, high) = (duration(low)?, duration(high)?);
                if low > high {
                    return Err(format!("{text:?}: the low end is above the high end"));
                }
                Ok(Self::Uniform(low, high))
            }
            "exponential" => duration(rest).map(Self::Exponential),
            other => Err(format!(
                "{text:?}: {other:?} is not a distribution (fixed, uniform or exponential)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_duration_alone_is_fixed_and_the_others_are_named() {
        assert_eq!("5s".parse(), Ok(Distribution::Fixed(s(5))));
        assert_eq!(
            "fixed:250ms".parse(),
            Ok(Distribution::Fixed(Duration::from_millis(250)))
        );
        assert_eq!(
            "uniform:2s..8s".parse(),
            Ok(Distribution::Uniform(s(2), s(8)))
        );
        assert_eq!(
            "exponential:5s".parse(),
            Ok(Distribution::Exponential(s(5)))
        );
        assert_eq!(
            Distribution::Uniform(s(2), s(8)).to_string(),
            "uniform 2s..8s"
        );
        assert_eq!(Distribution::Uniform(s(2), s(8)).mean(), s(5));
    }

    #[test]
    fn malformed_or_negative_durations_are_errors_naming_them() {
        for (text, error) in [
            (
                "-5s",
                "\"-5s\" is negative: a duration is 0 or more (e.g. 5s, 250ms)",
            ),
            ("five", "\"five\" is not a duration (e.g. 5s, 250ms, 1m30s)"),
            (
                "uniform:8s..2s",
                "\"uniform:8s..2s\": the low end is above the high end",
            ),
            (
                "uniform:2s",
                "\"uniform:2s\": a uniform distribution is uniform:LOW..HIGH (e.g. uniform:2s..8s)",
            ),
            (
                "normal:5s",
                "\"normal:5s\": \"normal\" is not a distribution (fixed, uniform or exponential)",
            ),
            (
                "exponential:-1s",
                "\"-1s\" is negative: a duration is 0 or more (e.g. 5s, 250ms)",
            ),
        ] {
            assert_eq!(
                text.parse::<Distribution>(),
                Err(error.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn draws_stay_in_range_and_average_near_the_mean() {
        let mut rng = fastrand::Rng::with_seed(7);
        let uniform = Distribution::Uniform(s(2), s(8));
        let exponential = Distribution::Exponential(s(5));
        let n = 20_000;
        let (mut sum_u, mut sum_e) = (0.0, 0.0);
        for _ in 0..n {
            let u = uniform.sample(&mut rng);
            assert!(u >= s(2) && u <= s(8), "{u:?}");
            sum_u += u.as_secs_f64();
            sum_e += exponential.sample(&mut rng).as_secs_f64();
        }
        assert!(
            (sum_u / f64::from(n) - 5.0).abs() < 0.1,
            "{}",
            sum_u / f64::from(n)
        );
        assert!(
            (sum_e / f64::from(n) - 5.0).abs() < 0.2,
            "{}",
            sum_e / f64::from(n)
        );
        assert_eq!(Distribution::Fixed(s(5)).sample(&mut rng), s(5));
    }
}

//! The control plane's clock under `--time-scale F`: cluster time runs 1/F as fast as real time,
//! so every period the rules count in (polling, cooldown, HPA sync, windows) takes F times its
//! length in real time, and the decisions are the same, only sooner. Also how times and periods
//! are written: in the status, and in the decisions' reasons.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::time::Instant;

/// Cluster time: time since the controller started, divided by the time scale.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall: DateTime<Utc>,
    scale: f64,
}

impl Clock {
    /// Starts cluster time at 0 now. `scale` is positive and finite (checked by the config).
    pub fn start(scale: f64) -> Self {
        Self {
            start: Instant::now(),
            start_wall: Utc::now(),
            scale,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Cluster time now.
    pub fn now(&self) -> Duration {
        self.cluster_at(Instant::now())
    }

    /// Cluster time at a real instant (0 before the start).
    pub fn cluster_at(&self, instant: Instant) -> Duration {
        scaled(
            instant.saturating_duration_since(self.start),
            1.0 / self.scale,
        )
    }

    /// How long a cluster-time period takes in real time.
    pub fn real(&self, period: Duration) -> Duration {
        scaled(period, self.scale)
    }

    /// The real instant at a cluster time.
    pub fn instant(&self, cluster: Duration) -> Instant {
        self.start + self.real(cluster)
    }

    /// The wall-clock time at a cluster time, for the status.
    pub fn wall(&self, cluster: Duration) -> DateTime<Utc> {
        self.wall_at(self.instant(cluster))
    }

    /// The wall-clock time at a real instant.
    pub fn wall_at(&self, instant: Instant) -> DateTime<Utc> {
        let since = instant.saturating_duration_since(self.start);
        self.start_wall + chrono::Duration::from_std(since).unwrap_or(chrono::TimeDelta::MAX)
    }
}

/// The tick after `at` every `period`, skipping those already missed (as Go's ticker drops
/// ticks for a slow receiver).
pub fn next_tick(at: Duration, period: Duration, now: Duration) -> Duration {
    if period.is_zero() {
        return now;
    }
    let mut next = at + period;
    if next <= now {
        let missed = (now - next).as_nanos() / period.as_nanos() + 1;
        next += period * u32::try_from(missed).unwrap_or(u32::MAX);
    }
    next
}

/// `duration × factor`, saturating rather than panicking on a huge ScaledObject period.
fn scaled(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// How the status writes times: RFC 3339, UTC, milliseconds (`2026-12-01T14:30:00.123Z`).
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How the status writes periods: seconds, as a number (`60.0`, `0.5`); a `serialize_with`.
pub fn seconds<S: serde::Serializer>(period: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(period.as_secs_f64())
}

/// How a decision's reason writes a cluster time or a period: in seconds, as the ScaledObject
/// does (`60s`, `2.5s`).
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cluster_time_runs_one_over_the_scale_as_fast() {
        let clock = Clock::start(0.05);
        assert_eq!(clock.now(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(500)).await;
        // 0.5 s of real time is 10 s of cluster time at 0.05.
        assert_eq!(clock.now(), Duration::from_secs(10));
        // The HPA's 15 s sync takes 0.75 s; a 300 s window, 15 s.
        assert_eq!(
            clock.real(Duration::from_secs(15)),
            Duration::from_millis(750)
        );
        assert_eq!(
            clock.real(Duration::from_secs(300)),
            Duration::from_secs(15)
        );
        assert_eq!(
            clock.instant(Duration::from_secs(60)),
            clock.start + Duration::from_secs(3)
        );
        // The wall clock follows real time: cluster time 60 s is 3 s after the start.
        let wall = clock.wall(Duration::from_secs(60)) - clock.start_wall;
        assert_eq!(wall, chrono::Duration::seconds(3));
        assert_eq!(
            clock.cluster_at(clock.start - Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn scale_one_is_real_time_and_huge_periods_saturate() {
        assert_eq!(scaled(Duration::from_secs(7), 1.0), Duration::from_secs(7));
        assert_eq!(scaled(Duration::MAX, 2.0), Duration::MAX);
    }

    #[test]
    fn ticks_keep_their_cadence_and_skip_missed_ones() {
        let s = Duration::from_secs;
        assert_eq!(next_tick(s(0), s(10), s(3)), s(10));
        assert_eq!(next_tick(s(10), s(10), s(10)), s(20));
        // Fell 25 s behind: the next tick is the next on the cadence, not three at once.
        assert_eq!(next_tick(s(10), s(10), s(45)), s(50));
        assert_eq!(next_tick(s(10), Duration::ZERO, s(45)), s(45));
    }

    #[test]
    fn reasons_write_seconds_with_their_fraction() {
        assert_eq!(secs(Duration::from_secs(60)), "60s");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5s");
    }

    #[test]
    fn status_times_are_utc_with_milliseconds() {
        let time = DateTime::parse_from_rfc3339("2026-12-01T14:30:00.123456+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339(time), "2026-12-01T13:30:00.123Z");
    }
}

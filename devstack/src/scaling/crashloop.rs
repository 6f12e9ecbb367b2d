//! The kubelet's restart back-off for a container that exits under `restartPolicy: Always`
//! (kubernetes `pkg/kubelet/kuberuntime/kuberuntime_manager.go` `doBackOff`, over client-go's
//! `util/flowcontrol.Backoff` with the kubelet's `backOffPeriod` 10 s and `MaxContainerBackOff`
//! 300 s):
//!
//! - the first exit is restarted at once, and the back-off starts at 10 s;
//! - each later exit waits out the back-off, counted from the exit (CrashLoopBackOff), and the
//!   restart doubles it, up to 300 s;
//! - an exit more than 2 × 300 s = 10 minutes after the last restart starts over: restarted at
//!   once, the back-off back to 10 s.
//!
//! In cluster time: `--time-scale` scales it with the rest of the control plane.

use std::time::Duration;

/// The kubelet's `backOffPeriod`: the first back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The kubelet's `MaxContainerBackOff`.
pub const MAX: Duration = Duration::from_secs(300);

/// One container's back-off entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashLoop {
    /// The back-off, and the cluster time of the restart that last set it.
    entry: Option<(Duration, Duration)>,
}

impl CrashLoop {
    /// The entry as `flowcontrol.Backoff` keeps it: gone once an exit at `finished` comes more
    /// than twice the maximum after the last update (`hasExpired`).
    fn live(&self, finished: Duration) -> Option<Duration> {
        self.entry
            .filter(|(_, updated)| finished.saturating_sub(*updated) <= MAX * 2)
            .map(|(backoff, _)| backoff)
    }

    /// How long after an exit at cluster time `finished` the container is restarted: zero for
    /// at once, else the back-off it is in (`IsInBackOffSince`).
    pub fn delay(&self, finished: Duration) -> Duration {
        self.live(finished).unwrap_or_default()
    }

    /// Records the restart at cluster time `now` of the container that exited at `finished`
    /// (`Next`): the back-off starts at [`INITIAL`], or doubles up to [`MAX`].
    pub fn restarted(&mut self, finished: Duration, now: Duration) {
        let backoff = match self.live(finished) {
            Some(backoff) => (backoff * 2).min(MAX),
            None => INITIAL,
        };
        self.entry = Some((backoff, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container that exits `runs_for` after each start: the delays before each restart.
    fn delays(exits: usize, runs_for: Duration) -> Vec<u64> {
        let mut crashloop = CrashLoop::default();
        let mut now = Duration::ZERO;
        (0..exits)
            .map(|_| {
                let finished = now + runs_for;
                let delay = crashloop.delay(finished);
                now = finished + delay;
                crashloop.restarted(finished, now);
                delay.as_secs()
            })
            .collect()
    }

    #[test]
    fn at_once_then_ten_seconds_doubling_to_five_minutes() {
        assert_eq!(
            delays(9, Duration::from_secs(1)),
            [0, 10, 20, 40, 80, 160, 300, 300, 300]
        );
    }

    #[test]
    fn running_ten_minutes_since_the_last_restart_starts_over() {
        // 600 s since the last restart is still within the window; past it, the entry is gone.
        assert_eq!(delays(3, Duration::from_secs(600)), [0, 10, 20]);
        assert_eq!(delays(3, Duration::from_secs(601)), [0, 0, 0]);
        let mut crashloop = CrashLoop::default();
        for (finished, now) in [(1, 1), (2, 12), (13, 33)] {
            crashloop.restarted(Duration::from_secs(finished), Duration::from_secs(now));
        }
        assert_eq!(
            crashloop.delay(Duration::from_secs(34)),
            Duration::from_secs(40)
        );
        assert_eq!(
            crashloop.delay(Duration::from_secs(33 + 601)),
            Duration::ZERO,
            "a long run resets it"
        );
    }
}

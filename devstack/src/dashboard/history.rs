//! The chart's history, kept by the sidecar so that a page opened late shows the past: one
//! sample a second for the last ten minutes, whether or not a page is open, sent whole in the
//! event stream's first event.

use std::{collections::VecDeque, time::Duration};

use chrono::Utc;
use parking_lot::Mutex;
use serde::Serialize;

use crate::status::Status;

/// One sample a second, as the page draws them.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Ten minutes of samples: the chart's window, and the bound on what is kept.
pub const KEPT: usize = 600;

/// The queues' totals and the replicas at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Wall-clock time, in seconds since the Unix epoch (the chart's time axis).
    pub t: f64,
    pub active: u64,
    pub locked: u64,
    /// Messages in the dead-letter queues.
    pub dead: u64,
    pub completed: u64,
    /// With `--autoscale`: desired, ready, terminating and restarting replicas.
    pub replicas: Option<u32>,
    pub ready: Option<u32>,
    pub terminating: Option<u32>,
    pub restarting: Option<u32>,
}

impl Sample {
    /// The sample of `status`, taken now.
    pub fn of(status: &Status) -> Self {
        let mut sample = Self::at(Utc::now().timestamp_millis() as f64 / 1e3);
        for counts in status.queues.values() {
            sample.active += counts.active;
            sample.locked += counts.locked;
            sample.dead += counts.dead_lettered;
            sample.completed += counts.completed;
        }
        if let Some(scaling) = &status.scaling {
            let r = scaling.replicas;
            sample.replicas = Some(r.desired);
            sample.ready = Some(r.ready);
            sample.terminating = Some(r.terminating);
            sample.restarting = Some(r.restarting);
        }
        sample
    }

    /// An empty sample at time `t`.
    fn at(t: f64) -> Self {
        Self {
            t,
            active: 0,
            locked: 0,
            dead: 0,
            completed: 0,
            replicas: None,
            ready: None,
            terminating: None,
            restarting: None,
        }
    }
}

/// The last [`KEPT`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

/// The `history` event's data.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    pub interval_seconds: u64,
    pub window_seconds: u64,
    pub samples: Vec<Sample>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.0.lock();
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn event(&self) -> HistoryEvent {
        HistoryEvent {
            interval_seconds: INTERVAL.as_secs(),
            window_seconds: INTERVAL.as_secs() * KEPT as u64,
            samples: self.0.lock().iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64) -> Sample {
        Sample {
            active: 1,
            ..Sample::at(t)
        }
    }

    #[test]
    fn ten_minutes_are_kept_oldest_first() {
        let history = History::default();
        for t in 0..KEPT + 5 {
            history.push(sample(t as f64));
        }
        let event = history.event();
        assert_eq!(event.samples.len(), KEPT);
        assert_eq!(event.samples[0].t, 5.0);
        assert_eq!(event.samples[KEPT - 1].t, (KEPT + 4) as f64);
        assert_eq!((event.interval_seconds, event.window_seconds), (1, 600));
    }
}

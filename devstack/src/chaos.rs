//! `--chaos SPEC`: a seeded random schedule of faults, provoked through the same path as
//! `POST /devstack/faults` and recorded the same way (source `chaos`).
//!
//! SPEC is comma-separated items:
//!
//! - fault kinds, each with its optional parameter: `kill`, `sigterm`, `pause[=5s]`,
//!   `unavailable[=2s]`, `latency[=500ms/5s]` (the delay, then how long), `lost-complete`,
//!   `lost-lock`; `all` for every kind with its default. A kind named twice is drawn twice as
//!   often.
//! - `every=DURATION` (default 5s): the mean time between faults; each gap is drawn between half
//!   and one and a half times it.
//! - `seed=N`: the seed of the draws (default: a random one, logged, so that a run can be
//!   repeated); `count=N`: stop after N faults (default: none).
//!
//! The same seed draws the same gaps and kinds; the consumer a process fault takes is drawn
//! among those ready at that moment, and a message fault takes the message in flight whose lock
//! runs out first, so the targets follow the run.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    faults::{Fault, Faults, Source},
    registry::{AppRegistry, ReplicaState},
};

/// A fault kind of the schedule, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Kill,
    Sigterm,
    Pause(Duration),
    Unavailable(Duration),
    Latency { delay: Duration, lasting: Duration },
    LostComplete,
    LostLock,
}

const DEFAULT_PAUSE: Duration = Duration::from_secs(5);
const DEFAULT_OUTAGE: Duration = Duration::from_secs(2);
const DEFAULT_LATENCY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));
const DEFAULT_EVERY: Duration = Duration::from_secs(5);

impl Kind {
    /// The fault it makes, for `consumer` when it takes one.
    fn fault(self, consumer: Option<String>) -> Option<Fault> {
        Some(match self {
            Self::Kill => Fault::Kill {
                consumer: consumer?,
            },
            Self::Sigterm => Fault::Sigterm {
                consumer: consumer?,
            },
            Self::Pause(d) => Fault::Pause {
                consumer: consumer?,
                seconds: d.as_secs_f64(),
            },
            Self::Unavailable(d) => Fault::Unavailable {
                seconds: d.as_secs_f64(),
            },
            Self::Latency { delay, lasting } => Fault::Latency {
                milliseconds: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                seconds: lasting.as_secs_f64(),
            },
            Self::LostComplete => Fault::LostComplete { message: None },
            Self::LostLock => Fault::LostLock { message: None },
        })
    }

    fn takes_a_consumer(self) -> bool {
        matches!(self, Self::Kill | Self::Sigterm | Self::Pause(_))
    }
}

/// A parsed `--chaos` SPEC.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kinds: Vec<Kind>,
    pub every: Duration,
    pub seed: Option<u64>,
    pub count: Option<u64>,
}

impl Schedule {
    /// Parses SPEC; the error names the item.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut schedule = Self {
            kinds: Vec::new(),
            every: DEFAULT_EVERY,
            seed: None,
            count: None,
        };
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (item, None),
            };
            let duration = |default: Duration| match value {
                None => Ok(default),
                Some(v) => positive(v).map_err(|e| format!("{item}: {e}")),
            };
            let number = || -> Result<u64, String> {
                value
                    .ok_or_else(|| format!("{item}: needs a value ({name}=N)"))?
                    .parse()
                    .map_err(|_| format!("{item}: not a whole number"))
            };
            match name {
                "every" => {
                    schedule.every = value
                        .ok_or_else(|| format!("{item}: needs a duration (every=2s)"))
                        .and_then(|v| positive(v).map_err(|e| format!("{item}: {e}")))?
                }
                "seed" => schedule.seed = Some(number()?),
                "count" => schedule.count = Some(number()?),
                "kill" | "sigterm" | "lost-complete" | "lost-lock" | "all" if value.is_some() => {
                    return Err(format!("{item}: {name} takes no value"));
                }
                "kill" => schedule.kinds.push(Kind::Kill),
                "sigterm" => schedule.kinds.push(Kind::Sigterm),
                "lost-complete" => schedule.kinds.push(Kind::LostComplete),
                "lost-lock" => schedule.kinds.push(Kind::LostLock),
                "pause" => schedule.kinds.push(Kind::Pause(duration(DEFAULT_PAUSE)?)),
                "unavailable" => schedule
                    .kinds
                    .push(Kind::Unavailable(duration(DEFAULT_OUTAGE)?)),
                "latency" => {
                    let (delay, lasting) = match value {
                        None => DEFAULT_LATENCY,
                        Some(v) => {
                            let (delay, lasting) = v.split_once('/').ok_or_else(|| {
                                format!("{item}: latency=DELAY/DURATION, e.g. latency=200ms/3s")
                            })?;
                            let parse = |d| positive(d).map_err(|e| format!("{item}: {e}"));
                            (parse(delay)?, parse(lasting)?)
                        }
                    };
                    schedule.kinds.push(Kind::Latency { delay, lasting });
                }
                "all" => schedule.kinds.extend([
                    Kind::Kill,
                    Kind::Sigterm,
                    Kind::Pause(DEFAULT_PAUSE),
                    Kind::Unavailable(DEFAULT_OUTAGE),
                    Kind::Latency {
                        delay: DEFAULT_LATENCY.0,
                        lasting: DEFAULT_LATENCY.1,
                    },
                    Kind::LostComplete,
                    Kind::LostLock,
                ]),
                other => {
                    return Err(format!(
                        "{other:?} is not a fault kind nor a setting (kill, sigterm, pause, \
                         unavailable, latency, lost-complete, lost-lock, all; every, seed, count)"
                    ));
                }
            }
        }
        if schedule.kinds.is_empty() {
            return Err(format!(
                "{spec:?} names no fault kind, e.g. --chaos 'every=2s,kill,pause=3s,lost-lock'"
            ));
        }
        Ok(schedule)
    }

    /// Provokes faults until `count` or `stop`, drawing from `seed` (or a random seed, logged).
    pub async fn run(self, faults: Arc<Faults>, apps: Arc<AppRegistry>, stop: CancellationToken) {
        let seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        let mut rng = fastrand::Rng::with_seed(seed);
        info!(seed, every = ?self.every, kinds = self.kinds.len(), "chaos: schedule started; --chaos seed={seed} repeats it");
        for _ in 0..self.count.unwrap_or(u64::MAX) {
            let gap = self.every.mul_f64(0.5 + rng.f64());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
            let kind = self.kinds[rng.usize(..self.kinds.len())];
            let consumer = kind.takes_a_consumer().then(|| {
                let ready: Vec<String> = apps
                    .consumers()
                    .into_iter()
                    .filter(|c| c.state == ReplicaState::Ready)
                    .map(|c| c.label)
                    .collect();
                (!ready.is_empty()).then(|| ready[rng.usize(..ready.len())].clone())
            });
            let Some(fault) = kind.fault(consumer.flatten()) else {
                info!(?kind, "chaos: no consumer ready; this fault is skipped");
                continue;
            };
            if let Err(e) = faults.inject(fault, Source::Chaos).await {
                info!(?kind, reason = %e, "chaos: this fault is skipped");
            }
        }
        warn!("chaos: schedule over");
    }
}

/// A positive duration, as humantime writes it (`500ms`, `2s`, `1m`).
fn positive(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".to_owned()),
        Err(e) => Err(format!("{text:?} is not a duration ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_kinds_with_parameters_and_settings() {
        let schedule = Schedule::parse(
            "seed=7, every=200ms, kill, kill, sigterm, pause=3s, unavailable, latency=50ms/1s, \
             lost-complete, lost-lock, count=40",
        )
        .unwrap();
        assert_eq!(
            schedule,
            Schedule {
                kinds: vec![
                    Kind::Kill,
                    Kind::Kill,
                    Kind::Sigterm,
                    Kind::Pause(Duration::from_secs(3)),
                    Kind::Unavailable(DEFAULT_OUTAGE),
                    Kind::Latency {
                        delay: Duration::from_millis(50),
                        lasting: Duration::from_secs(1)
                    },
                    Kind::LostComplete,
                    Kind::LostLock,
                ],
                every: Duration::from_millis(200),
                seed: Some(7),
                count: Some(40),
            }
        );
        assert_eq!(Schedule::parse("all").unwrap().kinds.len(), 7);
    }

    #[test]
    fn a_bad_spec_names_the_item() {
        for (spec, error) in [
            ("", "names no fault kind"),
            ("every=1s", "names no fault kind"),
            ("explode", "\"explode\" is not a fault kind"),
            ("kill=3", "kill takes no value"),
            ("pause=soon", "pause=soon"),
            ("pause=0s", "more than 0"),
            ("latency=50ms", "latency=DELAY/DURATION"),
            ("seed=x,kill", "seed=x: not a whole number"),
            ("every,kill", "every: needs a duration"),
        ] {
            let e = Schedule::parse(spec).unwrap_err();
            assert!(e.contains(error), "{spec}: {e}");
        }
    }

    /// The same seed draws the same faults at the same times: with no consumer and nothing in
    /// flight, only the sidecar's faults take, so the record is the schedule itself.
    #[tokio::test(start_paused = true)]
    async fn the_same_seed_draws_the_same_schedule() {
        async fn record(seed: u64) -> (Duration, Vec<&'static str>) {
            let changes = crate::changes::Changes::default();
            let journeys = crate::journey::Journeys::new(0);
            let settings = crate::queue::QueueSettings::default();
            let queues = Arc::new(crate::queue::Queues::new(
                &["q".to_owned()],
                settings,
                &changes,
                &journeys,
            ));
            let faults = Arc::new(Faults::new(queues, journeys, changes.clone()));
            let apps = Arc::new(AppRegistry::new(changes));
            let start = tokio::time::Instant::now();
            let schedule = Schedule::parse(&format!(
                "seed={seed},every=1s,count=12,unavailable=1s,latency=1ms/1s"
            ))
            .unwrap();
            schedule
                .run(Arc::clone(&faults), apps, CancellationToken::new())
                .await;
            let status = faults.status();
            assert_eq!(status.recent.len(), 12);
            let kinds = status.recent.iter().map(|r| r.kind).collect();
            (start.elapsed(), kinds)
        }
        let (a, b, c) = (record(1).await, record(1).await, record(2).await);
        assert_eq!(a, b);
        assert_ne!(a, c, "another seed, another schedule");
    }
}

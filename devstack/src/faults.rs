//! Faults on demand: what `POST /devstack/faults`, the dashboard's buttons and `--chaos` provoke,
//! each logged, counted, and listed in the status with its time.
//!
//! - On a consumer's process (`devstack up` only; the processes' owner, the replica set, acts on
//!   them): `kill` (SIGKILL), `sigterm`, `pause` (SIGSTOP for N s, then SIGCONT: a hung consumer).
//! - On the sidecar: `unavailable` (InvokeBinding answers UNAVAILABLE, the HTTP binding API 503,
//!   for N s), `latency` (InvokeBinding answers N ms late, for N s).
//! - On a message in flight: `lost-complete` (the app answered OK, but the complete never reaches
//!   the queue: the lock runs out and the message comes back, a duplicate), `lost-lock` (the
//!   binding stops renewing its lock, as when its daprd dies: the lock runs out while the app
//!   still works, the message is delivered again, and the app's late OK fails to complete it).
//!
//! A fault on a message is recorded in its journey.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::warn;

use crate::{
    changes::Changes,
    journey::{Journeys, Step},
    queue::Queues,
    scaling::rfc3339,
};

/// How many faults the status lists (the counts are exact).
pub const FAULTS_LISTED: usize = 256;
/// The longest a timed fault may last: an hour is a long afternoon of a hung consumer.
pub const LONGEST: Duration = Duration::from_secs(3600);

/// A fault to provoke, as `POST /devstack/faults` takes it (`{"kind": "pause", "consumer":
/// "consumer-2", "seconds": 5}`) and `--chaos` names it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL to a consumer.
    Kill { consumer: String },
    /// SIGTERM to a consumer, as if the kubelet stopped it; it drains and exits, and is
    /// restarted as a container that exited.
    Sigterm { consumer: String },
    /// SIGSTOP to a consumer for `seconds`, then SIGCONT.
    Pause { consumer: String, seconds: f64 },
    /// InvokeBinding answers UNAVAILABLE for `seconds`.
    Unavailable { seconds: f64 },
    /// InvokeBinding answers `milliseconds` late for `seconds`.
    Latency { milliseconds: u64, seconds: f64 },
    /// The next complete (of `message`, or of any message) never reaches the queue.
    LostComplete {
        #[serde(default)]
        message: Option<String>,
    },
    /// Lock renewal stops for `message` (or the message in flight whose lock runs out first).
    LostLock {
        #[serde(default)]
        message: Option<String>,
    },
}

impl Fault {
    /// Its kind, as the API and `--chaos` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kill { .. } => "kill",
            Self::Sigterm { .. } => "sigterm",
            Self::Pause { .. } => "pause",
            Self::Unavailable { .. } => "unavailable",
            Self::Latency { .. } => "latency",
            Self::LostComplete { .. } => "lost-complete",
            Self::LostLock { .. } => "lost-lock",
        }
    }

    /// Checks what serde cannot: durations positive, finite and at most [`LONGEST`], names not
    /// empty. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let seconds = |field: &str, value: f64| match Duration::try_from_secs_f64(value) {
            Ok(d) if !d.is_zero() && d <= LONGEST => Ok(()),
            _ => Err(format!(
                "{field}: {value} is not a number of seconds above 0 and at most {}",
                LONGEST.as_secs()
            )),
        };
        match self {
            Self::Kill { consumer } | Self::Sigterm { consumer } if consumer.trim().is_empty() => {
                Err("consumer: empty".to_owned())
            }
            Self::Pause { consumer, .. } if consumer.trim().is_empty() => {
                Err("consumer: empty".to_owned())
            }
            Self::Pause { seconds: s, .. } | Self::Unavailable { seconds: s } => {
                seconds("seconds", *s)
            }
            Self::Latency {
                milliseconds,
                seconds: s,
            } => {
                if *milliseconds == 0 || u128::from(*milliseconds) > LONGEST.as_millis() {
                    return Err(format!(
                        "milliseconds: {milliseconds} is not above 0 and at most {}",
                        LONGEST.as_millis()
                    ));
                }
                seconds("seconds", *s)
            }
            _ => Ok(()),
        }
    }
}

/// Who provoked a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `POST /devstack/faults` (the dashboard's buttons, curl).
    Api,
    /// The `--chaos` schedule.
    Chaos,
}

/// A fault as the status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRecord {
    pub at: String,
    pub kind: &'static str,
    /// The consumer, the message, or `sidecar`.
    pub target: String,
    pub detail: String,
    pub source: Source,
}

/// Why a fault could not be provoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("no consumer {name:?}; running: {}", if .running.is_empty() { "none".to_owned() } else { .running.join(", ") })]
    UnknownConsumer { name: String, running: Vec<String> },
    #[error("{0} is not running now (it is restarting or stopping)")]
    NotRunning(String),
    #[error(
        "this sidecar runs no consumer processes (`devstack sidecar` delivers to apps started by \
         hand): signal them yourself"
    )]
    NoProcesses,
    #[error("message {0:?} is not in flight (no delivery holds its lock)")]
    MessageNotInFlight(String),
    #[error("no message is in flight")]
    NothingInFlight,
    #[error("cannot signal {consumer}: {error}")]
    Signal { consumer: String, error: String },
}

/// A signal to a consumer's process, as the replica set carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Kill,
    Terminate,
    /// SIGSTOP, then SIGCONT after this long.
    Pause(Duration),
}

/// A request to the owner of the consumer processes; it answers with the pid signalled.
#[derive(Debug)]
pub struct ProcessFault {
    pub consumer: String,
    pub signal: Signal,
    pub reply: oneshot::Sender<Result<u32, FaultError>>,
}

/// Where process faults go: the replica set's mailbox.
pub type ConsumerControl = mpsc::UnboundedSender<ProcessFault>;

/// The lock of a message in flight, in its queue.
type LockKey = (String, u64);

/// The faults in force, and the record of every fault provoked.
#[derive(Debug)]
pub struct Faults {
    queues: Arc<Queues>,
    journeys: Journeys,
    changes: Changes,
    consumers: Mutex<Option<ConsumerControl>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    unavailable_until: Option<Instant>,
    latency: Option<(Duration, Instant)>,
    /// Completes to lose: of these messages, or (`None`) of the next messages completed.
    lost_completes: VecDeque<Option<String>>,
    /// Locks whose renewal has stopped.
    lost_locks: HashSet<LockKey>,
    recent: VecDeque<FaultRecord>,
    counts: BTreeMap<&'static str, u64>,
}

/// The faults part of the status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultStatus {
    /// Faults provoked, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// The last [`FAULTS_LISTED`], oldest first.
    pub recent: Vec<FaultRecord>,
    /// Until when InvokeBinding answers UNAVAILABLE.
    pub unavailable_until: Option<String>,
    /// The latency added to InvokeBinding, in ms, and until when.
    pub latency_ms: Option<u128>,
    pub latency_until: Option<String>,
    /// Completes armed to be lost.
    pub lost_completes_pending: usize,
    /// Locks in flight whose renewal has stopped.
    pub lost_locks: usize,
}

/// Why InvokeBinding is refused: the `unavailable` fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("devstack fault: the sidecar is unavailable for another {0:?}")]
pub struct Unavailable(pub Duration);

impl Faults {
    /// No fault in force; the messages' faults act on `queues` and are recorded in `journeys`.
    pub fn new(queues: Arc<Queues>, journeys: Journeys, changes: Changes) -> Self {
        Self {
            queues,
            journeys,
            changes,
            consumers: Mutex::default(),
            state: Mutex::default(),
        }
    }

    /// Where the consumers' process faults go, once devstack runs them.
    pub fn set_consumers(&self, control: ConsumerControl) {
        *self.consumers.lock() = Some(control);
    }

    /// Provokes `fault`, on behalf of `source`; returns its record.
    pub async fn inject(&self, fault: Fault, source: Source) -> Result<FaultRecord, FaultError> {
        fault.validate().map_err(FaultError::Invalid)?;
        let (target, detail) = match &fault {
            Fault::Kill { consumer } => self.signal(consumer, Signal::Kill).await?,
            Fault::Sigterm { consumer } => self.signal(consumer, Signal::Terminate).await?,
            Fault::Pause { consumer, seconds } => {
                let pause = Duration::from_secs_f64(*seconds);
                self.signal(consumer, Signal::Pause(pause)).await?
            }
            Fault::Unavailable { seconds } => {
                let until = Instant::now() + Duration::from_secs_f64(*seconds);
                let mut state = self.state.lock();
                state.unavailable_until = state.unavailable_until.max(Some(until));
                (
                    "sidecar".to_owned(),
                    format!("InvokeBinding answers UNAVAILABLE for {seconds} s"),
                )
            }
            Fault::Latency {
                milliseconds,
                seconds,
            } => {
                let until = Instant::now() + Duration::from_secs_f64(*seconds);
                self.state.lock().latency = Some((Duration::from_millis(*milliseconds), until));
                (
                    "sidecar".to_owned(),
                    format!("InvokeBinding answers {milliseconds} ms late for {seconds} s"),
                )
            }
            Fault::LostComplete { message } => {
                if let Some(id) = message
                    && self.find_held(Some(id)).is_none()
                {
                    return Err(FaultError::MessageNotInFlight(id.clone()));
                }
                self.state.lock().lost_completes.push_back(message.clone());
                let target = message.clone().unwrap_or_else(|| "next message".to_owned());
                (
                    target,
                    "the next complete never reaches the queue".to_owned(),
                )
            }
            Fault::LostLock { message } => {
                let Some((queue, token, id)) = self.find_held(message.as_deref()) else {
                    return Err(match message {
                        Some(id) => FaultError::MessageNotInFlight(id.clone()),
                        None => FaultError::NothingInFlight,
                    });
                };
                self.state.lock().lost_locks.insert((queue, token));
                let detail = "lock renewal stopped, as when its daprd dies".to_owned();
                self.journeys.record(
                    &id,
                    Step::Fault {
                        fault: fault.kind().to_owned(),
                        detail: detail.clone(),
                    },
                );
                (id, detail)
            }
        };
        let record = FaultRecord {
            at: rfc3339(Utc::now()),
            kind: fault.kind(),
            target,
            detail,
            source,
        };
        warn!(kind = record.kind, target = %record.target, detail = %record.detail, source = ?source, "fault provoked");
        let mut state = self.state.lock();
        *state.counts.entry(record.kind).or_default() += 1;
        if state.recent.len() == FAULTS_LISTED {
            state.recent.pop_front();
        }
        state.recent.push_back(record.clone());
        drop(state);
        self.changes.notify();
        Ok(record)
    }

    /// Asks the replica set to signal `consumer`; the target and what was done.
    async fn signal(&self, consumer: &str, signal: Signal) -> Result<(String, String), FaultError> {
        let control = self
            .consumers
            .lock()
            .clone()
            .ok_or(FaultError::NoProcesses)?;
        let (reply, answer) = oneshot::channel();
        control
            .send(ProcessFault {
                consumer: consumer.to_owned(),
                signal,
                reply,
            })
            .map_err(|_| FaultError::NoProcesses)?;
        let pid = answer.await.map_err(|_| FaultError::NoProcesses)??;
        let detail = match signal {
            Signal::Kill => format!("SIGKILL to pid {pid}"),
            Signal::Terminate => format!("SIGTERM to pid {pid}"),
            Signal::Pause(d) => format!("SIGSTOP to pid {pid}, SIGCONT in {} s", d.as_secs_f64()),
        };
        Ok((consumer.to_owned(), detail))
    }

    /// The lock held on message `id`, or (`None`) the one that runs out first, in any queue.
    fn find_held(&self, id: Option<&str>) -> Option<(String, u64, String)> {
        self.queues
            .iter()
            .flat_map(|q| q.held().into_iter().map(|h| (q.name().to_owned(), h)))
            .filter(|(_, h)| id.is_none_or(|id| h.id == id))
            .min_by_key(|(_, h)| h.locked_until)
            .map(|(queue, h)| (queue, h.token, h.id))
    }

    /// Before an InvokeBinding: waits out the added latency, or refuses it while unavailable.
    pub async fn before_send(&self) -> Result<(), Unavailable> {
        let now = Instant::now();
        let latency = {
            let mut state = self.state.lock();
            if let Some(until) = state.unavailable_until {
                if until > now {
                    return Err(Unavailable(until - now));
                }
                state.unavailable_until = None;
            }
            match state.latency {
                Some((delay, until)) if until > now => Some(delay),
                Some(_) => {
                    state.latency = None;
                    None
                }
                None => None,
            }
        };
        if let Some(delay) = latency {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Whether the complete of message `id` (lock `token` in `queue`) is to be lost; records the
    /// fault in its journey when it is.
    pub fn take_lost_complete(&self, id: &str) -> bool {
        let mut state = self.state.lock();
        let position = state
            .lost_completes
            .iter()
            .position(|target| target.as_deref().is_none_or(|t| t == id));
        let Some(position) = position else {
            return false;
        };
        state.lost_completes.remove(position);
        drop(state);
        self.journeys.record(
            id,
            Step::Fault {
                fault: "lost-complete".to_owned(),
                detail: "the app answered OK; the complete never reached the queue".to_owned(),
            },
        );
        true
    }

    /// Whether the binding has stopped renewing lock `token` of `queue`.
    pub fn renewal_stopped(&self, queue: &str, token: u64) -> bool {
        self.state
            .lock()
            .lost_locks
            .contains(&(queue.to_owned(), token))
    }

    /// Forgets lock `token` of `queue`, once its delivery is over.
    pub fn settled(&self, queue: &str, token: u64) {
        let mut state = self.state.lock();
        if !state.lost_locks.is_empty() {
            state.lost_locks.remove(&(queue.to_owned(), token));
        }
    }

    pub fn status(&self) -> FaultStatus {
        let now = Instant::now();
        let state = self.state.lock();
        let wall = |until: Instant| {
            rfc3339(Utc::now() + chrono::Duration::from_std(until - now).unwrap_or_default())
        };
        let latency = state.latency.filter(|(_, until)| *until > now);
        FaultStatus {
            counts: state.counts.clone(),
            recent: state.recent.iter().cloned().collect(),
            unavailable_until: state.unavailable_until.filter(|u| *u > now).map(wall),
            latency_ms: latency.map(|(d, _)| d.as_millis()),
            latency_until: latency.map(|(_, until)| wall(until)),
            lost_completes_pending: state.lost_completes.len(),
            lost_locks: state.lost_locks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        journey::Via,
        queue::{QueueSettings, Queues},
        service_bus::Envelope,
    };

    fn faults() -> (Faults, Arc<Queues>, Journeys) {
        let changes = Changes::default();
        let journeys = Journeys::new(10);
        let settings = QueueSettings::default();
        let queues = Arc::new(Queues::new(
            &["q".to_owned()],
            settings,
            &changes,
            &journeys,
        ));
        (
            Faults::new(Arc::clone(&queues), journeys.clone(), changes),
            queues,
            journeys,
        )
    }

    #[test]
    fn a_fault_reads_from_json_and_bad_ones_name_the_field() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"pause","consumer":"consumer-2","seconds":5}"#)
                .unwrap();
        assert_eq!(
            fault,
            Fault::Pause {
                consumer: "consumer-2".into(),
                seconds: 5.0
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"lost-lock"}"#).unwrap();
        assert_eq!(fault, Fault::LostLock { message: None });
        for (json, error) in [
            (r#"{"kind":"explode"}"#, "unknown variant `explode`"),
            (r#"{"kind":"kill"}"#, "missing field `consumer`"),
            (
                r#"{"kind":"kill","consumer":"c","extra":1}"#,
                "unknown field `extra`",
            ),
            (r#"{"consumer":"c"}"#, "missing field `kind`"),
        ] {
            let e = serde_json::from_str::<Fault>(json).unwrap_err().to_string();
            assert!(e.contains(error), "{json}: {e}");
        }
        for (fault, field) in [
            (Fault::Unavailable { seconds: 0.0 }, "seconds"),
            (Fault::Unavailable { seconds: f64::NAN }, "seconds"),
            (Fault::Unavailable { seconds: 1e9 }, "seconds"),
            (
                Fault::Latency {
                    milliseconds: 0,
                    seconds: 1.0,
                },
                "milliseconds",
            ),
            (
                Fault::Kill {
                    consumer: " ".into(),
                },
                "consumer",
            ),
        ] {
            let e = fault.validate().unwrap_err();
            assert!(e.starts_with(field), "{fault:?}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_refuses_sends_until_it_ends_and_latency_delays_them() {
        let (faults, _, _) = faults();
        faults
            .inject(Fault::Unavailable { seconds: 2.0 }, Source::Api)
            .await
            .unwrap();
        assert!(faults.before_send().await.is_err());
        assert!(faults.status().unavailable_until.is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(faults.before_send().await.is_ok());
        faults
            .inject(
                Fault::Latency {
                    milliseconds: 300,
                    seconds: 1.0,
                },
                Source::Chaos,
            )
            .await
            .unwrap();
        let start = Instant::now();
        faults.before_send().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        tokio::time::advance(Duration::from_secs(1)).await;
        let start = Instant::now();
        faults.before_send().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "over");
        let status = faults.status();
        assert_eq!(
            (status.counts["unavailable"], status.counts["latency"]),
            (1, 1)
        );
        assert_eq!(status.recent[1].source, Source::Chaos);
    }

    #[tokio::test(start_paused = true)]
    async fn message_faults_take_a_message_in_flight_and_say_so_in_its_journey() {
        let (faults, queues, journeys) = faults();
        assert_eq!(
            faults
                .inject(Fault::LostLock { message: None }, Source::Api)
                .await,
            Err(FaultError::NothingInFlight)
        );
        assert_eq!(
            faults
                .inject(
                    Fault::LostComplete {
                        message: Some("m".into())
                    },
                    Source::Api
                )
                .await,
            Err(FaultError::MessageNotInFlight("m".into()))
        );
        let queue = queues.get("q").unwrap();
        let id = queue.send(b"x".to_vec(), Envelope::default(), None, Via::Grpc);
        let lock = queue.receive().await;
        let record = faults
            .inject(Fault::LostLock { message: None }, Source::Api)
            .await
            .unwrap();
        assert_eq!(record.target, id);
        assert!(faults.renewal_stopped("q", lock.token()));
        faults.settled("q", lock.token());
        assert!(!faults.renewal_stopped("q", lock.token()));

        faults
            .inject(Fault::LostComplete { message: None }, Source::Api)
            .await
            .unwrap();
        assert!(faults.take_lost_complete(&id));
        assert!(!faults.take_lost_complete(&id), "one complete lost");
        let events: Vec<String> = journeys
            .get(&id)
            .unwrap()
            .events
            .iter()
            .filter_map(|e| match &e.step {
                Step::Fault { fault, .. } => Some(fault.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(events, ["lost-lock", "lost-complete"]);
        assert_eq!(
            faults
                .inject(
                    Fault::Kill {
                        consumer: "consumer-1".into()
                    },
                    Source::Api
                )
                .await,
            Err(FaultError::NoProcesses)
        );
    }
}

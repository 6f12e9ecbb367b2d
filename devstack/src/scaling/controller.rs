//! Runs KEDA's loop and the HPA's loop on the clock, against the sidecar's queue, and applies
//! their decisions to the replica set. Every change is logged, kept in a bounded list of events
//! and published to the status.

use std::{collections::VecDeque, path::PathBuf, sync::Arc, time::Duration};

use anyhow::bail;
use serde::Serialize;
use tracing::info;

use crate::{
    config::UpArgs,
    queue::{Counts, Queue},
    registry::ReplicaState,
    sidecar::Sidecar,
    status::{CountedScaling, ReplicaCounts, ScalingReport, StatusBoard},
};

use super::{
    Decision,
    clock::{Clock, rfc3339},
    hpa::Hpa,
    keda::Keda,
    replicas::{ReplicaSet, Unregistered},
    spec::{HPA_SYNC_PERIOD, ScalingSpec, TriggerKind},
};

/// How many scaling events the status keeps.
const EVENTS_KEPT: usize = 256;

/// The `scaling` object of `GET /devstack/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    pub settings: Settings,
    /// The Deployment's spec.replicas, as KEDA and the HPA last set it.
    pub replicas: u32,
    pub ready: u32,
    pub starting: u32,
    pub terminating: u32,
    /// The last metric either loop read.
    pub metric: Option<u64>,
    pub active: bool,
    pub last_active_time: Option<String>,
    pub cooldown_ends_at: Option<String>,
    /// Every change, oldest first; the last [`EVENTS_KEPT`].
    pub events: VecDeque<Event>,
    /// Replicas the sidecar does not know yet, counted in by [`counted`](Self::counted).
    #[serde(skip)]
    pub unregistered: Unregistered,
}

/// The status counts the replicas at each read, so they agree with the consumers it lists.
impl ScalingReport for ScalingStatus {
    fn counted(&self, states: &[ReplicaState]) -> CountedScaling {
        let counted = self.clone().counted(states.iter().copied());
        CountedScaling {
            replicas: ReplicaCounts {
                desired: counted.replicas,
                ready: counted.ready,
                starting: counted.starting,
                terminating: counted.terminating,
            },
            metric: counted.metric,
            // Strings, numbers and maps with string keys: it always serializes.
            json: serde_json::value::to_raw_value(&counted).expect("the scaling status serializes"),
        }
    }
}

impl ScalingStatus {
    /// With the replica counts, from the states of the consumers the sidecar knows.
    pub fn counted(mut self, states: impl Iterator<Item = ReplicaState>) -> Self {
        self.ready = 0;
        self.starting = self.unregistered.starting;
        self.terminating = self.unregistered.terminating;
        for state in states {
            match state {
                ReplicaState::Ready => self.ready += 1,
                ReplicaState::Starting => self.starting += 1,
                ReplicaState::Terminating => self.terminating += 1,
            }
        }
        self
    }
}

/// The settings in force: the ScaledObject's (real seconds, before the time scale), the factor,
/// and the HPA's sync period.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    #[serde(flatten)]
    pub spec: ScalingSpec,
    pub time_scale: f64,
    pub hpa_sync_period: f64,
}

/// One change, when it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: String,
    #[serde(flatten)]
    pub decision: Decision,
}

/// What `--autoscale` runs: the ScaledObject read at start and where its metric comes from.
#[derive(Debug)]
pub struct Autoscale {
    pub path: PathBuf,
    pub spec: ScalingSpec,
    /// The sidecar binding whose queue the trigger reads.
    pub binding: String,
}

impl Autoscale {
    /// Reads the ScaledObject at `path`; an error names what devstack cannot honour.
    pub fn load(path: PathBuf, bindings: &[String]) -> anyhow::Result<Self> {
        let spec = ScalingSpec::load(&path)?;
        let binding = binding_for(&spec, bindings)?.to_owned();
        Ok(Self {
            path,
            spec,
            binding,
        })
    }
}

/// The binding whose queue stands for the trigger's `queueName`. The ScaledObject names the
/// broker's queue (`msgqueue`), the sidecar its binding (`message-queue`): with one binding, the
/// trigger reads its queue; with several, the one named as the queue.
pub fn binding_for<'a>(spec: &ScalingSpec, bindings: &'a [String]) -> anyhow::Result<&'a str> {
    let queue = &spec.trigger.queue_name;
    match bindings {
        [only] => Ok(only),
        several => match several.iter().find(|b| *b == queue) {
            Some(binding) => Ok(binding),
            None => bail!(
                "the ScaledObject's trigger reads queue {queue:?}, and the sidecar serves several \
                 bindings ({}), none named {queue:?}: with several bindings, one must be named as \
                 the trigger's queueName",
                several.join(", ")
            ),
        },
    }
}

/// The metric KEDA's scaler reads from the queue. Service Bus: the queue's active message count,
/// which counts the messages not yet completed, locked ones included, and not the dead-lettered
/// ones. RabbitMQ (http protocol): ready + unacknowledged, or ready only.
pub fn metric(kind: TriggerKind, counts: Counts) -> u64 {
    match kind {
        TriggerKind::AzureServicebus
        | TriggerKind::Rabbitmq {
            exclude_unacknowledged: false,
        } => counts.active + counts.locked,
        TriggerKind::Rabbitmq {
            exclude_unacknowledged: true,
        } => counts.active,
    }
}

/// The two loops and the replicas they scale.
#[derive(Debug)]
pub struct Controller {
    spec: ScalingSpec,
    clock: Clock,
    keda: Keda,
    hpa: Hpa,
    queue: Arc<Queue>,
    status: Arc<StatusBoard>,
    replicas: ReplicaSet,
    /// The Deployment's spec.replicas.
    desired: u32,
    metric: Option<u64>,
    events: VecDeque<Event>,
}

impl Controller {
    /// The controller for `autoscale`, its clock starting now; starts minReplicaCount consumers
    /// (the Deployment at rest) from the binary `consumer`.
    pub fn start(
        autoscale: &Autoscale,
        args: &UpArgs,
        consumer: PathBuf,
        sidecar: &Sidecar,
    ) -> anyhow::Result<Self> {
        let spec = autoscale.spec.clone();
        let clock = Clock::start(args.time_scale);
        let status = Arc::clone(sidecar.status());
        let Some(queue) = sidecar.queues().get(&autoscale.binding).cloned() else {
            bail!("the sidecar has no binding {:?}", autoscale.binding);
        };
        let replicas =
            ReplicaSet::new(args.clone(), consumer, spec.termination_grace_period, clock);
        let mut controller = Self {
            keda: Keda::new(&spec),
            hpa: Hpa::new(&spec),
            desired: spec.min_replica_count,
            spec,
            clock,
            queue,
            status,
            replicas,
            metric: None,
            events: VecDeque::new(),
        };
        controller.replicas.scale_to(controller.desired)?;
        controller.publish();
        Ok(controller)
    }

    /// Runs both loops until a replica stops on its own or cannot be started (an error: the
    /// stack stops); cancel-safe, the caller stops it on shutdown.
    pub async fn run(&mut self, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        // KEDA polls at once, then every pollingInterval. The HPA syncs every 15 s with a phase
        // of its own: the controller manager started long before this ScaledObject did.
        let mut poll_at = self.clock.now();
        let mut sync_at = poll_at + HPA_SYNC_PERIOD.mul_f64(fastrand::f64());
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(self.clock.instant(poll_at)) => {
                    self.poll()?;
                    poll_at = next_tick(poll_at, self.spec.polling_interval, self.clock.now());
                }
                _ = tokio::time::sleep_until(self.clock.instant(sync_at)) => {
                    self.sync()?;
                    sync_at = next_tick(sync_at, HPA_SYNC_PERIOD, self.clock.now());
                }
                event = self.replicas.next_event() => {
                    let handled = self.replicas.handle(event, sidecar);
                    self.publish();
                    handled?;
                }
            }
        }
    }

    /// Stops every replica (SIGTERM, bounded wait), as the stack stops.
    pub async fn stop(&mut self, sidecar: &mut Sidecar) {
        self.replicas.stop_all(sidecar).await;
        self.publish();
    }

    /// One KEDA poll.
    fn poll(&mut self) -> anyhow::Result<()> {
        let (now, metric) = (self.clock.now(), self.read_metric());
        let decision = self.keda.poll(now, metric, self.desired);
        self.apply(now, decision)
    }

    /// One HPA sync.
    fn sync(&mut self) -> anyhow::Result<()> {
        let (now, metric) = (self.clock.now(), self.read_metric());
        let decision = self.hpa.sync(now, metric, self.desired);
        self.apply(now, decision)
    }

    /// The metric, read fresh from the queue.
    fn read_metric(&mut self) -> u64 {
        let metric = metric(self.spec.trigger.kind, self.queue.counts());
        self.metric = Some(metric);
        metric
    }

    fn apply(&mut self, now: Duration, decision: Option<Decision>) -> anyhow::Result<()> {
        let scaled = match decision {
            Some(decision) => {
                info!("{decision}");
                self.desired = decision.to;
                if self.events.len() == EVENTS_KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(Event {
                    at: rfc3339(self.clock.wall(now)),
                    decision,
                });
                self.replicas.scale_to(self.desired)
            }
            None => Ok(()),
        };
        self.publish();
        scaled
    }

    /// The one place the scaling state is published: after every poll, sync, decision and
    /// replica change. Whatever watches the status for changes is woken here.
    fn publish(&self) {
        let clock = &self.clock;
        self.status.set_scaling(ScalingStatus {
            settings: Settings {
                spec: self.spec.clone(),
                time_scale: clock.scale(),
                hpa_sync_period: HPA_SYNC_PERIOD.as_secs_f64(),
            },
            replicas: self.desired,
            ready: 0,
            starting: 0,
            terminating: 0,
            metric: self.metric,
            active: self.keda.active(),
            last_active_time: self.keda.last_active_time().map(|t| rfc3339(clock.wall(t))),
            cooldown_ends_at: self.keda.cooldown_ends().map(|t| rfc3339(clock.wall(t))),
            events: self.events.clone(),
            unregistered: self.replicas.unregistered(),
        });
    }
}

/// The tick after `at` every `period`, skipping those already missed (as Go's ticker drops
/// ticks for a slow receiver).
fn next_tick(at: Duration, period: Duration, now: Duration) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_bus_metric_counts_locked_messages_and_not_dead_letters() {
        let counts = Counts {
            produced: 20,
            active: 7,
            locked: 3,
            completed: 6,
            dead_lettered: 4,
        };
        assert_eq!(metric(TriggerKind::AzureServicebus, counts), 10);
        let rabbit = |exclude_unacknowledged| TriggerKind::Rabbitmq {
            exclude_unacknowledged,
        };
        assert_eq!(metric(rabbit(false), counts), 10);
        assert_eq!(metric(rabbit(true), counts), 7);
    }

    #[test]
    fn the_trigger_reads_the_one_binding_or_the_one_named_as_its_queue() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/consumer-scaling.yaml"
        );
        let spec = ScalingSpec::load(std::path::Path::new(path)).expect("the committed one");
        assert_eq!(spec.trigger.queue_name, "msgqueue");
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            binding_for(&spec, &names(&["message-queue"])).unwrap(),
            "message-queue"
        );
        assert_eq!(
            binding_for(&spec, &names(&["a", "msgqueue"])).unwrap(),
            "msgqueue"
        );
        let error = binding_for(&spec, &names(&["a", "b"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("queueName") && error.contains("a, b"),
            "{error}"
        );
    }

    #[test]
    fn replica_counts_add_the_ones_the_sidecar_does_not_know_yet() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/consumer-scaling.yaml"
        );
        let spec = ScalingSpec::load(std::path::Path::new(path)).expect("the committed one");
        let status = ScalingStatus {
            settings: Settings {
                spec,
                time_scale: 1.0,
                hpa_sync_period: 15.0,
            },
            replicas: 5,
            ready: 9,
            starting: 9,
            terminating: 9,
            metric: None,
            active: false,
            last_active_time: None,
            cooldown_ends_at: None,
            events: VecDeque::new(),
            unregistered: Unregistered {
                starting: 2,
                terminating: 1,
            },
        };
        let states = [
            ReplicaState::Ready,
            ReplicaState::Ready,
            ReplicaState::Starting,
            ReplicaState::Terminating,
        ];
        let counted = status.counted(states.into_iter());
        assert_eq!(
            (counted.ready, counted.starting, counted.terminating),
            (2, 3, 2)
        );
        let json = serde_json::to_value(&counted).unwrap();
        assert!(json.get("unregistered").is_none(), "{json}");
        assert_eq!(json["settings"]["timeScale"], 1.0);
        assert_eq!(json["settings"]["cooldownPeriod"], 60.0);
        assert_eq!(json["lastActiveTime"], serde_json::Value::Null);
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
}

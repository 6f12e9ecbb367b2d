//! Runs KEDA's loop and the HPA's loop on the clock, against the sidecar's queue, and applies
//! their decisions to the replica set. Every change is logged, kept in a bounded list of events
//! and published to the status.

use std::{collections::VecDeque, path::Path, sync::Arc, time::Duration};

use anyhow::bail;
use tracing::info;

use crate::{
    faults::ConsumerControl,
    manifests,
    queue::{Counts, Queue},
    sidecar::Sidecar,
    status::StatusBoard,
};

use super::{
    autoscaler::Autoscaler,
    clock::{Clock, rfc3339},
    decision::Decision,
    hpa::{HPA_SYNC_PERIOD, Hpa},
    replicas::{ReplicaSet, Template},
    spec::ScalingSpec,
    status::{EVENTS_KEPT, ScalingEvent, ScalingSettings, ScalingStatus},
    trigger::TriggerKind,
};

/// What `--autoscale` runs: the ScaledObject read at start, where its metric comes from, and how
/// fast the control plane's clock runs.
#[derive(Debug)]
pub struct Autoscale {
    /// Where the ScaledObject was read: its path, or the built-in one's name.
    pub source: String,
    pub spec: ScalingSpec,
    /// The sidecar binding whose queue the trigger reads.
    pub binding: String,
    /// `--time-scale`.
    pub time_scale: f64,
}

impl Autoscale {
    /// Reads the ScaledObject at `path`, or the committed one when `None`; an error names what
    /// devstack cannot honour.
    pub fn load(path: Option<&Path>, bindings: &[String], time_scale: f64) -> anyhow::Result<Self> {
        let (source, spec) = match path {
            Some(path) => (path.display().to_string(), ScalingSpec::load(path)?),
            None => (
                manifests::SCALED_OBJECT.to_string(),
                ScalingSpec::committed()?,
            ),
        };
        let binding = binding_for(&spec, bindings)?.to_owned();
        Ok(Self {
            source,
            spec,
            binding,
            time_scale,
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
    autoscaler: Autoscaler,
    queue: Arc<Queue>,
    status: Arc<StatusBoard>,
    replicas: ReplicaSet,
    metric: Option<u64>,
    events: VecDeque<ScalingEvent>,
}

impl Controller {
    /// The controller for `autoscale`, its clock starting now; starts minReplicaCount consumers
    /// (the Deployment at rest), each from `template`. A consumer that exits on its own is
    /// restarted after its back-off on the controller's clock, or stops the stack with
    /// `stop_on_crash`.
    pub fn start(
        autoscale: &Autoscale,
        template: Template,
        sidecar: &mut Sidecar,
        stop_on_crash: bool,
    ) -> anyhow::Result<Self> {
        let spec = autoscale.spec.clone();
        let clock = Clock::start(autoscale.time_scale);
        let status = Arc::clone(sidecar.status());
        let Some(queue) = sidecar.queues().get(&autoscale.binding).cloned() else {
            bail!("the sidecar has no binding {:?}", autoscale.binding);
        };
        let replicas = ReplicaSet::new(
            template,
            spec.termination_grace_period,
            clock,
            stop_on_crash,
        );
        let mut controller = Self {
            autoscaler: Autoscaler::new(&spec, Hpa::first_sync(Duration::ZERO)),
            spec,
            clock,
            queue,
            status,
            replicas,
            metric: None,
            events: VecDeque::new(),
        };
        controller
            .replicas
            .scale_to(controller.autoscaler.desired(), sidecar)?;
        controller.publish();
        Ok(controller)
    }

    /// Where the process faults for the replicas go.
    pub fn control(&self) -> ConsumerControl {
        self.replicas.control()
    }

    /// Runs both loops until a replica cannot be started or (with `stop_on_crash`) stops on its
    /// own (an error: the stack stops); cancel-safe, the caller stops it on shutdown.
    pub async fn run(&mut self, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        loop {
            let (due, _) = self.autoscaler.next();
            tokio::select! {
                _ = tokio::time::sleep_until(self.clock.instant(due)) => {
                    let metric = self.read_metric();
                    let (at, decision) = self.autoscaler.run_due(metric, self.clock.now());
                    self.apply(at, decision, sidecar)?;
                }
                event = self.replicas.next_event() => {
                    let handled = self.replicas.handle(event, sidecar);
                    self.publish();
                    handled?;
                }
            }
        }
    }

    /// Looks after the replicas only (restarts, faults), before the loops start; cancel-safe.
    pub async fn run_replicas(&mut self, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        loop {
            let event = self.replicas.next_event().await;
            let handled = self.replicas.handle(event, sidecar);
            self.publish();
            handled?;
        }
    }

    /// Stops every replica (SIGTERM, bounded wait), as the stack stops.
    pub async fn stop(&mut self, sidecar: &mut Sidecar) {
        self.replicas.stop_all(sidecar).await;
        self.publish();
    }

    /// The metric, read fresh from the queue.
    fn read_metric(&mut self) -> u64 {
        let metric = metric(self.spec.trigger.kind, self.queue.counts());
        self.metric = Some(metric);
        metric
    }

    /// Applies what a loop decided at cluster time `at`.
    fn apply(
        &mut self,
        at: Duration,
        decision: Option<Decision>,
        sidecar: &mut Sidecar,
    ) -> anyhow::Result<()> {
        let scaled = match decision {
            Some(decision) => {
                info!("{decision}");
                if self.events.len() == EVENTS_KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(ScalingEvent {
                    at: rfc3339(self.clock.wall(at)),
                    cluster_time: at.as_secs_f64(),
                    decision,
                });
                // The decision is in the status before any replica it scales in shows as
                // terminating there.
                self.publish();
                self.replicas.scale_to(self.autoscaler.desired(), sidecar)
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
        let keda = self.autoscaler.keda();
        self.status.set_scaling(ScalingStatus {
            settings: ScalingSettings {
                spec: self.spec.clone(),
                time_scale: clock.scale(),
                hpa_sync_period: HPA_SYNC_PERIOD.as_secs_f64(),
                started_at: rfc3339(clock.wall(Duration::ZERO)),
                hpa_first_sync: self.autoscaler.hpa_first_sync().as_secs_f64(),
            },
            replicas: self.autoscaler.desired(),
            ready: 0,
            starting: 0,
            terminating: 0,
            restarting: 0,
            metric: self.metric,
            active: keda.active(),
            last_active_time: keda.last_active_time().map(|t| rfc3339(clock.wall(t))),
            cooldown_ends_at: keda.cooldown_ends().map(|t| rfc3339(clock.wall(t))),
            events: self.events.clone(),
            unregistered: self.replicas.unregistered(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_bus_metric_counts_locked_messages_and_not_dead_letters() {
        // Nor scheduled ones before their time (Service Bus counts them apart, in
        // ScheduledMessageCount), expired ones, or dropped duplicates.
        let counts = Counts {
            produced: 27,
            scheduled: 5,
            active: 7,
            locked: 3,
            completed: 6,
            dead_lettered: 4,
            expired: 2,
            duplicates_dropped: 8,
            duplicates_enqueued: 0,
            ..Counts::default()
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
        let spec = ScalingSpec::committed().expect("the committed one");
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
}

//! What `GET /devstack/status`, `GET /devstack/metrics`, the dashboard and the periodic status log
//! show: each queue's counts, dead letters and dead-letter operations, the consumer apps (their
//! state, restarts and last exit), the faults provoked, the journeys kept, and with `--autoscale`
//! the scaling controller's report; as JSON, and as an OpenMetrics page.

use std::{collections::BTreeMap, fmt, sync::Arc};

use parking_lot::Mutex;
use pipeline::http_server::ConnectionMetrics;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{
    changes::{Changes, ChangesReceiver},
    faults::{FaultStatus, Faults},
    journey::{JourneyCounts, Journeys},
    queue::{Counts, DeadLetter, DeadLetterOps, Queues},
    registry::{AppRegistry, ConsumerStatus, ReplicaState},
};

/// The status's sources, read together at each request.
#[derive(Debug)]
pub struct StatusBoard {
    queues: Arc<Queues>,
    apps: Arc<AppRegistry>,
    faults: Arc<Faults>,
    journeys: Journeys,
    /// With `--autoscale`: what the scaling controller last published.
    scaling: Mutex<Option<Box<dyn ScalingReport>>>,
    changes: Changes,
}

/// What the scaling controller publishes for the status and the metrics. The replicas are
/// counted at each read, from the consumers the registry lists then, so the counts always agree
/// with the consumer list beside them.
pub trait ScalingReport: fmt::Debug + Send + Sync + 'static {
    /// The report with the replica counts, given the state of each consumer the registry knows.
    fn counted(&self, states: &[ReplicaState]) -> CountedScaling;
}

/// A scaling report at one read of the status.
#[derive(Debug)]
pub struct CountedScaling {
    pub replicas: ReplicaCounts,
    /// The queue length KEDA and the HPA last read for the trigger.
    pub metric: Option<u64>,
    /// The status's `scaling` object, as the report serializes itself.
    pub json: Box<RawValue>,
}

impl Serialize for CountedScaling {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// The consumer Deployment's replicas: desired (spec.replicas), and the pods by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub terminating: u32,
    /// Restarting, or waiting out a CrashLoopBackOff.
    pub restarting: u32,
}

/// JSON status: counts per queue, consumers, recent dead letters, faults, journeys.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub queues: BTreeMap<String, Counts>,
    pub consumers_connected: usize,
    /// In replica order.
    pub consumers: Vec<ConsumerStatus>,
    /// Restarts of every consumer ever, those scaled in since included.
    pub consumer_restarts: u64,
    pub dead_letters: BTreeMap<String, Vec<DeadLetter>>,
    pub dead_letter_operations: BTreeMap<String, DeadLetterOps>,
    pub faults: FaultStatus,
    pub journeys: JourneyCounts,
    /// Only with `--autoscale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<CountedScaling>,
}

impl StatusBoard {
    /// The status of `queues`, `apps`, `faults` and `journeys`, which tell `changes` of their own
    /// changes.
    pub fn new(
        queues: Arc<Queues>,
        apps: Arc<AppRegistry>,
        faults: Arc<Faults>,
        journeys: Journeys,
        changes: Changes,
    ) -> Self {
        Self {
            queues,
            apps,
            faults,
            journeys,
            scaling: Mutex::default(),
            changes,
        }
    }

    /// Resolves `changed()` after each change to what [`status`](Self::status) shows, bursts
    /// coalesced.
    pub fn subscribe(&self) -> ChangesReceiver {
        self.changes.subscribe()
    }

    /// The bindings served, each its own queue.
    pub fn bindings(&self) -> Vec<String> {
        self.queues.names()
    }

    /// Publishes the scaling controller's state, shown by the status and the metrics.
    pub fn set_scaling(&self, report: impl ScalingReport) {
        *self.scaling.lock() = Some(Box::new(report));
        self.changes.notify();
    }

    pub fn status(&self) -> Status {
        let consumers = self.apps.consumers();
        let states: Vec<ReplicaState> = consumers.iter().map(|c| c.state).collect();
        let scaling = self
            .scaling
            .lock()
            .as_ref()
            .map(|report| report.counted(&states));
        Status {
            queues: self
                .queues
                .iter()
                .map(|q| (q.name().to_owned(), q.counts()))
                .collect(),
            consumers_connected: consumers.iter().filter(|c| c.connected()).count(),
            consumers,
            consumer_restarts: self.apps.restarts(),
            dead_letters: self
                .queues
                .iter()
                .map(|q| (q.name().to_owned(), q.dead_letters()))
                .collect(),
            dead_letter_operations: self
                .queues
                .iter()
                .map(|q| (q.name().to_owned(), q.dead_letter_ops()))
                .collect(),
            faults: self.faults.status(),
            journeys: self.journeys.counts(),
            scaling,
        }
    }

    /// The status as an OpenMetrics page, with the HTTP port's `connections`: the counts are
    /// read once, at the scrape.
    pub fn metrics(
        self: &Arc<Self>,
        connections: &ConnectionMetrics,
    ) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        connections.register(registry.sub_registry_with_prefix("devstack"));
        let mut page = String::new();
        text::encode(&mut page, &registry)?;
        Ok(page)
    }
}

impl Collector for StatusBoard {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.status();
        let mut messages = encoder.encode_descriptor(
            "devstack_queue_messages",
            "Messages in each state of the sidecar's queue.",
            None,
            MetricType::Gauge,
        )?;
        for (queue, c) in &status.queues {
            for (state, value) in [
                ("scheduled", c.scheduled),
                ("active", c.active),
                ("locked", c.locked),
                ("completed", c.completed),
                ("dead_lettered", c.dead_lettered),
                ("expired", c.expired),
            ] {
                let labels = [("queue", queue.as_str()), ("state", state)];
                ConstGauge::new(value).encode(messages.encode_family(&labels)?)?;
            }
        }
        // A counter family's samples get `_total`: devstack_queue_produced_total{queue}.
        let mut produced = encoder.encode_descriptor(
            "devstack_queue_produced",
            "Messages ever sent to the queue.",
            None,
            MetricType::Counter,
        )?;
        for (queue, c) in &status.queues {
            let labels = [("queue", queue.as_str())];
            ConstCounter::new(c.produced).encode(produced.encode_family(&labels)?)?;
        }
        let mut duplicates = encoder.encode_descriptor(
            "devstack_queue_duplicates",
            "Sends of a MessageId the queue accepted within its duplicate detection window: dropped (detection on) or enqueued again (off).",
            None,
            MetricType::Counter,
        )?;
        for (queue, c) in &status.queues {
            for (outcome, value) in [
                ("dropped", c.duplicates_dropped),
                ("enqueued", c.duplicates_enqueued),
            ] {
                let labels = [("queue", queue.as_str()), ("outcome", outcome)];
                ConstCounter::new(value).encode(duplicates.encode_family(&labels)?)?;
            }
        }
        let mut expired = encoder.encode_descriptor(
            "devstack_queue_locks_expired",
            "Locks that ran out before their message was settled; the message came back.",
            None,
            MetricType::Counter,
        )?;
        for (queue, c) in &status.queues {
            let labels = [("queue", queue.as_str())];
            ConstCounter::new(c.locks_expired).encode(expired.encode_family(&labels)?)?;
        }
        let mut operations = encoder.encode_descriptor(
            "devstack_dead_letter_operations",
            "Dead-letter operations (peek, replay, purge) done on each queue.",
            None,
            MetricType::Counter,
        )?;
        for (queue, ops) in &status.dead_letter_operations {
            for (operation, value) in [
                ("peek", ops.peeks),
                ("replay", ops.replays),
                ("purge", ops.purges),
            ] {
                let labels = [("queue", queue.as_str()), ("operation", operation)];
                ConstCounter::new(value).encode(operations.encode_family(&labels)?)?;
            }
        }
        let mut dead_letters_moved = encoder.encode_descriptor(
            "devstack_dead_letters",
            "Dead letters replayed to their queue, or purged.",
            None,
            MetricType::Counter,
        )?;
        for (queue, c) in &status.queues {
            for (outcome, value) in [("replayed", c.replayed), ("purged", c.purged)] {
                let labels = [("queue", queue.as_str()), ("outcome", outcome)];
                ConstCounter::new(value).encode(dead_letters_moved.encode_family(&labels)?)?;
            }
        }
        let connected = encoder.encode_descriptor(
            "devstack_consumers_connected",
            "Consumer apps that listed their bindings and are healthy.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(status.consumers_connected).encode(connected)?;
        let mut states = encoder.encode_descriptor(
            "devstack_consumer_state",
            "Each consumer's state: 1 for the one it is in.",
            None,
            MetricType::Gauge,
        )?;
        for c in &status.consumers {
            for state in ReplicaState::ALL {
                let labels = [("consumer", c.label.as_str()), ("state", state.as_str())];
                ConstGauge::new(i64::from(c.state == state))
                    .encode(states.encode_family(&labels)?)?;
            }
        }
        let mut restarts = encoder.encode_descriptor(
            "devstack_consumer_restarts",
            "Times each consumer's process was restarted after exiting on its own.",
            None,
            MetricType::Gauge,
        )?;
        for c in &status.consumers {
            let labels = [("consumer", c.label.as_str())];
            ConstGauge::new(i64::from(c.restarts)).encode(restarts.encode_family(&labels)?)?;
        }
        let mut last_exit = encoder.encode_descriptor(
            "devstack_consumer_last_exit_timestamp_seconds",
            "When each consumer's process last exited on its own, labelled with how.",
            None,
            MetricType::Gauge,
        )?;
        for c in &status.consumers {
            let (Some(how), Some(at)) = (&c.last_exit, &c.last_exit_at) else {
                continue;
            };
            let seconds = chrono::DateTime::parse_from_rfc3339(at)
                .map(|t| t.timestamp_millis() as f64 / 1e3)
                .unwrap_or_default();
            let labels = [("consumer", c.label.as_str()), ("status", how.as_str())];
            ConstGauge::new(seconds).encode(last_exit.encode_family(&labels)?)?;
        }
        let all_restarts = encoder.encode_descriptor(
            "devstack_consumer_process_restarts",
            "Restarts of every consumer ever, those scaled in since included.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(status.consumer_restarts).encode(all_restarts)?;
        let mut faults = encoder.encode_descriptor(
            "devstack_faults",
            "Faults provoked, by kind (POST /devstack/faults, the dashboard, --chaos).",
            None,
            MetricType::Counter,
        )?;
        for (kind, value) in &status.faults.counts {
            ConstCounter::new(*value).encode(faults.encode_family(&[("kind", *kind)])?)?;
        }
        let duplicates = encoder.encode_descriptor(
            "devstack_messages_processed_more_than_once",
            "Messages the consumers answered OK for more than once (at-least-once delivery).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(status.journeys.duplicates).encode(duplicates)?;
        let Some(scaling) = &status.scaling else {
            return Ok(());
        };
        let mut replicas = encoder.encode_descriptor(
            "devstack_scaling_replicas",
            "The consumer Deployment's replicas: desired (spec.replicas), and the pods by state.",
            None,
            MetricType::Gauge,
        )?;
        let counts = scaling.replicas;
        for (state, value) in [
            ("desired", counts.desired),
            ("ready", counts.ready),
            ("starting", counts.starting),
            ("terminating", counts.terminating),
            ("restarting", counts.restarting),
        ] {
            ConstGauge::new(i64::from(value))
                .encode(replicas.encode_family(&[("state", state)])?)?;
        }
        if let Some(metric) = scaling.metric {
            let encoder = encoder.encode_descriptor(
                "devstack_scaling_metric",
                "The queue length KEDA and the HPA last read for the trigger.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::try_from(metric).unwrap_or(i64::MAX)).encode(encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        app::{AppProtocol, AppTarget},
        journey::Via,
        queue::QueueSettings,
        service_bus::Envelope,
    };

    fn board(bindings: &[&str]) -> (Arc<StatusBoard>, Arc<Queues>, Arc<AppRegistry>) {
        let changes = Changes::default();
        let bindings: Vec<String> = bindings.iter().map(|b| (*b).to_owned()).collect();
        let settings = QueueSettings {
            max_delivery_count: 1,
            ..QueueSettings::default()
        };
        let journeys = Journeys::new(10);
        let queues = Arc::new(Queues::new(&bindings, settings, &changes, &journeys));
        let apps = Arc::new(AppRegistry::new(changes.clone()));
        let faults = Arc::new(Faults::new(
            Arc::clone(&queues),
            journeys.clone(),
            changes.clone(),
        ));
        let board = StatusBoard::new(
            Arc::clone(&queues),
            Arc::clone(&apps),
            faults,
            journeys,
            changes,
        );
        (Arc::new(board), queues, apps)
    }

    #[test]
    fn metrics_are_openmetrics_with_escaped_labels() {
        let (board, queues, _) = board(&["q", "a\"b\\c"]);
        let q = queues.get("q").expect("queue q");
        let copy = Envelope {
            message_id: Some("m-1".into()),
            ..Envelope::default()
        };
        for _ in 0..3 {
            q.send(b"x".to_vec(), copy.clone(), None, Via::Grpc);
        }
        let page = board
            .metrics(&ConnectionMetrics::default())
            .expect("encodes");
        for line in [
            "# TYPE devstack_queue_messages gauge",
            r#"devstack_queue_messages{queue="q",state="active"} 1"#,
            r#"devstack_queue_messages{queue="q",state="scheduled"} 0"#,
            r#"devstack_queue_messages{queue="q",state="expired"} 0"#,
            r#"devstack_queue_messages{queue="a\"b\\c",state="locked"} 0"#,
            "# TYPE devstack_queue_produced counter",
            r#"devstack_queue_produced_total{queue="q"} 1"#,
            "# TYPE devstack_queue_duplicates counter",
            r#"devstack_queue_duplicates_total{queue="q",outcome="dropped"} 2"#,
            r#"devstack_queue_duplicates_total{queue="q",outcome="enqueued"} 0"#,
            "devstack_consumers_connected 0",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert!(!page.contains("devstack_scaling"), "{page}");
    }

    /// A report that counts what it is given, as the scaling controller's does.
    #[derive(Debug)]
    struct Fixed {
        desired: u32,
    }

    impl ScalingReport for Fixed {
        fn counted(&self, states: &[ReplicaState]) -> CountedScaling {
            let count = |state| states.iter().filter(|s| **s == state).count() as u32;
            let replicas = ReplicaCounts {
                desired: self.desired,
                ready: count(ReplicaState::Ready),
                starting: count(ReplicaState::Starting),
                terminating: count(ReplicaState::Terminating),
                restarting: count(ReplicaState::Restarting) + count(ReplicaState::Crashloop),
            };
            let json = format!(
                r#"{{"replicas":{},"ready":{}}}"#,
                self.desired, replicas.ready
            );
            CountedScaling {
                replicas,
                metric: Some(7),
                json: RawValue::from_string(json).expect("JSON"),
            }
        }
    }

    #[tokio::test]
    async fn scaling_is_counted_from_the_registry_at_each_read_and_shown_as_reported() {
        let (board, _, apps) = board(&["q"]);
        let mut watcher = board.subscribe();
        let target = AppTarget {
            protocol: AppProtocol::Grpc,
            address: ([127, 0, 0, 1], 1).into(),
            max_concurrency: 1,
        };
        let app = apps.register("consumer-1".to_owned(), target);
        app.set_healthy(true);
        app.set_bindings(vec!["q".to_owned()]);
        apps.register("consumer-2".to_owned(), target);
        watcher.changed().await.expect("changes");
        board.set_scaling(Fixed { desired: 3 });
        watcher.changed().await.expect("the report is a change");

        let status = serde_json::to_value(board.status()).unwrap();
        assert_eq!(
            status["scaling"],
            serde_json::json!({"replicas": 3, "ready": 1})
        );
        assert_eq!(status["consumersConnected"], 1);
        let page = board.metrics(&ConnectionMetrics::default()).unwrap();
        for line in [
            r#"devstack_scaling_replicas{state="desired"} 3"#,
            r#"devstack_scaling_replicas{state="ready"} 1"#,
            r#"devstack_scaling_replicas{state="starting"} 1"#,
            r#"devstack_scaling_replicas{state="terminating"} 0"#,
            "devstack_scaling_metric 7",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
    }
}

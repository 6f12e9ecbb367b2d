//! The sidecar's queues, one per configured binding name, and what the status endpoints show.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use chrono::{DateTime, Utc};
use pipeline::http_server::ConnectionMetrics;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::Serialize;
use tokio::{sync::watch, time::Instant};

use crate::{
    queue::{Counts, DeadLetter, Queue, Settings},
    scaling::{ReplicaState, ScalingStatus, rfc3339},
};

/// Every queue, plus what the delivery side reports about each consumer app.
#[derive(Debug)]
pub struct Broker {
    queues: BTreeMap<String, Arc<Queue>>,
    apps: Mutex<Vec<Arc<AppStatus>>>,
    /// With `--autoscale`: what the scaling controller last published.
    scaling: Mutex<Option<ScalingStatus>>,
    changes: Changes,
}

/// Wakes whoever watches the status (the dashboard's event stream) after anything in it changed.
/// A watch, not a channel: a burst of changes is one wake-up, and nothing queues up when nobody
/// reads. While a wake-up is pending (its watcher has not looked yet), a change costs the queue's
/// hot path one atomic swap: the watcher will see that change too when it looks.
#[derive(Debug, Clone)]
pub struct Changes(Arc<ChangesShared>);

#[derive(Debug)]
struct ChangesShared {
    tx: watch::Sender<()>,
    pending: AtomicBool,
}

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(ChangesShared {
            tx: watch::Sender::new(()),
            pending: AtomicBool::new(false),
        }))
    }
}

impl Changes {
    /// Something in the status changed. Call it after the change, outside any lock.
    pub fn notify(&self) {
        // A load first: while a wake-up is pending (always, with no watcher) the flag's cache
        // line stays shared between the cores instead of moving with every queue operation.
        if !self.0.pending.load(Ordering::Acquire) && !self.0.pending.swap(true, Ordering::AcqRel) {
            self.0.tx.send_replace(());
        }
    }

    /// A watcher: its [`changed`](ChangesReceiver::changed) resolves after the next
    /// [`notify`](Self::notify).
    pub fn subscribe(&self) -> ChangesReceiver {
        let rx = self.0.tx.subscribe();
        // Changes before now are not this watcher's; the next one must wake it.
        self.0.pending.store(false, Ordering::Release);
        ChangesReceiver {
            rx,
            changes: self.clone(),
        }
    }
}

/// One watcher of [`Changes`].
#[derive(Debug)]
pub struct ChangesReceiver {
    rx: watch::Receiver<()>,
    changes: Changes,
}

impl ChangesReceiver {
    /// Waits for a change. Read the status after it returns: every change since the last
    /// wake-up is in it.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await?;
        // Before the status is read: a change from now on wakes the watcher again.
        self.changes.0.pending.store(false, Ordering::Release);
        Ok(())
    }
}

/// Live state of one consumer app, as the delivery side sees it.
#[derive(Debug)]
pub struct AppStatus {
    /// The part label of its process (`consumer-3`), or its address for an app devstack did not
    /// start.
    pub label: String,
    pub address: String,
    pub max_concurrency: usize,
    /// Bindings the app listed, once it answered ListInputBindings.
    pub bindings: Mutex<Option<Vec<String>>>,
    pub healthy: AtomicBool,
    pub in_flight: AtomicUsize,
    /// Deliveries the app answered OK.
    pub processed: AtomicU64,
    /// Deliveries that failed (an error answer, or none), each counted once when its message
    /// was abandoned, after the Resiliency's retries.
    pub failed: AtomicU64,
    /// Since when it has been ready (healthy, its bindings listed); `None` while not ready.
    /// Scaling in removes the most recently ready first, as the ReplicaSet controller does.
    pub ready_since: Mutex<Option<Instant>>,
    /// Set when it was picked to scale in: delivery stopped, SIGTERM sent.
    pub terminating: Mutex<Option<Terminating>>,
    changes: Changes,
}

impl AppStatus {
    /// Something about this app changed that the status shows.
    pub fn changed(&self) {
        self.changes.notify();
    }

    /// A delivery to the app began.
    pub fn delivery_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed();
    }

    /// A delivery ended: `ok` when the app answered OK. Counted before the message is settled,
    /// so a status that shows the message completed shows it processed too.
    pub fn delivery_ended(&self, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = if ok { &self.processed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed();
    }
}

/// When a scaled-in replica got SIGTERM, and when it is killed if still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminating {
    pub at: DateTime<Utc>,
    pub kill_at: DateTime<Utc>,
}

impl AppStatus {
    /// Records a health probe's answer; true when it changed.
    pub fn set_healthy(&self, now: bool) -> bool {
        let changed = self.healthy.swap(now, Ordering::Relaxed) != now;
        if changed {
            *self.ready_since.lock().expect("ready lock") = now.then(Instant::now);
        }
        changed
    }

    pub fn state(&self) -> ReplicaState {
        if self.terminating.lock().expect("terminating lock").is_some() {
            ReplicaState::Terminating
        } else if self.healthy.load(Ordering::Relaxed)
            && self.bindings.lock().expect("bindings lock").is_some()
        {
            ReplicaState::Ready
        } else {
            ReplicaState::Starting
        }
    }
}

/// JSON status: counts per queue, consumers, recent dead letters.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub queues: BTreeMap<String, Counts>,
    pub consumers_connected: usize,
    pub consumers: Vec<ConsumerStatus>,
    pub dead_letters: BTreeMap<String, Vec<DeadLetter>>,
    /// Only with `--autoscale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub label: String,
    pub state: ReplicaState,
    /// When SIGTERM was sent (RFC 3339).
    pub terminating_at: Option<String>,
    /// When it is killed if still running: terminatingAt + terminationGracePeriod.
    pub kill_at: Option<String>,
    pub address: String,
    pub bindings: Option<Vec<String>>,
    pub healthy: bool,
    pub in_flight: usize,
    pub max_concurrency: usize,
    pub processed: u64,
    pub failed: u64,
}

impl Broker {
    pub fn new(bindings: &[String], settings: Settings) -> Arc<Self> {
        let changes = Changes::default();
        let queues = bindings
            .iter()
            .map(|name| {
                let queue = Queue::watched(name.clone(), settings, changes.clone());
                (name.clone(), queue)
            })
            .collect();
        Arc::new(Self {
            queues,
            apps: Mutex::default(),
            changes,
            scaling: Mutex::default(),
        })
    }

    /// Wakes the status's watchers: anything that changes what [`status`](Self::status) shows
    /// calls it (the queues and the apps do on their own).
    pub fn notify(&self) {
        self.changes.notify();
    }

    /// Resolves `changed()` after each [`notify`](Self::notify), bursts coalesced.
    pub fn subscribe(&self) -> ChangesReceiver {
        self.changes.subscribe()
    }

    /// The bindings served, each its own queue.
    pub fn names(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    pub fn queue(&self, binding: &str) -> Option<&Arc<Queue>> {
        self.queues.get(binding)
    }

    pub fn register_app(
        &self,
        label: String,
        address: String,
        max_concurrency: usize,
    ) -> Arc<AppStatus> {
        let app = Arc::new(AppStatus {
            label,
            address,
            max_concurrency,
            bindings: Mutex::new(None),
            healthy: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            changes: self.changes.clone(),
            ready_since: Mutex::new(None),
            terminating: Mutex::new(None),
        });
        self.apps.lock().expect("apps lock").push(Arc::clone(&app));
        self.notify();
        app
    }

    /// Forgets an app whose process has exited: the status lists live consumers only.
    pub fn remove_app(&self, app: &Arc<AppStatus>) {
        self.apps
            .lock()
            .expect("apps lock")
            .retain(|a| !Arc::ptr_eq(a, app));
        self.notify();
    }

    /// Publishes the scaling controller's state, shown by the status and the metrics.
    pub fn set_scaling(&self, status: ScalingStatus) {
        *self.scaling.lock().expect("scaling lock") = Some(status);
        self.notify();
    }

    pub fn status(&self) -> Status {
        let consumers: Vec<_> = self
            .apps
            .lock()
            .expect("apps lock")
            .iter()
            .map(|app| {
                let terminating = *app.terminating.lock().expect("terminating lock");
                ConsumerStatus {
                    label: app.label.clone(),
                    state: app.state(),
                    terminating_at: terminating.map(|t| rfc3339(t.at)),
                    kill_at: terminating.map(|t| rfc3339(t.kill_at)),
                    address: app.address.clone(),
                    bindings: app.bindings.lock().expect("bindings lock").clone(),
                    healthy: app.healthy.load(Ordering::Relaxed),
                    in_flight: app.in_flight.load(Ordering::Relaxed),
                    max_concurrency: app.max_concurrency,
                    processed: app.processed.load(Ordering::Relaxed),
                    failed: app.failed.load(Ordering::Relaxed),
                }
            })
            .collect();
        let scaling = self
            .scaling
            .lock()
            .expect("scaling lock")
            .clone()
            .map(|scaling| scaling.counted(consumers.iter().map(|c| c.state)));
        Status {
            queues: self
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.counts()))
                .collect(),
            consumers_connected: consumers
                .iter()
                .filter(|c| c.healthy && c.bindings.as_ref().is_some_and(|b| !b.is_empty()))
                .count(),
            consumers,
            dead_letters: self
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.dead_letters()))
                .collect(),
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

impl Collector for Broker {
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
                ("active", c.active),
                ("locked", c.locked),
                ("completed", c.completed),
                ("dead_lettered", c.dead_lettered),
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
        let connected = encoder.encode_descriptor(
            "devstack_consumers_connected",
            "Consumer apps that listed their bindings and are healthy.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(status.consumers_connected).encode(connected)?;
        let Some(scaling) = &status.scaling else {
            return Ok(());
        };
        let mut replicas = encoder.encode_descriptor(
            "devstack_scaling_replicas",
            "The consumer Deployment's replicas: desired (spec.replicas), and the pods by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [
            ("desired", scaling.replicas),
            ("ready", scaling.ready),
            ("starting", scaling.starting),
            ("terminating", scaling.terminating),
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

    #[tokio::test(start_paused = true)]
    async fn changes_wake_a_watcher_once_per_burst_and_never_miss_one() {
        let quiet = std::time::Duration::from_secs(1);
        let changes = Changes::default();
        // A change nobody watched does not hold back the first watcher's wake-ups.
        changes.notify();
        let mut watcher = changes.subscribe();
        assert!(
            tokio::time::timeout(quiet, watcher.changed())
                .await
                .is_err()
        );
        changes.notify();
        changes.notify();
        watcher.changed().await.expect("woken");
        assert!(
            tokio::time::timeout(quiet, watcher.changed())
                .await
                .is_err(),
            "a burst is one wake-up"
        );
        // Once it has looked, the next change wakes it again.
        changes.notify();
        watcher.changed().await.expect("woken again");
    }

    #[test]
    fn metrics_are_openmetrics_with_escaped_labels() {
        let settings = Settings {
            max_delivery_count: 1,
        };
        let broker = Broker::new(&["q".to_owned(), "a\"b\\c".to_owned()], settings);
        broker
            .queue("q")
            .expect("queue q")
            .send(b"x".to_vec(), Default::default(), None);
        let page = broker
            .metrics(&ConnectionMetrics::default())
            .expect("encodes");
        for line in [
            "# TYPE devstack_queue_messages gauge",
            r#"devstack_queue_messages{queue="q",state="active"} 1"#,
            r#"devstack_queue_messages{queue="a\"b\\c",state="locked"} 0"#,
            "# TYPE devstack_queue_produced counter",
            r#"devstack_queue_produced_total{queue="q"} 1"#,
            "devstack_consumers_connected 0",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}

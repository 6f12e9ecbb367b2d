//! The consumer apps the sidecar delivers to, oldest first, and what each one is doing. The one
//! record of them: the status lists them, the metadata API reports the oldest, and scaling ranks
//! them. Every change goes through a method that sends the change notice itself, so no caller
//! can forget it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::{app::AppTarget, changes::Changes};

/// Every app the sidecar delivers to now.
#[derive(Debug)]
pub struct AppRegistry {
    /// Oldest first: daprd has one app, devstack's sidecar may have several competing consumers,
    /// and the metadata API reports the oldest still there as daprd would report its only one.
    apps: Mutex<Vec<Arc<AppStatus>>>,
    changes: Changes,
}

impl AppRegistry {
    /// An empty registry that tells `changes` of every change to it and to its apps.
    pub fn new(changes: Changes) -> Self {
        Self {
            apps: Mutex::default(),
            changes,
        }
    }

    /// Records an app the sidecar starts delivering to, labelled `label` in the status.
    pub fn register(&self, label: String, target: AppTarget) -> Arc<AppStatus> {
        let app = Arc::new(AppStatus {
            label,
            target,
            state: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            changes: self.changes.clone(),
        });
        self.apps.lock().push(Arc::clone(&app));
        self.changes.notify();
        app
    }

    /// Forgets an app whose process has exited: the status lists live consumers only.
    pub fn remove(&self, app: &Arc<AppStatus>) {
        self.apps.lock().retain(|a| !Arc::ptr_eq(a, app));
        self.changes.notify();
    }

    /// The oldest app still registered.
    pub fn oldest(&self) -> Option<AppTarget> {
        self.apps.lock().first().map(|app| app.target)
    }

    /// Each app's row of the status, oldest first.
    pub fn consumers(&self) -> Vec<ConsumerStatus> {
        self.apps.lock().iter().map(|app| app.status()).collect()
    }
}

/// Live state of one consumer app, as the delivery side sees it.
#[derive(Debug)]
pub struct AppStatus {
    /// The part label of its process (`consumer-3`), or its address for an app devstack did not
    /// start.
    label: String,
    target: AppTarget,
    state: Mutex<Lifecycle>,
    in_flight: AtomicUsize,
    /// Deliveries the app answered OK.
    processed: AtomicU64,
    /// Deliveries that failed (an error answer, or none), each counted once when its message
    /// was abandoned, after the Resiliency's retries.
    failed: AtomicU64,
    changes: Changes,
}

/// What changes together: read and written under one lock, so a reader never sees a half
/// update (healthy, but not yet `ready_since`).
#[derive(Debug, Default)]
struct Lifecycle {
    /// Bindings the app listed, once it answered ListInputBindings.
    bindings: Option<Vec<String>>,
    healthy: bool,
    /// Since when it has been ready (healthy, its bindings listed); `None` while not ready.
    /// Scaling in removes the most recently ready first, as the ReplicaSet controller does.
    ready_since: Option<Instant>,
    /// Set when it was picked to scale in: delivery stopped, SIGTERM sent.
    terminating: Option<Terminating>,
}

impl Lifecycle {
    fn state(&self) -> ReplicaState {
        if self.terminating.is_some() {
            ReplicaState::Terminating
        } else if self.healthy && self.bindings.is_some() {
            ReplicaState::Ready
        } else {
            ReplicaState::Starting
        }
    }
}

/// When a scaled-in replica got SIGTERM, and when it is killed if still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminating {
    pub at: DateTime<Utc>,
    pub kill_at: DateTime<Utc>,
}

/// A consumer's lifecycle, as a pod's: starting until it is ready, then ready (the sidecar
/// delivers to it), then terminating once picked to scale in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    Starting,
    Ready,
    Terminating,
}

/// One consumer's row in `GET /devstack/status`.
#[derive(Debug, Clone, Serialize)]
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

impl ConsumerStatus {
    /// Listed its bindings, at least one, and is healthy: it takes messages.
    pub fn connected(&self) -> bool {
        self.healthy && self.bindings.as_ref().is_some_and(|b| !b.is_empty())
    }
}

impl AppStatus {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn target(&self) -> AppTarget {
        self.target
    }

    /// Records the bindings the app listed.
    pub fn set_bindings(&self, bindings: Vec<String>) {
        self.state.lock().bindings = Some(bindings);
        self.changes.notify();
    }

    /// Records a health probe's answer; true when it changed.
    pub fn set_healthy(&self, now: bool) -> bool {
        let mut state = self.state.lock();
        let changed = state.healthy != now;
        if changed {
            state.healthy = now;
            state.ready_since = now.then(Instant::now);
        }
        drop(state);
        if changed {
            self.changes.notify();
        }
        changed
    }

    /// Marks the app picked to scale in.
    pub fn set_terminating(&self, terminating: Terminating) {
        self.state.lock().terminating = Some(terminating);
        self.changes.notify();
    }

    /// A delivery to the app began.
    pub fn delivery_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changes.notify();
    }

    /// A delivery ended: `ok` when the app answered OK. Counted before the message is settled,
    /// so a status that shows the message completed shows it processed too.
    pub fn delivery_ended(&self, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = if ok { &self.processed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changes.notify();
    }

    /// Deliveries to the app in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> ReplicaState {
        self.state.lock().state()
    }

    /// Since when the app has been healthy; `None` while it is not.
    pub fn ready_since(&self) -> Option<Instant> {
        self.state.lock().ready_since
    }

    /// Its row of the status.
    pub fn status(&self) -> ConsumerStatus {
        let state = self.state.lock();
        ConsumerStatus {
            label: self.label.clone(),
            state: state.state(),
            terminating_at: state.terminating.map(|t| rfc3339(t.at)),
            kill_at: state.terminating.map(|t| rfc3339(t.kill_at)),
            address: self.target.address.to_string(),
            bindings: state.bindings.clone(),
            healthy: state.healthy,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_concurrency: self.target.max_concurrency,
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The status's times: RFC 3339 in UTC to the millisecond, as the scaling status writes its own.
fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppProtocol;

    fn target(port: u16) -> AppTarget {
        AppTarget {
            protocol: AppProtocol::Grpc,
            address: ([127, 0, 0, 1], port).into(),
            max_concurrency: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_change_is_noticed_and_the_state_follows_the_lifecycle() {
        let changes = Changes::default();
        let mut watcher = changes.subscribe();
        let registry = AppRegistry::new(changes);
        let noticed = |watcher: &mut crate::changes::ChangesReceiver| {
            let mut changed = std::pin::pin!(watcher.changed());
            changed
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        };
        let app = registry.register("consumer-1".to_owned(), target(1));
        assert!(noticed(&mut watcher), "registered");
        assert_eq!(app.state(), ReplicaState::Starting);

        assert!(app.set_healthy(true));
        assert!(noticed(&mut watcher), "healthy");
        assert!(!app.set_healthy(true), "no change");
        assert!(!noticed(&mut watcher), "nothing to notice");
        assert_eq!(app.state(), ReplicaState::Starting, "no bindings yet");
        assert_eq!(app.ready_since(), Some(Instant::now()));

        app.set_bindings(vec!["q".to_owned()]);
        assert!(noticed(&mut watcher), "bindings");
        assert_eq!(app.state(), ReplicaState::Ready);
        assert!(app.status().connected());

        app.delivery_started();
        assert!(noticed(&mut watcher), "delivery started");
        assert_eq!(app.in_flight(), 1);
        app.delivery_ended(false);
        assert!(noticed(&mut watcher), "delivery ended");
        let row = app.status();
        assert_eq!((row.in_flight, row.processed, row.failed), (0, 0, 1));

        let at = DateTime::parse_from_rfc3339("2026-12-01T13:30:00.123456Z")
            .unwrap()
            .to_utc();
        app.set_terminating(Terminating {
            at,
            kill_at: at + chrono::Duration::seconds(30),
        });
        assert!(noticed(&mut watcher), "terminating");
        let row = app.status();
        assert_eq!(row.state, ReplicaState::Terminating);
        assert_eq!(
            (row.terminating_at.as_deref(), row.kill_at.as_deref()),
            (
                Some("2026-12-01T13:30:00.123Z"),
                Some("2026-12-01T13:30:30.123Z")
            )
        );

        let second = registry.register("consumer-2".to_owned(), target(2));
        assert_eq!(registry.oldest(), Some(target(1)));
        registry.remove(&app);
        assert!(noticed(&mut watcher), "removed");
        assert_eq!(registry.oldest(), Some(second.target()));
        let labels: Vec<_> = registry.consumers().into_iter().map(|c| c.label).collect();
        assert_eq!(labels, ["consumer-2"]);
    }
}

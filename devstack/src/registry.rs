//! The consumer apps the sidecar delivers to, oldest first, and what each one is doing. The one
//! record of them: the status lists them (in replica order), the metadata API reports the
//! oldest, and scaling ranks them. A consumer keeps its record across restarts, with its restart
//! count and how it last exited, as a pod keeps its status. Every change goes through a method
//! that sends the change notice itself, so no caller can forget it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::{app::AppTarget, changes::Changes, scaling::rfc3339};

/// Every app the sidecar delivers to now.
#[derive(Debug)]
pub struct AppRegistry {
    /// Oldest first: daprd has one app, devstack's sidecar may have several competing consumers,
    /// and the metadata API reports the oldest still there as daprd would report its only one.
    apps: Mutex<Vec<Arc<AppStatus>>>,
    /// Restarts of every consumer ever, those scaled in since included.
    restarts: Arc<AtomicU64>,
    changes: Changes,
}

impl AppRegistry {
    /// An empty registry that tells `changes` of every change to it and to its apps.
    pub fn new(changes: Changes) -> Self {
        Self {
            apps: Mutex::default(),
            restarts: Arc::default(),
            changes,
        }
    }

    /// Records an app the sidecar starts delivering to, labelled `label` in the status.
    pub fn register(&self, label: String, target: AppTarget) -> Arc<AppStatus> {
        let app = Arc::new(AppStatus {
            label,
            state: Mutex::new(Lifecycle {
                target,
                bindings: None,
                healthy: false,
                ready_since: None,
                terminating: None,
                down: None,
                restarts: 0,
                last_exit: None,
            }),
            in_flight: AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            restarts_ever: Arc::clone(&self.restarts),
            changes: self.changes.clone(),
        });
        self.apps.lock().push(Arc::clone(&app));
        self.changes.notify();
        app
    }

    /// Forgets an app whose process has exited for good: the status lists live consumers only.
    pub fn remove(&self, app: &Arc<AppStatus>) {
        self.apps.lock().retain(|a| !Arc::ptr_eq(a, app));
        self.changes.notify();
    }

    /// The oldest app still registered.
    pub fn oldest(&self) -> Option<AppTarget> {
        self.apps.lock().first().map(|app| app.target())
    }

    /// Each app's row of the status, in replica order (`consumer-2` before `consumer-10`).
    pub fn consumers(&self) -> Vec<ConsumerStatus> {
        let mut rows: Vec<ConsumerStatus> =
            self.apps.lock().iter().map(|app| app.status()).collect();
        rows.sort_by(|a, b| replica_order(&a.label).cmp(&replica_order(&b.label)));
        rows
    }

    /// Restarts of every consumer ever, those scaled in since included.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// A label's place in replica order: its text, then the number it ends with, as a number.
fn replica_order(label: &str) -> (&str, u64, &str) {
    let digits = label.len() - label.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, number) = label.split_at(label.len() - digits);
    (prefix, number.parse().unwrap_or(0), label)
}

/// Live state of one consumer app, as the delivery side sees it.
#[derive(Debug)]
pub struct AppStatus {
    /// The part label of its process (`consumer-3`), or its address for an app devstack did not
    /// start.
    label: String,
    state: Mutex<Lifecycle>,
    in_flight: AtomicUsize,
    /// Deliveries the app answered OK.
    processed: AtomicU64,
    /// Deliveries that failed (an error answer, or none), each counted once when its message
    /// was abandoned, after the Resiliency's retries.
    failed: AtomicU64,
    /// The registry's count of every restart.
    restarts_ever: Arc<AtomicU64>,
    changes: Changes,
}

/// What changes together: read and written under one lock, so a reader never sees a half
/// update (healthy, but not yet `ready_since`).
#[derive(Debug)]
struct Lifecycle {
    /// Where the app listens: a restarted process may listen elsewhere.
    target: AppTarget,
    /// Bindings the app listed, once it answered ListInputBindings.
    bindings: Option<Vec<String>>,
    healthy: bool,
    /// Since when it has been ready (healthy, its bindings listed); `None` while not ready.
    /// Scaling in removes the most recently ready first, as the ReplicaSet controller does.
    ready_since: Option<Instant>,
    /// Set when it was picked to scale in: delivery stopped, SIGTERM sent.
    terminating: Option<Terminating>,
    /// Set when its process exited on its own, until it is ready again.
    down: Option<Down>,
    /// Times its process was restarted, as a container's restartCount.
    restarts: u32,
    last_exit: Option<Exit>,
}

impl Lifecycle {
    fn state(&self) -> ReplicaState {
        match (&self.terminating, &self.down) {
            (Some(_), _) => ReplicaState::Terminating,
            (None, Some(Down::Restarting)) => ReplicaState::Restarting,
            (None, Some(Down::CrashLoop { .. })) => ReplicaState::Crashloop,
            (None, None) if self.healthy && self.bindings.is_some() => ReplicaState::Ready,
            (None, None) => ReplicaState::Starting,
        }
    }

    /// Ready again after a restart: no longer down.
    fn after_change(&mut self) {
        if self.healthy && self.bindings.is_some() {
            self.down = None;
        }
    }
}

/// When a scaled-in replica got SIGTERM, and when it is killed if still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminating {
    pub at: DateTime<Utc>,
    pub kill_at: DateTime<Utc>,
}

/// Why a consumer whose process exited on its own is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Being restarted now.
    Restarting,
    /// Waiting out the kubelet's back-off before the restart: CrashLoopBackOff.
    CrashLoop { until: DateTime<Utc> },
}

/// How a consumer's process last exited, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub status: String,
    pub at: DateTime<Utc>,
}

/// A consumer's lifecycle, as a pod's: starting until it is ready, then ready (the sidecar
/// delivers to it), then terminating once picked to scale in; restarting, or crashloop while it
/// waits out the back-off, after its process exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    Starting,
    Ready,
    Terminating,
    Restarting,
    Crashloop,
}

impl ReplicaState {
    pub const ALL: [Self; 5] = [
        Self::Starting,
        Self::Ready,
        Self::Terminating,
        Self::Restarting,
        Self::Crashloop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Terminating => "terminating",
            Self::Restarting => "restarting",
            Self::Crashloop => "crashloop",
        }
    }
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
    pub restarts: u32,
    /// How its process last exited on its own (`signal: 9 (SIGKILL)`, `exit status: 1`).
    pub last_exit: Option<String>,
    pub last_exit_at: Option<String>,
    /// In crashloop: when the back-off ends and it is restarted.
    pub restart_at: Option<String>,
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
        self.state.lock().target
    }

    /// Applies `change` to the lifecycle, then sends the change notice.
    fn change(&self, change: impl FnOnce(&mut Lifecycle)) {
        let mut state = self.state.lock();
        change(&mut state);
        state.after_change();
        drop(state);
        self.changes.notify();
    }

    /// Records the bindings the app listed.
    pub fn set_bindings(&self, bindings: Vec<String>) {
        self.change(|state| state.bindings = Some(bindings));
    }

    /// Records a health probe's answer; true when it changed.
    pub fn set_healthy(&self, now: bool) -> bool {
        let mut state = self.state.lock();
        let changed = state.healthy != now;
        if changed {
            state.healthy = now;
            state.ready_since = now.then(Instant::now);
            state.after_change();
        }
        drop(state);
        if changed {
            self.changes.notify();
        }
        changed
    }

    /// Marks the app picked to scale in.
    pub fn set_terminating(&self, terminating: Terminating) {
        self.change(|state| state.terminating = Some(terminating));
    }

    /// Records that its process exited on its own (`status`), and is `down` until it is ready
    /// again: not healthy, its bindings to be listed again by the next process.
    pub fn set_exited(&self, status: String, down: Down) {
        self.change(|state| {
            state.last_exit = Some(Exit {
                status,
                at: Utc::now(),
            });
            state.down = Some(down);
            state.healthy = false;
            state.bindings = None;
            state.ready_since = None;
        });
    }

    /// Records that its process was started again.
    pub fn set_restarted(&self) {
        self.restarts_ever.fetch_add(1, Ordering::Relaxed);
        self.change(|state| {
            state.restarts += 1;
            state.down = Some(Down::Restarting);
        });
    }

    /// Records where the app listens now (a restarted process may listen elsewhere).
    pub fn set_target(&self, target: AppTarget) {
        self.change(|state| state.target = target);
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

    /// Times its process was restarted.
    pub fn restarts(&self) -> u32 {
        self.state.lock().restarts
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
            address: state.target.address.to_string(),
            bindings: state.bindings.clone(),
            healthy: state.healthy,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_concurrency: state.target.max_concurrency,
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            restarts: state.restarts,
            last_exit: state.last_exit.as_ref().map(|e| e.status.clone()),
            last_exit_at: state.last_exit.as_ref().map(|e| rfc3339(e.at)),
            restart_at: match state.down {
                Some(Down::CrashLoop { until }) => Some(rfc3339(until)),
                _ => None,
            },
        }
    }
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

    fn noticed(watcher: &mut crate::changes::ChangesReceiver) -> bool {
        let mut changed = std::pin::pin!(watcher.changed());
        changed
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn every_change_is_noticed_and_the_state_follows_the_lifecycle() {
        let changes = Changes::default();
        let mut watcher = changes.subscribe();
        let registry = AppRegistry::new(changes);
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

    /// A consumer whose process exits keeps its row: restarting or crashloop, its last exit,
    /// then its restart count, and ready again at its new address once healthy.
    #[tokio::test(start_paused = true)]
    async fn a_restarted_consumer_keeps_its_row_with_its_restarts_and_last_exit() {
        let changes = Changes::default();
        let mut watcher = changes.subscribe();
        let registry = AppRegistry::new(changes);
        let app = registry.register("consumer-1".to_owned(), target(1));
        app.set_bindings(vec!["q".to_owned()]);
        app.set_healthy(true);
        assert!(noticed(&mut watcher));

        let until = DateTime::parse_from_rfc3339("2026-12-06T10:00:10Z")
            .unwrap()
            .to_utc();
        app.set_exited("signal: 9 (SIGKILL)".into(), Down::CrashLoop { until });
        assert!(noticed(&mut watcher), "exited");
        let row = app.status();
        assert_eq!(row.state, ReplicaState::Crashloop);
        assert_eq!(
            (row.last_exit.as_deref(), row.restart_at.as_deref()),
            (
                Some("signal: 9 (SIGKILL)"),
                Some("2026-12-06T10:00:10.000Z")
            )
        );
        assert!(!row.healthy && row.bindings.is_none());

        app.set_restarted();
        app.set_target(target(7));
        assert_eq!(app.state(), ReplicaState::Restarting);
        assert_eq!((app.restarts(), registry.restarts()), (1, 1));
        app.set_healthy(true);
        assert_eq!(
            app.state(),
            ReplicaState::Restarting,
            "bindings not listed yet"
        );
        app.set_bindings(vec!["q".to_owned()]);
        let row = app.status();
        assert_eq!(
            (row.state, row.address.as_str(), row.restarts),
            (ReplicaState::Ready, "127.0.0.1:7", 1)
        );
        assert_eq!(row.last_exit.as_deref(), Some("signal: 9 (SIGKILL)"));
        registry.remove(&app);
        assert_eq!(registry.restarts(), 1, "kept once the consumer is gone");
    }

    #[test]
    fn consumers_are_listed_in_replica_order() {
        let registry = AppRegistry::new(Changes::default());
        for label in [
            "consumer-1",
            "consumer-2",
            "consumer-10",
            "consumer-7",
            "consumer-3",
        ] {
            registry.register(label.to_owned(), target(1));
        }
        let labels: Vec<_> = registry.consumers().into_iter().map(|c| c.label).collect();
        assert_eq!(
            labels,
            [
                "consumer-1",
                "consumer-2",
                "consumer-3",
                "consumer-7",
                "consumer-10"
            ]
        );
    }
}

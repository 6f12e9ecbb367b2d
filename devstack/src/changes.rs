//! The change notice that the queues, the app registry and the status board send after anything
//! the status shows has changed, and that its watchers (the dashboard's event stream) wait on.
//!
//! A watch, not a channel: a burst of changes is one wake-up, and nothing queues up when nobody
//! reads. While a wake-up is pending (its watcher has not looked yet), a change costs the queue's
//! hot path one atomic load: the watcher will see that change too when it looks.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::watch;

/// The sending side; clones share one notice.
#[derive(Debug, Clone)]
pub struct Changes(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    tx: watch::Sender<()>,
    pending: AtomicBool,
}

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(Shared {
            tx: watch::Sender::new(()),
            pending: AtomicBool::new(false),
        }))
    }
}

impl Changes {
    /// Something the status shows changed. Call it after the change, outside any lock.
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
}

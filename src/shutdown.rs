//! One [`CancellationToken`] per process, cancelled on SIGTERM (Kubernetes' stop signal) or Ctrl-C.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Sends SIGTERM to process `pid`, as the kubelet does to stop a container. An error means there
/// is no such process (it already exited) or it is not ours to signal.
#[cfg(unix)]
pub fn terminate(pid: u32) -> std::io::Result<()> {
    use nix::{sys::signal, unistd::Pid};
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM).map_err(std::io::Error::from)
}

/// Returns a token that is cancelled when the process is asked to stop. Must be called inside
/// a Tokio runtime; a second signal does not kill the process, the drain limits do.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
            ctrl_c().await
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    ctrl_c().await
}

async fn ctrl_c() -> &'static str {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
    "SIGINT"
}

/// The end of a drain: `limit` after the stop signal. What follows the drain at exit (the span
/// flush) gets what the drain left of it, so the whole exit stays within the drain time.
#[derive(Debug, Clone)]
pub struct DrainDeadline {
    limit: Duration,
    stopped_at: Arc<OnceLock<Instant>>,
}

impl DrainDeadline {
    /// Starts watching `token`; call right after [`on_signal`], inside the runtime.
    pub fn watch(token: &CancellationToken, limit: Duration) -> Self {
        let stopped_at = Arc::new(OnceLock::new());
        let set = Arc::clone(&stopped_at);
        let token = token.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            let _ = set.set(Instant::now());
        });
        Self { limit, stopped_at }
    }

    /// What is left of the drain time now, at most `cap`; `cap` when no stop was asked for (the
    /// process ends on an error, and nothing is draining).
    pub fn remaining(&self, cap: Duration) -> Duration {
        match self.stopped_at.get() {
            Some(at) => (*at + self.limit)
                .saturating_duration_since(Instant::now())
                .min(cap),
            None => cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_flush_gets_what_the_drain_left() {
        let token = CancellationToken::new();
        let deadline = DrainDeadline::watch(&token, Duration::from_secs(5));
        let cap = Duration::from_secs(2);
        assert_eq!(deadline.remaining(cap), cap, "no stop asked for");
        token.cancel();
        tokio::task::yield_now().await;
        assert_eq!(deadline.remaining(cap), cap, "the drain has just begun");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(deadline.remaining(cap), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            deadline.remaining(cap),
            Duration::ZERO,
            "the drain used it all"
        );
    }
}

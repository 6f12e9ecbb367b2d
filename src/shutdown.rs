//! One [`CancellationToken`] per process, cancelled on SIGTERM (Kubernetes' stop signal) or Ctrl-C.

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

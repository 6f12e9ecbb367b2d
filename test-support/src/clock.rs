//! A paused Tokio clock that moves only when the test moves it (`tokio::time::advance`), for
//! in-process tests whose servers and clients talk over real loopback sockets.
//!
//! A paused clock auto-advances to the next timer whenever the runtime has nothing to run, and a
//! runtime waiting for a socket has nothing to run: with bytes still on their way through the
//! kernel, the clock would jump past a 5 s job or a deadline at a moment the test did not
//! choose. Tokio does not auto-advance while a blocking task runs, so [`Held`] keeps one running.

use std::{future::Future, pin::pin, sync::mpsc, time::Duration};

use tokio::time::Instant;

use super::WAIT;

/// Keeps a paused clock still until dropped. After [`WAIT`] of real time the hold lapses by
/// itself, so a test stuck on an answer that never comes sees its Tokio timeouts fire (each at
/// most [`WAIT`] of clock time away) and fails rather than hangs.
#[must_use = "the clock is held only while this lives"]
pub struct Held {
    /// Dropping it ends the blocking task.
    _release: mpsc::Sender<()>,
}

impl Held {
    /// Holds the clock of the current runtime, which must be a current-thread runtime with time
    /// paused (`#[tokio::test(start_paused = true)]`).
    pub fn hold() -> Self {
        let (release, released) = mpsc::channel::<()>();
        // The runtime stops auto-advancing as this task is spawned, not when it starts running.
        tokio::task::spawn_blocking(move || {
            let _ = released.recv_timeout(WAIT);
        });
        Self { _release: release }
    }

    /// Runs `future` to its end, moving the clock `step` at a time whenever everything waits:
    /// before each step the woken tasks run and the loopback sockets deliver what they carry.
    /// Panics past `limit` of clock time, or past [`WAIT`] of real time.
    pub async fn run<F: Future>(&self, step: Duration, limit: Duration, future: F) -> F::Output {
        let mut future = pin!(future);
        let (started, real) = (Instant::now(), std::time::Instant::now());
        loop {
            tokio::select! {
                biased;
                output = &mut future => return output,
                () = settle() => {}
            }
            let elapsed = started.elapsed();
            assert!(
                elapsed < limit && real.elapsed() < WAIT,
                "not done after {elapsed:?} of clock time"
            );
            tokio::time::advance(step).await;
        }
    }
}

/// Yields for a millisecond of real time: the tasks woken so far run, and the runtime, polling
/// its sockets at each yield, takes in what loopback delivered meanwhile (microseconds, or a
/// scheduling delay of this very process: nothing here waits on another process).
async fn settle() {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1) {
        tokio::task::yield_now().await;
    }
}

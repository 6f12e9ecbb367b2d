//! A paused Tokio clock that moves only when the test moves it (`tokio::time::advance`), for
//! in-process tests whose servers and clients talk over real loopback sockets.
//!
//! A paused clock auto-advances to the next timer whenever the runtime has nothing to run, and a
//! runtime waiting for a socket has nothing to run: with bytes still on their way through the
//! kernel, the clock would jump past a 5 s job or a deadline at a moment the test did not
//! choose. Tokio does not auto-advance while a blocking task runs, so [`Held`] keeps one running.

use std::sync::mpsc;

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
}

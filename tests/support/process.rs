//! Runs a real binary (`CARGO_BIN_EXE_*`) with JSON logs on loopback, and waits, bounded, for its
//! log events: the `listening` event carries the bound address, the readiness signal.

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{Mutex, watch},
};

use super::WAIT;

/// Environment variables a developer's shell might have set that would make a test non-hermetic.
pub const CLEARED: &[&str] = &[
    "PORT",
    "APP_PORT",
    "BIND_ADDRESS",
    "METRICS_PORT",
    "BINDING_NAME",
    "DAPR_GRPC_ENDPOINT",
    "DAPR_GRPC_PORT",
    "DAPR_HTTP_PORT",
    "DAPR_API_TOKEN",
    "APP_API_TOKEN",
    "RUST_LOG",
    "LOG_FORMAT",
    "MAX_COUNT",
    "SEND_CONCURRENCY",
    "MAX_BATCHES",
    "SIDECAR_TIMEOUT",
    "SIDECAR_RETRIES",
    "RETRY_BACKOFF",
    "MAX_RETRY_BACKOFF",
    "DRAIN_TIMEOUT",
    "WORK_DURATION",
    "MAX_CONCURRENCY",
    // devstack's own settings; CARGO (set under `cargo test`) would make it run `cargo build`.
    "CARGO",
    "CONSUMERS",
    "DEVSTACK_APPS",
    "MAX_DELIVERY_COUNT",
    "LOCK_DURATION",
    "REDELIVERY_BACKOFF",
    "MAX_REDELIVERY_BACKOFF",
    "APP_HEALTH_INTERVAL",
    "STATUS_INTERVAL",
];

/// A running binary. Killed on drop, so a failing test leaves nothing behind.
pub struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
}

impl Service {
    /// Starts `bin` on 127.0.0.1 with JSON logs and the given extra environment.
    pub fn spawn(bin: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_with_args(bin, &[], env)
    }

    /// Like [`spawn`](Self::spawn), with command-line arguments.
    pub fn spawn_with_args(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin);
        command.args(args);
        for name in CLEARED {
            command.env_remove(name);
        }
        command
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("BIND_ADDRESS", "127.0.0.1")
            // The consumer's metrics port defaults to 9090: fixed ports collide between tests.
            .env("METRICS_PORT", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0);
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // Echo for `cargo test -- --nocapture` when a test fails.
                println!("{line}");
                let mut all = sink.lock().await;
                all.push(line);
                tx.send_replace(all.len());
            }
        });
        Self { child, lines, seen }
    }

    /// Waits, at most [`WAIT`], for a JSON log event matching `pred`; panics with the log if none.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(WAIT, async {
            let mut checked = 0;
            loop {
                {
                    let lines = self.lines.lock().await;
                    for line in &lines[checked..] {
                        if let Ok(event) = serde_json::from_str::<Value>(line)
                            && pred(&event)
                        {
                            return Some(event);
                        }
                    }
                    checked = lines.len();
                }
                if self.seen.changed().await.is_err() {
                    return None; // stdout closed: the process has exited
                }
            }
        })
        .await;
        match found {
            Ok(Some(event)) => event,
            _ => panic!(
                "no log event {what:?}; log so far:\n{}",
                self.lines.lock().await.join("\n")
            ),
        }
    }

    /// Waits for an event whose message is `message`.
    pub async fn wait_for_message(&mut self, message: &str) -> Value {
        self.wait_for(message, |e| e["message"] == message).await
    }

    /// The address from the `listening` event.
    pub async fn addr(&mut self) -> SocketAddr {
        let event = self.wait_for_message("listening").await;
        event["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listening event has addr")
    }

    /// Every JSON log event so far.
    pub async fn events(&self) -> Vec<Value> {
        let lines = self.lines.lock().await;
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits, at most [`WAIT`], until `pred` finds what it looks for in the raw output lines so
    /// far (JSON or not, e.g. `devstack up`'s labelled lines); panics with the output if never.
    pub async fn wait_for_lines<T>(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(found) = pred(&self.lines.lock().await) {
                    return Some(found);
                }
                if self.seen.changed().await.is_err() {
                    return pred(&self.lines.lock().await); // stdout closed: nothing more comes
                }
            }
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            _ => panic!(
                "no {what:?} in the output; output so far:\n{}",
                self.lines.lock().await.join("\n")
            ),
        }
    }

    /// Waits for one raw output line matching `pred`; returns it.
    pub async fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_lines(what, |lines| lines.iter().find(|l| pred(l)).cloned())
            .await
    }

    /// Waits until `n` JSON log events match `pred`; returns them.
    pub async fn wait_for_events(
        &mut self,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_for_lines(what, |lines| {
            let matching: Vec<Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|e| pred(e))
                .collect();
            (matching.len() >= n).then_some(matching)
        })
        .await
    }

    /// Every output line so far, JSON or not.
    pub async fn lines(&self) -> Vec<String> {
        self.lines.lock().await.clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Sends SIGKILL: the process vanishes mid-work, with no chance to clean up.
    pub fn kill(&mut self) {
        self.child.start_kill().expect("kill(SIGKILL)");
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process still running");
        bindings::shutdown::terminate(pid).expect("kill(SIGTERM)");
    }

    /// Every JSON log event the process wrote, once its stdout has closed (it has exited);
    /// waits at most [`WAIT`] for that.
    pub async fn events_to_end(&mut self) -> Vec<Value> {
        let closed =
            tokio::time::timeout(WAIT, async { while self.seen.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "stdout still open after {WAIT:?}");
        self.events().await
    }

    /// Waits, at most `limit`, for the process to exit; returns its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("process did not exit in time")
            .expect("waiting for the process");
        status.code()
    }
}

/// Runs `bin` to completion with `args`, bounded in time; returns (exit code, stdout + stderr).
pub async fn run_to_end(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(bin);
    for name in CLEARED {
        command.env_remove(name);
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("bounded")
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

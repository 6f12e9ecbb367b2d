//! devstack's child processes: `devstack up`'s producer and consumers, and the replicas
//! `--autoscale` scales. Each is started from a [`Launch`], its output relayed to devstack's own,
//! each line labelled with the part it comes from; its address is learnt from its `listening` log
//! event; and it is stopped as the kubelet stops a pod: SIGTERM, then SIGKILL once the grace period
//! is over.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinSet,
    time::Instant,
};
use tracing::{error, info, warn};

/// Longest a child started on port 0 may take to log the address it bound.
pub const LISTEN_LIMIT: Duration = Duration::from_secs(30);
/// Longest a part may take to stop after SIGTERM when the whole stack stops: above the
/// consumer's default 25 s drain limit.
pub const STOP_LIMIT: Duration = Duration::from_secs(40);

/// Width of the part labels, so every part's lines line up.
const LABEL_WIDTH: usize = 10;
/// How devstack's own log lines are labelled, as a part's are.
pub const OWN_LABEL: &str = "sidecar    | ";

/// How to start one part: the binary and its arguments, what its environment changes from
/// devstack's (which it inherits, so the parts' own settings pass through), and the label of its
/// output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub label: String,
    /// Variables set, in this order.
    pub env: Vec<(String, String)>,
    /// Variables removed.
    pub unset: Vec<String>,
}

impl Launch {
    pub fn new(binary: PathBuf, label: impl Into<String>) -> Self {
        Self {
            binary,
            args: Vec::new(),
            label: label.into(),
            env: Vec::new(),
            unset: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.unset.push(key.to_owned());
        self
    }

    /// A part on port 0 logs its `listening` event (INFO, from `target`) whatever devstack's log
    /// filter `filter` says otherwise: devstack learns the part's address from it.
    pub fn log_listening(self, filter: &str, target: &str) -> Self {
        self.env("RUST_LOG", format!("{filter},{target}=info"))
    }

    /// The same launch, labelled `label`.
    pub fn labelled(&self, label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            ..self.clone()
        }
    }

    /// Starts the part on loopback, its output relayed by tasks in `output`.
    pub fn spawn(&self, output: &mut JoinSet<()>) -> anyhow::Result<(Process, Listening)> {
        let mut command = Command::new(&self.binary);
        command.args(&self.args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for key in &self.unset {
            command.env_remove(key);
        }
        command
            .env("BIND_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let label = self.label.clone();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let prefix = format!("{label:<LABEL_WIDTH$} | ");
        let (tx, rx) = oneshot::channel();
        // Log events go to stdout; stderr has only what escapes them (a panic message).
        if let Some(stdout) = child.stdout.take() {
            output.spawn(relay(prefix.clone(), stdout, Some(tx)));
        }
        if let Some(stderr) = child.stderr.take() {
            output.spawn(relay(prefix, stderr, None));
        }
        info!(part = %label, pid = child.id(), "started");
        let listening = Listening {
            label: label.clone(),
            rx,
        };
        Ok((Process { label, child }, listening))
    }
}

/// A running part.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
}

impl Process {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `signal` to it; returns its pid. An error once it has been reaped.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<u32> {
        // Not reaped yet (only `wait` reaps it): the pid is still its own.
        let pid = self
            .child
            .id()
            .ok_or_else(|| io::Error::other("the process has exited"))?;
        let raw = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)?;
        Ok(pid)
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`, as the kubelet stops a pod;
    /// returns how it exited.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        // Not reaped yet (only `wait` reaps it, and it has not returned): the pid is still its own.
        if let Some(pid) = self.child.id() {
            let _ = pipeline::shutdown::terminate(pid);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!(part = %self.label, ?grace, "still running after the grace period; killing it");
                self.child.kill().await?;
                self.child.wait().await
            }
        }
    }
}

/// Logs how a part that was asked to stop ended.
pub fn stopped(label: &str, status: io::Result<ExitStatus>) {
    match status {
        Ok(status) => info!(part = %label, %status, "stopped"),
        Err(e) => warn!(part = %label, error = %e, "cannot wait for the part"),
    }
}

/// Logs how a part that stopped on its own ended: the stack stops, as when any part does.
pub fn died(label: &str, status: io::Result<ExitStatus>) -> Unexpected {
    match status {
        Ok(status) => {
            error!(part = %label, %status, "a part stopped on its own; stopping the stack");
        }
        Err(e) => {
            error!(part = %label, error = %e, "cannot wait for the part; stopping the stack");
        }
    }
    Unexpected {
        label: label.to_owned(),
    }
}

/// A part that exited without being asked to: the stack stops.
#[derive(Debug, thiserror::Error)]
#[error("{label} stopped unexpectedly")]
pub struct Unexpected {
    pub label: String,
}

/// The address a part logs in its `listening` event, once it has bound its port.
#[derive(Debug)]
pub struct Listening {
    label: String,
    rx: oneshot::Receiver<SocketAddr>,
}

/// Why a part's address is not known.
#[derive(Debug, thiserror::Error)]
pub enum NotListening {
    #[error("{0} stopped before logging its `listening` event")]
    Exited(String),
    #[error(
        "{0} did not log its `listening` event within {LISTEN_LIMIT:?}; on port 0, devstack \
         learns the address from it"
    )]
    Silent(String),
}

impl Listening {
    /// Waits, until `deadline`, for the address.
    pub async fn address(self, deadline: Instant) -> Result<SocketAddr, NotListening> {
        let label = self.label;
        match tokio::time::timeout_at(deadline, self.rx).await {
            Ok(Ok(address)) => Ok(address),
            Ok(Err(_)) => Err(NotListening::Exited(label)),
            Err(_) => Err(NotListening::Silent(label)),
        }
    }
}

/// Copies a child's lines to our stdout, each labelled with the part it comes from, and sends the
/// address of its first `listening` event to `listening`.
async fn relay(
    prefix: String,
    stream: impl AsyncRead + Unpin,
    mut listening: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{prefix}{line}");
        if listening.is_some()
            && let Some(address) = listening_event(&line)
            && let Some(tx) = listening.take()
        {
            let _ = tx.send(address);
        }
    }
}

/// The `addr` of a `listening` event (not `metrics listening`), in either log format:
/// `{"message":"listening","addr":"127.0.0.1:50051",...}` or
/// `2026-01-01T00:00:00.000000Z  INFO consumer::server: listening addr=127.0.0.1:50051`.
fn listening_event(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let event: Value = serde_json::from_str(line).ok()?;
        return match event["message"].as_str() {
            Some("listening") => event["addr"].as_str()?.parse().ok(),
            _ => None,
        };
    }
    let mut words = line.split_whitespace();
    let mut before = "";
    for word in words.by_ref() {
        // The message follows the target (`consumer::server:`) or, without one, the level.
        if word == "listening" && (before.ends_with(':') || before == "INFO") {
            break;
        }
        before = word;
    }
    words.find_map(|field| field.strip_prefix("addr=")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn finds_the_listening_address_in_text_and_json_lines() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        for line in [
            "2026-11-23T19:20:22.000000Z  INFO consumer::server: listening addr=127.0.0.1:50051",
            "2026-11-23T19:20:22.000000Z  INFO producer::server: listening addr=127.0.0.1:50051 binding=\"message-queue\"",
            "2026-11-23T19:20:22.000000Z  INFO listening addr=127.0.0.1:50051",
            r#"{"timestamp":"2026-11-23T19:20:22.000000Z","level":"INFO","message":"listening","addr":"127.0.0.1:50051","target":"consumer::server"}"#,
        ] {
            assert_eq!(listening_event(line), Some(addr), "{line}");
        }
        for line in [
            "2026-11-23T19:20:22.000000Z  INFO consumer::metrics: metrics listening addr=127.0.0.1:9090",
            r#"{"level":"INFO","message":"metrics listening","addr":"127.0.0.1:9090"}"#,
            "2026-11-23T19:20:22.000000Z  INFO consumer::server: listening",
            r#"{"message":"listening","addr":"not an address"}"#,
            "Hello World -- Received at: 11/23/2026 19:20:22 -- Finished at: 11/23/2026 19:20:27",
            "{not json",
        ] {
            assert_eq!(listening_event(line), None, "{line}");
        }
    }

    #[test]
    fn devstack_labels_its_own_lines_as_wide_as_the_parts() {
        assert_eq!(OWN_LABEL, format!("{:<LABEL_WIDTH$} | ", "sidecar"));
    }

    #[test]
    fn a_launch_sets_what_it_is_told_and_keeps_it_when_relabelled() {
        let launch = Launch::new(PathBuf::from("/bin/consumer"), "consumer")
            .arg("--flag")
            .env("APP_PORT", 0)
            .unset("DAPR_GRPC_ENDPOINT")
            .log_listening("warn,devstack=info", "consumer::server");
        assert_eq!(
            launch.env,
            [
                ("APP_PORT".to_owned(), "0".to_owned()),
                (
                    "RUST_LOG".to_owned(),
                    "warn,devstack=info,consumer::server=info".to_owned()
                ),
            ]
        );
        let replica = launch.labelled("consumer-3");
        assert_eq!(replica.label, "consumer-3");
        assert_eq!(
            replica,
            Launch {
                label: "consumer-3".into(),
                ..launch
            }
        );
    }

    /// A shell stands in for a part: what is tested is the process handling, not the part. It
    /// says it listens on 127.0.0.1:4242 once `setup` is done, then runs `then`.
    fn shell(label: &str, setup: &str, then: &str) -> Launch {
        let listening = r#"echo '{"message":"listening","addr":"127.0.0.1:4242"}'"#;
        Launch::new(PathBuf::from("/bin/sh"), label)
            .arg("-c")
            .arg(format!("{setup} {listening}; {then}"))
    }

    fn listening_at() -> Instant {
        Instant::now() + LISTEN_LIMIT
    }

    #[tokio::test]
    async fn the_address_comes_from_the_listening_line_and_a_stop_is_a_sigterm() {
        let mut output = JoinSet::new();
        // `exec`: the SIGTERM reaches the sleep, which it ends.
        let launch = shell("part", "", "exec sleep 30");
        let (mut process, listening) = launch.spawn(&mut output).unwrap();
        assert_eq!(
            listening.address(listening_at()).await.unwrap(),
            "127.0.0.1:4242".parse().unwrap()
        );
        let status = process.stop(Duration::from_secs(20)).await.unwrap();
        assert_eq!(status.signal(), Some(15), "{status}");
        stopped(process.label(), Ok(status));
        while output.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_part_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let mut output = JoinSet::new();
        // The sleep inherits the ignored SIGTERM; the listening line says the trap is set.
        let launch = shell("stubborn", "trap '' TERM;", "exec sleep 30");
        let (mut process, listening) = launch.spawn(&mut output).unwrap();
        listening.address(listening_at()).await.unwrap();
        let grace = Duration::from_millis(100);
        let asked = Instant::now();
        let status = process.stop(grace).await.unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(asked.elapsed() >= grace);
        while output.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_part_that_exits_before_listening_says_so_and_stops_the_stack() {
        let mut output = JoinSet::new();
        let launch = Launch::new(PathBuf::from("/bin/sh"), "brief")
            .arg("-c")
            .arg("exit 3");
        let (mut process, listening) = launch.spawn(&mut output).unwrap();
        let error = listening.address(listening_at()).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "brief stopped before logging its `listening` event"
        );
        let status = process.wait().await;
        assert_eq!(status.as_ref().unwrap().code(), Some(3));
        let unexpected = died(process.label(), status);
        assert_eq!(unexpected.to_string(), "brief stopped unexpectedly");
        while output.join_next().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn no_listening_event_within_the_limit_is_an_error_naming_the_part() {
        let (_tx, rx) = oneshot::channel();
        let listening = Listening {
            label: "mute".into(),
            rx,
        };
        let error = listening
            .address(Instant::now() + LISTEN_LIMIT)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("mute did not log its `listening` event within 30s"),
            "{error}"
        );
    }
}

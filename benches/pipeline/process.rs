//! The real binaries as child processes: started with a clean environment, JSON logs and port 0,
//! ready when they log their bound address; their memory read from `/proc`.
//!
//! After the ready event the log is drained by a plain thread in large reads, a few hundred a
//! second, with the pipe out of the bench's event loop: a reader waiting on the pipe would be woken
//! by every line the consumer writes, and those wake-ups would be charged to the consumer.

use std::{
    fs::File,
    io::{ErrorKind, Read},
    path::Path,
    process::Stdio,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
};

/// Longest a binary may take to log its address, or to stop after SIGTERM.
const LIMIT: Duration = Duration::from_secs(30);
/// The end of a child's log kept after its ready event, to read its last events.
const TAIL_BYTES: usize = 64 * 1024;

/// A running binary; killed on drop.
pub struct Service {
    name: String,
    child: Child,
    pid: u32,
    drain: JoinHandle<Vec<u8>>,
}

/// A process's memory, in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size so far (VmHWM).
    pub peak_kib: u64,
}

impl Service {
    /// Starts `bin` with only `env` (plus JSON logs on 127.0.0.1) and waits for the log event
    /// whose message is `ready`, which it returns.
    pub async fn start(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> anyhow::Result<(Self, Value)> {
        let name = bin
            .file_name()
            .map_or_else(|| "binary".to_owned(), |n| n.to_string_lossy().into_owned());
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("BIND_ADDRESS", "127.0.0.1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("a child just started has a pid")?;
        let mut stdout =
            BufReader::with_capacity(1 << 20, child.stdout.take().context("stdout is piped")?);
        let event = tokio::time::timeout(LIMIT, ready_event(&mut stdout, ready))
            .await
            .with_context(|| format!("{name} did not log {ready:?} within {LIMIT:?}"))?
            .with_context(|| format!("{name} stopped before logging {ready:?}"))?;
        let tail = stdout.buffer().to_vec();
        let pipe = File::from(stdout.into_inner().into_owned_fd()?);
        let drain = std::thread::Builder::new()
            .name("log-drain".to_owned())
            .spawn(move || drain(pipe, tail))?;
        Ok((
            Self {
                name,
                child,
                pid,
                drain,
            },
            event,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status", self.pid))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{}/status", self.pid))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the log events in the tail of its output.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Value>> {
        // Our own child, not waited for yet, so the pid is still ours.
        bindings::shutdown::terminate(self.pid)?;
        let status = match tokio::time::timeout(LIMIT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await?;
                bail!("{} did not stop within {LIMIT:?} of SIGTERM", self.name);
            }
        };
        if !status.success() {
            bail!("{} exited with {status}", self.name);
        }
        let drain = self.drain;
        let tail = tokio::task::spawn_blocking(move || drain.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the log reader of {} panicked", self.name))?;
        Ok(String::from_utf8_lossy(&tail)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

/// CPU time (user + system) process `pid` has used so far; `"self"` for this process.
pub fn cpu_time(pid: impl std::fmt::Display) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name, field 2, may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", i + 3))
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / per_second,
    ))
}

async fn ready_event(stdout: &mut BufReader<ChildStdout>, ready: &str) -> anyhow::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).await? == 0 {
            bail!("end of output");
        }
        if let Ok(event) = serde_json::from_str::<Value>(&line)
            && event["message"] == ready
        {
            return Ok(event);
        }
    }
}

/// Reads the rest of the output in large chunks, keeping the last [`TAIL_BYTES`].
fn drain(mut pipe: File, mut tail: Vec<u8>) -> Vec<u8> {
    let mut chunk = vec![0; 1 << 16];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => return tail,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return tail,
        };
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > TAIL_BYTES {
            tail.drain(..tail.len() - TAIL_BYTES);
        }
        // Let output pile up in the pipe (64 KiB) between reads, instead of a wake-up per line.
        std::thread::sleep(Duration::from_millis(2));
    }
}

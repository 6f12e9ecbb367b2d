//! Runs a real workspace binary ([`binary`]) with a clean environment and JSON logs on loopback,
//! and waits, bounded, for its log events: the `listening` event carries the bound address, the
//! readiness signal. Also reads a process's memory and CPU time from `/proc`.
//!
//! The pipeline benchmark measures its children with [`Service::measured`]: their output is then
//! read in large chunks, a few hundred a second, and only its tail kept. A reader woken by every
//! line would charge the consumer with those wake-ups, and a benchmark's worth of lines would
//! fill the memory.

use std::{
    ffi::OsStr,
    fs::File,
    io::{ErrorKind, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::{
    process::{Child, Command},
    sync::watch,
};

/// The workspace binary `name`, from the target directory this test or benchmark was built in
/// (`target/debug` or `target/release`). Binaries of other crates are not given to a test by
/// cargo (`CARGO_BIN_EXE_*` names only its own crate's): `cargo test` and `cargo build --bins` at
/// the workspace root build every one of them, so they are beside the test's own executable.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test` (or `cargo build --bins`) at the workspace root, which \
         builds every binary",
        path.display()
    );
    path
}

/// `target/tmp`, cargo's scratch directory for tests (`CARGO_TARGET_TMPDIR`, which cargo gives
/// only to integration tests and benchmarks, not to this library).
pub fn target_tmp() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .expect("the target directory")
        .join("tmp");
    std::fs::create_dir_all(&dir).expect("creating target/tmp");
    dir
}

/// The profile's output directory (`target/debug`, `target/release`) of the running test.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own executable");
    let dir = exe.parent().expect("the test executable's directory");
    // Tests and benchmarks run from `<profile>/deps`, binaries are in `<profile>`.
    if dir.ends_with("deps") {
        dir.parent().expect("the profile directory").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Upper bound for anything a test waits on; generous, since CI machines are slow and shared.
pub const WAIT: Duration = Duration::from_secs(20);
/// The end of a measured process's output that is kept, to read its last events.
const TAIL_BYTES: usize = 64 * 1024;
/// Pause between two reads of a measured process's output once it is ready: the output piles
/// up in the pipe (64 KiB) meanwhile, instead of a wake-up per line.
const PACING: Duration = Duration::from_millis(2);

/// The command for `bin` with `args`: only the environment `env` (plus JSON logs on 127.0.0.1
/// and an ephemeral metrics port), so nothing from the developer's shell or from cargo (`CARGO`
/// and the like, set for tests) reaches it, nor the children `devstack` starts, which inherit
/// it. No `PATH` either: the binaries start nothing by name.
pub fn command(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_clear()
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("BIND_ADDRESS", "127.0.0.1")
        // The consumer's metrics port defaults to 9090: fixed ports collide between tests.
        .env("METRICS_PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        // Its own process group, so dropping it also kills what it started: a devstack killed
        // mid-test by a failing assertion would otherwise leave its producer and consumers running.
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// A running binary. Killed on drop, so a failing test leaves nothing behind.
pub struct Service {
    name: String,
    child: Child,
    pid: u32,
    output: Arc<Mutex<Output>>,
    /// Bytes read so far; closed once stdout has.
    seen: watch::Receiver<usize>,
}

impl Drop for Service {
    /// SIGKILL to the whole group: the process (if `kill_on_drop` has not got it yet) and every
    /// child it started. Nothing can reuse the group's id while one of them lives.
    fn drop(&mut self) {
        use nix::{sys::signal, unistd::Pid};
        if let Ok(pgid) = i32::try_from(self.pid) {
            let _ = signal::killpg(Pid::from_raw(pgid), signal::Signal::SIGKILL);
        }
    }
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
    /// Starts `bin` on 127.0.0.1 with JSON logs and the given extra environment.
    pub fn spawn(bin: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Self {
        Self::spawn_with_args(bin, &[], env)
    }

    /// Like [`spawn`](Self::spawn), with command-line arguments.
    pub fn spawn_with_args(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(bin.as_ref(), args, env, None, true)
    }

    /// Like [`spawn_with_args`](Self::spawn_with_args), for the benchmark's rows that read every
    /// line the process writes: all of it is kept, and nothing is echoed to this process's stdout,
    /// which carries the benchmark's figures.
    pub fn spawn_recorded(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(bin.as_ref(), args, env, None, false)
    }

    /// Like [`spawn_with_args`](Self::spawn_with_args), for the benchmark: only the last
    /// [`TAIL_BYTES`] of the output are kept, and nothing is echoed to this process's stdout,
    /// which carries the benchmark's figures.
    pub fn spawn_quiet(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(bin.as_ref(), args, env, Some(TAIL_BYTES), false)
    }

    /// Starts `bin` for the benchmark and waits for its event whose message is `ready`, which it
    /// returns. From then on its output is read paced, and only the last [`TAIL_BYTES`] kept.
    pub async fn measured(
        bin: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
        ready: &str,
    ) -> (Self, Value) {
        let mut service = Self::start(bin.as_ref(), args, env, Some(TAIL_BYTES), false);
        let event = service.wait_for_message(ready).await;
        service.output.lock().paced = true;
        (service, event)
    }

    fn start(
        bin: &OsStr,
        args: &[&str],
        env: &[(&str, &str)],
        tail: Option<usize>,
        echo: bool,
    ) -> Self {
        let name = Path::new(bin)
            .file_name()
            .unwrap_or(bin)
            .to_string_lossy()
            .into_owned();
        let mut child = command(bin, args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", Path::new(bin).display()));
        let pid = child.id().expect("a child just started has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let pipe = File::from(stdout.into_owned_fd().expect("stdout as a blocking file"));
        let output = Arc::new(Mutex::new(Output {
            tail,
            echo,
            ..Output::default()
        }));
        let (tx, seen) = watch::channel(0);
        let sink = Arc::clone(&output);
        std::thread::Builder::new()
            .name(format!("{name} output"))
            .spawn(move || read(pipe, &sink, &tx))
            .expect("starting the output reader");
        Self {
            name,
            child,
            pid,
            output,
            seen,
        }
    }

    /// Waits, at most [`WAIT`], for a JSON log event matching `pred`; panics with the log if none.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, WAIT, pred).await
    }

    /// Like [`wait_for`](Self::wait_for), waiting at most `limit`: for what takes longer by
    /// design (a benchmark's run).
    pub async fn wait_for_within(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut checked = 0;
        self.wait_until(what, limit, |output| {
            let (lines, end) = output.lines_from(checked);
            let found = lines
                .filter_map(|l| serde_json::from_slice(l).ok())
                .find(|e| pred(e));
            checked = end;
            found
        })
        .await
    }

    /// Waits for an event whose message is `message`.
    pub async fn wait_for_message(&mut self, message: &str) -> Value {
        self.wait_for(message, |e| e["message"] == message).await
    }

    /// The address from the `listening` event.
    pub async fn addr(&mut self) -> SocketAddr {
        event_addr(&self.wait_for_message("listening").await, "addr")
    }

    /// Every JSON log event so far (of the tail, when measured).
    pub async fn events(&self) -> Vec<Value> {
        let output = self.output.lock();
        let (lines, _) = output.lines_from(0);
        lines
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }

    /// Waits, at most [`WAIT`], until `pred` finds what it looks for in the raw output lines so
    /// far (JSON or not, e.g. `devstack up`'s labelled lines); panics with the output if never.
    pub async fn wait_for_lines<T>(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        self.wait_until(what, WAIT, |output| pred(&output.strings()))
            .await
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
        self.wait_until(what, WAIT, |output| {
            let (lines, _) = output.lines_from(0);
            let matching: Vec<Value> = lines
                .filter_map(|l| serde_json::from_slice(l).ok())
                .filter(|e| pred(e))
                .collect();
            (matching.len() >= n).then_some(matching)
        })
        .await
    }

    /// Asks `look` after each read of the output until it finds something, at most `limit`;
    /// once stdout has closed, nothing more comes. Panics with the output if it finds nothing.
    async fn wait_until<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut look: impl FnMut(&Output) -> Option<T>,
    ) -> T {
        let found = tokio::time::timeout(limit, async {
            loop {
                if let Some(found) = look(&self.output.lock()) {
                    return Some(found);
                }
                if self.seen.changed().await.is_err() {
                    return look(&self.output.lock());
                }
            }
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            _ => panic!(
                "no {what:?} from {}; output so far:\n{}",
                self.name,
                self.output.lock().strings().join("\n")
            ),
        }
    }

    /// Every output line so far, JSON or not.
    pub async fn lines(&self) -> Vec<String> {
        self.output.lock().strings()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its memory now, from `/proc`.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("reading /proc/{}/status: {e}", self.pid));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid))
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Sends SIGKILL: the process vanishes mid-work, with no chance to clean up.
    pub fn kill(&mut self) {
        self.child.start_kill().expect("kill(SIGKILL)");
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        // `id` is `None` once the child has been waited for: its pid may be another's by then.
        let pid = self.child.id().expect("process still running");
        pipeline::shutdown::terminate(pid).expect("kill(SIGTERM)");
    }

    /// SIGTERM, then expects exit code 0 within [`WAIT`]; returns every log event it wrote (of
    /// the tail, when measured).
    pub async fn stop(mut self) -> Vec<Value> {
        self.terminate();
        assert_eq!(
            self.exit_code(WAIT).await,
            Some(0),
            "{} after SIGTERM",
            self.name
        );
        self.events_to_end().await
    }

    /// Every JSON log event the process wrote, once its stdout has closed (it has exited);
    /// waits at most [`WAIT`] for that.
    pub async fn events_to_end(&mut self) -> Vec<Value> {
        let closed =
            tokio::time::timeout(WAIT, async { while self.seen.changed().await.is_ok() {} }).await;
        assert!(
            closed.is_ok(),
            "stdout of {} still open after {WAIT:?}",
            self.name
        );
        self.events().await
    }

    /// Waits, at most `limit`, for the process to exit; returns its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {limit:?}", self.name))
            .expect("waiting for the process");
        status.code()
    }
}

/// The address a log event carries in `field` (`addr`, `grpc_addr`, ...); panics without one.
pub fn event_addr(event: &Value, field: &str) -> SocketAddr {
    event[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address {field:?} in {event}"))
}

/// Whether process `pid` still exists (signal 0 checks without sending anything).
pub fn is_running(pid: u32) -> bool {
    use nix::{sys::signal, unistd::Pid};
    i32::try_from(pid).is_ok_and(|pid| signal::kill(Pid::from_raw(pid), None).is_ok())
}

/// Runs `bin` to completion with `args`, bounded in time; returns (exit code, stdout + stderr).
pub async fn run_to_end(
    bin: impl AsRef<OsStr>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let output = command(bin, args, env).output();
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

/// The settings of `pipeline::http_server::HttpLimits`, which every binary serving HTTP reads
/// (the producer's port, the consumer's metrics port, devstack's sidecar).
pub const HTTP_LIMITS: &[&str] = &[
    "HTTP_HEADER_READ_TIMEOUT",
    "HTTP_BODY_TIMEOUT",
    "HTTP_IDLE_TIMEOUT",
    "HTTP_MAX_CONNECTIONS",
    "HTTP2_KEEPALIVE_INTERVAL",
    "HTTP2_KEEPALIVE_TIMEOUT",
    "HTTP2_MAX_CONCURRENT_STREAMS",
    "HTTP2_MAX_HEADER_LIST_SIZE",
    "HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
    "HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
];

/// The tracing settings of `pipeline::telemetry::LogArgs`, which every binary reads.
pub const TRACING: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_BSP_MAX_QUEUE_SIZE",
];

/// Runs `bin --help` with `env`; asserts it exits 0 and documents each of `settings` as an
/// environment variable (`[env: NAME`); returns the help.
pub async fn help(bin: impl AsRef<OsStr>, env: &[(&str, &str)], settings: &[&str]) -> String {
    let (code, help) = run_to_end(bin, &["--help"], env).await;
    assert_eq!(code, Some(0), "{help}");
    for name in settings {
        assert!(
            help.contains(&format!("[env: {name}")),
            "--help lacks {name}:\n{help}"
        );
    }
    help
}

/// CPU time (user + system) process `pid` has used so far; `"self"` for this process.
pub fn cpu_time(pid: impl std::fmt::Display) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name, field 2, may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no field {} in /proc/{pid}/stat", i + 3))
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / per_second)
}

/// What a process wrote to stdout.
#[derive(Debug, Default)]
struct Output {
    /// The bytes from offset `dropped` on: all of them, unless `tail` is set.
    text: Vec<u8>,
    /// Bytes let go from the front: always whole lines.
    dropped: usize,
    /// Keep only about this many bytes at the end.
    tail: Option<usize>,
    /// Echo it to this process's stdout, for `cargo test -- --nocapture` when a test fails.
    echo: bool,
    /// Pause after each read.
    paced: bool,
}

impl Output {
    fn push(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
        if let Some(tail) = self.tail
            && self.text.len() > tail
        {
            // Up to the end of a line, so every line kept is whole.
            let from = self.text.len() - tail;
            let cut = self.text[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.text.len(), |i| from + i + 1);
            self.text.drain(..cut);
            self.dropped += cut;
        }
    }

    /// The complete lines from offset `from` (the start of a line, or 0) on, and the offset
    /// after the last of them.
    fn lines_from(&self, from: usize) -> (impl Iterator<Item = &[u8]>, usize) {
        let start = from.saturating_sub(self.dropped).min(self.text.len());
        let end = self.text[start..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |i| start + i + 1);
        let lines = self.text[start..end]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty());
        (lines, self.dropped + end)
    }

    fn strings(&self) -> Vec<String> {
        let (lines, _) = self.lines_from(0);
        lines
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

/// Reads the output until it ends, in large chunks; tells `seen` after each.
fn read(mut pipe: File, output: &Mutex<Output>, seen: &watch::Sender<usize>) {
    let mut chunk = vec![0; 1 << 16];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut all = output.lock();
        if all.echo {
            print!("{}", String::from_utf8_lossy(&chunk[..n]));
        }
        all.push(&chunk[..n]);
        let (read, paced) = (all.dropped + all.text.len(), all.paced);
        drop(all);
        seen.send_replace(read);
        if paced {
            std::thread::sleep(PACING);
        }
    }
    // A last line without its newline is a line all the same.
    let mut all = output.lock();
    if all.text.last().is_some_and(|&b| b != b'\n') {
        all.push(b"\n");
    }
    let end = all.dropped + all.text.len();
    drop(all);
    seen.send_replace(end);
}

//! Where log lines go: the thread that logs appends its line to a buffer and goes on; a thread
//! of its own writes the buffer to stdout in batches, one `write` for many lines. No line is
//! dropped: a logger finding the buffer full waits until the writer has taken it, as it waited
//! for stdout before. Lines reach stdout within about [`BATCH_WAIT`] of being logged, so a stop
//! signal finds them written, and [`LogOutput::finish`] writes the rest at exit.
//!
//! What no exit path can write is what a SIGKILL finds buffered: the lines of about the last
//! [`BATCH_WAIT`]. The original sample's logger does the same (.NET's console logger queues
//! lines for a thread of its own, dotnet/runtime `ConsoleLoggerProcessor`, blocking when full as
//! here). Waiting for the line before acknowledging each message was measured and not kept: it
//! took row 3 of the benchmark from 0.98 to 0.80 of the null app (docs/performance.md).
//!
//! At zero work the consumer logs a line per message, and a `write` per line, on the request's
//! thread, was a system call and a wake-up of the reader for every message (docs/performance.md,
//! row 3). tracing-appender's non-blocking writer does not fit: it drops lines when full unless
//! told to block, allocates each line, and writes them one at a time.

use std::{
    io::{self, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first of a batch: each batch is one `write`,
/// and at 50,000 lines a second a millisecond holds about 50 of them.
pub const BATCH_WAIT: Duration = Duration::from_millis(1);
/// Bytes waiting at most before a logger waits for the writer: stdout slower than the logging
/// holds the loggers up rather than the memory growing without bound.
const LIMIT: usize = 1 << 20;

/// The buffered way out, shared by every logging thread; a [`MakeWriter`] for the layers.
#[derive(Clone)]
pub struct LogOutput {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOutput").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for a first line.
    lines: Condvar,
    /// Loggers wait here for room, and flushes for the writer to finish.
    written: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<u8>,
    /// A batch taken from `pending` is being written.
    writing: bool,
    /// No writer thread (it could not start, or the output is finished): each logger writes
    /// its own line.
    direct: bool,
}

impl LogOutput {
    /// Lines to stdout.
    pub fn stdout() -> Self {
        Self::to(io::stdout())
    }

    /// Lines to `out`, written by a thread started now; without one, each logger writes its own.
    pub fn to(out: impl Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            lines: Condvar::new(),
            written: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let writer = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || writer.write_batches());
        if started.is_err() {
            shared.state.lock().direct = true;
        }
        Self { shared }
    }

    /// Appends one line (or several, whole).
    fn append(&self, bytes: &[u8]) {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        while state.pending.len() >= LIMIT && !state.direct {
            shared.written.wait(&mut state);
        }
        if state.direct {
            // Under the state's lock, so lines keep the order they were logged in.
            shared.write(bytes);
            return;
        }
        let first = state.pending.is_empty();
        state.pending.extend_from_slice(bytes);
        drop(state);
        if first {
            shared.lines.notify_one();
        }
    }

    /// Waits, at most `limit`, until every line appended so far is written; returns whether it was.
    pub fn flush(&self, limit: Duration) -> bool {
        self.written_by(Instant::now() + limit).is_some()
    }

    /// At exit: writes what is left, waiting at most `limit` (a stdout nobody reads must not hold
    /// the exit up); a line logged after this is written by the thread that logs it.
    pub fn finish(&self, limit: Duration) {
        if let Some(mut state) = self.written_by(Instant::now() + limit) {
            state.direct = true;
        }
    }

    /// The state once nothing is left to write, unless `deadline` comes first.
    fn written_by(&self, deadline: Instant) -> Option<MutexGuard<'_, State>> {
        let shared = &self.shared;
        let done = |state: &State| state.direct || (state.pending.is_empty() && !state.writing);
        let mut state = shared.state.lock();
        while !done(&state) {
            if shared.written.wait_until(&mut state, deadline).timed_out() && !done(&state) {
                return None;
            }
        }
        Some(state)
    }
}

impl Shared {
    /// The writer thread: takes what is pending and writes it, for as long as the process lives.
    fn write_batches(&self) {
        let mut batch = Vec::new();
        loop {
            let mut state = self.state.lock();
            while state.pending.is_empty() {
                self.lines.wait(&mut state);
            }
            drop(state);
            std::thread::sleep(BATCH_WAIT);
            let mut state = self.state.lock();
            std::mem::swap(&mut state.pending, &mut batch);
            state.writing = true;
            drop(state);
            // Room again for loggers that found the buffer full.
            self.written.notify_all();
            self.write(&batch);
            batch.clear();
            self.state.lock().writing = false;
            self.written.notify_all();
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut out = self.out.lock();
        // A log line that cannot be written has nowhere else to go.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }
}

/// What each event writes to: its line goes to the buffer whole.
pub struct LineWriter<'a>(&'a LogOutput);

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    /// Nothing: a layer flushing after each event must not wait for the writer thread.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    /// What reached the output, in how many writes; while `held`, every write waits.
    #[derive(Clone, Default)]
    struct Recorded {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        held: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Recorded {
        fn hold(&self, held: bool) {
            *self.held.0.lock() = held;
            self.held.1.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().clone()).unwrap()
        }
    }

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut held = self.held.0.lock();
            while *held {
                self.held.1.wait(&mut held);
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(output: &LogOutput, line: &str) {
        output.make_writer().write_all(line.as_bytes()).unwrap();
    }

    const LIMIT_WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn every_line_arrives_in_order_in_fewer_writes_than_lines() {
        let recorded = Recorded::default();
        let output = LogOutput::to(recorded.clone());
        let lines: Vec<String> = (0..10_000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            log(&output, line);
        }
        assert!(output.flush(LIMIT_WAIT));
        assert_eq!(recorded.text(), lines.concat());
        let writes = recorded.writes.load(Ordering::Relaxed);
        assert!(writes < lines.len() / 10, "{writes} writes");
    }

    #[test]
    fn lines_from_many_threads_stay_whole() {
        let recorded = Recorded::default();
        let output = LogOutput::to(recorded.clone());
        std::thread::scope(|s| {
            for t in 0..4 {
                let output = &output;
                s.spawn(move || {
                    for i in 0..1_000 {
                        log(output, &format!("thread {t} line {i}\n"));
                    }
                });
            }
        });
        assert!(output.flush(LIMIT_WAIT));
        let text = recorded.text();
        assert_eq!(text.lines().count(), 4_000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..1_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn a_full_buffer_holds_the_logger_up_and_drops_nothing() {
        let recorded = Recorded::default();
        recorded.hold(true);
        let output = LogOutput::to(recorded.clone());
        let line = format!("{}\n", "x".repeat(1023));
        let lines = LIMIT / line.len() * 3;
        let logger = {
            let (output, line) = (output.clone(), line.clone());
            std::thread::spawn(move || {
                for _ in 0..lines {
                    log(&output, &line);
                }
            })
        };
        // The writer holds the first batch; the logger fills the buffer behind it, then waits.
        let begun = Instant::now();
        while output.shared.state.lock().pending.len() < LIMIT {
            assert!(begun.elapsed() < LIMIT_WAIT, "the buffer never filled");
            std::thread::yield_now();
        }
        assert!(
            !logger.is_finished(),
            "the logger went on past a full buffer"
        );
        assert!(
            !output.flush(Duration::from_millis(10)),
            "nothing can be written yet"
        );
        recorded.hold(false);
        logger.join().unwrap();
        assert!(output.flush(LIMIT_WAIT));
        assert_eq!(recorded.text(), line.repeat(lines));
    }

    #[test]
    fn once_finished_each_line_is_written_at_once() {
        let recorded = Recorded::default();
        let output = LogOutput::to(recorded.clone());
        log(&output, "before\n");
        output.finish(LIMIT_WAIT);
        assert_eq!(recorded.text(), "before\n");
        log(&output, "after\n");
        assert_eq!(
            recorded.text(),
            "before\nafter\n",
            "written by the logger itself"
        );
    }
}

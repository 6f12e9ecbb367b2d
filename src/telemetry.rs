//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`).

use std::io::{IsTerminal, Write};

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging options shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `info,producer=debug`.
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Call once, first thing in `main`, after parsing config.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    init_labelled(args, "")
}

/// Like [`init`], with every line starting with `label` (the local stack labels each part).
pub fn init_labelled(args: &LogArgs, label: &'static str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.filter)
        .with_context(|| format!("invalid RUST_LOG filter {:?}", args.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Labelled(label))
        .with_ansi(std::io::stdout().is_terminal());
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")
}

/// Writes each log event to stdout in one piece, `label` before every line.
struct Labelled(&'static str);

struct LabelledWriter {
    label: &'static str,
    buffer: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Labelled {
    type Writer = LabelledWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LabelledWriter {
            label: self.0,
            buffer: Vec::with_capacity(256),
        }
    }
}

impl std::io::Write for LabelledWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LabelledWriter {
    fn drop(&mut self) {
        let mut out = Vec::with_capacity(self.buffer.len() + self.label.len());
        for line in self.buffer.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(self.label.as_bytes());
            out.extend_from_slice(line);
        }
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::stdout().lock().write_all(&out);
    }
}

//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`).

use std::io::IsTerminal;

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
    let filter = EnvFilter::try_new(&args.filter)
        .with_context(|| format!("invalid RUST_LOG filter {:?}", args.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
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

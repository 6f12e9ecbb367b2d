//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`).
//! In JSON, the fields of an event's spans (a request's `trace_id`, ...) sit beside its own.

use std::{
    fmt,
    io::{IsTerminal, Write},
};

use anyhow::Context;
use serde_json::Value;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

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
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")
}

/// One JSON object per event: `timestamp`, `level`, the event's fields (`message` first), then the
/// fields of the spans it happened in, innermost first, then `target`. tracing-subscriber's own
/// JSON nests span fields under `span`; flat, a log collector finds `trace_id` in one place on
/// every event of a request, and no field is repeated: the closest value of a name wins.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let metadata = event.metadata();
        let mut object = JsonObject::default();
        object.insert("timestamp", Value::String(timestamp));
        object.insert("level", Value::from(metadata.level().as_str()));
        event.record(&mut object);
        for span in ctx.event_scope().into_iter().flatten() {
            let extensions = span.extensions();
            // JsonFields records a span's fields as the text of a JSON object.
            let recorded = extensions
                .get::<FormattedFields<N>>()
                .and_then(|fields| serde_json::from_str::<Value>(fields).ok());
            if let Some(Value::Object(fields)) = recorded {
                for (name, value) in fields {
                    object.insert(&name, value);
                }
            }
        }
        object.insert("target", Value::from(metadata.target()));
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// A JSON object that keeps its fields in insertion order and the first value of each name.
#[derive(Default)]
struct JsonObject(Vec<(String, Value)>);

impl JsonObject {
    fn insert(&mut self, name: &str, value: Value) {
        if !self.0.iter().any(|(known, _)| known == name) {
            self.0.push((name.to_owned(), value));
        }
    }
}

impl serde::Serialize for JsonObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

impl tracing::field::Visit for JsonObject {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field.name(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field.name(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field.name(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field.name(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field.name(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Also how `message` arrives: as format_args!, whose Debug is its Display.
        self.insert(field.name(), Value::String(format!("{value:?}")));
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// What `log` writes with the JSON format.
    fn json_output(log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    fn json_lines(log: impl FnOnce()) -> Vec<Value> {
        json_output(log)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn span_fields_sit_beside_the_event_fields() {
        let lines = json_lines(|| {
            let none: Option<&str> = None;
            let outer = info_span!("request", trace_id = "4bf9", id = "outer");
            outer.in_scope(|| {
                let inner = info_span!("event", id = "inner", absent = none);
                inner.in_scope(|| warn!(count = 3, ok = true, "a {}", "b"));
            });
            info!("outside");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "a b");
        assert_eq!(line["count"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["trace_id"], "4bf9");
        // The innermost span's value wins, and a field recorded as None is absent.
        assert_eq!(line["id"], "inner");
        assert!(line.get("absent").is_none(), "{line}");
        assert!(
            line.get("span").is_none() && line.get("spans").is_none(),
            "{line}"
        );
        assert_eq!(line["target"], module_path!());
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));

        let outside = &lines[1];
        assert_eq!(outside["message"], "outside");
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    #[test]
    fn keys_keep_their_order_and_appear_once() {
        let output = json_output(|| {
            let span = info_span!(
                "request",
                message = "from the span",
                trace_id = "t",
                id = "i"
            );
            span.in_scope(|| info!(trace_id = "own", n = 1, "hello"));
        });
        let line = output.trim_end();
        assert!(line.starts_with(r#"{"timestamp":""#), "{line}");
        let rest = line.split_once(r#"","#).unwrap().1;
        assert_eq!(
            rest,
            r#""level":"INFO","message":"hello","trace_id":"own","n":1,"id":"i","target":"bindings::telemetry::tests"}"#
        );
    }
}

//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`).
//! In JSON, the fields of an event's spans (a request's `trace_id`, ...) sit beside its own.

use std::{
    fmt,
    io::{IsTerminal, Write},
};

use anyhow::Context as _;
use json_subscriber::{FieldWriter, JsonLayer};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{MakeWriter, time::SystemTime},
    layer::{Context, SubscriberExt},
    registry::LookupSpan,
    util::SubscriberInitExt,
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
    install(args, std::io::stdout)
}

/// Like [`init`], with every line starting with `label` (the local stack labels its own lines).
pub fn init_labelled(args: &LogArgs, label: &'static str) -> anyhow::Result<()> {
    install(args, Labelled::stdout(label))
}

fn install<W>(args: &LogArgs, make_writer: W) -> anyhow::Result<()>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.filter)
        .with_context(|| format!("invalid RUST_LOG filter {:?}", args.filter))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(make_writer)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry.with(json_layer(make_writer)).try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")
}

/// One JSON object per event (json-subscriber): `timestamp`, `level`, `target`, the event's
/// fields (`message` among them), and the fields of the spans it happened in, all at the top
/// level. tracing-subscriber's own JSON nests span fields under `span`; flat, a log collector
/// finds `trace_id` in one place on every event of a request. No key is repeated: the event's
/// own value wins, then the innermost span's. (json-subscriber's own flattening of spans would
/// add each span's name as `name` and repeat a key the event also has.)
fn json_layer<S, W>(make_writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    let mut json = JsonLayer::new(make_writer);
    json.with_timer("timestamp", SystemTime)
        .with_level("level")
        .with_target("target")
        .with_flattened_event();
    json.add_multiple_dynamic_fields(write_span_fields);
    RecordSpanFields.and_then(json)
}

/// Keeps each span's fields, as JSON values, for the events inside it.
struct RecordSpanFields;

/// A span's fields in the order they were recorded; a field recorded again replaces its value.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, serde_json::Value)>);

impl<S> Layer<S> for RecordSpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(fields);
        }
    }
}

impl SpanFields {
    fn set(&mut self, field: &Field, value: impl Into<serde_json::Value>) {
        let name = field.name();
        let value = value.into();
        match self.0.iter_mut().find(|(known, _)| *known == name) {
            Some((_, old)) => *old = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for SpanFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // A non-finite float becomes null.
        self.set(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

/// Writes the fields of `event`'s spans, innermost first, skipping a name already written.
fn write_span_fields<S>(event: &Event<'_>, ctx: &Context<'_, S>, out: &mut FieldWriter<'_>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(scope) = ctx.event_scope(event) else {
        return;
    };
    let mut written = FieldNames::default();
    event.record(&mut written);
    for span in scope {
        let extensions = span.extensions();
        let Some(fields) = extensions.get::<SpanFields>() else {
            continue;
        };
        for (name, value) in &fields.0 {
            if !written.0.contains(name) {
                written.0.push(name);
                // A JSON value always serializes.
                let _ = out.write_field(name, value);
            }
        }
    }
}

/// The names of the fields an event recorded (a field whose value is `None` is not).
#[derive(Default)]
struct FieldNames(Vec<&'static str>);

impl Visit for FieldNames {
    fn record_debug(&mut self, field: &Field, _value: &dyn fmt::Debug) {
        self.0.push(field.name());
    }
}

/// Writes each log event in one piece, `label` before every line.
struct Labelled<M = fn() -> std::io::Stdout> {
    label: &'static str,
    make_writer: M,
}

impl Labelled {
    /// Labels lines written to stdout.
    fn stdout(label: &'static str) -> Self {
        Self {
            label,
            make_writer: std::io::stdout,
        }
    }
}

struct LabelledWriter<W: Write> {
    label: &'static str,
    buffer: Vec<u8>,
    out: W,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Labelled<M> {
    type Writer = LabelledWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        LabelledWriter {
            label: self.label,
            buffer: Vec::with_capacity(256),
            out: self.make_writer.make_writer(),
        }
    }
}

impl<W: Write> Write for LabelledWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for LabelledWriter<W> {
    fn drop(&mut self) {
        let mut out = Vec::with_capacity(self.buffer.len() + self.label.len());
        for line in self.buffer.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(self.label.as_bytes());
            out.extend_from_slice(line);
        }
        // A log line that cannot be written has nowhere else to go.
        let _ = self.out.write_all(&out);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing::{error, info, info_span, warn};

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

    /// What `log` writes with the JSON format through `make_writer(captured)`.
    fn output<M>(make_writer: impl FnOnce(Captured) -> M, log: impl FnOnce()) -> String
    where
        M: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(json_layer(make_writer(captured.clone())));
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    fn json_output(log: impl FnOnce()) -> String {
        output(|captured| captured, log)
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
    fn each_key_appears_once_and_the_event_wins() {
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
        for key in [
            "timestamp",
            "level",
            "message",
            "trace_id",
            "n",
            "id",
            "target",
        ] {
            assert_eq!(
                line.matches(&format!("\"{key}\":")).count(),
                1,
                "{key}: {line}"
            );
        }
        let line: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        assert_eq!(line.len(), 7, "{line:?}");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "hello");
        assert_eq!(line["trace_id"], "own");
        assert_eq!(line["n"], 1);
        assert_eq!(line["id"], "i");
        assert_eq!(line["target"], "bindings::telemetry::tests");
    }

    #[test]
    fn text_is_escaped_and_every_line_parses() {
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} nul \0 é 日本";
        let lines = json_lines(|| {
            let span = info_span!("request", trace_id = awkward);
            span.in_scope(|| {
                info!(text = awkward, debug = ?awkward, "{awkward}");
                error!(
                    error = &std::io::Error::other(awkward) as &dyn std::error::Error,
                    "failed"
                );
            });
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["message"], awkward);
        assert_eq!(lines[0]["text"], awkward);
        assert_eq!(lines[0]["debug"], format!("{awkward:?}"));
        assert_eq!(lines[0]["trace_id"], awkward);
        assert_eq!(lines[1]["error"], awkward);
    }

    #[test]
    fn numbers_stay_numbers_and_non_finite_floats_are_null() {
        let lines = json_lines(|| {
            info!(
                small = -3i64,
                big = u64::MAX,
                ratio = 0.25f64,
                nan = f64::NAN,
                huge = u128::MAX,
                yes = true,
                "numbers"
            )
        });
        let line = &lines[0];
        assert_eq!(line["small"], -3);
        assert_eq!(line["big"], u64::MAX);
        assert_eq!(line["ratio"], 0.25);
        assert_eq!(line["nan"], Value::Null);
        // Wider than JSON numbers carry exactly: tracing hands them over as Debug text.
        assert_eq!(line["huge"], u128::MAX.to_string());
        assert_eq!(line["yes"], true);
    }

    #[test]
    fn a_field_recorded_later_replaces_its_value() {
        let lines = json_lines(|| {
            let span = info_span!("event", outcome = tracing::field::Empty, id = "a");
            span.in_scope(|| info!("before"));
            span.record("outcome", "ok");
            span.record("id", "b");
            span.in_scope(|| info!("after"));
        });
        assert!(lines[0].get("outcome").is_none(), "{}", lines[0]);
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[1]["outcome"], "ok");
        assert_eq!(lines[1]["id"], "b");
    }

    #[test]
    fn every_line_starts_with_the_label() {
        let output = output(
            |captured| Labelled {
                label: "consumer-1 | ",
                make_writer: captured,
            },
            || {
                info!("one");
                info!("two");
            },
        );
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 2, "{output}");
        for line in lines {
            let json = line.strip_prefix("consumer-1 | ").expect(line);
            serde_json::from_str::<Value>(json).expect(json);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let lines = json_lines(|| info!("now"));
        let timestamp = lines[0]["timestamp"].as_str().unwrap();
        // As `2026-11-29T23:27:51.238515Z`.
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert!(timestamp.ends_with('Z'), "{timestamp}");
        chrono::DateTime::parse_from_rfc3339(timestamp).expect(timestamp);
    }
}

//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`).
//! In JSON, the fields of an event's spans (a request's `trace_id`, ...) sit beside its own.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::{IsTerminal, Write},
};

use anyhow::Context as _;
use chrono::{DateTime, Datelike, Timelike, Utc};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::MakeWriter,
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
    init_labelled(args, "")
}

/// Like [`init`], with every line starting with `label` (the local stack labels each part).
pub fn init_labelled(args: &LogArgs, label: &'static str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.filter)
        .with_context(|| format!("invalid RUST_LOG filter {:?}", args.filter))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(Labelled(label))
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(JsonLines::new(label, std::io::stdout))
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
///
/// The consumer logs a line per message, so this is on its hot path: each span's fields are
/// encoded once, when they are recorded, and each event is encoded straight into a reused buffer
/// and written in one `write`. (tracing-subscriber's formatter, which we used before, encoded span
/// fields as JSON text that every event parsed back. `cargo bench --bench pipeline`, rows 3 and 3w,
/// shows what the line costs: 5.9 µs of consumer CPU per message then, about 3 µs now, half of
/// it the `write`.)
pub struct JsonLines<W> {
    label: &'static str,
    make_writer: W,
}

impl<W> JsonLines<W> {
    /// Writes through `make_writer`, every line starting with `label`.
    pub fn new(label: &'static str, make_writer: W) -> Self {
        Self { label, make_writer }
    }
}

/// A span's fields, each encoded as `,"name":value`, in the order they were recorded.
#[derive(Default)]
struct SpanFields {
    json: Vec<u8>,
    /// Each field's name and where its `,"name":value` is in `json`.
    fields: Vec<(&'static str, std::ops::Range<usize>)>,
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut JsonVisitor::new(&mut fields));
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor::new(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut line) => self.write_event(&mut line, event, &ctx),
            // An event logged while writing one (by the writer itself) gets a buffer of its own.
            Err(_) => self.write_event(&mut Vec::new(), event, &ctx),
        });
    }
}

impl<W> JsonLines<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn write_event<S>(&self, line: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        line.clear();
        let metadata = event.metadata();
        line.extend_from_slice(self.label.as_bytes());
        line.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(line, Utc::now());
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(metadata.level().as_str().as_bytes());
        line.push(b'"');
        let mut event_fields = EventFields {
            line: &mut *line,
            written: Vec::new(),
        };
        event.record(&mut JsonVisitor::new(&mut event_fields));
        let EventFields { mut written, .. } = event_fields;
        for span in ctx.event_scope(event).into_iter().flatten() {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<SpanFields>() else {
                continue;
            };
            for (name, range) in &fields.fields {
                if !written.contains(name) {
                    written.push(name);
                    line.extend_from_slice(&fields.json[range.clone()]);
                }
            }
        }
        line.extend_from_slice(b",\"target\":");
        write_json_str(line, metadata.target());
        line.extend_from_slice(b"}\n");
        // A log line that cannot be written has nowhere else to go.
        let _ = self.make_writer.make_writer_for(metadata).write_all(line);
    }
}

/// An event's own fields, written straight into the line; the first value of a name wins.
struct EventFields<'a> {
    line: &'a mut Vec<u8>,
    written: Vec<&'static str>,
}

/// Where a [`JsonVisitor`] puts each `,"name":value`.
trait FieldSink {
    /// The buffer to append a field to and the position it starts at, or None to skip it.
    fn start(&mut self, name: &'static str) -> Option<(&mut Vec<u8>, usize)>;
    /// The field that [`FieldSink::start`] began ends at the buffer's end.
    fn end(&mut self, name: &'static str, start: usize);
}

impl FieldSink for SpanFields {
    fn start(&mut self, name: &'static str) -> Option<(&mut Vec<u8>, usize)> {
        // A field recorded again (`Span::record`) replaces its earlier value.
        self.fields.retain(|(known, _)| *known != name);
        let start = self.json.len();
        Some((&mut self.json, start))
    }

    fn end(&mut self, name: &'static str, start: usize) {
        self.fields.push((name, start..self.json.len()));
    }
}

impl FieldSink for EventFields<'_> {
    fn start(&mut self, name: &'static str) -> Option<(&mut Vec<u8>, usize)> {
        if self.written.contains(&name) {
            return None;
        }
        self.written.push(name);
        let start = self.line.len();
        Some((&mut *self.line, start))
    }

    fn end(&mut self, _name: &'static str, _start: usize) {}
}

/// Encodes each recorded field as `,"name":value` into a [`FieldSink`].
struct JsonVisitor<'a, F> {
    sink: &'a mut F,
}

impl<'a, F: FieldSink> JsonVisitor<'a, F> {
    fn new(sink: &'a mut F) -> Self {
        Self { sink }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Vec<u8>)) {
        let name = field.name();
        let Some((out, start)) = self.sink.start(name) else {
            return;
        };
        out.push(b',');
        write_json_str(out, name);
        out.push(b':');
        value(out);
        self.sink.end(name, start);
    }

    fn number(&mut self, field: &Field, value: impl serde::Serialize) {
        // Numbers cannot fail to encode; a non-finite float becomes null.
        self.field(field, |out| {
            let _ = serde_json::to_writer(out, &value);
        });
    }
}

impl<F: FieldSink> Visit for JsonVisitor<'_, F> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_json_str(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Also how `message` arrives: as format_args!, whose Debug is its Display.
        self.field(field, |out| {
            out.push(b'"');
            // Writing into a Vec fails only if `value`'s own Debug does; what it wrote stays.
            let _ = write!(JsonEscaped(out), "{value:?}");
            out.push(b'"');
        });
    }
}

/// `value` as a JSON string, quotes included.
fn write_json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escape_json(out, value);
    out.push(b'"');
}

/// Appends `text` with what JSON requires escaped escaped: quote, backslash, control characters.
fn escape_json(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Most text needs no escaping: one pass with no early exit, which the compiler vectorizes.
    if !bytes
        .iter()
        .fold(false, |any, &byte| any | needs_escape(byte))
    {
        out.extend_from_slice(bytes);
        return;
    }
    let mut plain = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// A `fmt::Write` that JSON-escapes what it is given into a byte buffer.
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        escape_json(self.0, text);
        Ok(())
    }
}

/// RFC 3339 in UTC to the microsecond, as `2026-11-29T23:27:51.238515Z`.
fn write_timestamp(out: &mut Vec<u8>, now: DateTime<Utc>) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        // A leap second shows as second 59 with a sub-second part above a million.
        now.timestamp_subsec_micros().min(999_999)
    );
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

    /// What `log` writes with the JSON format.
    fn json_output(log: impl FnOnce()) -> String {
        labelled_json_output("", log)
    }

    fn labelled_json_output(label: &'static str, log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(JsonLines::new(label, captured.clone()));
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
        let output = labelled_json_output("consumer-1 | ", || {
            info!("one");
            info!("two");
        });
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 2, "{output}");
        for line in lines {
            let json = line.strip_prefix("consumer-1 | ").expect(line);
            serde_json::from_str::<Value>(json).expect(json);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let time = DateTime::from_timestamp(1_577_198_562, 7_000).unwrap();
        let mut out = Vec::new();
        write_timestamp(&mut out, time);
        assert_eq!(out, b"2019-12-24T14:42:42.000007Z");
    }
}

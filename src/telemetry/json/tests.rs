//! The JSON lines: their fields, their escaping, and the same bytes json-subscriber wrote.

use std::{io::Write, sync::Arc};

use parking_lot::Mutex;
use serde_json::Value;
use tracing::{error, info, info_span, warn};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt};

use super::JsonLines;

#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
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
pub(crate) fn output<M>(make_writer: impl FnOnce(Captured) -> M, log: impl FnOnce()) -> String
where
    M: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(JsonLines::new(make_writer(captured.clone())));
    tracing::subscriber::with_default(subscriber, log);
    String::from_utf8(captured.0.lock().clone()).unwrap()
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
    assert_eq!(line["target"], "pipeline::telemetry::json::tests");
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
fn timestamps_are_rfc3339_utc_to_the_microsecond() {
    let lines = json_lines(|| info!("now"));
    let timestamp = lines[0]["timestamp"].as_str().unwrap();
    // As `2026-11-29T23:27:51.238515Z`.
    assert_eq!(timestamp.len(), 27, "{timestamp}");
    assert!(timestamp.ends_with('Z'), "{timestamp}");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect(timestamp);
}

/// `log` run once through each layer; both outputs with every timestamp's value blanked (each
/// reads the clock itself).
fn through_both(log: impl Fn()) -> (String, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(reference::json_layer(captured.clone()));
    tracing::subscriber::with_default(subscriber, &log);
    let theirs = String::from_utf8(captured.0.lock().clone()).unwrap();
    let ours = json_output(log);
    (blank_timestamps(&ours), blank_timestamps(&theirs))
}

fn blank_timestamps(output: &str) -> String {
    const KEY: &str = "\"timestamp\":\"";
    output
        .lines()
        .map(|line| {
            let start = line.find(KEY).expect(line) + KEY.len();
            let end = start + line[start..].find('"').expect(line);
            format!("{}{}\n", &line[..start], &line[end..])
        })
        .collect()
}

/// The consumer's line, and what the other events of the binaries look like.
#[test]
fn writes_the_bytes_json_subscriber_wrote() {
    let (ours, theirs) = through_both(|| {
        let received = "12/24/2019 14:42:42";
        let span = tracing::error_span!(
            "binding_event",
            binding = %"message-queue",
            id = Some("9ed78748-9e55-4aa5-90c0-857fbf2c44e9"),
            trace_id = Some("fd5a164b4c79bb59cad8071f962925c7"),
            span_id = None::<&str>,
        );
        span.in_scope(|| {
            info!(
                duration_ms = 0u64,
                "Hello World -- Received at: {received} -- Finished at: {received}"
            );
            warn!(error = %"bad payload", "binding event rejected");
        });
        info!(addr = %"127.0.0.1:50051", "listening");
        info!(bindings = ?["message-queue"], policy = "app-unavailable", "inbound retry policy");
        info!(
            active = 0u64,
            completed = 3u64,
            consumers = 1u64,
            message_queue = "q",
            "queue status"
        );
        error!(
            error = &std::io::Error::other("gone") as &dyn std::error::Error,
            ratio = 0.25f64,
            nan = f64::NAN,
            big = u128::MAX,
            small = -3i64,
            yes = false,
            "failed"
        );
        tracing::debug!("");
        let outer = info_span!(
            "request",
            trace_id = "outer",
            shared = 1u64,
            later = tracing::field::Empty
        );
        let _outer = outer.enter();
        let inner = info_span!("inner", shared = 2u64, own = "inner");
        outer.record("later", "recorded");
        inner.in_scope(|| info!(own = "event", z = 1u64, a = 2u64, m = 3u64, "nested"));
        outer.record("trace_id", "again");
        inner.in_scope(|| info!("after"));
    });
    assert_eq!(ours, theirs);
    assert_eq!(ours.lines().count(), 9, "{ours}");
}

proptest::proptest! {
    #[test]
    fn eight_bytes_need_escaping_when_one_does(bytes in proptest::array::uniform8(proptest::num::u8::ANY)) {
        let one = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        proptest::prop_assert_eq!(super::needs_escape(u64::from_le_bytes(bytes)), one);
    }

    #[test]
    fn any_text_and_numbers_come_out_the_same(
        text in ".*",
        control in "[\\x00-\\x1f\"\\\\\u{7f}-\u{a0}é日]{0,12}",
        int in proptest::num::i64::ANY,
        unsigned in proptest::num::u64::ANY,
        float in proptest::num::f64::ANY,
        flag in proptest::bool::ANY,
    ) {
        let (ours, theirs) = through_both(|| {
            let span = info_span!("request", trace_id = %text, id = int);
            span.in_scope(|| {
                info!(text = text.as_str(), control = control.as_str(), float, flag, unsigned, debug = ?control, "{text}{control}");
            });
        });
        proptest::prop_assert_eq!(ours, theirs);
    }
}

/// The layer this one replaced, json-subscriber's, kept to show that the bytes did not change.
mod reference {
    use std::fmt;

    use json_subscriber::{FieldWriter, JsonLayer};
    use tracing::{
        Event, Subscriber,
        field::{Field, Visit},
        span::{Attributes, Id, Record},
    };
    use tracing_subscriber::{
        Layer,
        fmt::{MakeWriter, time::SystemTime},
        layer::Context,
        registry::LookupSpan,
    };

    /// One JSON object per event (json-subscriber): `timestamp`, `level`, `target`, the event's
    /// fields (`message` among them), and the fields of the spans it happened in, all at the top
    /// level. tracing-subscriber's own JSON nests span fields under `span`; flat, a log collector
    /// finds `trace_id` in one place on every event of a request. No key is repeated: the event's
    /// own value wins, then the innermost span's. (json-subscriber's own flattening of spans would
    /// add each span's name as `name` and repeat a key the event also has.)
    pub(super) fn json_layer<S, W>(make_writer: W) -> impl Layer<S>
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
}

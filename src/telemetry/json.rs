//! The JSON log line: one object per event, `level`, `target` and `timestamp` first, then the
//! fields of the spans the event happened in (innermost span first, each span's in the order it
//! recorded them), then the event's own fields by name (`message` among them), all at the top
//! level. Flat, a log collector finds a request's `trace_id` in one place on every event of it.
//! No key is repeated: the event's own value wins, then the innermost span's.
//!
//! Hand-written where a crate would do: at zero work the consumer's per-message line is most of
//! what it does besides gRPC, and json-subscriber (which wrote these same bytes) spent about
//! 22,000 instructions on each line, on converting every event and span to `serde_json::Value`s
//! and on writing them out through a UTF-8-checking cursor; this layer writes each value once,
//! straight into a reused buffer, in about a tenth of that (docs/performance.md, row 3).

use std::{cell::RefCell, fmt, io::Write, ops::Range};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{fmt::MakeWriter, layer::Context, registry::LookupSpan};

use super::clock;

/// The layer; its lines go to `make_writer`, one `write_all` each.
pub(super) struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    pub(super) fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Members::with_capacity(attrs.fields().len());
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
            let mut recorded = Members::default();
            values.record(&mut recorded);
            fields.0.update(&recorded);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::default();
        }
        SCRATCH.with(|scratch| {
            // A field's `Debug` that logs comes back here with the scratch in use: it gets
            // one of its own.
            let (mut fresh, mut borrowed);
            let scratch = match scratch.try_borrow_mut() {
                Ok(reused) => {
                    borrowed = reused;
                    &mut *borrowed
                }
                Err(_) => {
                    fresh = Scratch::default();
                    &mut fresh
                }
            };
            scratch.format(event, &ctx);
            let mut writer = self.make_writer.make_writer_for(event.metadata());
            // A log line that cannot be written has nowhere else to go.
            let _ = writer.write_all(&scratch.line);
        });
    }
}

/// A span's fields as JSON, kept for the events inside it.
struct SpanFields(Members);

/// Fields as JSON values, in the order recorded: each value's text in one buffer.
#[derive(Debug, Default)]
struct Members {
    text: Vec<u8>,
    entries: Vec<(&'static str, Range<usize>)>,
}

impl Members {
    /// Room for `fields` values of a typical size (an id, a trace id), so that recording them
    /// allocates once.
    fn with_capacity(fields: usize) -> Self {
        Self {
            text: Vec::with_capacity(fields * 48),
            entries: Vec::with_capacity(fields),
        }
    }

    fn clear(&mut self) {
        self.text.clear();
        self.entries.clear();
    }

    fn push(&mut self, field: &Field, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.text.len();
        write(&mut self.text);
        self.entries.push((field.name(), start..self.text.len()));
    }

    fn value(&self, range: &Range<usize>) -> &[u8] {
        &self.text[range.clone()]
    }

    /// Takes `recorded`'s values: a field known already keeps its place with the new value,
    /// a new one goes last.
    fn update(&mut self, recorded: &Members) {
        let mut updated = Members::default();
        for (name, range) in &self.entries {
            let value = match recorded.entries.iter().rev().find(|(n, _)| n == name) {
                Some((_, new)) => recorded.value(new),
                None => self.value(range),
            };
            updated.add(name, value);
        }
        for (name, range) in &recorded.entries {
            if !self.entries.iter().any(|(n, _)| n == name) {
                updated.add(name, recorded.value(range));
            }
        }
        *self = updated;
    }

    fn add(&mut self, name: &'static str, value: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(value);
        self.entries.push((name, start..self.text.len()));
    }
}

impl Visit for Members {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, |out| {
            // As serde_json writes a float; a non-finite one is null.
            let _ = serde::Serialize::serialize(&value, &mut serde_json::Serializer::new(out));
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, |out| {
            if value < 0 {
                out.push(b'-');
            }
            push_u64(out, value.unsigned_abs());
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, |out| push_u64(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, |out| {
            out.extend_from_slice(if value { b"true" } else { b"false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, |out| push_string(out, value));
    }

    /// Everything else (`message`, `?value`, `%value`, errors, 128-bit integers) as the text it
    /// formats to.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, |out| {
            out.push(b'"');
            let _ = fmt::Write::write_fmt(&mut Escaped(out), format_args!("{value:?}"));
            out.push(b'"');
        });
    }
}

/// What one thread formats its lines in, reused from line to line.
#[derive(Default)]
struct Scratch {
    line: Vec<u8>,
    event: Members,
    /// The names written so far.
    written: Vec<&'static str>,
}

impl Scratch {
    fn format<S>(&mut self, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Self {
            line,
            event: fields,
            written,
        } = self;
        line.clear();
        fields.clear();
        written.clear();
        event.record(fields);
        let metadata = event.metadata();
        line.extend_from_slice(b"{\"level\":\"");
        line.extend_from_slice(metadata.level().as_str().as_bytes());
        line.extend_from_slice(b"\",\"target\":");
        push_string(line, metadata.target());
        line.extend_from_slice(b",\"timestamp\":\"");
        clock::write_now(line);
        line.push(b'"');
        written.extend(fields.entries.iter().map(|(name, _)| *name));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let extensions = span.extensions();
                let Some(SpanFields(span_fields)) = extensions.get::<SpanFields>() else {
                    continue;
                };
                for (name, range) in &span_fields.entries {
                    if !written.contains(name) {
                        written.push(name);
                        push_member(line, name, span_fields.value(range));
                    }
                }
            }
        }
        // By name, as a map sorts them; of a name recorded twice, the last value.
        fields.entries.sort_by_key(|(name, _)| *name);
        for (i, (name, range)) in fields.entries.iter().enumerate() {
            if fields
                .entries
                .get(i + 1)
                .is_none_or(|(next, _)| next != name)
            {
                push_member(line, name, fields.value(range));
            }
        }
        line.extend_from_slice(b"}\n");
    }
}

/// `,"name":value`.
fn push_member(line: &mut Vec<u8>, name: &str, value: &[u8]) {
    line.push(b',');
    push_string(line, name);
    line.push(b':');
    line.extend_from_slice(value);
}

/// `value` in decimal.
fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `text` as a JSON string, quoted and escaped.
fn push_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape(out, text);
    out.push(b'"');
}

/// Appends `text` escaped as serde_json escapes a string: `"` and `\`, and the control
/// characters, as `\n`, `\t`, ... or `\u00XX`; everything else (non-ASCII too) as it is. Eight
/// bytes are checked at a time, as most text has nothing to escape.
fn escape(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8)
            && !needs_escape(u64::from_le_bytes(word.try_into().unwrap_or_default()))
        {
            i += 8;
            continue;
        }
        let byte = bytes[i];
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\` (exact: the
/// bit tricks find whether such a byte exists, never a false one).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    (below(word, 0x20)
        | zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Formats into a JSON string's inside: what is written is escaped on its way in.
struct Escaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        escape(self.0, text);
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests;

//! W3C Trace Context (`traceparent`, `tracestate`): only what this project needs, which is to read
//! them from a request's HTTP headers or gRPC metadata, check them before forwarding, pull the
//! trace id out for logs, and open a span that keeps those fields whatever the log filter.
//! When spans are exported (see `telemetry`), it also turns a received context into an exported
//! span's parent, and an exported span into the context sent on a call made inside it.

use std::{
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of exported spans ([`otel_span!`]); only they are exported, and they are
/// not logged.
pub const OTEL_TARGET: &str = "otel";

/// Set once the exporter is installed; until then [`otel_span!`] opens nothing.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_exporting() {
    EXPORTING.store(true, Ordering::Release);
}

/// Whether spans are exported in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// The header / gRPC metadata key that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor-specific trace state, forwarded together with `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// A syntactically valid `traceparent` value: `version-traceid-parentid-flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parses a header value; `None` for anything the W3C spec says to ignore
    /// (wrong lengths, non-lowercase-hex, all-zero ids, version `ff`).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(parent_id, 16)
            && parent_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then(|| Self(value.to_owned()))
    }

    /// Reads a valid `traceparent` from HTTP headers; `None` if absent or invalid.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        Self::parse(headers.get(TRACEPARENT)?.to_str().ok()?)
    }

    /// Reads a valid `traceparent` from gRPC metadata (which are HTTP/2 headers).
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        Self::from_headers(metadata.as_ref())
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The whole header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request's trace context: a valid `traceparent` and the `tracestate` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: TraceParent,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Reads both headers; `None` without a valid `traceparent`, since W3C says a `tracestate`
    /// alone is to be ignored.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let traceparent = TraceParent::from_headers(headers)?;
        let tracestate = headers
            .get(TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Some(Self {
            traceparent,
            tracestate,
        })
    }

    /// Reads both from gRPC metadata (which are HTTP/2 headers).
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        Self::from_headers(metadata.as_ref())
    }

    /// The `traceparent`.
    pub fn traceparent(&self) -> &TraceParent {
        &self.traceparent
    }

    /// The `tracestate`, if the request had one.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// As an OpenTelemetry parent from another process.
    fn to_otel(&self) -> opentelemetry::Context {
        let value = self.traceparent.as_str();
        // Parsed already: the fields are where version 00 puts them, in lowercase hex.
        let trace_id = TraceId::from_hex(&value[3..35]).unwrap_or(TraceId::INVALID);
        let span_id = SpanId::from_hex(&value[36..52]).unwrap_or(SpanId::INVALID);
        let flags = u8::from_str_radix(&value[53..55], 16).unwrap_or(0);
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
        opentelemetry::Context::new().with_remote_span_context(context)
    }

    /// The context a call made inside the span `context` belongs to carries: that span's id
    /// as the parent id, and the trace state it inherited.
    fn from_span_context(context: &SpanContext) -> Option<Self> {
        if !context.is_valid() {
            return None;
        }
        let traceparent = format!(
            "00-{:032x}-{:016x}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        );
        let tracestate = context.trace_state().header();
        Some(Self {
            traceparent: TraceParent::parse(&traceparent)?,
            tracestate: (!tracestate.is_empty()).then_some(tracestate),
        })
    }
}

impl From<TraceParent> for TraceContext {
    /// A `traceparent` received without its `tracestate`.
    fn from(traceparent: TraceParent) -> Self {
        Self {
            traceparent,
            tracestate: None,
        }
    }
}

/// A gRPC path's span name and its `rpc.service` / `rpc.method` attributes, as OpenTelemetry's
/// conventions name them: `/package.Service/Method` is the span `package.Service/Method`.
pub fn rpc_name(path: &str) -> (&str, &str, &str) {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    (name, service, method)
}

/// Parents `span`, an exported span (see [`otel_span!`]), on `remote`, the context a caller sent.
/// Without one, `span` starts a trace.
pub fn set_remote_parent(span: &tracing::Span, remote: Option<&TraceContext>) {
    if let Some(remote) = remote
        && !span.is_none()
    {
        // Fails only for a span the exporter does not see, which then has no parent to set.
        let _ = span.set_parent(remote.to_otel());
    }
}

/// Parents `span`, an exported span, on `parent`, an exported span's context of this process
/// (captured with [`current`], so that work outliving a request still joins its trace).
pub fn set_parent(span: &tracing::Span, parent: &opentelemetry::Context) {
    if !span.is_none() && parent.has_active_span() {
        let _ = span.set_parent(parent.clone());
    }
}

/// The context of the exported span being run, if any, to parent later work on.
pub fn current() -> opentelemetry::Context {
    if exporting() {
        opentelemetry::Context::current()
    } else {
        opentelemetry::Context::new()
    }
}

/// The trace id of a context from [`current`], if it has a span.
pub fn trace_id_of(context: &opentelemetry::Context) -> Option<String> {
    let span = context.span();
    let context = span.span_context();
    context
        .is_valid()
        .then(|| format!("{:032x}", context.trace_id()))
}

/// The trace and span ids of `span`, an exported span, for the log lines inside it.
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let context = otel.span_context();
    context.is_valid().then(|| {
        (
            format!("{:032x}", context.trace_id()),
            format!("{:016x}", context.span_id()),
        )
    })
}

/// What a call made inside `span` carries: the exported span's own context when there is one
/// (so the callee's span becomes its child), else `received`, forwarded unchanged.
pub fn outgoing(span: &tracing::Span, received: Option<&TraceContext>) -> Option<TraceContext> {
    if !span.is_none() {
        let context = span.context();
        if let Some(own) = TraceContext::from_span_context(context.span().span_context()) {
            return Some(own);
        }
    }
    received.cloned()
}

/// Ends `span`'s status as OK, or as an error with `description`.
pub fn set_status(span: &tracing::Span, error: Option<String>) {
    if span.is_none() {
        return;
    }
    span.set_status(match error {
        None => Status::Ok,
        Some(description) => Status::error(description),
    });
}

/// Sets an attribute of `span`, an exported span, known only once its work is done.
pub fn set_attribute(
    span: &tracing::Span,
    key: &'static str,
    value: impl Into<opentelemetry::Value>,
) {
    if !span.is_none() {
        span.set_attribute(key, value);
    }
}

/// A span whose fields every log event inside it carries, e.g. a request's `trace_id`.
///
/// Same arguments as `tracing::error_span!`, whose level it uses: ERROR is the span's level only
/// so that it is enabled whenever any event inside is. A span at INFO would be filtered out under
/// `RUST_LOG=warn` and take its fields with it, leaving warnings without their trace id.
#[macro_export]
macro_rules! context_span {
    ($($arg:tt)+) => {
        ::tracing::error_span!($($arg)+)
    };
}

/// Opens a span to export (an [`tracing::Span::none`] when nothing is exported): name, kind
/// (`"server"`, `"client"`, ...), then attributes as `tracing` fields, e.g.
/// `otel_span!("producer.v1.Producer/Produce", "server", rpc.system = "grpc")`. It has no
/// `tracing` parent; give it one with [`set_remote_parent`] or [`set_parent`]. Like
/// [`context_span!`], at ERROR level so that log filters leave it enabled.
#[macro_export]
macro_rules! otel_span {
    ($name:expr, $kind:expr $(, $($field:tt)+)?) => {
        if $crate::trace_context::exporting() {
            ::tracing::error_span!(
                target: $crate::trace_context::OTEL_TARGET,
                parent: None,
                "otel",
                otel.name = $name,
                otel.kind = $kind
                $(, $($field)+)?
            )
        } else {
            ::tracing::Span::none()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_grpc_path_names_its_span_service_and_method() {
        assert_eq!(
            rpc_name("/dapr.proto.runtime.v1.Dapr/InvokeBinding"),
            (
                "dapr.proto.runtime.v1.Dapr/InvokeBinding",
                "dapr.proto.runtime.v1.Dapr",
                "InvokeBinding"
            )
        );
        assert_eq!(rpc_name("/odd"), ("odd", "odd", ""));
    }

    #[test]
    fn parses_the_spec_example() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.as_str(), VALID);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_traceparent_and_tracestate_from_http_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        assert_eq!(
            TraceContext::from_headers(&headers),
            None,
            "tracestate alone"
        );
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        assert_eq!(TraceParent::from_headers(&headers), None);
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.insert(TRACEPARENT, VALID.parse().unwrap());
        let context = TraceContext::from_headers(&headers).unwrap();
        assert_eq!(context.traceparent().as_str(), VALID);
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn reads_traceparent_and_tracestate_from_grpc_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(TraceParent::from_metadata(&metadata), None);
        metadata.insert(TRACEPARENT, VALID.parse().unwrap());
        assert_eq!(
            TraceParent::from_metadata(&metadata).map(|tp| tp.trace_id().to_owned()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned())
        );
        let context = TraceContext::from_metadata(&metadata).unwrap();
        assert_eq!(context.tracestate(), None);
        metadata.insert(TRACESTATE, "rojo=00f067aa0ba902b7".parse().unwrap());
        let context = TraceContext::from_metadata(&metadata).unwrap();
        assert_eq!(context.tracestate(), Some("rojo=00f067aa0ba902b7"));
    }

    #[test]
    fn context_span_is_enabled_under_a_warn_filter() {
        use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt};
        let subscriber = tracing_subscriber::registry().with(LevelFilter::WARN);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!crate::context_span!("request", trace_id = "x").is_disabled());
            assert!(tracing::info_span!("request", trace_id = "x").is_disabled());
        });
    }

    #[test]
    fn a_received_context_becomes_a_remote_parent_and_back() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, VALID.parse().unwrap());
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let received = TraceContext::from_headers(&headers).unwrap();
        let parent = received.to_otel();
        let span = parent.span();
        let context = span.span_context();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", context.span_id()), "00f067aa0ba902b7");
        // What a call made in a span with that context would send: the same fields.
        assert_eq!(TraceContext::from_span_context(context), Some(received));
        assert_eq!(
            trace_id_of(&parent).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of(&opentelemetry::Context::new()), None);
        assert_eq!(
            TraceContext::from_span_context(&SpanContext::empty_context()),
            None
        );
    }

    #[test]
    fn nothing_is_opened_or_sent_of_our_own_when_nothing_is_exported() {
        // No exporter in unit tests: the macro opens nothing, and calls forward what came.
        assert!(!exporting());
        let span = crate::otel_span!("name", "server", rpc.system = "grpc");
        assert!(span.is_none());
        assert_eq!(ids(&span), None);
        let received = TraceContext::from(TraceParent::parse(VALID).unwrap());
        assert_eq!(outgoing(&span, Some(&received)), Some(received));
        assert_eq!(outgoing(&span, None), None);
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let tp = TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
            .unwrap();
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

//! W3C Trace Context (`traceparent`, `tracestate`): only what this project needs, which is to read
//! them from a request's HTTP headers or gRPC metadata, check them before forwarding, pull the
//! trace id out for logs, and open a span that keeps those fields whatever the log filter.
//! When spans are exported (see `telemetry`), it also turns a received context into an exported
//! span's parent, and an exported span into the context sent on a call made inside it: both
//! through the OpenTelemetry SDK's W3C propagator, and both on values this module checked first.
//!
//! The check itself ([`TraceParent::parse`]) is not the propagator's: its parser takes values the
//! W3C specification says to ignore (a trace id of 31 digits, which `u128::from_str_radix`
//! accepts, a `+` sign, spaces around the value, a version-00 value ending in `-`), and those must
//! not be forwarded. Nor does the propagator forward what it received: it writes `traceparent`
//! anew (reserved flags zeroed, a later version's extra fields dropped) and `tracestate` reparsed
//! (an invalid one becomes empty). A process that exports no span forwards both headers as they
//! came.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Status, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
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

    /// As an OpenTelemetry parent from another process, read by the SDK's propagator from the
    /// values [`TraceParent::parse`] accepted.
    fn to_otel(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }

    /// The context a call made inside `context`'s span carries: that span's id as the parent id,
    /// and the trace state it inherited, as the SDK's propagator writes them; `None` without a
    /// valid span.
    fn from_otel(context: &opentelemetry::Context) -> Option<Self> {
        let mut written = Written::default();
        TraceContextPropagator::new().inject_context(context, &mut written);
        Some(Self {
            traceparent: TraceParent::parse(&written.traceparent?)?,
            tracestate: written.tracestate,
        })
    }
}

/// What the propagator reads when a received context parents a span.
impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent.as_str()),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// What the propagator writes for a call made inside a span. It writes `tracestate` even when
/// empty; an empty one is not sent.
#[derive(Default)]
struct Written {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = (!value.is_empty()).then_some(value),
            _ => {}
        }
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
    if !span.is_none()
        && let Some(own) = TraceContext::from_otel(&span.context())
    {
        return Some(own);
    }
    received.cloned()
}

/// Ends `span`, the exported span of one gRPC call, client or server side, with the call's
/// outcome: `rpc.grpc.status_code`, and the status OK, or an error `Code: message` for `error`
/// (whatever its code, every one but OK is an error on either side).
pub fn end_grpc_span(span: &tracing::Span, error: Option<&tonic::Status>) {
    if span.is_none() {
        return;
    }
    let code = error.map_or(tonic::Code::Ok, tonic::Status::code);
    span.set_attribute("rpc.grpc.status_code", code as i64);
    span.set_status(match error {
        Some(status) if code != tonic::Code::Ok => {
            Status::error(format!("{code:?}: {}", status.message()))
        }
        _ => Status::Ok,
    });
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

/// Opens the exported span of one gRPC call of `path` (`/package.Service/Method`), as
/// [`otel_span!`] does, named and with `rpc.system`, `rpc.service` and `rpc.method` as
/// OpenTelemetry's conventions have them ([`rpc_name`]): kind (`"server"`, `"client"`), then
/// further attributes as `tracing` fields, e.g.
/// `grpc_span!(path, "server", messaging.operation.type = "process")`.
#[macro_export]
macro_rules! grpc_span {
    ($path:expr, $kind:expr $(, $($field:tt)+)?) => {{
        let (name, service, method) = $crate::trace_context::rpc_name($path);
        $crate::otel_span!(
            name,
            $kind,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method
            $(, $($field)+)?
        )
    }};
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
        assert_eq!(TraceContext::from_otel(&parent), Some(received));
        assert_eq!(
            trace_id_of(&parent).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of(&opentelemetry::Context::new()), None);
        assert_eq!(
            TraceContext::from_otel(&opentelemetry::Context::new()),
            None
        );
    }

    #[test]
    fn a_span_of_ours_zeroes_reserved_flags_and_drops_an_invalid_tracestate() {
        let mut headers = http::HeaderMap::new();
        let flagged = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";
        headers.insert(TRACEPARENT, flagged.parse().unwrap());
        headers.insert(TRACESTATE, "not a tracestate".parse().unwrap());
        let received = TraceContext::from_headers(&headers).unwrap();
        // Forwarded as it came when no span of ours is in between.
        assert_eq!(
            outgoing(&tracing::Span::none(), Some(&received)),
            Some(received.clone())
        );
        assert_eq!(received.tracestate(), Some("not a tracestate"));
        // Written anew for a call inside a span of ours: W3C says to zero unknown flags.
        let own = TraceContext::from_otel(&received.to_otel()).unwrap();
        assert_eq!(own.traceparent().as_str(), VALID);
        assert_eq!(own.tracestate(), None);
    }

    #[test]
    fn the_propagator_takes_what_the_check_refuses() {
        // Why TraceParent::parse stays: the propagator accepts these, W3C says to ignore them.
        for lax in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut headers = std::collections::HashMap::new();
            headers.insert(TRACEPARENT.to_owned(), lax.to_owned());
            let context = TraceContextPropagator::new().extract(&headers);
            assert!(context.span().span_context().is_valid(), "{lax:?}");
            assert_eq!(TraceParent::parse(lax), None, "{lax:?}");
        }
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

//! W3C Trace Context (`traceparent`, `tracestate`): only what this project needs, which is to read
//! them from a request's HTTP headers or gRPC metadata, check them before forwarding, pull the
//! trace id out for logs, and open a span that keeps those fields whatever the log filter.

use tonic::metadata::MetadataMap;

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

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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
    fn accepts_future_versions_with_extra_fields() {
        let tp = TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
            .unwrap();
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

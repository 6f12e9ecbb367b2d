//! Logging: `tracing` to stdout, filtered by `RUST_LOG`, as text or JSON lines (`LOG_FORMAT=json`,
//! [`json`]: the fields of an event's spans, a request's `trace_id`, ..., sit beside its own).
//! Lines are written in batches by a thread of their own ([`output`]), never dropped, and flushed
//! at exit; timestamps are formatted once a second ([`clock`]).
//! Tracing: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, the spans of
//! target [`OTEL_TARGET`] are exported over OTLP/gRPC by a batch exporter whose bounded queue
//! drops (and counts, [`spans_dropped`]) rather than blocks; without it no exporter exists.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor},
};
use prometheus_client::metrics::counter::Counter;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{LevelFilter, Targets},
    fmt::MakeWriter,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub mod clock;
mod json;
pub mod output;

use output::LogOutput;

pub use crate::trace_context::OTEL_TARGET;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging and tracing options shared by every binary. The OpenTelemetry SDK itself also reads
/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES`, the other
/// `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` settings (timeout, headers, compression).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `info,producer=debug`.
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/gRPC collector to export spans to, e.g. `http://otel-collector:4317`. Unset (or
    /// empty): no span is exported and no connection is made.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// Like OTEL_EXPORTER_OTLP_ENDPOINT, for spans only; wins over it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_traces_endpoint: Option<OtlpEndpoint>,
    /// The exported spans' `service.name`; by default the program's own (`producer`,
    /// `consumer`, `devstack-sidecar`), unless OTEL_RESOURCE_ATTRIBUTES names one.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped (and counted in
    /// `otel_spans_dropped_total`) rather than ever holding a request up.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub otel_max_queue_size: u32,
}

/// An OTLP endpoint as given; empty means unset, as the OpenTelemetry spec says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint(Option<http::Uri>);

fn otlp_endpoint(value: &str) -> Result<OtlpEndpoint, String> {
    if value.trim().is_empty() {
        return Ok(OtlpEndpoint(None));
    }
    let uri: http::Uri = value.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(OtlpEndpoint(Some(uri))),
        Some("https") => Err(
            "TLS is not built in: export to a collector over plain http:// (e.g. a sidecar or in-cluster collector)"
                .to_owned(),
        ),
        _ => Err("expected http://HOST:PORT".to_owned()),
    }
}

impl LogArgs {
    /// Where spans go: the traces endpoint, else the generic one.
    pub fn traces_endpoint(&self) -> Option<&http::Uri> {
        [&self.otlp_traces_endpoint, &self.otlp_endpoint]
            .into_iter()
            .find_map(|e| e.as_ref().and_then(|e| e.0.as_ref()))
    }
}

/// How long the spans still queued at exit may take to export, at most. The services give the
/// flush what their drain left of DRAIN_TIMEOUT, up to this, so the exit stays within the drain
/// time (and the pods' terminationGracePeriodSeconds).
pub const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// How long the log lines still buffered at exit may take to be written, at most: stdout that
/// nobody reads must not hold the exit up.
pub const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// The log output and the span exporter, if any, for a bounded flush at exit. The log lines are
/// flushed when it is dropped, on every way out of `main`.
#[must_use = "call shutdown at exit, or buffered spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: LogOutput,
}

impl Telemetry {
    /// Exports the spans still queued, giving up after `limit`: a collector that is down or
    /// slow never holds the exit up for longer. Then the log lines, when dropped.
    pub async fn shutdown(mut self, limit: Duration) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK's shutdown blocks its caller while the export thread works.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
        match tokio::time::timeout(limit + Duration::from_millis(100), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "spans not all exported at exit"),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(?limit, "spans not all exported at exit: flush timed out")
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.logs.finish(LOG_FLUSH_LIMIT);
    }
}

/// Installs the global subscriber, and the span exporter when an endpoint is set. Call once,
/// first thing in `main` (inside the Tokio runtime, which the exporter uses), after parsing
/// config; `service` is the default `service.name`.
pub fn init(args: &LogArgs, service: &'static str) -> anyhow::Result<Telemetry> {
    let logs = LogOutput::stdout();
    install(args, service, logs.clone(), logs)
}

/// Like [`init`], with every line starting with `label` (the local stack labels its own lines).
pub fn init_labelled(
    args: &LogArgs,
    service: &'static str,
    label: &'static str,
) -> anyhow::Result<Telemetry> {
    let logs = LogOutput::stdout();
    let labelled = Labelled {
        label,
        make_writer: logs.clone(),
    };
    install(args, service, labelled, logs)
}

/// Installs the subscriber writing through `make_writer`, which ends in `logs`.
fn install<W>(
    args: &LogArgs,
    service: &'static str,
    make_writer: W,
    logs: LogOutput,
) -> anyhow::Result<Telemetry>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.filter)
        .with_context(|| format!("invalid RUST_LOG filter {:?}", args.filter))?;
    let provider = args
        .traces_endpoint()
        .map(|endpoint| tracer_provider(endpoint, args, service))
        .transpose()?;
    // Exported spans are not logged; logged spans are not exported: each kind has its own fields.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(OTEL_TARGET, Level::TRACE))
    });
    let logged = provider.as_ref().map(|_| {
        Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target(OTEL_TARGET, LevelFilter::OFF)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(make_writer)
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_filter(logged),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(json::JsonLines::new(make_writer).with_filter(logged))
            .try_init(),
    };
    result
        .map_err(|e| anyhow::anyhow!(e))
        .context("installing the log subscriber")?;
    if provider.is_some() {
        crate::trace_context::set_exporting();
    }
    Ok(Telemetry { provider, logs })
}

/// Spans dropped because the export queue was full, for each service's metrics
/// (`otel_spans_dropped_total`). One per process, as the exporter is.
pub fn spans_dropped() -> Counter {
    static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
    DROPPED.clone()
}

fn tracer_provider(
    endpoint: &http::Uri,
    args: &LogArgs,
    service: &'static str,
) -> anyhow::Result<SdkTracerProvider> {
    // Lazily connected: nothing is dialled until the first batch is exported.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_string())
        .build()
        .with_context(|| format!("building the OTLP span exporter for {endpoint}"))?;
    let queue = usize::try_from(args.otel_max_queue_size).unwrap_or(usize::MAX);
    let queued = Arc::new(AtomicUsize::new(0));
    // The SDK's other OTEL_BSP_* settings (schedule delay, batch size) come from the environment.
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(queue)
        .build();
    let batch = BatchSpanProcessor::new(
        Counted {
            inner: exporter,
            queued: Arc::clone(&queued),
        },
        config,
    );
    let processor = Bounded {
        inner: batch,
        queued,
        limit: queue,
        dropped: spans_dropped(),
    };
    // OTEL_RESOURCE_ATTRIBUTES is read by the SDK; OTEL_SERVICE_NAME wins over it, and the
    // program's name applies only when neither names the service.
    let resource = Resource::builder().build();
    let named = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let service_name = match (&args.otel_service_name, named) {
        (Some(name), _) if !name.is_empty() => Some(name.clone()),
        (_, true) => None,
        _ => Some(service.to_owned()),
    };
    let resource = match service_name {
        Some(name) => Resource::builder()
            .with_attribute(KeyValue::new("service.name", name))
            .build(),
        None => resource,
    };
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Bounds the spans between their end and their export at `limit`, dropping and counting the
/// rest. The SDK's batch processor drops too when full, but only logs it; with its queue as
/// long as this bound, it never has to.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    /// Spans handed to `inner` and not yet to the exporter.
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: Counter,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter behind [`Bounded`]: spans reaching it have left the batch processor's queue.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Writes each log event in one piece, `label` before every line.
struct Labelled<M> {
    label: &'static str,
    make_writer: M,
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
    use std::sync::Arc;

    use parking_lot::Mutex;
    use serde_json::Value;
    use tracing::info;

    use super::{json::tests::output, *};

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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn parse(args: &[&str]) -> Result<LogArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from([&["test"], args].concat()).map(|cli| cli.log)
    }

    #[test]
    fn the_traces_endpoint_wins_and_empty_means_unset() {
        assert_eq!(parse(&[]).unwrap().traces_endpoint(), None);
        assert_eq!(
            parse(&["--otlp-endpoint", ""]).unwrap().traces_endpoint(),
            None
        );
        let args = parse(&["--otlp-endpoint", "http://collector:4317"]).unwrap();
        assert_eq!(
            args.traces_endpoint().map(ToString::to_string),
            Some("http://collector:4317/".to_owned())
        );
        let args = parse(&[
            "--otlp-endpoint",
            "http://collector:4317",
            "--otlp-traces-endpoint",
            "http://traces:4317",
        ])
        .unwrap();
        assert_eq!(
            args.traces_endpoint().map(|e| e.host()),
            Some(Some("traces"))
        );
        for bad in [
            "collector:4317",
            "https://collector:4317",
            "http://",
            "grpc://x:1",
        ] {
            assert!(parse(&["--otlp-endpoint", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--otel-max-queue-size", "0"]).is_err());
    }

    /// A processor that keeps what it is handed, standing in for the batch processor.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// An exporter that takes everything at once.
    #[derive(Debug)]
    struct Taken;

    impl opentelemetry_sdk::trace::SpanExporter for Taken {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            Ok(())
        }
    }

    fn span_data() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_until_an_export_makes_room() {
        use opentelemetry_sdk::trace::SpanExporter as _;
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Counter::default();
        let bounded = Bounded {
            inner: Kept::default(),
            queued: Arc::clone(&queued),
            limit: 2,
            dropped: dropped.clone(),
        };
        let exporter = Counted {
            inner: Taken,
            queued: Arc::clone(&queued),
        };
        for _ in 0..5 {
            bounded.on_end(span_data());
        }
        assert_eq!(bounded.inner.0.lock().len(), 2);
        assert_eq!(dropped.get(), 3);
        let batch = std::mem::take(&mut *bounded.inner.0.lock());
        exporter.export(batch).await.unwrap();
        bounded.on_end(span_data());
        assert_eq!(bounded.inner.0.lock().len(), 1);
        assert_eq!(dropped.get(), 3);
    }
}

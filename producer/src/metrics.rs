//! The producer's Prometheus metrics, served on `GET /metrics` (OpenMetrics text, which
//! Prometheus scrapes natively).

use std::time::Duration;

use pipeline::http_server::ConnectionMetrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tonic::Code;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    binding: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: &'static str,
    code: &'static str,
}

/// Every producer metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    retries: Family<MessageLabels, Counter>,
    invoke_duration: Histogram,
    batches: Gauge,
    batches_refused: Counter,
    http: Family<HttpLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
    /// The port's connections, and those closed by the HTTP limits.
    pub connections: ConnectionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("producer");
        let messages = Family::default();
        registry.register(
            "messages",
            "Messages handed to the sidecar (code OK) or given up on, by binding and final gRPC code",
            messages.clone(),
        );
        let retries = Family::default();
        registry.register(
            "invoke_binding_retries",
            "InvokeBinding calls retried, by binding and the gRPC code that caused the retry",
            retries.clone(),
        );
        // 250 µs .. ~8 s: loopback calls take well under a millisecond, a struggling broker seconds.
        let invoke_duration = Histogram::new(exponential_buckets(0.00025, 2.0, 16));
        registry.register(
            "invoke_binding_duration_seconds",
            "Duration of one InvokeBinding call to the sidecar (each attempt)",
            invoke_duration.clone(),
        );
        let batches = Gauge::default();
        registry.register("batches_in_progress", "Batches being sent", batches.clone());
        let batches_refused = Counter::default();
        registry.register(
            "batches_refused",
            "Batches refused because MAX_BATCHES were already in progress",
            batches_refused.clone(),
        );
        let http = Family::default();
        registry.register(
            "http_requests",
            "REST requests, by route and status",
            http.clone(),
        );
        let grpc = Family::default();
        registry.register(
            "grpc_requests",
            "producer.v1 gRPC requests, by method and code",
            grpc.clone(),
        );
        registry.register(
            "otel_spans_dropped",
            "Finished spans dropped because the OTLP export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)",
            pipeline::telemetry::spans_dropped(),
        );
        let connections = ConnectionMetrics::default();
        connections.register(&mut registry);
        Self {
            registry,
            messages,
            retries,
            invoke_duration,
            batches,
            batches_refused,
            http,
            grpc,
            connections,
        }
    }
}

impl Metrics {
    pub fn message(&self, binding: &str, code: Code) {
        self.messages
            .get_or_create(&MessageLabels {
                binding: binding.to_owned(),
                code: code_name(code),
            })
            .inc();
    }

    pub fn retry(&self, binding: &str, code: Code) {
        self.retries
            .get_or_create(&MessageLabels {
                binding: binding.to_owned(),
                code: code_name(code),
            })
            .inc();
    }

    pub fn invoke_duration(&self, duration: Duration) {
        self.invoke_duration.observe(duration.as_secs_f64());
    }

    /// Counts a batch as in progress until the guard is dropped.
    pub fn batch_started(&self) -> BatchGuard {
        self.batches.inc();
        BatchGuard(self.batches.clone())
    }

    pub fn batch_refused(&self) {
        self.batches_refused.inc();
    }

    pub fn http_request(&self, route: &str, status: u16) {
        self.http
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    pub fn grpc_request(&self, method: &'static str, code: Code) {
        self.grpc
            .get_or_create(&GrpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        pipeline::openmetrics::page(&self.registry)
    }
}

/// Decrements `producer_batches_in_progress` when the batch ends, however it ends.
#[derive(Debug)]
pub struct BatchGuard(Gauge);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The canonical upper-case name of a gRPC code, as other gRPC metrics label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::default();
        m.message("message-queue", Code::Ok);
        m.message("message-queue", Code::Ok);
        m.message("message-queue", Code::Unavailable);
        m.retry("message-queue", Code::Unavailable);
        m.invoke_duration(Duration::from_millis(1));
        let guard = m.batch_started();
        m.http_request("/MessageProducer", 200);
        m.grpc_request("Produce", Code::InvalidArgument);
        let text = m.encode().unwrap();
        for line in [
            r#"producer_messages_total{binding="message-queue",code="OK"} 2"#,
            r#"producer_messages_total{binding="message-queue",code="UNAVAILABLE"} 1"#,
            r#"producer_invoke_binding_retries_total{binding="message-queue",code="UNAVAILABLE"} 1"#,
            "producer_invoke_binding_duration_seconds_count 1",
            "producer_batches_in_progress 1",
            r#"producer_http_requests_total{route="/MessageProducer",status="200"} 1"#,
            r#"producer_grpc_requests_total{method="Produce",code="INVALID_ARGUMENT"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        drop(guard);
        assert!(
            m.encode()
                .unwrap()
                .lines()
                .any(|l| l == "producer_batches_in_progress 0")
        );
    }
}

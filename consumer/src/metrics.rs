//! The consumer's Prometheus metrics, and the small HTTP server that serves them on `/metrics`
//! (its own port, so scraping never competes with daprd's calls on the gRPC port).

use std::{fmt::Write as _, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::State, response::Response, routing::get};
use pipeline::{
    http_server::{self, ConnectionMetrics, HttpLimits},
    openmetrics,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Work durations in seconds: fine-grained below a second for fast work, then up to a minute;
/// 5 s is the default simulated work, and Service Bus's default lock is 60 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 6.0, 7.5, 10.0, 15.0, 30.0, 60.0,
];

/// The `binding` label of events for any binding but the configured one. Event names come from
/// the caller (before the token check, too), so they are not used as label values: a stray
/// caller cannot create unbounded series. Parentheses cannot occur in a Component name.
pub const OTHER_BINDING: &str = "(other)";

/// Why an event was not processed: the `reason` label of `consumer_events_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Missing or wrong `dapr-api-token`.
    Unauthenticated,
    /// An event for a binding this app does not consume.
    UnknownBinding,
    /// The payload is not a `{"text": ...}` message.
    BadPayload,
    /// Turned away because shutdown had started.
    Draining,
    /// The caller went away (or the drain limit ran out) before the event was answered.
    Cancelled,
}

impl Reason {
    const ALL: [Self; 5] = [
        Self::Unauthenticated,
        Self::UnknownBinding,
        Self::BadPayload,
        Self::Draining,
        Self::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::UnknownBinding => "unknown_binding",
            Self::BadPayload => "bad_payload",
            Self::Draining => "draining",
            Self::Cancelled => "cancelled",
        }
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BindingLabels {
    binding: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailedLabels {
    binding: String,
    reason: Reason,
}

/// The consumer's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    binding: String,
    received: Family<BindingLabels, Counter>,
    processed: Family<BindingLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    /// The configured binding's series of `received` and `processed`, held so that counting an
    /// event does not look them up (hashing and a lock) every time.
    configured_received: Counter,
    configured_processed: Counter,
    processing: Histogram,
    in_flight: Gauge,
    draining: Gauge,
    /// The metrics port's connections, and those closed by the HTTP limits.
    pub connections: ConnectionMetrics,
}

impl Metrics {
    /// Metrics for a consumer of `binding`; its series start at 0, so rates and alerts work from
    /// the first scrape.
    pub fn new(binding: &str) -> Self {
        let received = Family::<BindingLabels, Counter>::default();
        let processed = Family::<BindingLabels, Counter>::default();
        let failed = Family::<FailedLabels, Counter>::default();
        let processing = Histogram::new(DURATION_BUCKETS);
        let in_flight = Gauge::default();
        let draining = Gauge::default();

        let mut registry = Registry::default();
        registry.register(
            "consumer_events_received",
            "Binding events received (OnBindingEvent calls)",
            received.clone(),
        );
        registry.register(
            "consumer_events_processed",
            "Binding events worked on and answered OK (the broker completes them)",
            processed.clone(),
        );
        registry.register(
            "consumer_events_failed",
            "Binding events answered with an error (the broker redelivers them), by reason",
            failed.clone(),
        );
        registry.register_with_unit(
            "consumer_event_processing",
            "Time spent working on one event, for processed events",
            Unit::Seconds,
            processing.clone(),
        );
        registry.register(
            "consumer_events_in_flight",
            "Binding events received and not yet answered, working or waiting for a work slot",
            in_flight.clone(),
        );
        registry.register(
            "consumer_draining",
            "1 once shutdown has started and in-flight events are draining, else 0",
            draining.clone(),
        );

        registry.register(
            "consumer_otel_spans_dropped",
            "Finished spans dropped because the OTLP export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)",
            pipeline::telemetry::spans_dropped(),
        );

        let labels = BindingLabels {
            binding: binding.to_owned(),
        };
        // A series exists from its first access.
        let configured_received = received.get_or_create(&labels).clone();
        let configured_processed = processed.get_or_create(&labels).clone();
        for reason in Reason::ALL {
            let labels = FailedLabels {
                binding: binding.to_owned(),
                reason,
            };
            failed.get_or_create(&labels).inc_by(0);
        }
        let connections = ConnectionMetrics::default();
        connections.register(registry.sub_registry_with_prefix("consumer"));
        Self {
            registry,
            binding: binding.to_owned(),
            received,
            processed,
            failed,
            configured_received,
            configured_processed,
            processing,
            in_flight,
            draining,
            connections,
        }
    }

    /// Counts an event for `binding` as received and in flight, until the returned guard settles
    /// it as processed or failed; a guard dropped unsettled counts as [`Reason::Cancelled`].
    pub fn event(&self, binding: &str) -> EventMetrics<'_> {
        let configured = binding == self.binding;
        if configured {
            self.configured_received.inc();
        } else {
            self.received.get_or_create(&other_binding()).inc();
        }
        self.in_flight.inc();
        EventMetrics {
            metrics: self,
            configured,
            settled: false,
        }
    }

    /// Marks the start of the drain.
    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    /// The registry in OpenMetrics text, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        openmetrics::page(&self.registry)
    }
}

/// One event's metrics from arrival to answer; see [`Metrics::event`].
#[derive(Debug)]
pub struct EventMetrics<'a> {
    metrics: &'a Metrics,
    /// For the configured binding, else for [`OTHER_BINDING`].
    configured: bool,
    settled: bool,
}

impl EventMetrics<'_> {
    /// The event was worked on for `work` and answered OK.
    pub fn processed(mut self, work: Duration) {
        self.settled = true;
        if self.configured {
            self.metrics.configured_processed.inc();
        } else {
            self.metrics.processed.get_or_create(&other_binding()).inc();
        }
        self.metrics.processing.observe(work.as_secs_f64());
    }

    /// The event was answered with an error.
    pub fn failed(mut self, reason: Reason) {
        self.settled = true;
        self.count_failure(reason);
    }

    fn count_failure(&self, reason: Reason) {
        let binding = if self.configured {
            self.metrics.binding.clone()
        } else {
            OTHER_BINDING.to_owned()
        };
        let labels = FailedLabels { binding, reason };
        self.metrics.failed.get_or_create(&labels).inc();
    }
}

impl Drop for EventMetrics<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.count_failure(Reason::Cancelled);
        }
        self.metrics.in_flight.dec();
    }
}

fn other_binding() -> BindingLabels {
    BindingLabels {
        binding: OTHER_BINDING.to_owned(),
    }
}

/// Serves `GET /metrics` on `listener`, within `limits`, until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the metrics listener's address")?;
    info!(addr = %addr, "metrics listening");
    let connections = metrics.connections.clone();
    http_server::serve(listener, router(metrics), limits, connections, shutdown).await;
    Ok(())
}

fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    openmetrics::response(metrics.encode())
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{StatusCode, header::CONTENT_TYPE},
    };
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn every_series_starts_at_zero() {
        let text = Metrics::new("message-queue").encode().unwrap();
        for series in [
            r#"consumer_events_received_total{binding="message-queue"}"#,
            r#"consumer_events_processed_total{binding="message-queue"}"#,
            r#"consumer_events_failed_total{binding="message-queue",reason="unauthenticated"}"#,
            r#"consumer_events_failed_total{binding="message-queue",reason="unknown_binding"}"#,
            r#"consumer_events_failed_total{binding="message-queue",reason="bad_payload"}"#,
            r#"consumer_events_failed_total{binding="message-queue",reason="draining"}"#,
            r#"consumer_events_failed_total{binding="message-queue",reason="cancelled"}"#,
            "consumer_event_processing_seconds_count",
            "consumer_events_in_flight",
            "consumer_draining",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert!(text.contains("# UNIT consumer_event_processing_seconds seconds"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn an_event_is_in_flight_until_settled() {
        let metrics = Metrics::new("q");
        let event = metrics.event("q");
        let text = metrics.encode().unwrap();
        assert_eq!(sample(&text, "consumer_events_in_flight"), Some(1.0));
        assert_eq!(
            sample(&text, r#"consumer_events_received_total{binding="q"}"#),
            Some(1.0)
        );
        event.processed(Duration::from_millis(5_001));

        let text = metrics.encode().unwrap();
        assert_eq!(sample(&text, "consumer_events_in_flight"), Some(0.0));
        assert_eq!(
            sample(&text, r#"consumer_events_processed_total{binding="q"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"consumer_event_processing_seconds_bucket{le="5.0"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"consumer_event_processing_seconds_bucket{le="6.0"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "consumer_event_processing_seconds_sum"),
            Some(5.001)
        );
    }

    #[test]
    fn failures_count_by_reason_and_a_dropped_event_is_cancelled() {
        let metrics = Metrics::new("q");
        metrics.event("q").failed(Reason::BadPayload);
        drop(metrics.event("q"));
        let text = metrics.encode().unwrap();
        for (reason, n) in [("bad_payload", 1.0), ("cancelled", 1.0), ("draining", 0.0)] {
            let series =
                format!(r#"consumer_events_failed_total{{binding="q",reason="{reason}"}}"#);
            assert_eq!(sample(&text, &series), Some(n), "{series} in\n{text}");
        }
        assert_eq!(sample(&text, "consumer_events_in_flight"), Some(0.0));
    }

    #[test]
    fn other_bindings_share_one_series() {
        let metrics = Metrics::new("q");
        for name in ["a", "b", "c\"\n"] {
            metrics.event(name).failed(Reason::UnknownBinding);
        }
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"consumer_events_received_total{binding="(other)"}"#
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"consumer_events_failed_total{binding="(other)",reason="unknown_binding"}"#
            ),
            Some(3.0)
        );
        assert!(!text.contains(r#"binding="a""#), "{text}");
    }

    #[test]
    fn draining_turns_to_one() {
        let metrics = Metrics::new("q");
        metrics.set_draining();
        assert_eq!(
            sample(&metrics.encode().unwrap(), "consumer_draining"),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn serves_openmetrics_on_get_metrics_only() {
        let metrics = Arc::new(Metrics::new("q"));
        let response = router(Arc::clone(&metrics))
            .oneshot(http::Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, metrics.encode().unwrap().as_bytes());

        for (method, path) in [("GET", "/"), ("POST", "/metrics")] {
            let response = router(Arc::clone(&metrics))
                .oneshot(
                    http::Request::builder()
                        .method(method)
                        .uri(path)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{method} {path}");
        }
    }
}

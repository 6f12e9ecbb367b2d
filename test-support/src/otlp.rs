//! An OTLP/gRPC trace receiver, as a collector serves it (`opentelemetry-proto`'s generated
//! `TraceService`): keeps every span the binaries export, flattened for assertions, and counts
//! the connections it accepts.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::span::SpanKind,
};
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, transport::Server};

use super::{Served, WAIT};

/// One exported span, with ids in lowercase hex as `traceparent` writes them.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its resource's `service.name`.
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values as text (`Int` and `Bool` in their usual spelling).
    pub attributes: HashMap<String, String>,
    /// `Unset` (0), `Ok` (1) or `Error` (2).
    pub status_code: i32,
    pub status_message: String,
    /// Its resource's attributes, as text.
    pub resource: HashMap<String, String>,
}

impl Span {
    /// An attribute's value; panics naming the span without it.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {self:#?}"))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Time each export call takes before it is answered (a slow collector).
    pub delay: Duration,
}

#[derive(Debug, Default)]
struct Collected {
    behaviour: Behaviour,
    spans: Mutex<Vec<Span>>,
    /// Spans received, to wait on.
    count: watch::Sender<usize>,
}

/// The service, sharing what it collects with the [`Receiver`].
struct Shared(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let collected = &self.0;
        tokio::time::sleep(collected.behaviour.delay).await;
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let kind = span.kind();
                    let status = span.status.unwrap_or_default();
                    received.push(Span {
                        service: service.clone(),
                        kind,
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        status_code: status.code,
                        status_message: status.message,
                        resource: resource.clone(),
                    });
                }
            }
        }
        let n = received.len();
        collected.spans.lock().extend(received);
        collected.count.send_modify(|c| *c += n);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A receiver on an ephemeral loopback port.
pub struct Receiver {
    collected: Arc<Collected>,
    connections: Arc<AtomicUsize>,
    endpoint: String,
    served: Served,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collected = Arc::new(Collected {
            behaviour,
            ..Collected::default()
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let incoming = TcpListenerStream::new(listener).map(move |connection| {
            counted.fetch_add(1, Ordering::SeqCst);
            connection
        });
        let service = TraceServiceServer::new(Shared(Arc::clone(&collected)));
        let served = Served::spawn("the OTLP receiver", |shutdown| {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        });
        Self {
            collected,
            connections,
            endpoint,
            served,
        }
    }

    /// Its address as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.collected.spans.lock().clone()
    }

    /// Waits, at most [`WAIT`], until the spans received include what `pred` looks for; returns
    /// them all. Panics saying `what` was awaited otherwise.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let mut count = self.collected.count.subscribe();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&self.spans()) {
                    return;
                }
                if count.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let spans = self.spans();
        assert!(
            found.is_ok() && pred(&spans),
            "{what}: not among {spans:#?}"
        );
        spans
    }

    pub async fn stop(self) {
        self.served.stop("the OTLP receiver").await;
    }
}

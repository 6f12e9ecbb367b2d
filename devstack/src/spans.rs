//! The spans daprd exports, emitted by devstack's sidecar when spans are exported: the binding's
//! send, a child of the producer's `InvokeBinding` span, and each delivery to the app, a child of
//! the send, whose id the app receives as the parent id in `traceparent`.

use pipeline::trace_context::{self, TRACEPARENT, TraceContext, TraceParent};

use crate::{ids, queue::QueuedMessage};

/// The span of one output binding call (`InvokeBinding` or `POST /v1.0/bindings/...`), parented
/// on the caller's `traceparent`.
pub fn send(binding: &str, received: Option<&TraceParent>) -> tracing::Span {
    let span = pipeline::otel_span!(
        format!("send {binding}"),
        "producer",
        messaging.system = binding,
        messaging.destination.name = binding,
        messaging.operation.type = "send",
    );
    // Not exported: nothing to parent, and nothing to copy per message.
    if !span.is_none() {
        let received = received.cloned().map(TraceContext::from);
        trace_context::set_remote_parent(&span, received.as_ref());
    }
    span
}

/// The span of one delivery of `message` to the app: an RPC client call for a gRPC app, an HTTP
/// one otherwise, parented on the message's send.
pub fn delivery(binding: &str, message: &QueuedMessage, grpc: bool) -> tracing::Span {
    let span = if grpc {
        pipeline::otel_span!(
            "dapr.proto.runtime.v1.AppCallback/OnBindingEvent",
            "client",
            rpc.system = "grpc",
            rpc.service = "dapr.proto.runtime.v1.AppCallback",
            rpc.method = "OnBindingEvent",
            messaging.system = binding,
            messaging.destination.name = binding,
            messaging.operation.type = "receive",
            messaging.message.id = %message.id,
            messaging.message.delivery_count = message.delivery_count,
        )
    } else {
        pipeline::otel_span!(
            format!("POST /{binding}"),
            "client",
            http.request.method = "POST",
            messaging.system = binding,
            messaging.destination.name = binding,
            messaging.operation.type = "receive",
            messaging.message.id = %message.id,
            messaging.message.delivery_count = message.delivery_count,
        )
    };
    if span.is_none() {
        return span;
    }
    // The send's traceparent, which the message keeps as an application property.
    let sent = message
        .envelope
        .properties
        .get(TRACEPARENT)
        .and_then(|tp| TraceParent::parse(tp))
        .map(TraceContext::from);
    trace_context::set_remote_parent(&span, sent.as_ref());
    span
}

/// The `traceparent` to pass on inside `span`: its own when exported, else a new span id of
/// `trace_id`, so every hop still carries the message's trace when no spans are exported.
pub fn traceparent(span: &tracing::Span, trace_id: &str) -> String {
    trace_context::outgoing(span, None).map_or_else(
        || ids::traceparent(trace_id),
        |own| own.traceparent().as_str().to_owned(),
    )
}

/// The trace id `span` belongs to, when exported.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    trace_context::ids(span).map(|(trace_id, _)| trace_id)
}

/// Records the id the queue gave the message `span` sent; copies it only for an exported span.
pub fn enqueued(span: &tracing::Span, id: &str) {
    if !span.is_none() {
        trace_context::set_attribute(span, "messaging.message.id", id.to_owned());
    }
}

/// Ends `span` with the outcome: OK, or `error`.
pub fn end(span: &tracing::Span, error: Option<String>) {
    trace_context::set_status(span, error);
}

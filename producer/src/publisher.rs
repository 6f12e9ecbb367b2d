//! The producer's one connection to its Dapr sidecar: `InvokeBinding` calls over a single
//! long-lived, lazily connected channel that reconnects by itself after the sidecar restarts.
//! Calls that fail with UNAVAILABLE or run past their deadline are retried with backoff, each
//! attempt at a message with the same `MessageId`.

use std::{sync::Arc, time::Duration};

use pipeline::{
    api_token::API_TOKEN_METADATA,
    backoff::Backoff,
    dapr_runtime::INVOKE_BINDING_PATH,
    dapr_v1::{GetMetadataRequest, InvokeBindingRequest, dapr_client::DaprClient},
    message::{MESSAGE_ID_METADATA, OPERATION_CREATE},
    trace_context::{self, TRACEPARENT, TRACESTATE, TraceContext},
};
use tokio::time::Instant;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::{Instrument, debug};

use crate::metrics::Metrics;

/// How a sidecar call failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The sidecar could not be reached (down, restarting, not yet listening).
    #[error("sidecar unreachable: {}", .0.message())]
    Unavailable(#[source] Status),
    /// The call ran past its deadline.
    #[error("sidecar did not answer within the deadline: {}", .0.message())]
    Timeout(#[source] Status),
    /// The sidecar answered with an error (unknown binding, bad token, broker failure ...).
    #[error("sidecar rejected InvokeBinding ({:?}): {}", .0.code(), .0.message())]
    Rejected(#[source] Status),
}

impl From<Status> for PublishError {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::Unavailable => Self::Unavailable(status),
            // A status with a source was made here, from a transport error, not sent by the
            // sidecar: a connection that broke mid-call (the sidecar was killed) comes back as
            // UNKNOWN, a stream cut by the sidecar's GOAWAY as it restarts as INTERNAL ("h2
            // protocol error"). Either way the sidecar never answered the call.
            Code::Unknown | Code::Internal if std::error::Error::source(&status).is_some() => {
                Self::Unavailable(status)
            }
            // tonic reports its own client-side deadline (SIDECAR_TIMEOUT) as CANCELLED.
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout(status),
            _ => Self::Rejected(status),
        }
    }
}

/// Trace context of the request that asked for the messages, for each sidecar call: the received
/// `traceparent` and `tracestate`, forwarded as they came, or, when spans are exported, the
/// request's span, which each call's span is a child of.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    trace_id: Option<String>,
    /// Holds metadata values ready to insert, so each of a batch's calls only clones them.
    forwarded: Option<(MetadataValue<Ascii>, Option<MetadataValue<Ascii>>)>,
    /// The request's exported span, when there is one.
    parent: opentelemetry::Context,
}

impl Trace {
    /// Reads a valid `traceparent` (and its `tracestate`) from HTTP headers or gRPC metadata
    /// (which are HTTP/2 headers); invalid values are dropped, as W3C says. Called inside the
    /// request's span, which it keeps as the parent of the calls' spans.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let parent = trace_context::current();
        let mut trace = TraceContext::from_headers(headers).map_or_else(Self::default, Self::from);
        if let Some(trace_id) = trace_context::trace_id_of(&parent) {
            trace.trace_id = Some(trace_id);
        }
        trace.parent = parent;
        trace
    }

    /// The trace id, for logs.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }
}

impl From<TraceContext> for Trace {
    fn from(context: TraceContext) -> Self {
        let traceparent = context.traceparent();
        let forwarded = MetadataValue::try_from(traceparent.as_str())
            .ok()
            .map(|tp| {
                let ts = context
                    .tracestate()
                    .and_then(|s| MetadataValue::try_from(s).ok());
                (tp, ts)
            });
        Self {
            trace_id: Some(traceparent.trace_id().to_owned()),
            forwarded,
            parent: opentelemetry::Context::new(),
        }
    }
}

impl PublishError {
    /// Whether another attempt may succeed: the sidecar was unreachable or slow. Other errors are
    /// answers, and asking again gets the same answer.
    fn is_transient(&self) -> bool {
        !matches!(self, Self::Rejected(_))
    }

    fn code(&self) -> Code {
        match self {
            Self::Unavailable(s) | Self::Timeout(s) | Self::Rejected(s) => s.code(),
        }
    }
}

/// How `InvokeBinding` calls that failed transiently are retried (SIDECAR_RETRIES and the
/// backoff settings). A retry after a deadline can send a message twice (the sidecar may have
/// enqueued it before answering too late); every attempt carries the message's one `MessageId`, so
/// a queue with duplicate detection keeps one copy, and one without it has at-least-once delivery.
#[derive(Debug, Clone, Copy)]
pub struct SidecarRetryPolicy {
    /// Attempts after the first; 0 disables retries.
    pub retries: u32,
    pub backoff: Backoff,
}

/// Sends messages to one output binding through the sidecar. Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: DaprClient<Channel>,
    binding: String,
    token: Option<MetadataValue<Ascii>>,
    retry: SidecarRetryPolicy,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Creates the channel without connecting: start-up never waits for the sidecar, which itself
    /// may be waiting for our port.
    pub fn new(
        sidecar: http::Uri,
        binding: String,
        token: Option<MetadataValue<Ascii>>,
        timeout: Duration,
        retry: SidecarRetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let channel = Endpoint::from(sidecar)
            .connect_timeout(Duration::from_secs(2).min(timeout))
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Self {
            client: DaprClient::new(channel),
            binding,
            token,
            retry,
            metrics,
        }
    }

    /// The binding messages go to.
    pub fn binding(&self) -> &str {
        &self.binding
    }

    /// One `InvokeBinding{name, operation: "create", data, metadata: {MessageId: message_id}}`;
    /// `Ok` once the sidecar has accepted it. Transient failures are retried per the
    /// [`SidecarRetryPolicy`], with the same `message_id`.
    pub async fn publish(
        &self,
        data: &[u8],
        message_id: String,
        trace: &Trace,
    ) -> Result<(), PublishError> {
        let mut attempt = 0;
        loop {
            let error = match self.invoke(data.to_vec(), &message_id, trace).await {
                Ok(()) => {
                    self.metrics.message(&self.binding, Code::Ok);
                    return Ok(());
                }
                Err(error) => error,
            };
            attempt += 1;
            if !error.is_transient() || attempt > self.retry.retries {
                self.metrics.message(&self.binding, error.code());
                return Err(error);
            }
            self.metrics.retry(&self.binding, error.code());
            let delay = self.retry.backoff.jittered(attempt);
            debug!(binding = %self.binding, message_id, attempt, ?delay, error = %error, "retrying InvokeBinding");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, in a client span of its own when spans are exported, whose id the sidecar
    /// receives as the parent id.
    async fn invoke(
        &self,
        data: Vec<u8>,
        message_id: &str,
        trace: &Trace,
    ) -> Result<(), PublishError> {
        let metadata = [(MESSAGE_ID_METADATA.to_owned(), message_id.to_owned())];
        let mut request = Request::new(InvokeBindingRequest {
            name: self.binding.clone(),
            data,
            metadata: metadata.into(),
            operation: OPERATION_CREATE.to_owned(),
        });
        let span = self.client_span(trace, message_id);
        self.decorate(&mut request, trace);
        if !span.is_none()
            && let Some(own) = trace_context::outgoing(&span, None)
        {
            let metadata = request.metadata_mut();
            metadata.remove(TRACESTATE);
            if let Ok(value) = MetadataValue::try_from(own.traceparent().as_str()) {
                metadata.insert(TRACEPARENT, value);
            }
            if let Some(value) = own
                .tracestate()
                .and_then(|s| MetadataValue::try_from(s).ok())
            {
                metadata.insert(TRACESTATE, value);
            }
        }
        let started = Instant::now();
        let result = self
            .client
            .clone()
            .invoke_binding(request)
            .instrument(span.clone())
            .await;
        self.metrics.invoke_duration(started.elapsed());
        trace_context::end_grpc_span(&span, result.as_ref().err());
        result.map(drop).map_err(PublishError::from)
    }

    /// The span of one `InvokeBinding` attempt: an RPC client span, and a messaging send.
    fn client_span(&self, trace: &Trace, message_id: &str) -> tracing::Span {
        let span = pipeline::grpc_span!(
            INVOKE_BINDING_PATH,
            "client",
            messaging.system = %self.binding,
            messaging.destination.name = %self.binding,
            messaging.operation.type = "send",
            messaging.message.id = %message_id,
        );
        trace_context::set_parent(&span, &trace.parent);
        span
    }

    /// Whether the sidecar's gRPC API answers. daprd serves it only once its components are
    /// initialized, so an answer, even an error status, means the binding is ready.
    pub async fn sidecar_ready(&self) -> Result<(), PublishError> {
        let mut request = Request::new(GetMetadataRequest {});
        request.set_timeout(Duration::from_secs(1));
        self.decorate(&mut request, &Trace::default());
        match self.client.clone().get_metadata(request).await {
            Ok(_) => Ok(()),
            Err(status) => match PublishError::from(status) {
                PublishError::Rejected(_) => Ok(()),
                unreachable => Err(unreachable),
            },
        }
    }

    fn decorate<T>(&self, request: &mut Request<T>, trace: &Trace) {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.token {
            metadata.insert(API_TOKEN_METADATA, token.clone());
        }
        if let Some((tp, ts)) = &trace.forwarded {
            metadata.insert(TRACEPARENT, tp.clone());
            if let Some(ts) = ts {
                metadata.insert(TRACESTATE, ts.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn keeps_valid_trace_context_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, TP.parse().unwrap());
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let t = Trace::from_headers(&headers);
        assert_eq!(t.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let (tp, ts) = t.forwarded.as_ref().unwrap();
        assert_eq!(tp, TP);
        assert!(ts.is_some());

        headers.insert(TRACEPARENT, "nonsense".parse().unwrap());
        let t = Trace::from_headers(&headers);
        assert!(t.trace_id().is_none() && t.forwarded.is_none());
    }

    #[test]
    fn classifies_sidecar_errors() {
        assert!(matches!(
            PublishError::from(Status::unavailable("x")),
            PublishError::Unavailable(_)
        ));
        assert!(matches!(
            PublishError::from(Status::deadline_exceeded("x")),
            PublishError::Timeout(_)
        ));
        assert!(matches!(
            PublishError::from(Status::not_found("x")),
            PublishError::Rejected(_)
        ));
        // An UNKNOWN the server sent is an answer; one caused by a broken connection is not.
        assert!(matches!(
            PublishError::from(Status::unknown("x")),
            PublishError::Rejected(_)
        ));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let broken = Status::from_error(Box::new(reset));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(matches!(
            PublishError::from(broken),
            PublishError::Unavailable(_)
        ));
        // Likewise INTERNAL: the sidecar's own is an answer, one from an HTTP/2 stream the
        // sidecar cut on its way down is not.
        assert!(matches!(
            PublishError::from(Status::internal("x")),
            PublishError::Rejected(_)
        ));
        let cut = Status::from_error(Box::new(h2::Error::from(h2::Reason::NO_ERROR)));
        assert_eq!(cut.code(), Code::Internal);
        assert!(matches!(
            PublishError::from(cut),
            PublishError::Unavailable(_)
        ));
    }
}

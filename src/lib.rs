//! Shared parts of the Dapr bindings producer/consumer pair.
//!
//! - [`message`]: the queue payload `{"text": ...}`, the wire contract between the two halves,
//!   and the binding operation that enqueues it.
//! - [`dapr_endpoint`]: where the Dapr sidecar's gRPC API is (`DAPR_GRPC_ENDPOINT` / `DAPR_GRPC_PORT`).
//! - [`trace_context`]: W3C `traceparent` and `tracestate`, read from headers or metadata, to
//!   forward and log trace ids; [`context_span!`] keeps such fields on every log line, and
//!   [`otel_span!`] (or [`grpc_span!`], for a gRPC call) opens the spans that are exported.
//! - [`dapr_runtime`]: a server for the bindings subset of Dapr's runtime API (`InvokeBinding`,
//!   and `GetMetadata` when given a handler),
//!   everything else UNIMPLEMENTED; served by devstack's sidecar, the tests' fake sidecar and
//!   the benchmark's null sidecar.
//! - [`backoff`]: exponential backoff with jitter, for retries and redeliveries.
//! - [`api_token`]: shared-secret tokens and their checks, in constant time: Dapr's API tokens
//!   (`dapr-api-token`) and the producer's own (`Authorization: Bearer`).
//! - [`http_server`]: how every HTTP port is served, with limits against slow and abusive clients.
//! - [`net`]: listeners for axum and tonic that set `TCP_NODELAY` on every connection.
//! - [`openmetrics`]: the `/metrics` answers: the OpenMetrics page and its content type.
//! - [`cli`]: value parsers for settings the binaries share.
//! - [`telemetry`]: logging set-up (`RUST_LOG`, `LOG_FORMAT=json`) and the OTLP span exporter
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`).
//! - [`shutdown`]: one cancellation token per process, cancelled on SIGTERM or Ctrl-C.
//! - [`proto`]: the producer's own gRPC API, generated from `proto/producer/v1`.
//!
//! Dapr's API types come from the `dapr` crate, re-exported as [`dapr_v1`].

#![forbid(unsafe_code)]

pub mod api_token;
pub mod backoff;
pub mod cli;
pub mod dapr_endpoint;
pub mod dapr_runtime;
pub mod http_server;
pub mod message;
pub mod net;
pub mod openmetrics;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

/// Dapr's runtime API (`dapr.proto.runtime.v1`), generated from the official protos by the `dapr` crate.
pub use dapr::dapr::proto::runtime::v1 as dapr_v1;

/// The producer's own gRPC API (`producer.v1`).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("producer.v1");

    /// Encoded descriptors of `producer.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("producer_descriptor");
}

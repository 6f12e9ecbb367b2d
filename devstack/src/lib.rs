//! devstack: the whole pipeline on one machine. Its sidecar stands in for daprd and the queue and
//! speaks Dapr's gRPC protocol on both sides, with the unmodified `producer` and `consumer`
//! binaries.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod changes;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod http_app;
pub mod ids;
pub mod metadata;
pub mod queue;
pub mod rate_limit;
pub mod registry;
pub mod resiliency;
pub mod runtime;
pub mod scaling;
pub mod service_bus;
pub mod sidecar;
pub mod spans;
pub mod status;
pub mod supervisor;

/// The `service.name` of the sidecar's spans, beside the children's `producer` and `consumer`.
pub const SERVICE_NAME: &str = "devstack-sidecar";

//! The producer: a REST and gRPC front that turns each requested message into one
//! `InvokeBinding` on its Dapr sidecar.
//!
//! - [`config`]: the settings, from flags and Dapr's environment variables.
//! - [`publisher`]: the long-lived channel to the sidecar and the call for each message.
//! - [`batch`]: validating a batch, its place among `MAX_BATCHES`, pacing and concurrency.
//! - [`message_id`]: each message's `MessageId`, random or derived from an idempotency key.
//! - [`rest`]: `POST /MessageProducer`, the OpenAPI document and Swagger UI.
//! - [`grpc`]: `producer.v1.Producer`, with health and reflection.
//! - [`metrics`]: the Prometheus metrics.
//! - [`server`]: the composition root: both fronts on one port, and the drain.

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod grpc;
pub mod message_id;
pub mod metrics;
pub mod publisher;
pub mod rest;
pub mod server;

pub use config::Config;
pub use server::serve;

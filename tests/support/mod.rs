//! Shared test support: run the real binaries and read their JSON logs, drive a real producer or
//! consumer, a fake Dapr sidecar, a fake consumer app, devstack (its sidecar alone or the whole
//! stack), and loopback ports for servers that are not up yet.
#![allow(dead_code)] // each test crate uses a different part

pub mod app;
pub mod consumer;
pub mod devstack;
pub mod exposition;
pub mod port;
pub mod process;
pub mod producer;
pub mod sidecar;

pub use process::WAIT;

/// A valid W3C `traceparent` (the specification's example), sampled.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The trace id in [`TRACEPARENT`], as the binaries log it.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

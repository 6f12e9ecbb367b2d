//! Shared test support: run the real binaries and read their JSON logs, a fake Dapr sidecar, a
//! fake consumer app, and devstack's sidecar.
#![allow(dead_code)] // each test crate uses a different part

pub mod app;
pub mod devstack;
pub mod exposition;
pub mod process;
pub mod producer;
pub mod sidecar;

use std::time::Duration;

/// Upper bound for anything a test waits on; generous, since CI machines are slow and shared.
pub const WAIT: Duration = Duration::from_secs(20);

//! Shared test support: run the real binaries and read their JSON logs, and a fake Dapr sidecar.
#![allow(dead_code)] // each test crate uses a different part

pub mod process;
pub mod sidecar;

use std::time::Duration;

/// Upper bound for anything a test waits on; generous, since CI machines are slow and shared.
pub const WAIT: Duration = Duration::from_secs(20);

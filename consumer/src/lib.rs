//! The consumer: a Dapr app that daprd calls over gRPC with each input binding event (a queue
//! message); it works on it and logs the original sample's line.
//!
//! - [`config`]: the settings, from flags and Dapr's environment variables.
//! - [`callback`]: `AppCallback` (`ListInputBindings`, `OnBindingEvent`) and the health checks.
//! - [`work`]: the simulated work and the original's log line.
//! - [`metrics`]: the Prometheus metrics and their HTTP server.
//! - [`server`]: serving both ports, and draining in-flight work at shutdown.
//! - [`token_hint`]: the one-time hint when daprd sends no app token (daprd before 1.16.2).

#![forbid(unsafe_code)]

pub mod callback;
pub mod config;
pub mod metrics;
pub mod server;
pub mod token_hint;
pub mod work;

pub use config::Config;
pub use server::{Listeners, serve};

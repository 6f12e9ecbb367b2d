//! Shared test support: run the real binaries and read their JSON logs, headless Chromium, drive
//! a real producer or consumer, or (feature `in-process`) their libraries serving in the test
//! process, a paused clock held still for them, a fake Dapr sidecar, fake consumer apps (gRPC and
//! HTTP), devstack (its sidecar alone or the whole stack), files for a binary to read, loopback
//! ports for servers that are not up yet, slow clients, a proxy that loses a gRPC server's answers,
//! and the official Dapr Python and JavaScript SDKs, installed on first use.

pub mod app;
pub mod browser;
pub mod clock;
pub mod consumer;
#[cfg(feature = "devstack")]
pub mod devstack;
pub mod exposition;
pub mod files;
pub mod http_app;
#[cfg(feature = "in-process")]
pub mod in_process;
pub mod js;
pub mod lost_answers;
pub mod otlp;
pub mod port;
pub mod process;
pub mod producer;
pub mod python;
mod sdk;
pub mod sidecar;
pub mod slow_client;

use std::fmt::Debug;

use pipeline::{api_token::API_TOKEN_METADATA, trace_context};
use tokio::sync::watch;
use tonic::{IntoRequest, Request};

pub use process::WAIT;

/// A valid W3C `traceparent` (the specification's example), sampled.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The trace id in [`TRACEPARENT`], as the binaries log it.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Waits, at most [`WAIT`], until the count `counter` holds reaches `n`; panics saying `what`
/// it counts otherwise.
pub async fn wait_count<T: PartialOrd + Debug>(counter: &watch::Sender<T>, n: T, what: &str) {
    let mut count = counter.subscribe();
    // `is_ok` lets go of the value `wait_for` holds before it is read again.
    let reached = tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
        .await
        .is_ok();
    assert!(reached, "{what}: {:?}, expected {n:?}", *counter.borrow());
}

/// An HTTP client whose every request is bounded by [`WAIT`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("an HTTP client")
}

/// `request` with a `traceparent`, as a traced caller sends it.
pub fn traced<T>(request: impl IntoRequest<T>, traceparent: &str) -> Request<T> {
    let mut request = request.into_request();
    let value = traceparent.parse().expect("an ASCII traceparent");
    request
        .metadata_mut()
        .insert(trace_context::TRACEPARENT, value);
    request
}

/// `request` with Dapr's API token, as daprd sends it to the app and an SDK to daprd.
pub fn with_token<T>(request: impl IntoRequest<T>, token: &str) -> Request<T> {
    let mut request = request.into_request();
    let value = token.parse().expect("an ASCII token");
    request.metadata_mut().insert(API_TOKEN_METADATA, value);
    request
}

/// A fake's server task in this process: stopped by cancelling its token, then awaited, bounded by
/// [`WAIT`].
pub struct Served {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Spawns the server that `serve` builds from the token it must stop on; `what` names it in
    /// a failure.
    pub fn spawn<F, E>(
        what: &'static str,
        serve: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = serve(shutdown.clone());
        let task = tokio::spawn(async move {
            server
                .await
                .unwrap_or_else(|e| panic!("{what} serves: {e:?}"))
        });
        Self { shutdown, task }
    }

    /// Tells the server to stop, as a stop signal does, without waiting for it.
    pub fn signal(&self) {
        self.shutdown.cancel();
    }

    /// Whether the server has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self, what: &str) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("{what} stops"))
            .unwrap();
    }
}

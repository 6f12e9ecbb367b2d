//! A fake Dapr sidecar: serves `dapr.proto.runtime.v1.Dapr/InvokeBinding` with the `dapr` crate's
//! generated types (through `pipeline::dapr_runtime`) and records every call it gets.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use pipeline::{
    dapr_runtime::{BindingHandler, DaprRuntimeServer},
    dapr_v1::{InvokeBindingRequest, InvokeBindingResponse},
};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use super::{Served, app::headers, port::ClosedPort, wait_count};

/// One recorded `InvokeBinding`.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub operation: String,
    pub data: Vec<u8>,
    /// The request's binding metadata map.
    pub metadata: HashMap<String, String>,
    /// gRPC metadata (headers): `dapr-api-token`, `traceparent`, ...
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

/// How the fake answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// After this many accepted calls, answer every call with this code.
    pub fail_after: Option<(usize, Code)>,
    /// Answer the first this-many calls with this code (then accept).
    pub fail_first: Option<(usize, Code)>,
    /// Accept and record the first this-many calls, then answer them `UNAVAILABLE`, as a caller
    /// sees a connection that broke after the sidecar enqueued its message: it retries a message
    /// the sidecar already has.
    pub lose_answers: usize,
    /// Time each accepted call takes.
    pub delay: Duration,
    /// Hold every call that would be accepted (counted in flight) until this turns true.
    pub gate: Option<watch::Receiver<bool>>,
}

#[derive(Debug, Default)]
struct Recorder {
    behaviour: Behaviour,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Every call received, failed or not.
    attempts: AtomicUsize,
    /// Number of accepted calls, to wait on.
    accepted: watch::Sender<usize>,
}

#[tonic::async_trait]
impl BindingHandler for Recorder {
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some((first, code)) = self.behaviour.fail_first
            && attempt < first
        {
            return Err(Status::new(code, "injected failure"));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = self.handle(request).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Recorder {
    async fn handle(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        if let Some((after, code)) = self.behaviour.fail_after
            && self.calls.lock().len() >= after
        {
            return Err(Status::new(code, "injected failure"));
        }
        if let Some(gate) = &self.behaviour.gate {
            // The caller's deadline bounds the wait.
            let _ = gate.clone().wait_for(|open| *open).await;
        }
        tokio::time::sleep(self.behaviour.delay).await;
        let headers = headers(&request);
        let message = request.into_inner();
        let mut calls = self.calls.lock();
        calls.push(Call {
            name: message.name,
            operation: message.operation,
            data: message.data,
            metadata: message.metadata,
            headers,
            at: Instant::now(),
        });
        let accepted = calls.len();
        self.accepted.send_replace(accepted);
        if accepted <= self.behaviour.lose_answers {
            return Err(Status::unavailable("injected: the answer was lost"));
        }
        Ok(Response::new(InvokeBindingResponse::default()))
    }
}

/// A running fake sidecar on 127.0.0.1.
pub struct FakeSidecar {
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    server: Served,
}

impl FakeSidecar {
    /// Starts on an ephemeral port.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_at(ClosedPort::ephemeral(), behaviour)
    }

    /// Starts on a port a producer was told of before: connections were refused until now.
    pub fn start_at(port: ClosedPort, behaviour: Behaviour) -> Self {
        let listener = port.listen();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder {
            behaviour,
            ..Default::default()
        });
        let service = DaprRuntimeServer::from_arc(Arc::clone(&recorder));
        let server = Served::spawn("fake sidecar", |shutdown| {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    pipeline::net::grpc_incoming(listener),
                    shutdown.cancelled_owned(),
                )
        });
        Self {
            addr,
            recorder,
            server,
        }
    }

    /// The port, as a string for DAPR_GRPC_PORT.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Calls accepted so far.
    pub fn calls(&self) -> Vec<Call> {
        self.recorder.calls.lock().clone()
    }

    /// Waits, at most [`super::WAIT`], until `n` calls have been accepted.
    pub async fn wait_for_calls(&self, n: usize) {
        wait_count(&self.recorder.accepted, n, "calls the sidecar accepted").await;
    }

    /// Every call received, failed ones included.
    pub fn attempts(&self) -> usize {
        self.recorder.attempts.load(Ordering::SeqCst)
    }

    /// Most calls that were in progress at once.
    pub fn max_in_flight(&self) -> usize {
        self.recorder.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops serving but keeps the port, to [`start_at`](Self::start_at) it again where the
    /// producer still dials; connections are refused there meanwhile. Returns every call it
    /// accepted, and the port.
    pub async fn stop_holding_port(self) -> (Vec<Call>, ClosedPort) {
        let port = ClosedPort::hold(self.addr);
        (self.stop().await, port)
    }

    /// Stops serving, waits for the server to end, and returns every call it accepted.
    pub async fn stop(self) -> Vec<Call> {
        self.server.stop("fake sidecar").await;
        self.recorder.calls.lock().clone()
    }
}

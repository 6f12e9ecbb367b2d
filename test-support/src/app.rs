//! A fake consumer app, in the test process: the `dapr` crate's generated `AppCallback` trait on a
//! 127.0.0.1:0 listener, recording every call the sidecar makes, answering OK or, when told to,
//! failing deterministically; optionally serving `AppCallbackHealthCheck` with a switchable answer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use parking_lot::Mutex;
use pipeline::dapr_v1::{
    BindingEventRequest, BindingEventResponse, HealthCheckResponse, JobEventRequest,
    JobEventResponse, ListInputBindingsResponse, ListTopicSubscriptionsResponse,
    TopicEventBulkRequest, TopicEventBulkResponse, TopicEventRequest, TopicEventResponse,
    app_callback_health_check_server::{AppCallbackHealthCheck, AppCallbackHealthCheckServer},
    app_callback_server::{AppCallback, AppCallbackServer},
};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use super::{Served, port::ClosedPort, wait_count};

/// How the fake app answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// What ListInputBindings answers.
    pub bindings: Vec<String>,
    /// Fail every `n`th binding event (counted per app) with `fail_with`.
    pub fail_every: Option<u64>,
    /// The code of an injected failure.
    pub fail_with: Code,
    /// Serve AppCallbackHealthCheck (answering as [`FakeApp::set_healthy`] says); when false,
    /// the sidecar gets UNIMPLEMENTED, which daprd treats as healthy.
    pub health_check: bool,
    /// Answer ListInputBindings with INTERNAL.
    pub list_fails: bool,
    /// Hold every binding event (after recording it) until this turns true.
    pub gate: Option<watch::Receiver<bool>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            bindings: vec!["message-queue".to_owned()],
            fail_every: None,
            fail_with: Code::Internal,
            health_check: false,
            list_fails: false,
            gate: None,
        }
    }
}

/// One OnBindingEvent as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub name: String,
    pub data: Vec<u8>,
    pub metadata: HashMap<String, String>,
    /// gRPC metadata: `traceparent`, `dapr-api-token`, ...
    pub headers: HashMap<String, String>,
    /// Whether the app answered OK (the sidecar then completes the message).
    pub ok: bool,
    /// ListInputBindings calls made before this event arrived.
    pub listed_before: u64,
}

#[derive(Debug)]
struct Recorder {
    behaviour: Behaviour,
    list_calls: AtomicU64,
    health_calls: watch::Sender<u64>,
    healthy: AtomicBool,
    events: AtomicU64,
    deliveries: Mutex<Vec<Delivery>>,
    received: watch::Sender<usize>,
    /// Binding events being answered now, and the most there ever were.
    in_flight: watch::Sender<usize>,
    peak_in_flight: AtomicUsize,
}

/// Counts a binding event in flight until dropped (answered, or its call cancelled).
struct InFlight<'a>(&'a watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A request's gRPC metadata (`traceparent`, `dapr-api-token`, ...) as text, as the fakes
/// record it.
pub(super) fn headers(request: &Request<impl Sized>) -> HashMap<String, String> {
    request
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect()
}

#[tonic::async_trait]
impl AppCallback for Recorder {
    async fn on_binding_event(
        &self,
        request: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        self.in_flight.send_modify(|n| *n += 1);
        let _in_flight = InFlight(&self.in_flight);
        self.peak_in_flight
            .fetch_max(*self.in_flight.borrow(), Ordering::SeqCst);
        let n = self.events.fetch_add(1, Ordering::SeqCst) + 1;
        let ok = self
            .behaviour
            .fail_every
            .is_none_or(|every| !n.is_multiple_of(every));
        let headers = headers(&request);
        let event = request.into_inner();
        {
            let mut deliveries = self.deliveries.lock();
            deliveries.push(Delivery {
                name: event.name,
                data: event.data,
                metadata: event.metadata,
                headers,
                ok,
                listed_before: self.list_calls.load(Ordering::SeqCst),
            });
            self.received.send_replace(deliveries.len());
        }
        if let Some(gate) = &self.behaviour.gate {
            // The test opens the gate; a sidecar told to stop waits a lock duration at most.
            let _ = gate.clone().wait_for(|open| *open).await;
        }
        if ok {
            Ok(Response::new(BindingEventResponse::default()))
        } else {
            Err(Status::new(self.behaviour.fail_with, "injected failure"))
        }
    }

    async fn list_input_bindings(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListInputBindingsResponse>, Status> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        if self.behaviour.list_fails {
            return Err(Status::internal("injected failure"));
        }
        Ok(Response::new(ListInputBindingsResponse {
            bindings: self.behaviour.bindings.clone(),
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse::default()))
    }

    async fn on_invoke(
        &self,
        _request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        Err(Status::unimplemented("not served by the fake app"))
    }

    async fn on_topic_event(
        &self,
        _request: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        Err(Status::unimplemented("not served by the fake app"))
    }

    async fn on_bulk_topic_event(
        &self,
        _request: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("not served by the fake app"))
    }

    async fn on_job_event(
        &self,
        _request: Request<JobEventRequest>,
    ) -> Result<Response<JobEventResponse>, Status> {
        Err(Status::unimplemented("not served by the fake app"))
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for Recorder {
    async fn health_check(
        &self,
        _request: Request<()>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.health_calls.send_modify(|n| *n += 1);
        if self.healthy.load(Ordering::SeqCst) {
            Ok(Response::new(HealthCheckResponse {}))
        } else {
            Err(Status::unavailable("told to be unhealthy"))
        }
    }
}

/// A running fake app on 127.0.0.1.
pub struct FakeApp {
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    server: Served,
}

impl FakeApp {
    /// Starts on an ephemeral port; healthy from the start.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_at(ClosedPort::ephemeral(), behaviour)
    }

    /// Starts on a port the sidecar was told of before: connections were refused until now.
    pub fn start_at(port: ClosedPort, behaviour: Behaviour) -> Self {
        let listener = port.listen();
        let addr = listener.local_addr().unwrap();
        let health_check = behaviour.health_check;
        let recorder = Arc::new(Recorder {
            behaviour,
            list_calls: AtomicU64::new(0),
            health_calls: watch::channel(0).0,
            healthy: AtomicBool::new(true),
            events: AtomicU64::new(0),
            deliveries: Mutex::default(),
            received: watch::channel(0).0,
            in_flight: watch::channel(0).0,
            peak_in_flight: AtomicUsize::new(0),
        });
        let health =
            health_check.then(|| AppCallbackHealthCheckServer::from_arc(Arc::clone(&recorder)));
        let app = AppCallbackServer::from_arc(Arc::clone(&recorder));
        let server = Served::spawn("fake app", |shutdown| {
            tonic::transport::Server::builder()
                .add_service(app)
                .add_optional_service(health)
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

    /// What AppCallbackHealthCheck answers from now on (when served).
    pub fn set_healthy(&self, healthy: bool) {
        self.recorder.healthy.store(healthy, Ordering::SeqCst);
    }

    /// ListInputBindings calls so far.
    pub fn list_calls(&self) -> u64 {
        self.recorder.list_calls.load(Ordering::SeqCst)
    }

    /// AppCallbackHealthCheck calls so far.
    pub fn health_calls(&self) -> u64 {
        *self.recorder.health_calls.borrow()
    }

    /// Waits, at most [`super::WAIT`], until the sidecar has called AppCallbackHealthCheck `n`
    /// times in all.
    pub async fn wait_for_health_calls(&self, n: u64) {
        wait_count(&self.recorder.health_calls, n, "health checks the app got").await;
    }

    /// Waits, at most [`super::WAIT`], until `n` binding events are in flight at once.
    pub async fn wait_in_flight(&self, n: usize) {
        wait_count(&self.recorder.in_flight, n, "binding events the app holds").await;
    }

    /// The most binding events the app ever held at once.
    pub fn peak_in_flight(&self) -> usize {
        self.recorder.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Every binding event so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.recorder.deliveries.lock().clone()
    }

    /// Waits, at most [`super::WAIT`], until `n` binding events have arrived; returns them all.
    pub async fn wait_for_deliveries(&self, n: usize) -> Vec<Delivery> {
        wait_count(&self.recorder.received, n, "binding events the app got").await;
        self.deliveries()
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) {
        self.server.stop("fake app").await;
    }
}

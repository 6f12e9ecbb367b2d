//! Null servers: each answers at once and only counts what it got, so a rate measured against one
//! is the cost of the client and the transport alone. Slow ones answer after a set latency, as
//! daprd does when each `InvokeBinding` waits for the broker (row 6).
//!
//! They run in a process of their own (the bench binary started again with [`ARG`]), on two
//! worker threads like the binaries under test, so every row compares two processes with two.
//! Client and server threads in one process switch between each other more cheaply than
//! processes do, and would flatter the null rows (by about 10% on the reference machine).

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, post},
};
use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use pipeline::{
    dapr_runtime::{BindingHandler, DaprRuntimeServer},
    dapr_v1::{
        BindingEventRequest, BindingEventResponse, InvokeBindingRequest, InvokeBindingResponse,
        JobEventRequest, JobEventResponse, ListInputBindingsResponse,
        ListTopicSubscriptionsResponse, TopicEventBulkRequest, TopicEventBulkResponse,
        TopicEventRequest, TopicEventResponse,
        app_callback_server::{AppCallback, AppCallbackServer},
    },
};
use serde::{Deserialize, Serialize};

use super::load::BINDING;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Server};

/// The first argument that makes the bench (or smoke test) binary serve the null servers; the
/// arguments after it are the latencies of the slow ones, in µs.
pub const ARG: &str = "--pipeline-null-servers";
/// The message of the log line that gives their addresses.
pub const READY: &str = "null servers listening";

/// Where the null servers listen, as their ready line gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Addresses {
    /// `InvokeBinding`: the sidecar of rows 1 and 2.
    pub sidecar: SocketAddr,
    /// `OnBindingEvent`: the app of row 3.
    pub app: SocketAddr,
    /// `POST /v1.0/bindings/{name}` (row 5), and `GET /counts`.
    pub http: SocketAddr,
    /// The slow servers, one pair per latency asked for.
    pub slow: Vec<Slow>,
}

/// A sidecar and an HTTP binding endpoint that both answer after `latency_us`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Slow {
    pub latency_us: u64,
    /// `InvokeBinding` (row 6).
    pub sidecar: SocketAddr,
    /// `POST /v1.0/bindings/{name}` (row 6o).
    pub http: SocketAddr,
}

/// How many requests each null server answered, from `GET /counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sidecar: u64,
    pub app: u64,
    pub http: u64,
    /// Every slow sidecar's calls.
    pub slow_sidecar: u64,
    /// Every slow HTTP endpoint's calls.
    pub slow_http: u64,
}

#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl Counter {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// When this process was started with [`ARG`]: serves the null servers until SIGTERM and returns
/// the exit code; otherwise `None`. Call first thing in `main`.
pub fn main_if_asked() -> Option<ExitCode> {
    if std::env::args().nth(1).as_deref() != Some(ARG) {
        return None;
    }
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the null servers' runtime")
        .and_then(|runtime| runtime.block_on(serve()));
    Some(match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("null servers: {error:#}");
            ExitCode::FAILURE
        }
    })
}

async fn serve() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let latencies = std::env::args()
        .skip(2)
        .map(|us| us.parse().map(Duration::from_micros))
        .collect::<Result<Vec<_>, _>>()
        .context("latencies in µs")?;
    let counters: [Counter; 5] = Default::default();
    let [
        sidecar_calls,
        app_calls,
        http_calls,
        slow_sidecar_calls,
        slow_http_calls,
    ] = counters.clone();
    let mut slow = Vec::new();
    for latency in latencies {
        let delay = Delay::new(latency);
        slow.push(Slow {
            latency_us: latency.as_micros().try_into()?,
            sidecar: sidecar(slow_sidecar_calls.clone(), Some(delay.clone())).await?,
            http: slow_http(slow_http_calls.clone(), delay).await?,
        });
    }
    let addresses = Addresses {
        sidecar: sidecar(sidecar_calls, None).await?,
        app: app(app_calls).await?,
        http: http(http_calls, counters).await?,
        slow,
    };
    let mut line = serde_json::to_value(addresses)?;
    line["message"] = READY.into();
    println!("{line}");
    term.recv().await;
    Ok(())
}

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A Dapr sidecar whose `InvokeBinding` answers OK at once, or after `delay` (every other method
/// UNIMPLEMENTED, which the producer's `/readyz` takes as "the sidecar answers").
async fn sidecar(counter: Counter, delay: Option<Delay>) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    let server = Server::builder()
        .add_service(DaprRuntimeServer::new(NullBinding(counter, delay)))
        .serve_with_incoming(pipeline::net::grpc_incoming(listener));
    tokio::spawn(server);
    Ok(addr)
}

struct NullBinding(Counter, Option<Delay>);

#[tonic::async_trait]
impl BindingHandler for NullBinding {
    async fn invoke_binding(
        &self,
        _: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        if let Some(delay) = &self.1 {
            delay.wait().await;
        }
        self.0.add();
        Ok(Response::new(InvokeBindingResponse::default()))
    }
}

/// A fixed latency, kept to within a few tens of µs. tokio's timer would not do: it rounds every
/// sleep up to the next millisecond tick and fires on the tick after, so a 5 ms sleep lasts 5 to
/// 7 ms, which would lower row 6's bound by up to a third and be charged to the producer. One
/// thread per latency sleeps instead, on the kernel's own timer; the delay being the same for
/// every call, calls come due in the order they arrive, so a queue in arrival order is enough.
#[derive(Debug, Clone)]
struct Delay {
    latency: Duration,
    due: std::sync::mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>,
}

impl Delay {
    /// Starts the thread; it ends when the last clone is dropped.
    fn new(latency: Duration) -> Self {
        let (due, queue) =
            std::sync::mpsc::channel::<(Instant, tokio::sync::oneshot::Sender<()>)>();
        std::thread::spawn(move || {
            for (at, done) in queue {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                // The call may have been abandoned meanwhile: nothing to answer then.
                let _ = done.send(());
            }
        });
        Self { latency, due }
    }

    /// Returns `latency` after it was called; calls overlap, as a broker's round trips do.
    async fn wait(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        // The thread lives as long as `self`, so neither side can be gone.
        let _ = self.due.send((Instant::now() + self.latency, done));
        let _ = wait.await;
    }
}

/// What an app does with each binding event, before it answers OK.
pub trait OnEvent: Send + Sync + 'static {
    fn on_event(&self, event: &BindingEventRequest);
}

impl OnEvent for Counter {
    fn on_event(&self, _: &BindingEventRequest) {
        self.add();
    }
}

/// A Dapr app whose `OnBindingEvent` answers OK at once, after handing the event to `E`. It
/// consumes [`BINDING`], so that a sidecar delivers to it; every other call is UNIMPLEMENTED
/// (which a sidecar's health probe takes as healthy).
pub struct App<E>(pub E);

/// Serves an [`App`] on 127.0.0.1 in this runtime until the task is aborted.
pub async fn serve_app<E: OnEvent>(
    events: E,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, addr) = bind().await?;
    let server = Server::builder()
        .add_service(AppCallbackServer::new(App(events)))
        .serve_with_incoming(pipeline::net::grpc_incoming(listener));
    let task = tokio::spawn(async move {
        // A server that fails on its own shows as events that never arrive.
        let _ = server.await;
    });
    Ok((addr, task))
}

/// A null app counting what it got (row 3n).
async fn app(counter: Counter) -> anyhow::Result<SocketAddr> {
    Ok(serve_app(counter).await?.0)
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("null app"))
}

#[tonic::async_trait]
impl<E: OnEvent> AppCallback for App<E> {
    async fn on_binding_event(
        &self,
        request: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        self.0.on_event(request.get_ref());
        Ok(Response::new(BindingEventResponse::default()))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListInputBindingsResponse>, Status> {
        Ok(Response::new(ListInputBindingsResponse {
            bindings: vec![BINDING.to_owned()],
        }))
    }

    async fn on_invoke(
        &self,
        _: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        unimplemented()
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        unimplemented()
    }

    async fn on_topic_event(
        &self,
        _: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        unimplemented()
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        unimplemented()
    }

    async fn on_job_event(
        &self,
        _: Request<JobEventRequest>,
    ) -> Result<Response<JobEventResponse>, Status> {
        unimplemented()
    }
}

/// daprd's HTTP output binding endpoint, `POST /v1.0/bindings/{name}`, answering 200 at once:
/// what the original producer called, one new connection per message. Also `GET /counts`.
async fn http(counter: Counter, all: [Counter; 5]) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    let router = Router::new()
        .route(
            "/v1.0/bindings/{name}",
            post(move |_: axum::body::Bytes| {
                counter.add();
                std::future::ready(StatusCode::OK)
            }),
        )
        .route(
            "/counts",
            get(move || {
                let [sidecar, app, http, slow_sidecar, slow_http] = &all;
                std::future::ready(Json(Counts {
                    sidecar: sidecar.get(),
                    app: app.get(),
                    http: http.get(),
                    slow_sidecar: slow_sidecar.get(),
                    slow_http: slow_http.get(),
                }))
            }),
        );
    tokio::spawn(async move { axum::serve(pipeline::net::http_listener(listener), router).await });
    Ok(addr)
}

/// The same binding endpoint answering 200 after `delay`: row 6o's daprd, waiting for the broker.
async fn slow_http(counter: Counter, delay: Delay) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    let router = Router::new().route(
        "/v1.0/bindings/{name}",
        post(move |_: axum::body::Bytes| {
            let (counter, delay) = (counter.clone(), delay.clone());
            async move {
                delay.wait().await;
                counter.add();
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(pipeline::net::http_listener(listener), router).await });
    Ok(addr)
}

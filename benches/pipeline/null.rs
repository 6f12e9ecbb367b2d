//! Null servers: each answers at once and only counts what it got, so a rate measured against one
//! is the cost of the client and the transport alone.
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
};

use anyhow::Context;
use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, post},
};
use bindings::{
    dapr_runtime::{BindingHandler, DaprRuntimeServer},
    dapr_v1::{
        BindingEventRequest, BindingEventResponse, InvokeBindingRequest, InvokeBindingResponse,
        JobEventRequest, JobEventResponse, ListInputBindingsResponse,
        ListTopicSubscriptionsResponse, TopicEventBulkRequest, TopicEventBulkResponse,
        TopicEventRequest, TopicEventResponse,
        app_callback_server::{AppCallback, AppCallbackServer},
    },
};
use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Server};

/// The first argument that makes the bench (or smoke test) binary serve the null servers.
pub const ARG: &str = "--pipeline-null-servers";
/// The message of the log line that gives their addresses.
pub const READY: &str = "null servers listening";

/// Where the null servers listen, as their ready line gives it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Addresses {
    /// `InvokeBinding`: the sidecar of rows 1 and 2.
    pub sidecar: SocketAddr,
    /// `OnBindingEvent`: the app of row 3.
    pub app: SocketAddr,
    /// `POST /v1.0/bindings/{name}` (row 5), and `GET /counts`.
    pub http: SocketAddr,
}

/// How many requests each null server answered, from `GET /counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sidecar: u64,
    pub app: u64,
    pub http: u64,
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
    let counters: [Counter; 3] = Default::default();
    let [sidecar_calls, app_calls, http_calls] = counters.clone();
    let addresses = Addresses {
        sidecar: sidecar(sidecar_calls).await?,
        app: app(app_calls).await?,
        http: http(http_calls, counters).await?,
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

/// A Dapr sidecar whose `InvokeBinding` answers OK at once (every other method UNIMPLEMENTED,
/// which the producer's `/readyz` takes as "the sidecar answers").
async fn sidecar(counter: Counter) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    let server = Server::builder()
        .add_service(DaprRuntimeServer::new(NullBinding(counter)))
        .serve_with_incoming(bindings::net::grpc_incoming(listener));
    tokio::spawn(server);
    Ok(addr)
}

struct NullBinding(Counter);

#[tonic::async_trait]
impl BindingHandler for NullBinding {
    async fn invoke_binding(
        &self,
        _: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        self.0.add();
        Ok(Response::new(InvokeBindingResponse::default()))
    }
}

/// A Dapr app whose `OnBindingEvent` answers OK at once.
async fn app(counter: Counter) -> anyhow::Result<SocketAddr> {
    let (listener, addr) = bind().await?;
    let server = Server::builder()
        .add_service(AppCallbackServer::new(NullApp(counter)))
        .serve_with_incoming(bindings::net::grpc_incoming(listener));
    tokio::spawn(server);
    Ok(addr)
}

struct NullApp(Counter);

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("null app"))
}

#[tonic::async_trait]
impl AppCallback for NullApp {
    async fn on_binding_event(
        &self,
        _: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        self.0.add();
        Ok(Response::new(BindingEventResponse::default()))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListInputBindingsResponse>, Status> {
        unimplemented()
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
async fn http(counter: Counter, all: [Counter; 3]) -> anyhow::Result<SocketAddr> {
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
                let [sidecar, app, http] = &all;
                std::future::ready(Json(Counts {
                    sidecar: sidecar.get(),
                    app: app.get(),
                    http: http.get(),
                }))
            }),
        );
    tokio::spawn(async move { axum::serve(bindings::net::http_listener(listener), router).await });
    Ok(addr)
}

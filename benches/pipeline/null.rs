//! Null servers: each answers at once and only counts what it got, so a rate measured against one
//! is the cost of the client and the transport alone.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, http::StatusCode, routing::post};
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
use tokio::{net::TcpListener, runtime::Handle};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// How many requests a null server answered.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Binds 127.0.0.1:0 on `runtime`, so the server's threads are not the client's.
async fn bind(runtime: &Handle) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = runtime.spawn(TcpListener::bind(("127.0.0.1", 0))).await??;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A Dapr sidecar whose `InvokeBinding` answers OK at once (every other method UNIMPLEMENTED,
/// which the producer's `/readyz` takes as "the sidecar answers").
pub async fn sidecar(runtime: &Handle) -> anyhow::Result<(SocketAddr, Counter)> {
    let (listener, addr) = bind(runtime).await?;
    let counter = Counter::default();
    let server = Server::builder()
        .add_service(DaprRuntimeServer::new(NullBinding(counter.clone())))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    runtime.spawn(server);
    Ok((addr, counter))
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
pub async fn app(runtime: &Handle) -> anyhow::Result<(SocketAddr, Counter)> {
    let (listener, addr) = bind(runtime).await?;
    let counter = Counter::default();
    let server = Server::builder()
        .add_service(AppCallbackServer::new(NullApp(counter.clone())))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    runtime.spawn(server);
    Ok((addr, counter))
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
/// what the original producer called, one new connection per message.
pub async fn http(runtime: &Handle) -> anyhow::Result<(SocketAddr, Counter)> {
    let (listener, addr) = bind(runtime).await?;
    let counter = Counter::default();
    let count = counter.clone();
    let router = Router::new().route(
        "/v1.0/bindings/{name}",
        post(move |_: axum::body::Bytes| {
            count.add();
            std::future::ready(StatusCode::OK)
        }),
    );
    runtime.spawn(async move { axum::serve(listener, router).await });
    Ok((addr, counter))
}

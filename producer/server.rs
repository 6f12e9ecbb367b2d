//! One port for both fronts: the REST routes and the gRPC services (producer, health,
//! reflection) in one axum router, served over HTTP/1.1 and h2c, with a bounded graceful drain.

use std::{convert::Infallible, future::IntoFuture, pin::pin, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use bindings::{
    net,
    proto::{FILE_DESCRIPTOR_SET, producer_server::ProducerServer},
};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tracing::{info, warn};

use crate::{
    grpc::ProducerService,
    rest::{self, AppState},
};

/// After running batches are stopped, how long their last calls and responses may take.
const FINAL_GRACE: Duration = Duration::from_secs(5);

/// Serves until `state.shutdown` is cancelled, then drains: requests in progress may run for
/// `drain_timeout`; after that running batches are stopped and answer with their sent count.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ProducerServer<ProducerService>>()
        .await;

    let app = router(state.clone(), health_service)?;
    let shutdown = state.shutdown.clone();
    info!(%addr, binding = state.batches.publisher().binding(), "listening");
    let server = axum::serve(net::http_listener(listener), app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = pin!(server.into_future());

    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        result = &mut server => return result.context("serving"),
    }
    health
        .set_not_serving::<ProducerServer<ProducerService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    info!(?drain_timeout, "draining requests in progress");

    if let Ok(result) = tokio::time::timeout(drain_timeout, &mut server).await {
        info!("stopped");
        return result.context("serving");
    }
    warn!("drain timeout reached: stopping running batches");
    state.batches.stop().await;
    match tokio::time::timeout(FINAL_GRACE, &mut server).await {
        Ok(result) => result.context("serving")?,
        Err(_) => warn!("connections still open after the final grace period; exiting anyway"),
    }
    info!("stopped");
    Ok(())
}

/// The whole public surface: REST, then gRPC services by path, then JSON 404/405 for REST
/// callers and UNIMPLEMENTED for gRPC callers.
pub fn router(state: AppState, health: impl GrpcService) -> anyhow::Result<Router> {
    let producer = ProducerService::new(
        state.batches.clone(),
        state.max_count,
        Arc::clone(&state.metrics),
    );
    let metrics = Arc::clone(&state.metrics);
    // grpcurl asks v1 first and falls back to v1alpha, which older clients only know.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building gRPC reflection")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building gRPC reflection")?;

    let router = rest::router(state);
    let router = grpc(router, producer);
    let router = grpc(router, health);
    let router = grpc(router, reflection_v1);
    let router = grpc(router, reflection_v1alpha);
    Ok(router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            rest::count_http,
        )))
}

/// A generated tonic server, mountable on an axum router.
pub trait GrpcService:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

fn grpc(router: Router, service: impl GrpcService) -> Router {
    fn path<S: NamedService>(_: &S) -> String {
        format!("/{}/{{*method}}", S::NAME)
    }
    router.route_service(&path(&service), service)
}

async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let is_grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        let status = tonic::Status::unimplemented(format!("no gRPC service at {}", uri.path()));
        return status.into_http::<axum::body::Body>();
    }
    let error = format!("no route for {method} {}", uri.path());
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let error = format!("method {method} is not allowed on {}", uri.path());
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

//! The composition root and the one port for both fronts: the REST routes and the gRPC services
//! (producer, health, reflection) in one axum router, served over HTTP/1.1 and h2c, with a
//! bounded graceful drain.

use std::{convert::Infallible, pin::pin, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use pipeline::{
    api_token::ApiToken,
    http_server,
    proto::{FILE_DESCRIPTOR_SET, producer_server::ProducerServer},
    trace_context::{self, TraceContext},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, server::NamedService};
use tonic_health::server::HealthReporter;
use tracing::{Instrument, info, warn};

use crate::{
    batch::Batches,
    config::Config,
    grpc::{self, ProducerService},
    metrics::Metrics,
    publisher::Publisher,
    rest::{self, ApiError, Contract},
};

/// After running batches are stopped, how long their last calls and responses may take.
const FINAL_GRACE: Duration = Duration::from_secs(5);

/// The state both fronts share (the axum router's state), built once from the configuration.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub batches: Batches,
    /// The connection to the sidecar, which readiness asks whether it answers.
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: readiness then fails so no new traffic is routed here.
    pub shutdown: CancellationToken,
    /// PRODUCER_API_TOKEN: when set, what every caller of the API proper must present.
    pub api_token: Option<ApiToken>,
    /// What `/openapi.json` states.
    pub contract: Contract,
}

impl ServerState {
    /// Wires the publisher, the batches and the metrics; connects to nothing yet.
    pub fn new(config: &Config, shutdown: CancellationToken) -> Self {
        let sidecar = config.sidecar_uri();
        info!(%sidecar, binding = %config.binding_name, "sending through the Dapr sidecar");
        let metrics = Arc::new(Metrics::default());
        let publisher = Publisher::new(
            sidecar,
            config.binding_name.clone(),
            config.dapr_api_token.as_ref().map(ApiToken::metadata_value),
            config.sidecar_timeout,
            config.retry_policy(),
            Arc::clone(&metrics),
        );
        let batches = Batches::new(publisher.clone(), Arc::clone(&metrics), config.limits());
        let api_token = config.producer_api_token.clone();
        let contract = Contract {
            max_count: config.max_count,
            bearer: api_token.is_some(),
        };
        Self {
            batches,
            publisher,
            metrics,
            shutdown,
            api_token,
            contract,
        }
    }
}

/// Serves on `listener` until `shutdown` is cancelled, then drains: requests in progress may run
/// for the configured drain timeout; after that running batches are stopped and answer with
/// their sent count.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let state = ServerState::new(&config, shutdown.clone());
    let (router, health) = router(state.clone())?;
    health
        .set_serving::<ProducerServer<ProducerService>>()
        .await;
    info!(%addr, binding = state.publisher.binding(), "listening");
    let server = http_server::serve(
        listener,
        router,
        config.http.clone(),
        state.metrics.connections.clone(),
        shutdown.clone(),
    );
    let mut server = pin!(server);

    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        () = &mut server => {
            // The server stops on the same token, and can see it cancelled within the poll
            // that found the token not yet cancelled: then it has simply drained already.
            if !shutdown.is_cancelled() {
                anyhow::bail!("the server stopped before shutdown was requested");
            }
            info!("stopped");
            return Ok(());
        }
    }
    health
        .set_not_serving::<ProducerServer<ProducerService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let drain_timeout = config.drain_timeout;
    info!(?drain_timeout, "draining requests in progress");

    if tokio::time::timeout(drain_timeout, &mut server)
        .await
        .is_ok()
    {
        info!("stopped");
        return Ok(());
    }
    warn!("drain timeout reached: stopping running batches");
    state.batches.stop().await;
    if tokio::time::timeout(FINAL_GRACE, &mut server)
        .await
        .is_err()
    {
        warn!("connections still open after the final grace period; exiting anyway");
    }
    info!("stopped");
    Ok(())
}

/// The whole public surface: REST, then gRPC services by path, then JSON 404/405 for REST
/// callers and UNIMPLEMENTED for gRPC callers; every request counted and traced. With
/// PRODUCER_API_TOKEN, the API proper (`POST /MessageProducer`, `producer.v1.Producer`) takes
/// only callers with the token; probes, metrics, the API docs, health and reflection stay open.
/// Also returns the reporter of `grpc.health.v1.Health`, whose statuses the caller sets.
pub fn router(state: ServerState) -> anyhow::Result<(Router, HealthReporter)> {
    let producer = ProducerService::new(state.batches.clone(), Arc::clone(&state.metrics));
    let metrics = Arc::clone(&state.metrics);
    let (health, health_service) = tonic_health::server::health_reporter();
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

    // The API proper behind the token, when one is configured; the open routes beside it.
    let api = grpc(rest::api_router(state.clone()), producer);
    let api = match state.api_token.clone() {
        Some(token) => {
            let gate = Gate {
                token,
                metrics: Arc::clone(&metrics),
            };
            api.layer(axum::middleware::from_fn_with_state(gate, authenticate))
        }
        None => api,
    };
    let open = rest::open_router(state);
    let open = grpc(open, health_service);
    let open = grpc(open, reflection_v1);
    let open = grpc(open, reflection_v1alpha);
    let router = open
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(metrics, observe));
    Ok((router, health))
}

/// Wraps both fronts: every request runs in its trace's span, and REST requests are counted by
/// route and status (gRPC requests are counted by their service, which knows the method).
async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let grpc = is_grpc(request.headers());
    // The route template, not the path: unknown paths must not create a series each.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let received = TraceContext::from_headers(request.headers());
    let span = server_span(grpc, request.method(), &route, request.uri().path());
    trace_context::set_remote_parent(&span, received.as_ref());
    // Every log event of a traced request, REST or gRPC (whose metadata are HTTP/2 headers),
    // carries its trace id; its batch's span repeats it for batches that outlive the request.
    let logged = match (trace_context::ids(&span), &received) {
        (Some((trace_id, span_id)), _) => {
            pipeline::context_span!("request", trace_id, span_id)
        }
        (None, Some(received)) => {
            pipeline::context_span!("request", trace_id = received.traceparent().trace_id())
        }
        (None, None) => tracing::Span::none(),
    };
    let response = if span.is_none() && logged.is_none() {
        next.run(request).await
    } else {
        next.run(request)
            .instrument(logged)
            .instrument(span.clone())
            .await
    };
    end_server_span(&span, grpc, response.headers(), response.status());
    if !grpc {
        metrics.http_request(&route, response.status().as_u16());
    }
    response
}

/// Routes whose requests get no span: probes and scrapes, which come every few seconds, each a
/// trace of its own that would bury the requests worth tracing.
const UNTRACED: [&str; 4] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/grpc.health.v1.Health/{*method}",
];

/// The exported span of one request: `rpc.*` attributes for gRPC, `http.*` ones for REST.
fn server_span(grpc: bool, method: &Method, route: &str, path: &str) -> tracing::Span {
    if !trace_context::exporting() || UNTRACED.contains(&route) {
        return tracing::Span::none();
    }
    if grpc {
        pipeline::grpc_span!(path, "server")
    } else {
        pipeline::otel_span!(
            format!("{method} {route}"),
            "server",
            http.request.method = method.as_str(),
            http.route = route,
        )
    }
}

/// Records a request's outcome on its span: a gRPC code (an answer's `grpc-status`; a call that
/// streams its answer reports it in trailers, after this span, and counts as OK here), or an
/// HTTP status, 5xx being the server's errors.
fn end_server_span(span: &tracing::Span, grpc: bool, headers: &HeaderMap, status: StatusCode) {
    if span.is_none() {
        return;
    }
    if grpc {
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from_i32);
        let error = (code != Code::Ok).then(|| {
            let message = headers.get("grpc-message").and_then(|v| v.to_str().ok());
            let message = percent_encoding::percent_decode_str(message.unwrap_or_default());
            tonic::Status::new(code, message.decode_utf8_lossy())
        });
        trace_context::end_grpc_span(span, error.as_ref());
    } else {
        trace_context::set_attribute(
            span,
            "http.response.status_code",
            i64::from(status.as_u16()),
        );
        trace_context::set_status(span, status.is_server_error().then(|| status.to_string()));
    }
}

/// PRODUCER_API_TOKEN's check, in front of the API proper (REST and gRPC alike).
#[derive(Debug, Clone)]
struct Gate {
    token: ApiToken,
    metrics: Arc<Metrics>,
}

/// Lets a request through with the token, or answers 401 (REST, with `WWW-Authenticate`) or
/// UNAUTHENTICATED (gRPC), counted like any other answer and logged without the token.
async fn authenticate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let Err(error) = gate.token.check_bearer(request.headers()) else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let grpc = is_grpc(request.headers());
    warn!(path, grpc, reason = %error, "request refused");
    if !grpc {
        return ApiError::Unauthorized(error).into_response();
    }
    if let Some(method) = grpc::method(path) {
        gate.metrics.grpc_request(method, Code::Unauthenticated);
    }
    tonic::Status::unauthenticated(error.to_string()).into_http()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Mounts a generated tonic server on `router`, at the paths of its service.
fn grpc<S>(router: Router, service: S) -> Router
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
{
    router.route_service(&format!("/{}/{{*method}}", S::NAME), service)
}

async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if is_grpc(&headers) {
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

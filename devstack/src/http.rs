//! The HTTP side, like daprd's HTTP port: health endpoints, the metadata API (`GET /v1.0/metadata`),
//! `POST /v1.0/bindings/{name}` (what the original ASP.NET producer called), and the sidecar's own
//! queue status, metrics and live dashboard (`dashboard`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use pipeline::{http_server::ConnectionMetrics, openmetrics, trace_context::TraceParent};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::error;

use crate::{
    broker::Broker,
    dashboard::{self, Dashboard},
    metadata::{self, Metadata},
    runtime::Runtime,
};

#[derive(Debug, Clone)]
struct HttpState {
    runtime: Runtime,
    broker: Arc<Broker>,
    metadata: Arc<Metadata>,
    connections: ConnectionMetrics,
}

/// daprd's output binding request body.
#[derive(Debug, Deserialize)]
struct OutputBindingRequest {
    #[serde(default)]
    data: Value,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// The routes; `/devstack/metrics` includes the port's `connections`.
pub fn router(
    runtime: Runtime,
    broker: Arc<Broker>,
    metadata: Arc<Metadata>,
    connections: ConnectionMetrics,
    dashboard: Arc<Dashboard>,
) -> Router {
    Router::new()
        .route("/v1.0/healthz", get(StatusCode::NO_CONTENT))
        .route("/v1.0/healthz/outbound", get(StatusCode::NO_CONTENT))
        .route("/v1.0/metadata", get(get_metadata))
        .route("/v1.0/bindings/{name}", post(invoke_binding))
        .route("/devstack/status", get(status))
        .route("/devstack/metrics", get(metrics))
        .with_state(HttpState {
            runtime,
            broker,
            metadata,
            connections,
        })
        .merge(dashboard::router(dashboard))
}

/// daprd's error body.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "errorCode": code, "message": message })),
    )
        .into_response()
}

/// The token check and its answer are daprd's (`APITokenAuthMiddleware`): the metadata API is not
/// one of the health routes it exempts.
async fn get_metadata(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if !state.metadata.authorize(&headers) {
        return unauthorized();
    }
    Json(metadata::to_json(&state.metadata.response())).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "invalid api token" })),
    )
        .into_response()
}

async fn invoke_binding(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.runtime.authorize(&headers).is_err() {
        return unauthorized();
    }
    let request: OutputBindingRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("failed deserializing HTTP body: {e}"),
            );
        }
    };
    // daprd re-marshals `data`: {"text":"Hello World"} arrives as exactly those bytes.
    let data = serde_json::to_vec(&request.data).expect("a JSON value serializes");
    let trace = TraceParent::from_headers(&headers);
    match state
        .runtime
        .invoke(&name, &request.operation, data, request.metadata, trace)
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_INVOKE_OUTPUT_BINDING",
            e.to_string(),
        ),
    }
}

async fn status(State(state): State<HttpState>) -> Json<crate::broker::Status> {
    Json(state.broker.status())
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.broker.metrics(&state.connections) {
        Ok(page) => ([(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)], page).into_response(),
        Err(e) => {
            error!(error = %e, "encoding the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

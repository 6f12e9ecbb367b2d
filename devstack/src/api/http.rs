//! The HTTP side, like daprd's HTTP port: health endpoints, the metadata API (`GET /v1.0/metadata`)
//! and `POST /v1.0/bindings/{name}` (what the original ASP.NET producer called), those two behind
//! the API token layer; and the sidecar's own queue status, metrics and live dashboard
//! (`dashboard`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use pipeline::{
    api_token::ApiToken, http_server::ConnectionMetrics, openmetrics, trace_context::TraceParent,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::error;

use super::token::{ApiTokenLayer, HttpRefusal};
use crate::{
    dashboard::{self, Dashboard},
    metadata::{self, Metadata},
    runtime::Runtime,
    status::{Status, StatusBoard},
};

#[derive(Debug, Clone)]
struct HttpState {
    runtime: Runtime,
    status: Arc<StatusBoard>,
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

/// The parts the routes answer from.
#[derive(Debug)]
pub struct HttpApi {
    pub runtime: Runtime,
    pub status: Arc<StatusBoard>,
    pub metadata: Arc<Metadata>,
    /// The port's connection counts, which `/devstack/metrics` includes.
    pub connections: ConnectionMetrics,
    pub dashboard: Arc<Dashboard>,
    /// What callers of the Dapr routes must present as `dapr-api-token`.
    pub api_token: Option<ApiToken>,
}

/// The routes.
pub fn router(api: HttpApi) -> Router {
    // The token check and its answer are daprd's (`APITokenAuthMiddleware`): the metadata API
    // is not one of the health routes it exempts.
    let dapr = Router::new()
        .route("/v1.0/metadata", get(get_metadata))
        .route("/v1.0/bindings/{name}", post(invoke_binding))
        .route_layer(ApiTokenLayer::new(api.api_token, HttpRefusal));
    Router::new()
        .route("/v1.0/healthz", get(StatusCode::NO_CONTENT))
        .route("/v1.0/healthz/outbound", get(StatusCode::NO_CONTENT))
        .merge(dapr)
        .route("/devstack/status", get(status))
        .route("/devstack/metrics", get(metrics))
        .with_state(HttpState {
            runtime: api.runtime,
            status: api.status,
            metadata: api.metadata,
            connections: api.connections,
        })
        .merge(dashboard::router(api.dashboard))
}

/// daprd's error body.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "errorCode": code, "message": message })),
    )
        .into_response()
}

async fn get_metadata(State(state): State<HttpState>) -> Json<Value> {
    Json(metadata::to_json(&state.metadata.response()))
}

async fn invoke_binding(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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

async fn status(State(state): State<HttpState>) -> Json<Status> {
    Json(state.status.status())
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.status.metrics(&state.connections) {
        Ok(page) => ([(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)], page).into_response(),
        Err(e) => {
            error!(error = %e, "encoding the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

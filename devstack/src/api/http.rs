//! The HTTP side, like daprd's HTTP port: health endpoints, the metadata API (`GET /v1.0/metadata`)
//! and `POST /v1.0/bindings/{name}` (what the original ASP.NET producer called), those two behind
//! the API token layer; devstack's own routes (`devstack`: status, metrics, faults, journeys,
//! dead letters) and its live dashboard (`dashboard`). Every route is behind the `Host` check
//! (`guard`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use pipeline::{api_token::ApiToken, trace_context::TraceParent};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    devstack::{self, DevstackApi},
    guard::{self, AllowedHosts},
    token::{ApiTokenLayer, HttpRefusal},
};
use crate::{
    dashboard::{self, Dashboard},
    journey::Via,
    metadata::{self, Metadata},
    runtime::{InvokeError, Runtime},
};

#[derive(Debug, Clone)]
struct DaprState {
    runtime: Runtime,
    metadata: Arc<Metadata>,
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
    pub metadata: Arc<Metadata>,
    /// devstack's own routes' state: the status (with the port's connection counts), the
    /// queues, the faults, the journeys.
    pub devstack: DevstackApi,
    pub dashboard: Arc<Dashboard>,
    /// What callers of the Dapr routes must present as `dapr-api-token`.
    pub api_token: Option<ApiToken>,
    /// The `Host` names answered besides loopback's.
    pub allowed_hosts: AllowedHosts,
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
        .with_state(DaprState {
            runtime: api.runtime,
            metadata: api.metadata,
        })
        .merge(devstack::router(api.devstack))
        .merge(dashboard::router(api.dashboard))
        .layer(middleware::from_fn_with_state(
            Arc::new(api.allowed_hosts),
            guard::allowed_host,
        ))
}

/// daprd's error body.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "errorCode": code, "message": message })),
    )
        .into_response()
}

async fn get_metadata(State(state): State<DaprState>) -> Json<Value> {
    Json(metadata::to_json(&state.metadata.response()))
}

async fn invoke_binding(
    State(state): State<DaprState>,
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
    let invoked = state
        .runtime
        .invoke(
            &name,
            &request.operation,
            data,
            request.metadata,
            trace,
            Via::Http,
        )
        .await;
    match invoked {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let status = match e {
                InvokeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, "ERR_INVOKE_OUTPUT_BINDING", e.to_string())
        }
    }
}

//! The sidecar's API, as daprd serves it: the runtime gRPC API (`grpc`) and the HTTP API
//! (`http`), both behind one API token check (`token`); devstack's own routes on the HTTP port
//! (`devstack`), and what keeps that port safe on a developer's machine (`guard`). What the
//! calls do lives in `runtime`, `metadata`, `queue`, `faults` and `journey`.

pub mod devstack;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod token;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// devstack's error body, `{"error": message}`: its own routes' and the guard's.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

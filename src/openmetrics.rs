//! The OpenMetrics text format, which prometheus-client's encoder writes and Prometheus scrapes
//! natively, and the `/metrics` answer that carries it.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// `Content-Type` of a `/metrics` answer encoded by `prometheus_client::encoding::text::encode`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the OpenMetrics text format, `# EOF` included. The encoder fails only if a
/// metric or label fails to write itself.
pub fn page(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(text)
}

/// The answer to a scrape: the page, or a 500 with the failure logged.
pub fn response(page: Result<String, std::fmt::Error>) -> Response {
    match page {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding the metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

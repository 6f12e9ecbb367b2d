//! The OpenMetrics text format, which prometheus-client's encoder writes and Prometheus scrapes
//! natively.

/// `Content-Type` of a `/metrics` answer encoded by `prometheus_client::encoding::text::encode`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

//! The REST front: `POST /MessageProducer` as in the original ASP.NET sample, health endpoints,
//! and the OpenAPI document with an offline Swagger UI.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, MatchedPath, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bindings::{openmetrics, trace_context::TraceParent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    batch::{Batch, BatchError, Batches, InvalidBatch},
    metrics::Metrics,
    publisher::{PublishError, Trace},
};

/// Largest request body accepted; the largest valid body is a 64 KiB text plus a few fields.
pub const MAX_BODY_BYTES: usize = 80 * 1024;

/// What the REST handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub batches: Batches,
    pub metrics: Arc<Metrics>,
    pub max_count: std::num::NonZeroU32,
    /// Cancelled on SIGTERM: readiness then fails so no new traffic is routed here.
    pub shutdown: CancellationToken,
}

/// The original sample's request body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"count": 1, "intervalMilliseconds": 0}))]
pub struct ProduceBody {
    /// Number of messages to send (1 up to the configured maximum, 10000 by default).
    #[schema(minimum = 1, example = 1)]
    count: i64,
    /// Pause between two messages in milliseconds, 0 to 60000. 0 sends with bounded concurrency.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 60000, example = 0)]
    interval_milliseconds: i64,
    /// Message text; "Hello World" when absent.
    #[serde(default)]
    #[schema(max_length = 65536, example = "Hello World")]
    text: Option<String>,
}

/// Answer to a batch that was sent in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    /// Messages handed to the sidecar.
    sent: u32,
}

/// Every error body: what went wrong, and for batch failures how many messages went out first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<u32>,
}

/// One error type for the REST front, each variant with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("expected Content-Type: application/json")]
    ContentType,
    #[error(
        "request body is missing; expected JSON like {{\"count\": 1, \"intervalMilliseconds\": 0}}"
    )]
    MissingBody,
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("cannot read request body: {0}")]
    Body(BytesRejection),
    #[error(
        "invalid request: expected a JSON object like {{\"count\": 1, \"intervalMilliseconds\": 0}}"
    )]
    NotAnObject,
    #[error("malformed JSON: {0}")]
    Syntax(serde_json::Error),
    #[error("invalid request: {0}")]
    Data(serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] InvalidBatch),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("sidecar not ready: {0}")]
    NotReady(PublishError),
    #[error("shutting down")]
    ShuttingDown,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MissingBody | Self::Syntax(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(rejection) => rejection.status(),
            Self::NotAnObject | Self::Data(_) | Self::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Batch(BatchError::Sidecar { source, .. }) => match source {
                PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                PublishError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                PublishError::Rejected(_) => StatusCode::BAD_GATEWAY,
            },
            Self::Batch(BatchError::Busy { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::Batch(BatchError::Stopped { .. }) | Self::NotReady(_) | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let sent = match &self {
            Self::Batch(e) => Some(e.sent()),
            _ => None,
        };
        // Batch failures are logged where they happen; not-ready answers are routine during start-up.
        if let Self::Body(_) = &self {
            tracing::warn!(%status, error = %self, "request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                sent,
            }),
        )
            .into_response()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dapr bindings producer",
        description = "Sends messages to a Dapr output binding (a queue)."
    ),
    paths(produce, healthz, readyz),
    components(schemas(ProduceBody, Sent, ErrorBody))
)]
struct ApiDoc;

/// The REST routes. Unknown paths answer 404 with a JSON error (the gRPC router adds its own).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/MessageProducer", post(produce))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", ApiDoc::openapi()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Sends `count` messages through the Dapr output binding.
#[utoipa::path(
    post,
    path = "/MessageProducer",
    request_body = ProduceBody,
    params(("traceparent" = Option<String>, Header, description = "W3C trace context, forwarded to the sidecar")),
    responses(
        (status = 200, description = "All messages were handed to the sidecar", body = Sent),
        (status = 400, description = "Malformed JSON or missing body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Too many batches in progress (MAX_BATCHES); nothing was sent", body = ErrorBody),
        (status = 422, description = "Wrong field types, unknown fields or values out of range", body = ErrorBody),
        (status = 502, description = "The sidecar answered with an error; `sent` says how many went out", body = ErrorBody),
        (status = 503, description = "The sidecar is unreachable or the producer is stopping; `sent` says how many went out", body = ErrorBody),
        (status = 504, description = "The sidecar did not answer in time; `sent` says how many went out", body = ErrorBody),
    )
)]
async fn produce(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Sent>, ApiError> {
    let body = parse_body(&headers, body)?;
    let batch = Batch::validate(
        body.count,
        body.interval_milliseconds,
        body.text,
        state.max_count,
    )?;
    let slot = state.batches.reserve()?;
    let sent = state
        .batches
        .run(slot, batch, Trace::from_headers(&headers), |_| {})
        .await?;
    Ok(Json(Sent { sent }))
}

fn parse_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ProduceBody, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::Body(rejection),
    })?;
    // No body is what is wrong with a bare `curl -X POST`, whatever its Content-Type says.
    let Some(first) = body.trim_ascii_start().first() else {
        return Err(ApiError::MissingBody);
    };
    if !is_json(headers) {
        return Err(ApiError::ContentType);
    }
    // serde's derived visitor would take `[1]` as a struct; the body must be an object.
    if *first != b'{' {
        return Err(ApiError::NotAnObject);
    }
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Data(e),
        _ => ApiError::Syntax(e),
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(mime) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Prometheus metrics, in OpenMetrics text format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// Counts every REST request by route and status; gRPC requests are counted by their service.
pub async fn count_http(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    // The route template, not the path: unknown paths must not create a series each.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    // Every log event of a traced request, REST or gRPC (whose metadata are HTTP/2 headers),
    // carries its trace id; its batch's span repeats it for batches that outlive the request.
    let trace = TraceParent::from_headers(request.headers());
    let response = match trace {
        Some(traceparent) => {
            let span = bindings::context_span!("request", trace_id = traceparent.trace_id());
            next.run(request).instrument(span).await
        }
        None => next.run(request).await,
    };
    if !grpc {
        metrics.http_request(&route, response.status().as_u16());
    }
    response
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the sidecar's gRPC API answers, and the producer is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "Sidecar not reachable, or shutting down", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    state
        .batches
        .publisher()
        .sidecar_ready()
        .await
        .map_err(ApiError::NotReady)?;
    Ok("ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}

#[cfg(test)]
mod properties {
    use std::num::NonZeroU32;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const MAX: NonZeroU32 = NonZeroU32::new(10_000).unwrap();

    /// Parsing then validating, as `produce` does before anything is sent.
    fn outcome(headers: &HeaderMap, body: Vec<u8>) -> Result<Batch, ApiError> {
        let body = parse_body(headers, Ok(Bytes::from(body)))?;
        Ok(Batch::validate(
            body.count,
            body.interval_milliseconds,
            body.text,
            MAX,
        )?)
    }

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers
    }

    fn assert_clear_4xx(result: Result<Batch, ApiError>) {
        if let Err(error) = result {
            assert!(
                error.status().is_client_error(),
                "{error} -> {}",
                error.status()
            );
            assert!(!error.to_string().is_empty());
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::hash_map(
                    "(count|intervalMilliseconds|text|[a-z]{1,6})",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_get_a_batch_or_a_clear_4xx(body in prop::collection::vec(any::<u8>(), 0..300), json in any::<bool>()) {
            let headers = if json { json_headers() } else { HeaderMap::new() };
            assert_clear_4xx(outcome(&headers, body));
        }

        #[test]
        fn any_json_value_gets_a_batch_or_a_clear_4xx(value in json_value()) {
            assert_clear_4xx(outcome(&json_headers(), value.to_string().into_bytes()));
        }

        #[test]
        fn any_numbers_are_accepted_exactly_within_the_bounds(count in any::<i64>(), interval in any::<i64>(), text in proptest::option::of(".{0,40}")) {
            let body = json!({"count": count, "intervalMilliseconds": interval, "text": text});
            let result = outcome(&json_headers(), body.to_string().into_bytes());
            let in_bounds = (1..=i64::from(MAX.get())).contains(&count) && (0..=60_000).contains(&interval);
            match result {
                Ok(batch) => {
                    prop_assert!(in_bounds);
                    prop_assert_eq!(i64::from(batch.count), count);
                    prop_assert_eq!(batch.text, text.unwrap_or_else(|| "Hello World".to_owned()));
                }
                Err(error) => {
                    prop_assert!(!in_bounds, "{}", error);
                    prop_assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
                }
            }
        }
    }
}

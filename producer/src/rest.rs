//! The REST front: `POST /MessageProducer` as in the original ASP.NET sample, health endpoints,
//! and the OpenAPI document with an offline Swagger UI. The document is built at start from the
//! configuration, so it states the bounds this server enforces and, with PRODUCER_API_TOKEN, the
//! bearer token it requires.

use std::{fmt, num::NonZeroU32};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{
        DefaultBodyLimit, FromRequest, Request, State,
        rejection::{JsonDataError, JsonRejection, JsonSyntaxError},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use pipeline::{api_token::BearerError, openmetrics};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, Unexpected, Visitor},
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        self, RefOr, Schema,
        path::Operation,
        schema::{Object, SchemaType, Type},
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    batch::{BatchError, BatchRequest, InvalidBatch, MAX_INTERVAL, MAX_TEXT_CHARS, ProduceError},
    message_id::{IdempotencyKey, InvalidKey, MAX_KEY_CHARS, MIN_KEY_CHARS},
    publisher::{PublishError, Trace},
    server::ServerState,
};

/// Largest request body accepted, in bytes. Any schema-valid body fits, however its client
/// encodes the text: a character is at most 12 bytes of JSON (a code point outside the BMP
/// escaped as two `\uXXXX`, as Python's `json.dumps` does), and the other fields and spaces
/// take well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 200 * 1024;
const _: () = assert!(MAX_BODY_BYTES >= 12 * MAX_TEXT_CHARS + 1024);

/// The name of the bearer scheme in the OpenAPI document.
const BEARER: &str = "bearer";

/// The original sample's request body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"count": 1, "intervalMilliseconds": 0}))]
pub struct ProduceBody {
    /// Number of messages to send, 1 up to the configured MAX_COUNT.
    #[serde(deserialize_with = "json_integer")]
    #[schema(minimum = 1, example = 1)]
    count: i64,
    /// Pause between two messages in milliseconds. 0 sends with bounded concurrency.
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(minimum = 0, example = 0)]
    interval_milliseconds: i64,
    /// Message text, at most the stated number of characters (Unicode code points, as
    /// `maxLength` counts them); "Hello World" when absent or null.
    #[serde(default)]
    #[schema(example = "Hello World")]
    text: Option<String>,
}

/// An integer as JSON Schema has it: any number without a fractional part, `2.0` and `2e3`
/// included, which generated clients and fuzzers send as readily as `2`. Fractions, and integers
/// beyond `i64`, far outside every bound, are still refused.
fn json_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Integer;

    impl Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
            // -2^63 and 2^63 are exact in f64: the integers in between convert without loss.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if value.fract() != 0.0 {
                Err(E::invalid_type(Unexpected::Float(value), &self))
            } else if (-LIMIT..LIMIT).contains(&value) {
                Ok(value as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(value), &self))
            }
        }
    }

    deserializer.deserialize_i64(Integer)
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
    /// What went wrong.
    error: String,
    /// Messages handed to the sidecar before the batch ended; only on batch failures (429, 502,
    /// 503 and 504 of `POST /MessageProducer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
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
    Body(JsonRejection),
    #[error(
        "invalid request: expected a JSON object like {{\"count\": 1, \"intervalMilliseconds\": 0}}"
    )]
    NotAnObject,
    #[error("malformed JSON: {}", cause(.0))]
    Syntax(JsonSyntaxError),
    #[error("invalid request: {}", cause(.0))]
    Data(JsonDataError),
    #[error(transparent)]
    IdempotencyKey(#[from] InvalidKey),
    #[error(transparent)]
    Invalid(#[from] InvalidBatch),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("sidecar not ready: {0}")]
    NotReady(PublishError),
    #[error("shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Unauthorized(BearerError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MissingBody | Self::Syntax(_) | Self::IdempotencyKey(_) => {
                StatusCode::BAD_REQUEST
            }
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
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<ProduceError> for ApiError {
    fn from(error: ProduceError) -> Self {
        match error {
            ProduceError::Invalid(error) => Self::Invalid(error),
            ProduceError::Batch(error) => Self::Batch(error),
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
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                sent,
            }),
        )
            .into_response();
        if let Self::Unauthorized(error) = self {
            let challenge = HeaderValue::from_static(error.challenge());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dapr bindings producer",
        description = "Sends messages to a Dapr output binding (a queue)."
    ),
    paths(produce, healthz, readyz),
    components(schemas(ProduceBody, Sent, ErrorBody)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The bearer scheme Swagger UI's Authorize button asks for; `POST /MessageProducer` requires
/// it. [`Contract`] takes it out again when no token is configured.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let scheme = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The producer's token (PRODUCER_API_TOKEN), sent as `Authorization: Bearer <token>`",
            ))
            .build();
        let components = openapi.components.get_or_insert_default();
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// What the document states that types cannot: the bounds this server enforces, from the same
/// constants and configuration as the checks, and whether a token is required.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    /// MAX_COUNT: the largest `count`.
    pub max_count: NonZeroU32,
    /// Whether PRODUCER_API_TOKEN is set: the bearer scheme and 401 are documented only then.
    pub bearer: bool,
}

impl Contract {
    /// The OpenAPI document served at `/openapi.json`.
    pub fn openapi(&self) -> openapi::OpenApi {
        let mut doc = ApiDoc::openapi();
        self.modify(&mut doc);
        doc
    }
}

impl Modify for Contract {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let max_interval = MAX_INTERVAL.as_millis() as u64;
        property(doc, "ProduceBody", "count").maximum = Some(self.max_count.get().into());
        property(doc, "ProduceBody", "intervalMilliseconds").maximum = Some(max_interval.into());
        property(doc, "ProduceBody", "text").max_length = Some(MAX_TEXT_CHARS);

        let produce = operation(doc, "/MessageProducer");
        let too_large = format!("Body larger than {MAX_BODY_BYTES} bytes; nothing was sent");
        response(produce, "413").description = too_large;
        // A string when present: the derive's `Option` would also allow null, which a header
        // cannot carry and a client would send as the text "null".
        let key = header_schema(produce, "Idempotency-Key");
        key.schema_type = SchemaType::new(Type::String);
        key.pattern = Some(idempotency_key_pattern());
        if !self.bearer {
            produce.security = None;
            produce.responses.responses.remove("401");
            if let Some(components) = doc.components.as_mut() {
                components.security_schemes.remove(BEARER);
            }
        }
    }
}

/// A property of one of [`ApiDoc`]'s schemas; the derive makes each an inline object.
fn property<'a>(doc: &'a mut openapi::OpenApi, schema: &str, name: &str) -> &'a mut Object {
    let schemas = &mut doc
        .components
        .as_mut()
        .expect("ApiDoc has components")
        .schemas;
    let Some(RefOr::T(Schema::Object(object))) = schemas.get_mut(schema) else {
        panic!("ApiDoc has no object schema {schema}");
    };
    match object.properties.get_mut(name) {
        Some(RefOr::T(Schema::Object(property))) => property,
        _ => panic!("{schema} has no inline property {name}"),
    }
}

/// The POST operation of one of [`ApiDoc`]'s paths.
fn operation<'a>(doc: &'a mut openapi::OpenApi, path: &str) -> &'a mut Operation {
    let item = doc.paths.paths.get_mut(path);
    item.and_then(|item| item.post.as_mut())
        .unwrap_or_else(|| panic!("ApiDoc has no POST {path}"))
}

/// The schema of one of an operation's header parameters; the derive makes each an inline object.
fn header_schema<'a>(operation: &'a mut Operation, name: &str) -> &'a mut Object {
    let parameter = operation
        .parameters
        .iter_mut()
        .flatten()
        .find_map(|p| match p {
            RefOr::T(parameter) if parameter.name == name => Some(parameter),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no inline parameter {name}"));
    match parameter.schema.as_mut() {
        Some(RefOr::T(Schema::Object(schema))) => schema,
        _ => panic!("{name} has no inline object schema"),
    }
}

/// The `Idempotency-Key` values [`IdempotencyKey::parse`] takes, as a JSON Schema pattern: the
/// key bare or in quotes.
fn idempotency_key_pattern() -> String {
    let key = format!("[A-Za-z0-9._~-]{{{MIN_KEY_CHARS},{MAX_KEY_CHARS}}}");
    format!("^(\"{key}\"|{key})$")
}

/// One of an operation's documented responses.
fn response<'a>(operation: &'a mut Operation, status: &str) -> &'a mut openapi::Response {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => response,
        _ => panic!("no inline {status} response"),
    }
}

/// The REST routes anyone may call, whatever PRODUCER_API_TOKEN says: probes, the metrics
/// scrape and the API documents.
pub fn open_router(state: ServerState) -> Router {
    let doc = state.contract.openapi();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", doc))
        .with_state(state)
}

/// The REST API proper, which requires the token when one is configured.
pub fn api_router(state: ServerState) -> Router {
    Router::new()
        .route("/MessageProducer", post(produce))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Sends `count` messages through the Dapr output binding.
///
/// Each message carries a `MessageId`, made once and sent again on every retry of it, so a queue
/// with duplicate detection (the deployment guide's) keeps one copy of a message the producer
/// retried after a lost answer. Random by default; with an `Idempotency-Key`, the ids are derived
/// from the key, this request's body and each message's index, so resending a request with the
/// same key and body sends the same ids, and the queue drops the messages it already has.
/// Duplicates are dropped only within the queue's detection window (10 minutes in the guide), and
/// only by a queue created with duplicate detection; a consumer can still see a message twice
/// (a redelivery after its lock was lost), so its work must be idempotent too.
#[utoipa::path(
    post,
    path = "/MessageProducer",
    request_body = ProduceBody,
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context, forwarded to the sidecar"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this request (IETF draft-ietf-httpapi-idempotency-key-header): 16 to 255 ASCII letters, digits, `-`, `.`, `_` or `~`, bare or as the draft's quoted String. A resend with the same key and body sends the same `MessageId`s"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "All messages were handed to the sidecar", body = Sent),
        (status = 400, description = "Malformed JSON, missing body, or an invalid `Idempotency-Key`", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one: send `Authorization: Bearer <token>`", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`, with `error=\"invalid_token\"` for a wrong token"))),
        (status = 413, description = "Body too large (the figure is set at start)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Too many batches in progress (MAX_BATCHES); nothing was sent", body = ErrorBody),
        (status = 422, description = "Wrong field types, unknown fields or values out of range", body = ErrorBody),
        (status = 502, description = "The sidecar answered with an error; `sent` says how many went out", body = ErrorBody),
        (status = 503, description = "The sidecar is unreachable or the producer is stopping; `sent` says how many went out", body = ErrorBody),
        (status = 504, description = "The sidecar did not answer in time; `sent` says how many went out", body = ErrorBody),
    )
)]
async fn produce(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: ProduceBody,
) -> Result<Json<Sent>, ApiError> {
    let request = BatchRequest {
        count: body.count,
        interval_ms: body.interval_milliseconds,
        text: body.text,
        idempotency_key: IdempotencyKey::from_headers(&headers)?,
        trace: Trace::from_headers(&headers),
    };
    let sent = state.batches.produce(request).await?;
    Ok(Json(Sent { sent }))
}

/// Read through axum's `Json` extractor, whose rejections become [`ApiError`]s. Two checks stay
/// by hand, in the order callers have always seen them, because `Json` checks the Content-Type
/// first and deserializes `[1]` into a struct: an empty body is reported as missing before any
/// Content-Type complaint (what is wrong with a bare `curl -X POST` is the missing body), and a
/// body that is not a JSON object is refused after the Content-Type check, before the parse.
impl<S: Send + Sync> FromRequest<S> for ProduceBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| ApiError::from(JsonRejection::from(rejection)))?;
        let Some(&first) = bytes.trim_ascii_start().first() else {
            return Err(ApiError::MissingBody);
        };
        let request = Request::from_parts(parts, Body::from(bytes));
        match Json::<Self>::from_request(request, state).await {
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::ContentType),
            _ if first != b'{' => Err(ApiError::NotAnObject),
            Ok(Json(body)) => Ok(body),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::ContentType,
            JsonRejection::JsonSyntaxError(e) => Self::Syntax(e),
            JsonRejection::JsonDataError(e) => Self::Data(e),
            rejection if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge,
            rejection => Self::Body(rejection),
        }
    }
}

/// What serde said, without axum's generic preamble.
fn cause(error: &dyn std::error::Error) -> String {
    error
        .source()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// Prometheus metrics, in OpenMetrics text format.
async fn metrics(State(state): State<ServerState>) -> Response {
    openmetrics::response(state.metrics.encode())
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the sidecar's gRPC API answers, and the producer is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Sidecar not reachable, or shutting down", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<ServerState>) -> Result<&'static str, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    state
        .publisher
        .sidecar_ready()
        .await
        .map_err(ApiError::NotReady)?;
    Ok("ready")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::batch::Batch;

    /// What the extractor makes of a body sent with `content_type`.
    pub(super) fn extract(
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<ProduceBody, ApiError> {
        let mut request = Request::post("/MessageProducer");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body.to_vec())).unwrap();
        futures::executor::block_on(ProduceBody::from_request(request, &()))
    }

    #[test]
    fn accepts_json_content_types() {
        for content_type in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            let body = extract(Some(content_type), br#" {"count": 2}"#).unwrap();
            assert_eq!((body.count, body.interval_milliseconds), (2, 0));
        }
    }

    fn document(max_count: u32, bearer: bool) -> serde_json::Value {
        let contract = Contract {
            max_count: NonZeroU32::new(max_count).unwrap(),
            bearer,
        };
        serde_json::to_value(contract.openapi()).unwrap()
    }

    fn status_and_body(error: ApiError) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let (parts, body) = response.into_parts();
        let bytes = futures::executor::block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[test]
    fn the_document_states_the_bounds_enforced() {
        let doc = document(7, false);
        let body = &doc["components"]["schemas"]["ProduceBody"]["properties"];
        let range = |field: &str| {
            (
                body[field]["minimum"].clone(),
                body[field]["maximum"].clone(),
            )
        };
        assert_eq!(range("count"), (1.into(), 7.into()));
        assert_eq!(range("intervalMilliseconds"), (0.into(), 60_000.into()));
        assert_eq!(body["text"]["maxLength"], MAX_TEXT_CHARS);
        let too_large = &doc["paths"]["/MessageProducer"]["post"]["responses"]["413"];
        let description = too_large["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("{MAX_BODY_BYTES} bytes")),
            "{description}"
        );

        // The very bounds the checks hold, at both ends.
        let max = NonZeroU32::new(7).unwrap();
        let text = |n: usize| Some("\u{1F600}".repeat(n));
        assert!(Batch::validate(7, 60_000, text(MAX_TEXT_CHARS), max).is_ok());
        assert!(Batch::validate(1, 0, None, max).is_ok());
        for (count, interval, text) in [
            (8, 0, None),
            (0, 0, None),
            (1, 60_001, None),
            (1, -1, None),
            (1, 0, text(MAX_TEXT_CHARS + 1)),
        ] {
            assert!(Batch::validate(count, interval, text, max).is_err());
        }
    }

    #[test]
    fn the_idempotency_key_is_documented_as_it_is_parsed() {
        let doc = document(5, false);
        let produce = &doc["paths"]["/MessageProducer"]["post"];
        let parameters = produce["parameters"].as_array().unwrap();
        let key = parameters
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .expect("documented");
        assert_eq!(
            (&key["in"], &key["required"]),
            (&json!("header"), &json!(false))
        );
        assert_eq!(key["schema"]["type"], "string", "not null");
        assert_eq!(
            key["schema"]["pattern"],
            r#"^("[A-Za-z0-9._~-]{16,255}"|[A-Za-z0-9._~-]{16,255})$"#
        );
        let description = produce["description"].as_str().unwrap();
        for what in [
            "MessageId",
            "Idempotency-Key",
            "detection window",
            "idempotent",
        ] {
            assert!(description.contains(what), "{what}: {description}");
        }
        let bad = produce["responses"]["400"]["description"].as_str().unwrap();
        assert!(bad.contains("Idempotency-Key"), "{bad}");
        let (status, _, body) = status_and_body(ApiError::from(InvalidKey::Repeated));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "Idempotency-Key is given more than once");
    }

    #[test]
    fn the_bearer_scheme_and_401_are_documented_only_with_a_token() {
        let doc = document(5, true);
        let scheme = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(
            (&scheme["type"], &scheme["scheme"]),
            (&json!("http"), &json!("bearer"))
        );
        let produce = &doc["paths"]["/MessageProducer"]["post"];
        assert_eq!(produce["security"], json!([{"bearer": []}]));
        let unauthorized = &produce["responses"]["401"];
        assert!(
            unauthorized["headers"]["WWW-Authenticate"].is_object(),
            "{unauthorized}"
        );
        assert!(doc.get("security").is_none(), "no global requirement");
        for open in ["/healthz", "/readyz"] {
            assert!(
                doc["paths"][open]["get"].get("security").is_none(),
                "{open}"
            );
        }

        let doc = document(5, false);
        assert!(doc["components"].get("securitySchemes").is_none(), "{doc}");
        let produce = &doc["paths"]["/MessageProducer"]["post"];
        assert!(produce.get("security").is_none(), "{produce}");
        assert!(produce["responses"].get("401").is_none(), "{produce}");
    }

    #[test]
    fn every_error_documented_is_the_error_body_returned() {
        let doc = document(5, true);
        let error_body = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(error_body["required"], json!(["error"]));
        assert_eq!(error_body["properties"]["error"]["type"], "string");
        let sent = &error_body["properties"]["sent"];
        assert_eq!(
            (&sent["type"], &sent["minimum"]),
            (&json!("integer"), &json!(0))
        );
        let properties = error_body["properties"].as_object().unwrap();
        assert_eq!(properties.len(), 2, "{error_body}");

        // Every 4xx and 5xx of every operation is an ErrorBody.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.as_str() < "400" {
                        continue;
                    }
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }

        // And what the errors of `POST /MessageProducer` answer is one, with a documented status.
        let responses = &doc["paths"]["/MessageProducer"]["post"]["responses"];
        let errors = [
            ApiError::MissingBody,
            ApiError::ContentType,
            ApiError::TooLarge,
            ApiError::NotAnObject,
            ApiError::Invalid(InvalidBatch::Interval { got: -1 }),
            ApiError::Unauthorized(BearerError::Mismatch),
            ApiError::Batch(BatchError::Busy { limit: 64 }),
            ApiError::Batch(BatchError::Stopped { sent: 2, count: 5 }),
        ];
        for error in errors {
            let text = error.to_string();
            let (status, headers, body) = status_and_body(error);
            assert!(
                responses.get(status.as_str()).is_some(),
                "{status} undocumented"
            );
            assert_eq!(body["error"], text.as_str());
            for (key, value) in body.as_object().unwrap() {
                assert!(properties.contains_key(key), "{key} is not in ErrorBody");
                if key == "sent" {
                    assert!(value.is_u64(), "{body}");
                }
            }
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    headers[header::WWW_AUTHENTICATE],
                    r#"Bearer error="invalid_token""#
                );
            }
        }
    }

    #[test]
    fn integers_are_json_schema_integers() {
        let json = Some("application/json");
        for (body, count, interval) in [
            (r#"{"count": 2.0, "intervalMilliseconds": 341.0}"#, 2, 341),
            (r#"{"count": 2e0, "intervalMilliseconds": -0.0}"#, 2, 0),
            (r#"{"count": -9223372036854775808.0}"#, i64::MIN, 0),
            (
                r#"{"count": 3e2, "intervalMilliseconds": 6e4}"#,
                300,
                60_000,
            ),
        ] {
            let body = extract(json, body.as_bytes()).unwrap();
            assert_eq!((body.count, body.interval_milliseconds), (count, interval));
        }
        for (body, message) in [
            (
                r#"{"count": 1.5}"#,
                "invalid type: floating point `1.5`, expected an integer",
            ),
            (
                r#"{"count": 1e300}"#,
                "invalid value: floating point `1e+300`, expected an integer",
            ),
            (
                r#"{"count": 9223372036854775808.0}"#,
                "invalid value: floating point",
            ),
            (
                r#"{"count": 9223372036854775808}"#,
                "invalid value: integer `9223372036854775808`",
            ),
            (
                r#"{"count": 1, "intervalMilliseconds": 0.5}"#,
                "invalid type: floating point `0.5`",
            ),
        ] {
            let error = extract(json, body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(error.to_string().contains(message), "{body}: {error}");
        }
    }

    #[test]
    fn refuses_in_the_order_callers_have_always_seen() {
        let json = Some("application/json");
        let cases: &[(Option<&str>, &[u8], StatusCode, &str)] = &[
            // A missing body comes first, whatever the Content-Type.
            (
                None,
                b"",
                StatusCode::BAD_REQUEST,
                "request body is missing",
            ),
            (
                json,
                b" \n",
                StatusCode::BAD_REQUEST,
                "request body is missing",
            ),
            // Then the Content-Type, whatever the body.
            (
                Some("text/plain"),
                br#"{"count":1}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ),
            (
                None,
                b"[1]",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ),
            (
                Some("application/x-www-form-urlencoded"),
                b"count=1",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ),
            // Then the object, even where serde would have given up or taken it.
            (
                json,
                b"[1]",
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected a JSON object",
            ),
            (
                json,
                b"[1",
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected a JSON object",
            ),
            (
                json,
                b"null",
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected a JSON object",
            ),
            // Then serde's verdict, without axum's preamble.
            (
                json,
                br#"{"count":1"#,
                StatusCode::BAD_REQUEST,
                "malformed JSON: EOF while parsing",
            ),
            (
                json,
                br#"{"count":1} x"#,
                StatusCode::BAD_REQUEST,
                "malformed JSON: trailing characters",
            ),
            (
                json,
                br#"{"count":"1"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid type: string",
            ),
            (
                json,
                br#"{"intervalMilliseconds":0}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid request: missing field `count`",
            ),
            (
                json,
                br#"{"count":1,"intervalMs":5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown field `intervalMs`",
            ),
        ];
        for (content_type, body, status, message) in cases {
            let error = extract(*content_type, body).unwrap_err();
            assert_eq!(error.status(), *status, "{body:?}: {error}");
            let text = error.to_string();
            assert!(
                text.contains(message),
                "{body:?}: {text:?} should contain {message:?}"
            );
            assert!(
                !text.contains("Failed to"),
                "{text:?} keeps axum's preamble"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use std::num::NonZeroU32;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::batch::Batch;

    const MAX: NonZeroU32 = NonZeroU32::new(10_000).unwrap();

    /// Extracting then validating, as `produce` does before anything is sent.
    fn outcome(content_type: Option<&str>, body: Vec<u8>) -> Result<Batch, ApiError> {
        let body = super::tests::extract(content_type, &body)?;
        Ok(Batch::validate(
            body.count,
            body.interval_milliseconds,
            body.text,
            MAX,
        )?)
    }

    const JSON: Option<&str> = Some("application/json");

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

    /// The documented key pattern without its anchors, which proptest's generator does not take.
    fn documented_key() -> impl Strategy<Value = String> {
        let pattern = idempotency_key_pattern();
        let unanchored = &pattern[1..pattern.len() - 1];
        proptest::string::string_regex(unanchored).expect("a regex proptest takes")
    }

    proptest! {
        #[test]
        fn every_key_the_document_allows_is_taken(key in documented_key()) {
            match IdempotencyKey::parse(key.as_bytes()) {
                Ok(parsed) => prop_assert_eq!(parsed.as_str(), key.trim_matches('"')),
                Err(error) => prop_assert!(false, "{key:?}: {error}"),
            }
        }

        #[test]
        fn any_bytes_get_a_batch_or_a_clear_4xx(body in prop::collection::vec(any::<u8>(), 0..300), json in any::<bool>()) {
            assert_clear_4xx(outcome(json.then_some("application/json"), body));
        }

        #[test]
        fn any_json_value_gets_a_batch_or_a_clear_4xx(value in json_value()) {
            assert_clear_4xx(outcome(JSON, value.to_string().into_bytes()));
        }

        #[test]
        fn any_numbers_are_accepted_exactly_within_the_bounds(count in any::<i64>(), interval in any::<i64>(), text in proptest::option::of(".{0,40}")) {
            let body = json!({"count": count, "intervalMilliseconds": interval, "text": text});
            let result = outcome(JSON, body.to_string().into_bytes());
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

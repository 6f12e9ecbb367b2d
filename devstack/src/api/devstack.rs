//! devstack's own routes on the HTTP port, beside Dapr's: the status and its metrics, the faults
//! (`POST /devstack/faults`), each message's journey (`GET /devstack/messages`,
//! `GET /devstack/messages/{id}`) and the dead-letter operations (peek, replay, purge). The
//! state-changing ones are behind [`guard::same_origin_json`](super::guard::same_origin_json).
//! Every error is a 4xx (or, for a signal the system refused, a 500) with a JSON body
//! `{"error": "..."}` naming the problem.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use pipeline::{http_server::ConnectionMetrics, openmetrics};
use serde::Deserialize;
use serde_json::json;
use tracing::{error, info};

use super::{error, guard};
use crate::{
    faults::{Fault, FaultError, Faults, Source},
    journey::Journeys,
    queue::{Queue, Queues, Selection},
    status::{Status, StatusBoard},
};

/// The most dead letters or journeys one read returns.
pub const PAGE_LIMIT: usize = 1000;
/// What a read returns when it names no limit.
const DEFAULT_LIMIT: usize = 100;

/// What devstack's routes answer from.
#[derive(Debug, Clone)]
pub struct DevstackApi {
    pub status: Arc<StatusBoard>,
    pub connections: ConnectionMetrics,
    pub queues: Arc<Queues>,
    pub faults: Arc<Faults>,
    pub journeys: Journeys,
}

/// devstack's routes: reads, and the state changes, behind the same-origin JSON guard.
pub fn router(api: DevstackApi) -> Router {
    let state_changes = Router::new()
        .route("/devstack/faults", post(inject))
        .route("/devstack/dead-letters/{queue}/replay", post(replay))
        .route("/devstack/dead-letters/{queue}/purge", post(purge))
        .route_layer(middleware::from_fn(guard::same_origin_json));
    Router::new()
        .route("/devstack/status", get(status))
        .route("/devstack/metrics", get(metrics))
        .route("/devstack/faults", get(faults))
        .route("/devstack/messages", get(messages))
        .route("/devstack/messages/{id}", get(journey))
        .route("/devstack/dead-letters/{queue}", get(peek))
        .merge(state_changes)
        .with_state(api)
}

/// A refused request: answered with `status` and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<FaultError> for ApiError {
    fn from(e: FaultError) -> Self {
        let status = match &e {
            FaultError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FaultError::UnknownConsumer { .. } => StatusCode::NOT_FOUND,
            FaultError::NotRunning(_)
            | FaultError::NoProcesses
            | FaultError::MessageNotInFlight(_)
            | FaultError::NothingInFlight => StatusCode::CONFLICT,
            FaultError::Signal { .. } => {
                error!(error = %e, "a fault's signal failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, e.to_string())
    }
}

async fn status(State(api): State<DevstackApi>) -> Json<Status> {
    Json(api.status.status())
}

async fn metrics(State(api): State<DevstackApi>) -> Response {
    match api.status.metrics(&api.connections) {
        Ok(page) => ([(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)], page).into_response(),
        Err(e) => {
            error!(error = %e, "encoding the metrics");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed".to_owned(),
            )
        }
    }
}

async fn faults(State(api): State<DevstackApi>) -> Response {
    Json(api.faults.status()).into_response()
}

async fn inject(
    State(api): State<DevstackApi>,
    fault: Result<Json<Fault>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(fault) = fault?;
    let record = api.faults.inject(fault, Source::Api).await?;
    Ok(Json(json!({ "fault": record })).into_response())
}

/// `?limit=N&duplicates=true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    limit: Option<usize>,
    #[serde(default)]
    duplicates: bool,
}

fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=PAGE_LIMIT => Ok(n),
        n => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit: {n} is not between 1 and {PAGE_LIMIT}"),
        )),
    }
}

async fn messages(
    State(api): State<DevstackApi>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let limit = limit(query.limit)?;
    Ok(Json(json!({
        "journeys": api.journeys.counts(),
        "messages": api.journeys.recent(limit, query.duplicates),
    }))
    .into_response())
}

async fn journey(
    State(api): State<DevstackApi>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let journey = api.journeys.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no journey of message {id:?}: never sent, or forgotten (the last {} are kept, \
                 --journey-messages)",
                api.journeys.counts().capacity
            ),
        )
    })?;
    Ok(Json(journey).into_response())
}

fn queue<'a>(api: &'a DevstackApi, name: &str) -> Result<&'a Arc<Queue>, ApiError> {
    api.queues.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no queue {name:?}; queues: {}",
                api.queues.names().join(", ")
            ),
        )
    })
}

/// `?from=N&limit=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeekQuery {
    #[serde(default)]
    from: usize,
    limit: Option<usize>,
}

async fn peek(
    State(api): State<DevstackApi>,
    Path(name): Path<String>,
    query: Result<Query<PeekQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let queue = queue(&api, &name)?;
    let Query(query) = query?;
    let limit = limit(query.limit)?;
    let (dead_letters, total) = queue.peek_dead_letters(query.from, limit);
    Ok(Json(json!({
        "queue": name,
        "total": total,
        "from": query.from,
        "deadLetters": dead_letters,
    }))
    .into_response())
}

/// The body of a replay or a purge: `{"ids": [...]}` or `{"all": true}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Select {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

impl Select {
    fn selection(self) -> Result<Selection, String> {
        match (self.ids, self.all) {
            (Some(ids), false) if !ids.is_empty() => Ok(Selection::Ids(ids)),
            (Some(_), false) => Err("ids: empty; name at least one message id".to_owned()),
            (None, true) => Ok(Selection::All),
            _ => Err("give either \"ids\": [...] or \"all\": true".to_owned()),
        }
    }
}

/// A replay or a purge of the dead letters `body` selects in queue `name`.
fn dead_letter_operation(
    api: &DevstackApi,
    name: &str,
    body: Result<Json<Select>, JsonRejection>,
    operation: &'static str,
    run: fn(&Queue, &Selection) -> Result<usize, crate::queue::NotDeadLettered>,
) -> Result<Response, ApiError> {
    let queue = queue(api, name)?;
    let Json(select) = body?;
    let selection = select
        .selection()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let n =
        run(queue, &selection).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    info!(
        queue = name,
        operation,
        messages = n,
        "dead letters {operation}"
    );
    Ok(Json(json!({ operation: n })).into_response())
}

async fn replay(
    State(api): State<DevstackApi>,
    Path(name): Path<String>,
    body: Result<Json<Select>, JsonRejection>,
) -> Result<Response, ApiError> {
    dead_letter_operation(&api, &name, body, "replayed", Queue::replay)
}

async fn purge(
    State(api): State<DevstackApi>,
    Path(name): Path<String>,
    body: Result<Json<Select>, JsonRejection>,
) -> Result<Response, ApiError> {
    dead_letter_operation(&api, &name, body, "purged", Queue::purge)
}

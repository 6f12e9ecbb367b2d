//! The live dashboard on the sidecar's HTTP port: the page (`GET /devstack/`, every asset embedded
//! in the binary), its event stream (`GET /devstack/events`, Server-Sent Events), its settings
//! (`GET /devstack/config.json`) and the producer call it makes (`POST /devstack/produce`). The
//! page's other actions call devstack's own routes (faults, dead letters, journeys).
//!
//! The event stream: on connect, one `history` event, the chart's last ten minutes as the sidecar
//! sampled them (`history`), then one `status` event, a full snapshot; then one `status` event per
//! change, coalesced to at most one per [`MIN_GAP`]; a `heartbeat` event after [`HEARTBEAT`] of
//! silence; a `stopping` event when devstack stops, before the stream ends. A `status` event's
//! data is what `GET /devstack/status` returns at that moment, but for each dead letter's `data`,
//! cut to its first [`BODY_PREVIEW_CHARS`] characters (the page shows only the start, and a big
//! poison message must not be copied to every client ten times a second).
//!
//! One task serializes each snapshot once and shares it with every client through a watch, so a
//! client costs a copy of the latest frame per update, and a slow client skips frames rather than
//! queueing them; no work is done while no client is connected.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt, stream};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    api::guard,
    changes::ChangesReceiver,
    status::{Status, StatusBoard},
};

pub mod history;

use history::{History, Sample};

/// The least time between two `status` events: at most ten a second, whatever the queue does.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// Silence after which the stream sends a `heartbeat`, so the page can tell a quiet stack from a
/// dead connection.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How much of a dead letter's body the stream carries.
pub const BODY_PREVIEW_CHARS: usize = 200;
/// How long the producer may take to accept the connection of a `POST /devstack/produce`.
const PRODUCER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a batch call may take: the producer's longest batch is its MAX_COUNT times an interval
/// of up to a minute; past this the page is told, rather than waiting forever.
const PRODUCER_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// What the dashboard shows: the sidecar's [`StatusBoard`]. A trait, so that what the dashboard
/// costs (the snapshots it takes) can be observed from outside, with no counter kept for it.
pub trait StatusSource: Send + Sync + 'static {
    /// The status now.
    fn status(&self) -> Status;
    /// Wakes after each change to what [`status`](Self::status) shows.
    fn subscribe(&self) -> ChangesReceiver;
    /// The bindings served, for the page's settings.
    fn bindings(&self) -> Vec<String>;
}

impl StatusSource for StatusBoard {
    fn status(&self) -> Status {
        StatusBoard::status(self)
    }

    fn subscribe(&self) -> ChangesReceiver {
        StatusBoard::subscribe(self)
    }

    fn bindings(&self) -> Vec<String> {
        StatusBoard::bindings(self)
    }
}

/// The dashboard's shared state: the latest frame, the producer's address once known.
pub struct Dashboard {
    source: Arc<dyn StatusSource>,
    frames: watch::Sender<Arc<str>>,
    history: History,
    producer: Mutex<Option<SocketAddr>>,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("clients", &self.clients())
            .field("producer", &self.producer())
            .finish_non_exhaustive()
    }
}

/// `GET /devstack/config.json`: what the page needs besides the status.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig {
    /// `host:port` of the producer's REST port, or null while unknown (`devstack sidecar`).
    producer: Option<String>,
    bindings: Vec<String>,
    heartbeat_seconds: u64,
}

impl Dashboard {
    /// The dashboard of `source`; its streams end when `shutdown` is cancelled. Start
    /// [`publish`](Self::publish) to send updates.
    pub fn new(source: Arc<dyn StatusSource>, shutdown: CancellationToken) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(PRODUCER_CONNECT_TIMEOUT)
            .timeout(PRODUCER_CALL_TIMEOUT)
            .build()
            // Only a TLS backend can fail to build, and this client has none.
            .expect("a plain HTTP client builds");
        Arc::new(Self {
            source,
            frames: watch::Sender::new(Arc::from("")),
            history: History::default(),
            producer: Mutex::new(None),
            http,
            shutdown,
        })
    }

    /// Where the page's batch form posts (the producer's REST port), once devstack knows it.
    pub fn set_producer(&self, address: SocketAddr) {
        *self.producer.lock() = Some(address);
    }

    fn producer(&self) -> Option<SocketAddr> {
        *self.producer.lock()
    }

    /// Clients connected to the event stream now.
    pub fn clients(&self) -> usize {
        self.frames.receiver_count()
    }

    /// The status as one `status` event's data.
    fn snapshot(&self) -> Arc<str> {
        let mut status = self.source.status();
        for letters in status.dead_letters.values_mut() {
            for letter in letters {
                if let Some((cut, _)) = letter.data.char_indices().nth(BODY_PREVIEW_CHARS) {
                    letter.data.truncate(cut);
                }
            }
        }
        // A status is maps of strings and numbers: it always serializes.
        Arc::from(serde_json::to_string(&status).expect("the status serializes"))
    }

    /// Until shutdown: after each change of the status, and at most once per [`MIN_GAP`],
    /// serializes the status once for every connected client.
    /// It watches from the moment it is called, not from its first poll.
    pub fn publish(self: Arc<Self>) -> impl Future<Output = ()> + Send + use<> {
        let mut changes = self.source.subscribe();
        async move { self.run(&mut changes).await }
    }

    async fn run(&self, changes: &mut ChangesReceiver) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            // A client that connects later serializes its own first snapshot, after subscribing:
            // skipping here loses nothing.
            if self.clients() > 0 {
                self.frames.send_replace(self.snapshot());
            }
            // Changes during the gap mark `changes` again: the next turn sends them as one.
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_GAP) => {}
            }
        }
    }

    /// Until shutdown: a sample of the status every [`history::INTERVAL`], kept for the pages
    /// that connect later.
    pub async fn sample(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(history::INTERVAL);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.history.push(Sample::of(&self.source.status()));
        }
    }

    /// One client's events: the history and the snapshot, then the shared frames, then
    /// `stopping` at shutdown. Dropping the stream (the client went away) drops its
    /// subscription.
    pub fn events(self: &Arc<Self>) -> impl Stream<Item = Event> + Send + use<> {
        // Subscribe before the first snapshot: a change between the two is sent, not lost.
        let frames = self.frames.subscribe();
        // Samples and numbers: it always serializes.
        let history = serde_json::to_string(&self.history.event()).expect("the history serializes");
        let history = Event::default().event("history").data(history);
        let first = status_event(&self.snapshot());
        let shutdown = self.shutdown.clone();
        let updates = stream::unfold(Some(frames), move |frames| {
            let shutdown = shutdown.clone();
            async move {
                let mut frames = frames?;
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let stopping = Event::default().event("stopping").data("devstack is stopping");
                        Some((stopping, None))
                    }
                    changed = frames.changed() => {
                        changed.ok()?;
                        let frame = Arc::clone(&frames.borrow_and_update());
                        Some((status_event(&frame), Some(frames)))
                    }
                }
            }
        });
        stream::iter([history, first]).chain(updates)
    }
}

fn status_event(frame: &str) -> Event {
    Event::default().event("status").data(frame)
}

/// The dashboard's routes, under `/devstack/`.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route(
            "/devstack",
            get(|| async { Redirect::permanent("/devstack/") }),
        )
        .route("/devstack/", get(page))
        .route("/devstack/app.js", get(asset(JS, APP_JS)))
        .route("/devstack/style.css", get(asset(CSS, STYLE_CSS)))
        .route(
            "/devstack/vendor/uPlot.iife.min.js",
            get(asset(JS, UPLOT_JS)),
        )
        .route("/devstack/vendor/uPlot.min.css", get(asset(CSS, UPLOT_CSS)))
        .route("/devstack/vendor/LICENSE", get(asset(TEXT, UPLOT_LICENSE)))
        .route("/devstack/events", get(events))
        .route("/devstack/config.json", get(config))
        .route(
            "/devstack/produce",
            post(produce).route_layer(axum::middleware::from_fn(guard::same_origin_json)),
        )
        .with_state(dashboard)
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const UPLOT_JS: &str = include_str!("assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("assets/vendor/uplot/LICENSE");

/// Everything the page loads comes from this port; nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, HTML),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// An embedded file; `no-cache` so a rebuilt devstack's page is never mixed with an old one.
fn asset(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move || {
        std::future::ready(
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response(),
        )
    }
}

async fn events(
    State(dashboard): State<Arc<Dashboard>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(dashboard.events().map(Ok)).keep_alive(
        KeepAlive::new()
            .interval(HEARTBEAT)
            .event(Event::default().event("heartbeat").data("{}")),
    )
}

async fn config(State(dashboard): State<Arc<Dashboard>>) -> Json<PageConfig> {
    Json(PageConfig {
        producer: dashboard.producer().map(|a| a.to_string()),
        bindings: dashboard.source.bindings(),
        heartbeat_seconds: HEARTBEAT.as_secs(),
    })
}

/// The page's batch form: the body goes to the producer's `POST /MessageProducer` as is, and its
/// answer comes back as is. Same-origin, so the producer needs no CORS; the guard refuses a
/// foreign `Origin` and a body that is not JSON.
async fn produce(
    State(dashboard): State<Arc<Dashboard>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let Some(producer) = dashboard.producer() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no producer: devstack has not started one (`devstack sidecar` runs without), or it \
             is not up yet"
                .to_owned(),
        );
    };
    let url = format!("http://{producer}/MessageProducer");
    let answer = match dashboard.http.post(&url).json(&body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            warn!(%url, error = %error_chain(&e), "the producer is unreachable");
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the producer at {producer} is unreachable: {}",
                    error_chain(&e)
                ),
            );
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            debug!(%status, "the producer answered the page's batch");
            let mut response = (status, bytes).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!(
                "the producer at {producer} broke off its answer: {}",
                error_chain(&e)
            ),
        ),
    }
}

/// `e` and its causes, `: `-separated: reqwest's own message alone ("error sending request")
/// does not say that the connection was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn error(status: StatusCode, message: String) -> Response {
    crate::api::error(status, message)
}

#[cfg(test)]
mod tests;

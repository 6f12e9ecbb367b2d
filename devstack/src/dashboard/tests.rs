//! The event stream, the page's routes and the producer call, in process: routers through
//! `oneshot`, time paused where the stream's pacing is the subject.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{
    body::{Body, to_bytes},
    http::Request,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::*;
use crate::{
    app::{AppProtocol, AppTarget},
    changes::Changes,
    faults::Faults,
    journey::{Journeys, Via},
    queue::{Queue, QueueSettings, Queues},
    registry::AppRegistry,
    service_bus::Envelope,
};

const QUEUE: &str = "q";
/// Longest any one wait of these tests takes (they end on an event, not on this).
const WAIT: Duration = Duration::from_secs(10);

/// A sidecar's status parts, and the dashboard's view of them, which counts the snapshots the
/// dashboard takes (each one is serialized once).
struct Sidecar {
    queues: Arc<Queues>,
    apps: Arc<AppRegistry>,
    board: Arc<StatusBoard>,
    source: Arc<Counted>,
}

struct Counted {
    board: Arc<StatusBoard>,
    snapshots: AtomicU64,
}

impl StatusSource for Counted {
    fn status(&self) -> Status {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.board.status()
    }

    fn subscribe(&self) -> ChangesReceiver {
        self.board.subscribe()
    }

    fn bindings(&self) -> Vec<String> {
        self.board.bindings()
    }
}

impl Sidecar {
    fn new() -> Self {
        let changes = Changes::default();
        let settings = QueueSettings {
            max_delivery_count: 1,
            ..QueueSettings::default()
        };
        let journeys = Journeys::new(10);
        let queues = Arc::new(Queues::new(
            &[QUEUE.to_owned()],
            settings,
            &changes,
            &journeys,
        ));
        let apps = Arc::new(AppRegistry::new(changes.clone()));
        let faults = Arc::new(Faults::new(
            Arc::clone(&queues),
            journeys.clone(),
            changes.clone(),
        ));
        let board = Arc::new(StatusBoard::new(
            Arc::clone(&queues),
            Arc::clone(&apps),
            faults,
            journeys,
            changes,
        ));
        let source = Arc::new(Counted {
            board: Arc::clone(&board),
            snapshots: AtomicU64::new(0),
        });
        Self {
            queues,
            apps,
            board,
            source,
        }
    }

    fn queue(&self) -> &Arc<Queue> {
        self.queues.get(QUEUE).expect("the queue")
    }

    /// Snapshots the dashboard serialized so far, first ones of each client included.
    fn serialized(&self) -> u64 {
        self.source.snapshots.load(Ordering::Relaxed)
    }

    fn dashboard(&self, shutdown: CancellationToken) -> Arc<Dashboard> {
        Dashboard::new(Arc::clone(&self.source) as Arc<dyn StatusSource>, shutdown)
    }
}

fn send(sidecar: &Sidecar, body: &str) {
    sidecar.queue().send(
        body.as_bytes().to_vec(),
        Envelope::default(),
        None,
        Via::Grpc,
    );
}

/// A connected client: the body of `GET /devstack/events`, read event by event, past its first
/// event, the history.
struct Client {
    body: Body,
    buffer: String,
    history: Value,
}

impl Client {
    async fn connect(dashboard: &Arc<Dashboard>) -> Self {
        let response = router(Arc::clone(dashboard))
            .oneshot(
                Request::get("/devstack/events")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut client = Self {
            body: response.into_body(),
            buffer: String::new(),
            history: Value::Null,
        };
        let (name, data) = client.next().await.expect("the first event");
        assert_eq!(name, "history", "{data}");
        client.history = serde_json::from_str(&data).expect("history data is JSON");
        client
    }

    /// The next event's name and data; comments skipped. None once the stream ended.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    }
                }
                if name.is_empty() && data.is_empty() {
                    continue; // a comment
                }
                return Some((name, data.join("\n")));
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event within the wait")?
                .expect("the stream's body does not fail");
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }

    /// The next event, which must be `status`, as JSON.
    async fn status(&mut self) -> Value {
        let (name, data) = self.next().await.expect("an event");
        assert_eq!(name, "status", "{data}");
        serde_json::from_str(&data).expect("status data is JSON")
    }
}

fn produced(status: &Value) -> u64 {
    status["queues"][QUEUE]["produced"]
        .as_u64()
        .expect("produced")
}

/// A dashboard whose publisher runs until the returned token is cancelled.
fn started(sidecar: &Sidecar) -> (Arc<Dashboard>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let dashboard = sidecar.dashboard(shutdown.clone());
    tokio::spawn(Arc::clone(&dashboard).publish());
    (dashboard, shutdown)
}

#[tokio::test]
async fn the_first_status_event_is_the_whole_status_with_bodies_cut_to_their_start() {
    let sidecar = Sidecar::new();
    let long = "é".repeat(BODY_PREVIEW_CHARS + 50);
    send(&sidecar, &long);
    send(&sidecar, "next");
    sidecar.queue().receive().await.abandon("rejected").unwrap();
    let (dashboard, shutdown) = started(&sidecar);

    let first = Client::connect(&dashboard).await.status().await;
    let mut expected = serde_json::to_value(sidecar.board.status()).unwrap();
    expected["deadLetters"][QUEUE][0]["data"] = Value::from("é".repeat(BODY_PREVIEW_CHARS));
    assert_eq!(first, expected);
    assert_eq!(
        first["queues"][QUEUE],
        json!({
            "produced": 2, "scheduled": 0, "active": 1, "locked": 0, "completed": 0,
            "deadLettered": 1, "expired": 0, "purged": 0, "replayed": 0, "locksExpired": 0,
            "duplicatesDropped": 0, "duplicatesEnqueued": 0,
        })
    );
    shutdown.cancel();
}

/// A page opened late gets the past first: the sidecar samples the status every second whether
/// or not a page is open, and the stream's first event holds the last ten minutes of samples.
#[tokio::test(start_paused = true)]
async fn a_page_opened_late_is_sent_the_samples_of_the_last_ten_minutes_first() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    tokio::spawn(Arc::clone(&dashboard).sample());
    // Its first sample, at once.
    tokio::task::yield_now().await;
    // A burst, drained by nobody, then a quiet while with no page open.
    for n in 0..50 {
        send(&sidecar, &n.to_string());
    }
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let late = Client::connect(&dashboard).await;
    let samples = late.history["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 4, "one at start, one a second: {samples:?}");
    assert_eq!(samples[0]["active"], 0, "before the burst");
    assert_eq!(samples[3]["active"], 50, "the burst, still there");
    assert_eq!(late.history["windowSeconds"], 600);
    let times: Vec<f64> = samples.iter().map(|s| s["t"].as_f64().unwrap()).collect();
    assert!(times.is_sorted(), "{times:?}");

    // Ten minutes on, the first samples are gone: the history is bounded.
    tokio::time::sleep(Duration::from_secs(700)).await;
    let later = Client::connect(&dashboard).await;
    assert_eq!(later.history["samples"].as_array().unwrap().len(), 600);
    shutdown.cancel();
}

#[tokio::test]
async fn each_change_sends_a_new_snapshot_and_shutdown_says_stopping() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    let mut client = Client::connect(&dashboard).await;
    assert_eq!(produced(&client.status().await), 0);

    send(&sidecar, "one");
    assert_eq!(produced(&client.status().await), 1);
    let lock = sidecar.queue().receive().await;
    lock.complete().unwrap();
    // However the receive and the complete were coalesced, the stream ends on the last state.
    let mut last = client.status().await;
    while last["queues"][QUEUE]["completed"] != 1 {
        last = client.status().await;
    }
    assert_eq!(last["queues"][QUEUE]["locked"], 0);

    shutdown.cancel();
    assert_eq!(
        client.next().await,
        Some(("stopping".to_owned(), "devstack is stopping".to_owned()))
    );
    assert_eq!(
        client.next().await,
        None,
        "the stream ends after `stopping`"
    );
}

#[tokio::test]
async fn app_changes_are_sent_too_with_the_processed_and_failed_counts() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    let mut client = Client::connect(&dashboard).await;
    assert_eq!(client.status().await["consumers"], serde_json::json!([]));

    let target = AppTarget {
        protocol: AppProtocol::Grpc,
        address: ([127, 0, 0, 1], 1).into(),
        max_concurrency: 1,
    };
    let app = sidecar.apps.register("consumer-1".to_owned(), target);
    app.delivery_started();
    app.delivery_ended(true);
    app.delivery_started();
    app.delivery_ended(false);
    let mut status = client.status().await;
    while status["consumers"][0]["failed"] != 1 {
        status = client.status().await;
    }
    let consumer = &status["consumers"][0];
    assert_eq!(
        (
            &consumer["address"],
            &consumer["processed"],
            &consumer["inFlight"]
        ),
        (
            &Value::from("127.0.0.1:1"),
            &Value::from(1),
            &Value::from(0)
        )
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_quiet_stream_sends_a_heartbeat() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    let mut client = Client::connect(&dashboard).await;
    client.status().await;
    let before = tokio::time::Instant::now();
    let (name, _) = client.next().await.expect("an event");
    assert_eq!(name, "heartbeat");
    assert_eq!(tokio::time::Instant::now() - before, HEARTBEAT);
    // And again: it is not a one-off.
    assert_eq!(client.next().await.expect("an event").0, "heartbeat");
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_stream_of_changes_is_coalesced_to_ten_events_a_second() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    let mut client = Client::connect(&dashboard).await;
    client.status().await;

    // One send a millisecond for two seconds, read as they come.
    const SENDS: u64 = 2_000;
    let queue = Arc::clone(sidecar.queue());
    let sender = tokio::spawn(async move {
        for n in 0..SENDS {
            queue.send(
                n.to_string().into_bytes(),
                Envelope::default(),
                None,
                Via::Grpc,
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let start = tokio::time::Instant::now();
    let mut events = 0u64;
    loop {
        let status = client.status().await;
        events += 1;
        if produced(&status) == SENDS {
            break;
        }
        assert!(events <= SENDS, "bounded");
    }
    sender.await.unwrap();
    let elapsed = tokio::time::Instant::now() - start;
    let most = 1 + elapsed.as_millis() as u64 / MIN_GAP.as_millis() as u64;
    assert!(
        events <= most && events >= most / 2,
        "{events} events in {elapsed:?}, expected about {most}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_subscription() {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    // Over a real socket: what a closed browser tab does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, router(Arc::clone(&dashboard)))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let http = reqwest::Client::new();
    let mut responses = Vec::new();
    for _ in 0..3 {
        let mut response = http
            .get(format!("http://{addr}/devstack/events"))
            .send()
            .await
            .unwrap();
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("the first snapshot")
            .unwrap()
            .expect("a chunk");
        assert!(chunk.starts_with(b"event: history\n"), "{chunk:?}");
        responses.push(response);
    }
    assert_eq!(dashboard.clients(), 3);
    drop(responses);
    // The server learns of the closed connections when it next writes or reads: bounded wait on
    // the count itself, nudged by changes.
    let freed = tokio::time::timeout(WAIT, async {
        while dashboard.clients() > 0 {
            send(&sidecar, "nudge");
            tokio::time::sleep(MIN_GAP).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "{} clients still held", dashboard.clients());
    // Nobody watches: changes serialize nothing.
    let serialized = sidecar.serialized();
    for _ in 0..5 {
        send(&sidecar, "unwatched");
        tokio::time::sleep(MIN_GAP).await;
    }
    assert_eq!(sidecar.serialized(), serialized);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Runs one paused-time scenario with `clients` connected and none reading until the end: the
/// number of snapshots the publisher serialized, after each client's first, and what each client
/// read last.
async fn serializations_with(clients: usize) -> (u64, Vec<u64>) {
    let sidecar = Sidecar::new();
    let (dashboard, shutdown) = started(&sidecar);
    let mut connected = Vec::new();
    for _ in 0..clients {
        let mut client = Client::connect(&dashboard).await;
        client.status().await;
        connected.push(client);
    }
    let firsts = sidecar.serialized();
    for n in 0..1_000 {
        send(&sidecar, &n.to_string());
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(MIN_GAP * 2).await;
    let published = sidecar.serialized() - firsts;
    let mut last = Vec::new();
    for client in &mut connected {
        last.push(produced(&client.status().await));
    }
    shutdown.cancel();
    (published, last)
}

#[tokio::test(start_paused = true)]
async fn many_clients_share_each_snapshot_and_never_hold_the_queue_back() {
    let (alone, last) = serializations_with(1).await;
    assert_eq!(last, [1_000]);
    let (crowded, last) = serializations_with(200).await;
    // The publisher's work does not grow with the clients: one serialization per update for all.
    assert_eq!(crowded, alone);
    assert!(alone <= 12, "{alone} updates for one second of sends");
    // Clients that did not read while the queue moved cost it nothing, and skip to the latest.
    assert_eq!(last, vec![1_000; 200]);
}

async fn get(path: &str, dashboard: Arc<Dashboard>) -> (StatusCode, HeaderMap, String) {
    let response = router(dashboard)
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

use axum::http::HeaderMap;

#[tokio::test]
async fn the_page_and_every_asset_it_loads_are_served_from_the_binary() {
    let dashboard = Sidecar::new().dashboard(CancellationToken::new());
    let (status, headers, page) = get("/devstack/", Arc::clone(&dashboard)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], HTML);
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    // Every src= and href= of the page is relative (this port), and served.
    let mut loaded = 0;
    for attribute in ["src=\"", "rel=\"stylesheet\" href=\""] {
        for reference in page.split(attribute).skip(1) {
            let target = &reference[..reference.find('"').unwrap()];
            assert!(!target.contains("//"), "{target} is not on this port");
            let (status, _, body) =
                get(&format!("/devstack/{target}"), Arc::clone(&dashboard)).await;
            assert_eq!(status, StatusCode::OK, "{target}");
            assert!(!body.is_empty(), "{target}");
            loaded += 1;
        }
    }
    assert!(
        loaded >= 4,
        "the page loads its script, styles and chart library"
    );
    let (status, headers, _) = get("/devstack", Arc::clone(&dashboard)).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], "/devstack/");
    let (_, _, license) = get("/devstack/vendor/LICENSE", dashboard).await;
    assert!(license.starts_with("The MIT License"), "{license}");
}

async fn post_produce(dashboard: Arc<Dashboard>, body: &str) -> (StatusCode, Value) {
    let response = router(dashboard)
        .oneshot(
            Request::post("/devstack/produce")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&body).expect("a JSON answer"),
    )
}

#[tokio::test]
async fn produce_passes_the_producers_answer_or_says_it_is_unreachable() {
    let dashboard = Sidecar::new().dashboard(CancellationToken::new());
    let body = r#"{"count":2,"intervalMilliseconds":0,"text":"hi"}"#;
    let (status, answer) = post_produce(Arc::clone(&dashboard), body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer["error"].as_str().unwrap().starts_with("no producer"),
        "{answer}"
    );

    // A port nobody listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    dashboard.set_producer(closed_addr);
    let (status, answer) = post_produce(Arc::clone(&dashboard), body).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("the producer at {closed_addr} is unreachable: ")),
        "{message}"
    );

    // A stand-in producer that echoes the body it got, with its own status.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let producer = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/MessageProducer",
        post(|Json(body): Json<Value>| async move {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "got": body })),
            )
        }),
    );
    let served = tokio::spawn(axum::serve(listener, app).into_future());
    dashboard.set_producer(producer);
    let (status, answer) = post_produce(Arc::clone(&dashboard), body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer,
        json!({"got": {"count": 2, "intervalMilliseconds": 0, "text": "hi"}})
    );
    // Not JSON: refused here, in the JSON error shape.
    let (status, answer) = post_produce(dashboard, "count=2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].is_string(), "{answer}");
    served.abort();
}

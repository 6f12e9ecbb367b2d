//! A fake HTTP consumer app (daprd's `--app-protocol http`), in the test process: an axum router on
//! a 127.0.0.1:0 listener with `POST /<binding>` for each binding it takes (so `OPTIONS` there
//! gets axum's 405, which daprd reads as "subscribed", and any other path a 404, "not
//! subscribed") and `GET /healthz` with a switchable answer, recording every request.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::watch};

use super::{Served, wait_count};

/// How the fake HTTP app answers.
#[derive(Debug, Clone)]
pub struct HttpBehaviour {
    /// The bindings it has a `POST /<binding>` route for.
    pub bindings: Vec<String>,
    /// Answer `fail_with` to every event whose body contains this.
    pub fail_body: Option<String>,
    /// The status of an injected failure.
    pub fail_with: StatusCode,
}

impl Default for HttpBehaviour {
    fn default() -> Self {
        Self {
            bindings: vec!["message-queue".to_owned()],
            fail_body: None,
            fail_with: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One `POST /<binding>` as received.
#[derive(Debug, Clone)]
pub struct HttpDelivery {
    pub path: String,
    pub body: Vec<u8>,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    /// Whether the app answered 200 (the sidecar then completes the message), not `fail_with`.
    pub ok: bool,
}

#[derive(Debug)]
struct Recorder {
    behaviour: HttpBehaviour,
    healthy: AtomicBool,
    health_calls: watch::Sender<u64>,
    /// Every request, `METHOD /path`, in order.
    requests: Mutex<Vec<String>>,
    deliveries: Mutex<Vec<HttpDelivery>>,
    received: watch::Sender<usize>,
}

/// A running fake HTTP app.
pub struct HttpApp {
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    server: Served,
}

impl HttpApp {
    /// Starts on an ephemeral port; healthy from the start.
    pub async fn start(behaviour: HttpBehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder {
            behaviour: behaviour.clone(),
            healthy: AtomicBool::new(true),
            health_calls: watch::channel(0).0,
            requests: Mutex::default(),
            deliveries: Mutex::default(),
            received: watch::channel(0).0,
        });
        let mut router = Router::new().route("/healthz", get(health));
        for binding in &behaviour.bindings {
            router = router.route(&format!("/{binding}"), post(event));
        }
        let router = router
            .layer(middleware::from_fn_with_state(
                Arc::clone(&recorder),
                record,
            ))
            .with_state(Arc::clone(&recorder));
        let server = Served::spawn("fake HTTP app", |shutdown| {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .into_future()
        });
        Self {
            addr,
            recorder,
            server,
        }
    }

    /// The `--app` value for the sidecar.
    pub fn app_arg(&self) -> String {
        format!("--app=http://{}", self.addr)
    }

    /// What `GET /healthz` answers from now on: 200, or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.recorder.healthy.store(healthy, Ordering::SeqCst);
    }

    /// `GET /healthz` calls so far.
    pub fn health_calls(&self) -> u64 {
        *self.recorder.health_calls.borrow()
    }

    /// Waits, at most [`super::WAIT`], until the sidecar has called `GET /healthz` `n` times.
    pub async fn wait_for_health_calls(&self, n: u64) {
        wait_count(&self.recorder.health_calls, n, "health checks the app got").await;
    }

    /// Every request so far but the health checks, as `METHOD /path`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.recorder.requests.lock().clone()
    }

    /// Every binding event so far.
    pub fn deliveries(&self) -> Vec<HttpDelivery> {
        self.recorder.deliveries.lock().clone()
    }

    /// Waits, at most [`super::WAIT`], until `n` binding events have arrived; returns them all.
    pub async fn wait_for_deliveries(&self, n: usize) -> Vec<HttpDelivery> {
        wait_count(&self.recorder.received, n, "binding events the app got").await;
        self.deliveries()
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) {
        self.server.stop("fake HTTP app").await;
    }
}

async fn record(State(recorder): State<Arc<Recorder>>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/healthz" {
        let line = format!("{} {}", request.method(), request.uri().path());
        recorder.requests.lock().push(line);
    }
    next.run(request).await
}

async fn health(State(recorder): State<Arc<Recorder>>) -> StatusCode {
    recorder.health_calls.send_modify(|n| *n += 1);
    if recorder.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn event(
    State(recorder): State<Arc<Recorder>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fails = recorder
        .behaviour
        .fail_body
        .as_deref()
        .is_some_and(|poison| String::from_utf8_lossy(&body).contains(poison));
    let delivery = HttpDelivery {
        path: uri.path().to_owned(),
        body: body.to_vec(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        ok: !fails,
    };
    recorder.deliveries.lock().push(delivery);
    recorder.received.send_modify(|n| *n += 1);
    if fails {
        recorder.behaviour.fail_with
    } else {
        StatusCode::OK
    }
}

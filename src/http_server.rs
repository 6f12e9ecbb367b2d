//! How every HTTP port is served (the producer's port, the consumer's metrics port, devstack's
//! sidecar HTTP port): an axum router over HTTP/1.1 and h2c with hyper-util's auto builder, and
//! the limits that keep slow and abusive clients from holding connections and memory.
//!
//! - a cap on open connections: beyond it, new connections are accepted and closed at once;
//! - HTTP/1: hyper's header read timeout, which hyper also starts while an idle keep-alive
//!   connection waits for its next request;
//! - a new connection must send its first request within the header read timeout (this also
//!   covers the bytes hyper-util reads to tell HTTP/1 from HTTP/2, which it does not time);
//! - a connection without a request in progress for the idle timeout is closed gracefully;
//! - a request body must arrive whole within the body timeout;
//! - HTTP/2: keep-alive pings, max concurrent streams, max header list size, and h2's
//!   protection against rapid resets (`max_pending_accept_reset_streams`,
//!   `max_local_error_reset_streams`).
//!
//! Each connection closed (or request body cut off) by a limit is logged at debug and counted in
//! `http_connections_closed_total{limit}`. Shutdown stops accepting, closes each connection
//! gracefully (HTTP/2 GOAWAY, HTTP/1 after its response) and waits for them all: callers bound
//! that wait themselves.

use std::{
    convert::Infallible,
    future::pending,
    net::SocketAddr,
    num::NonZeroUsize,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, body::Body};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, Sleep},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tracing::{debug, error};

use crate::{cli::positive_duration, net};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits of an HTTP port, shared by the three binaries (flattened into each `Config`).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers, and a new connection its first request.
    /// HTTP/1 keep-alive connections waiting for their next request are closed after it too.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,

    /// Time a client has to send a whole request body, from its headers on; a slower body is cut
    /// off with an error.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub body_timeout: Duration,

    /// A connection without a request in progress for this long is closed (gracefully: HTTP/2
    /// GOAWAY).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Open connections at most; more are closed as soon as they are accepted.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroUsize,

    /// Interval of HTTP/2 keep-alive pings, which find peers that went away.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = positive_duration)]
    pub http2_keepalive_interval: Duration,

    /// A connection whose peer does not answer a keep-alive ping within this is closed.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub http2_keepalive_timeout: Duration,

    /// HTTP/2 streams (requests) in progress on one connection at most.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// Largest HTTP/2 header list (decoded headers or gRPC metadata) of a request, in bytes.
    #[arg(long, env = "HTTP2_MAX_HEADER_LIST_SIZE", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_header_list_size: u32,

    /// HTTP/2 streams a client may open and reset before the server accepts them, at once; more
    /// close the connection (h2's protection against rapid reset, CVE-2023-44487).
    #[arg(
        long,
        env = "HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        default_value_t = 20
    )]
    pub http2_max_pending_accept_reset_streams: usize,

    /// HTTP/2 streams the server may reset for a client's protocol errors on one connection;
    /// more close the connection (h2's protection against CVE-2024-27316-style floods).
    #[arg(
        long,
        env = "HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_local_error_reset_streams: usize,
}

impl HttpLimits {
    /// hyper-util's connection builder with these limits.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.http2_keepalive_interval)
            .keep_alive_timeout(self.http2_keepalive_timeout)
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .max_header_list_size(self.http2_max_header_list_size)
            .max_pending_accept_reset_streams(self.http2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.http2_max_local_error_reset_streams);
        builder
    }

    /// tonic's equivalents of these limits, for the gRPC-only ports: HTTP/2 keep-alive, streams,
    /// header list size and reset-flood protection. tonic has no header, body or idle timeout
    /// and no connection cap.
    pub fn tonic(&self, server: tonic::transport::Server) -> tonic::transport::Server {
        server
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .http2_max_header_list_size(self.http2_max_header_list_size)
            .http2_max_pending_accept_reset_streams(Some(
                self.http2_max_pending_accept_reset_streams,
            ))
            .http2_max_local_error_reset_streams(Some(self.http2_max_local_error_reset_streams))
    }
}

/// Which limit closed a connection: the `limit` label of `http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Accepted beyond `HTTP_MAX_CONNECTIONS`.
    MaxConnections,
    /// Headers, or a new connection's first request, not received within the header timeout.
    HeaderTimeout,
    /// No request in progress for the idle timeout.
    IdleTimeout,
    /// A request body not received whole within the body timeout.
    BodyTimeout,
    /// An HTTP/2 keep-alive ping not answered in time.
    KeepaliveTimeout,
    /// HTTP/2 closed with `ENHANCE_YOUR_CALM`: too many streams reset (rapid reset) or another
    /// flood h2 guards against.
    Http2Flood,
}

impl Limit {
    const ALL: [Self; 6] = [
        Self::MaxConnections,
        Self::HeaderTimeout,
        Self::IdleTimeout,
        Self::BodyTimeout,
        Self::KeepaliveTimeout,
        Self::Http2Flood,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::Http2Flood => "http2_flood",
        }
    }
}

impl EncodeLabelValue for Limit {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: Limit,
}

/// An HTTP port's connection metrics; cheap to clone (the series are shared).
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    closed: Family<LimitLabels, Counter>,
    open: Gauge,
}

impl Default for ConnectionMetrics {
    /// Every limit's series starts at 0, so alerts on their rate work from the first scrape.
    fn default() -> Self {
        let closed = Family::<LimitLabels, Counter>::default();
        for limit in Limit::ALL {
            let _ = closed.get_or_create(&LimitLabels { limit });
        }
        Self {
            closed,
            open: Gauge::default(),
        }
    }
}

impl ConnectionMetrics {
    /// Registers `http_connections_closed_total` and `http_connections_open` (under the
    /// registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_connections_closed",
            "HTTP connections closed, or request bodies cut off, by a limit",
            self.closed.clone(),
        );
        registry.register(
            "http_connections_open",
            "HTTP connections being served",
            self.open.clone(),
        );
    }

    fn close(&self, limit: Limit, peer: SocketAddr) {
        self.closed.get_or_create(&LimitLabels { limit }).inc();
        debug!(%peer, limit = limit.as_str(), "HTTP connection closed by a limit");
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then closes every connection
/// gracefully and returns once they have all ended (callers bound that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.get()));
    let port = Arc::new(Port {
        builder: limits.builder(),
        router,
        limits,
        metrics,
        shutdown,
    });
    let Port {
        metrics, shutdown, ..
    } = &*port;
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error, shutdown).await;
                    continue;
                }
            },
        };
        // Accepting and closing (rather than leaving the rest in the backlog) answers at once,
        // counts them, and keeps the backlog free for when a slot opens.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.close(Limit::MaxConnections, peer);
            continue;
        };
        net::nodelay(&stream);
        connections.spawn(connection(Arc::clone(&port), stream, peer, slot));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// As axum's `serve`: errors of one connection are skipped; others (out of file descriptors)
/// pause accepting for a second rather than spinning.
async fn accept_failed(error: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = shutdown.cancelled() => {}
    }
}

/// What every connection of a port shares.
struct Port {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
}

async fn connection(
    port: Arc<Port>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let Port {
        builder,
        router,
        limits,
        metrics,
        shutdown,
    } = &*port;
    metrics.open.inc();
    let (in_flight, mut requests) = watch::channel(Requests::default());
    let served = in_flight.subscribe();
    let in_flight = Arc::new(in_flight);
    let (router, body_timeout, body_metrics) =
        (router.clone(), limits.body_timeout, metrics.clone());
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let guard = InFlight::start(Arc::clone(&in_flight));
        let body = Deadline::new(body_timeout, body_metrics.clone(), peer);
        let request = request.map(|incoming| body.wrap(incoming));
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            // The request is in progress until its response body is sent (streamed gRPC replies).
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                }))
            }))
        }
    });
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let limit = tokio::select! {
        result = conn.as_mut() => {
            ended(result, peer, metrics, &served);
            metrics.open.dec();
            return;
        }
        () = shutdown.cancelled() => None,
        limit = idle(&mut requests, limits) => Some(limit),
    };
    conn.as_mut().graceful_shutdown();
    match limit {
        None => {
            let result = conn.as_mut().await;
            ended(result, peer, metrics, &served);
        }
        Some(limit) => {
            metrics.close(limit, peer);
            // A graceful close waits for the client's part (HTTP/2 GOAWAY); bounded here, as
            // this client already went silent once. Not counted again if hyper reports the same
            // header timeout on its way out.
            let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
        }
    }
    metrics.open.dec();
}

/// A connection's requests so far.
#[derive(Debug, Default)]
struct Requests {
    started: u64,
    in_progress: usize,
}

/// Resolves when the connection has had no request in progress for its limit: the header
/// timeout until its first request, the idle timeout after.
async fn idle(requests: &mut watch::Receiver<Requests>, limits: &HttpLimits) -> Limit {
    loop {
        // The sender lives as long as the connection, which this runs beside.
        let Ok(started) = requests
            .wait_for(|r| r.in_progress == 0)
            .await
            .map(|now| now.started)
        else {
            return pending().await;
        };
        // Requests may have come and gone before this first ran: the count tells.
        let (limit, wait) = match started {
            0 => (Limit::HeaderTimeout, limits.header_read_timeout),
            _ => (Limit::IdleTimeout, limits.idle_timeout),
        };
        match tokio::time::timeout(wait, requests.changed()).await {
            Err(_) => return limit,
            Ok(Err(_)) => return pending().await,
            Ok(Ok(())) => {}
        }
    }
}

/// Counts a connection's end when hyper closed it for a limit.
fn ended(
    result: Result<(), BoxError>,
    peer: SocketAddr,
    metrics: &ConnectionMetrics,
    served: &watch::Receiver<Requests>,
) {
    let Err(error) = result else { return };
    let Some(e) = error.downcast_ref::<hyper::Error>() else {
        return debug!(%peer, %error, "HTTP connection ended with an error");
    };
    if e.is_timeout() {
        // hyper's only server-side timeout is HTTP/1's header read timeout, which it also runs
        // between requests: after a first request, that is a keep-alive connection gone idle.
        let limit = match served.borrow().started {
            0 => Limit::HeaderTimeout,
            _ => Limit::IdleTimeout,
        };
        metrics.close(limit, peer);
    } else if is_keepalive_timeout(e) {
        metrics.close(Limit::KeepaliveTimeout, peer);
    } else if h2_reason(e) == Some(h2::Reason::ENHANCE_YOUR_CALM) {
        metrics.close(Limit::Http2Flood, peer);
    } else {
        debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// The HTTP/2 error code hyper's error carries, if any.
fn h2_reason(error: &hyper::Error) -> Option<h2::Reason> {
    let source = std::error::Error::source(error)?;
    source.downcast_ref::<h2::Error>()?.reason()
}

/// hyper does not expose its HTTP/2 keep-alive error's type; its message is all there is.
fn is_keepalive_timeout(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.to_string() == "keep-alive timed out" {
            return true;
        }
        source = e.source();
    }
    false
}

/// One request in progress on a connection, until dropped.
struct InFlight(Arc<watch::Sender<Requests>>);

impl InFlight {
    fn start(requests: Arc<watch::Sender<Requests>>) -> Self {
        requests.send_modify(|r| {
            r.started += 1;
            r.in_progress += 1;
        });
        Self(requests)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|r| r.in_progress -= 1);
    }
}

/// The request body's deadline, fixed when its headers arrive.
struct Deadline {
    at: Instant,
    timeout: Duration,
    metrics: ConnectionMetrics,
    peer: SocketAddr,
}

impl Deadline {
    fn new(timeout: Duration, metrics: ConnectionMetrics, peer: SocketAddr) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
            metrics,
            peer,
        }
    }

    fn wrap(self, body: Incoming) -> DeadlineBody {
        DeadlineBody {
            body,
            deadline: self,
            sleep: None,
            expired: false,
        }
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
///
/// Hand-written because tower-http's `RequestBodyTimeout` times each frame, not the whole body:
/// a client sending one byte just before each timeout would never be cut off.
struct DeadlineBody {
    body: Incoming,
    deadline: Deadline,
    /// Set on the first wait, so bodies that arrive at once never touch the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

/// A request body did not arrive within `HTTP_BODY_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Some(Err(BodyTimeout(this.deadline.timeout).into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let at = this.deadline.at;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        ready!(sleep.as_mut().poll(cx));
        this.expired = true;
        let Deadline { metrics, peer, .. } = &this.deadline;
        metrics.close(Limit::BodyTimeout, *peer);
        Poll::Ready(Some(Err(BodyTimeout(this.deadline.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: HttpLimits,
    }

    fn parse(args: &[&str]) -> Result<HttpLimits, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.limits)
    }

    #[test]
    fn defaults_are_bounded() {
        let limits = parse(&[]).unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.body_timeout, Duration::from_secs(30));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections.get(), 1024);
        assert_eq!(limits.http2_max_concurrent_streams, 100);
        assert_eq!(limits.http2_max_header_list_size, 65_536);
    }

    #[test]
    fn refuses_zero_limits() {
        for args in [
            &["--http-header-read-timeout", "0s"][..],
            &["--http-body-timeout", "0s"],
            &["--http-idle-timeout", "0s"],
            &["--http-max-connections", "0"],
            &["--http2-max-concurrent-streams", "0"],
            &["--http2-keepalive-interval", "0s"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    /// Shutdown stops accepting, yet a request in progress finishes and is answered before
    /// `serve` returns.
    #[tokio::test]
    async fn shutdown_drains_a_request_in_progress() {
        use tokio::{
            io::{AsyncReadExt, AsyncWriteExt},
            sync::oneshot,
        };

        let (entered_tx, entered) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let slots = Arc::new(parking_lot::Mutex::new(Some((entered_tx, released))));
        let handler = move || {
            let (entered, released) = slots.lock().take().expect("one request");
            async move {
                entered.send(()).unwrap();
                released.await.unwrap();
                "done"
            }
        };
        let router = Router::new().route("/", axum::routing::get(handler));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router,
            parse(&[]).unwrap(),
            ConnectionMetrics::default(),
            shutdown.clone(),
        ));

        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        entered.await.unwrap();
        shutdown.cancel();
        // Refused from now on; the request in progress holds `serve` open.
        tokio::task::yield_now().await;
        assert!(!server.is_finished());
        release.send(()).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once the connection closed")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[test]
    fn metrics_start_at_zero_for_every_limit() {
        let metrics = ConnectionMetrics::default();
        let mut registry = Registry::with_prefix("x");
        metrics.register(&mut registry);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        for limit in Limit::ALL {
            let series = format!(
                "x_http_connections_closed_total{{limit=\"{}\"}} 0",
                limit.as_str()
            );
            assert!(page.contains(&series), "{series} in {page}");
        }
    }
}

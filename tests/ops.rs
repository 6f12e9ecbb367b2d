//! Operations: the producer's metrics, retries, caps and behaviour under faults and load, against
//! a fake sidecar on loopback. The producer's library serves in the test process where its logic
//! is tested (the HTTP limits on a held clock, so their timeouts take no real time); the real
//! binaries run where the process is (its memory under load, SIGTERM, a sidecar killed).

use test_support as support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{
    WAIT,
    clock::Held,
    consumer::Consumer,
    devstack::{ASPNET_BODY, Devstack},
    exposition, in_process,
    process::Service,
    producer::{Producer, batch},
    sidecar::{Behaviour, FakeSidecar},
    slow_client,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
    task::JoinSet,
    time::Instant,
};
use tokio_stream::StreamExt;
use tonic::Code;

/// Fast retries, so tests that exercise them stay quick (for the binary).
const QUICK_RETRIES: [(&str, &str); 2] = [("RETRY_BACKOFF", "10ms"), ("MAX_RETRY_BACKOFF", "50ms")];
/// The same, for the library in the test process.
const QUICK_RETRY_FLAGS: [&str; 2] = ["--retry-backoff=10ms", "--max-retry-backoff=50ms"];
/// How far a held clock moves at a time while a test waits on it.
const STEP: Duration = Duration::from_millis(10);

#[tokio::test]
async fn transient_failures_are_retried_and_counted() {
    let behaviour = Behaviour {
        fail_first: Some((2, Code::Unavailable)),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let args = [&QUICK_RETRY_FLAGS[..], &["--send-concurrency=1"]].concat();
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;

    let (status, body) = producer.post(json!({"count": 3})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 3})));
    assert_eq!(sidecar.calls().len(), 3, "each message accepted once");
    assert_eq!(sidecar.attempts(), 5, "two failed attempts, retried");

    let metrics = producer.metrics().await;
    let labels = [("binding", "message-queue")];
    assert_eq!(
        metrics.sum("producer_messages_total", &[labels[0], ("code", "OK")]),
        3.0
    );
    assert_eq!(
        metrics.sum(
            "producer_invoke_binding_retries_total",
            &[labels[0], ("code", "UNAVAILABLE")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum("producer_invoke_binding_duration_seconds_count", &[]),
        5.0
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn answers_are_not_retried_and_retries_can_be_disabled() {
    // A sidecar answer (here INTERNAL) is final: no retry.
    let behaviour = Behaviour {
        fail_first: Some((1, Code::Internal)),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let producer = in_process::Producer::start(&sidecar.port(), &QUICK_RETRY_FLAGS).await;
    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(sidecar.attempts(), 1);
    let metrics = producer.metrics().await;
    assert_eq!(
        metrics.sum("producer_messages_total", &[("code", "INTERNAL")]),
        1.0
    );
    producer.stop().await;
    sidecar.stop().await;

    // SIDECAR_RETRIES=0: an UNAVAILABLE fails the batch at once.
    let behaviour = Behaviour {
        fail_first: Some((1, Code::Unavailable)),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let producer = in_process::Producer::start(&sidecar.port(), &["--sidecar-retries=0"]).await;
    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!((sidecar.attempts(), body["sent"].as_u64()), (1, Some(0)));
    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn sidecar_restarted_mid_batch_completes_or_reports_exactly() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let args = [&QUICK_RETRY_FLAGS[..], &["--sidecar-retries=8"]].concat();
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;

    let running = tokio::spawn(producer.post(json!({"count": 20, "intervalMilliseconds": 20})));
    sidecar.wait_for_calls(5).await;
    let (calls, port) = sidecar.stop_holding_port().await;
    let before = calls.len();
    let sidecar = FakeSidecar::start_at(port, Behaviour::default());

    let (status, body) = running.await.unwrap();
    let accepted = (before + sidecar.calls().len()) as u64;
    match status {
        StatusCode::OK => assert_eq!(body, json!({"sent": 20})),
        StatusCode::SERVICE_UNAVAILABLE => assert!(body["sent"].as_u64().unwrap() < 20, "{body}"),
        other => panic!("unexpected {other}: {body}"),
    }
    let sent = body["sent"].as_u64().unwrap();
    assert_eq!(
        accepted, sent,
        "what the sidecars accepted is what the producer reports: {body}"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn batches_beyond_the_cap_are_refused_not_queued() {
    // The sidecar holds the running batch's call until the checks are done.
    let (open, gate) = watch::channel(false);
    let sidecar = FakeSidecar::start(Behaviour {
        gate: Some(gate),
        ..Behaviour::default()
    })
    .await;
    let producer = in_process::Producer::start(&sidecar.port(), &["--max-batches=1"]).await;

    // One batch, held at the sidecar, holds the only place.
    let running = tokio::spawn(producer.post(json!({"count": 1})));
    let metrics =
        exposition::wait_for(|| producer.metrics(), "producer_batches_in_progress", 1.0).await;
    assert_eq!(metrics.sum("producer_batches_in_progress", &[]), 1.0);

    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many batches"),
        "{body}"
    );
    let mut client = producer.client().await;
    let request = batch(1, 0);
    assert_eq!(
        client.produce(request.clone()).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert_eq!(
        client.produce_stream(request).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    open.send_replace(true);
    assert_eq!(running.await.unwrap().0, StatusCode::OK);
    let metrics = producer.metrics().await;
    assert_eq!(metrics.sum("producer_batches_refused_total", &[]), 3.0);
    assert_eq!(metrics.sum("producer_batches_in_progress", &[]), 0.0);
    // The place is free again.
    let (status, _) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK);

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_method_and_parse() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = in_process::Producer::start(&sidecar.port(), &[]).await;

    producer.post(json!({"count": 2})).await;
    producer.post(json!({"count": 0})).await;
    producer.get("/healthz").await;
    producer.get("/no/such/path").await;
    let mut client = producer.client().await;
    client.produce(batch(1, 0)).await.unwrap();
    let bad = batch(0, 0);
    client.produce(bad).await.unwrap_err();
    let stream = client.produce_stream(batch(2, 0)).await;
    let _: Vec<_> = stream.unwrap().into_inner().collect().await;

    let m = producer.metrics().await;
    let http = |route, status| {
        m.sum(
            "producer_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(http("/MessageProducer", "200"), 1.0);
    assert_eq!(http("/MessageProducer", "422"), 1.0);
    assert_eq!(http("/healthz", "200"), 1.0);
    assert_eq!(
        http("unmatched", "404"),
        1.0,
        "unknown paths share one series"
    );
    let grpc = |method, code| {
        m.sum(
            "producer_grpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(grpc("Produce", "OK"), 1.0);
    assert_eq!(grpc("Produce", "INVALID_ARGUMENT"), 1.0);
    // The stream's end is counted when the batch finishes, just after the last report.
    assert_eq!(m.sum("producer_messages_total", &[("code", "OK")]), 5.0);
    assert!(
        m.sum(
            "producer_invoke_binding_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 5.0
    );
    assert_eq!(
        m.sum("producer_http_requests_total", &[("route", "/metrics")]),
        0.0,
        "counted after the answer"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_50_rest_clients_and_10_grpc_streams_account_for_every_message() {
    const REST_CLIENTS: usize = 50;
    const STREAMS: usize = 10;
    const COUNT: u32 = 100;

    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &[("MAX_BATCHES", "64")]).await;
    let rss_before = producer.service.memory().rss_kib;
    let started = std::time::Instant::now();

    let mut clients = JoinSet::new();
    for _ in 0..REST_CLIENTS {
        let post = producer.post(json!({"count": COUNT}));
        clients.spawn(async move {
            let (status, body) = post.await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["sent"].as_u64().unwrap()
        });
    }
    for _ in 0..STREAMS {
        let mut client = producer.client().await;
        clients.spawn(async move {
            let request = batch(COUNT, 0);
            let stream = client.produce_stream(request).await.unwrap().into_inner();
            let reports: Vec<_> = stream.map(|r| r.unwrap().sent).collect().await;
            assert_eq!(reports.len() as u32, COUNT, "one report per message");
            u64::from(*reports.last().unwrap())
        });
    }
    let sent: u64 = tokio::time::timeout(WAIT * 3, clients.join_all())
        .await
        .expect("bounded")
        .iter()
        .sum();
    let elapsed = started.elapsed();
    let rss_after = producer.service.memory().rss_kib;

    let expected = ((REST_CLIENTS + STREAMS) as u64) * u64::from(COUNT);
    assert_eq!(sent, expected);
    assert_eq!(
        sidecar.calls().len() as u64,
        expected,
        "every message reached the sidecar once"
    );
    println!(
        "load: {expected} messages in {elapsed:?}; producer RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory stays bounded: {rss_before} -> {rss_after} KiB"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn slow_sidecar_beyond_the_deadline_fails_clearly_after_retries() {
    let behaviour = Behaviour {
        delay: Duration::from_secs(5),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let flags = ["--sidecar-timeout=100ms", "--sidecar-retries=2"];
    let args = [&QUICK_RETRY_FLAGS[..], &flags].concat();
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;

    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["sent"], 0);
    let metrics = producer.metrics().await;
    assert_eq!(
        metrics.sum("producer_invoke_binding_retries_total", &[]),
        2.0
    );

    producer.stop().await;
    sidecar.stop().await;
}

/// Which of two consumers logs `message` first.
async fn first_to_log(a: &mut Service, b: &mut Service, message: &str) -> usize {
    tokio::select! {
        _ = a.wait_for_message(message) => 0,
        _ = b.wait_for_message(message) => 1,
    }
}

#[tokio::test]
async fn a_consumer_stopped_mid_event_completes_it_or_it_is_redelivered_never_lost() {
    // A drain long enough to finish the work, then work far longer than the drain: more than a
    // second either way between the work's start and the drain's end, which the delay in
    // stopping the consumer (a signal, once the test has read `event received`) cannot bridge.
    // Each case has a stack of its own, so they run at once.
    tokio::join!(
        stopped_mid_event("1s", "10s", false),
        stopped_mid_event("1500ms", "100ms", true),
    );
}

/// Two consumers working `work` each behind one devstack sidecar; the one that takes the message
/// is stopped with `drain` to finish it. It completes the message, or, `redelivered`, the other
/// consumer does; either way the queue completes it once.
async fn stopped_mid_event(work: &str, drain: &str, redelivered: bool) {
    let env = [
        ("WORK_DURATION", work),
        ("DRAIN_TIMEOUT", drain),
        ("RUST_LOG", "info,consumer=debug"),
    ];
    let [mut first, mut second] = [Consumer::start(&env).await, Consumer::start(&env).await];
    let addrs = [first.addr, second.addr];
    let sidecar = Devstack::for_apps(&addrs, &[], &[]).await;
    sidecar.wait_consumers(2).await;

    let response = sidecar
        .post_binding("message-queue", ASPNET_BODY, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let busy = first_to_log(&mut first.service, &mut second.service, "event received").await;
    let (busy, other) = if busy == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let by_busy = busy.stop_with_lines().await.len();

    let counts = sidecar.wait_completed("message-queue", 1).await;
    assert_eq!(
        (counts.produced, counts.dead_lettered),
        (1, 0),
        "drain {drain}"
    );
    let by_other = other.stop_with_lines().await.len();
    if redelivered {
        assert_eq!(
            (by_busy, by_other),
            (0, 1),
            "the other consumer got it again and completed it"
        );
    } else {
        assert_eq!(
            (by_busy, by_other),
            (1, 0),
            "the stopping consumer finished it"
        );
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn devstack_sidecar_killed_and_restarted_mid_batch_every_message_sent_is_in_one_queue() {
    let mut first = Devstack::start(&[], &[]).await;
    let port = first.grpc_addr.port();
    let mut env = QUICK_RETRIES.to_vec();
    // Retries 10 to 50 ms apart, enough to outlast the refusals, the kill and the restart (at
    // most 20 s); each retry is logged at debug.
    env.extend([
        ("SIDECAR_RETRIES", "400"),
        ("RUST_LOG", "info,producer=debug"),
    ]);
    let mut producer = Producer::start(&first.grpc_port(), &env).await;

    // Paced: one call at a time.
    let running = tokio::spawn(producer.post(json!({"count": 40, "intervalMilliseconds": 20})));
    first
        .wait_status("5 messages", |s| {
            support::devstack::counts(s, "message-queue").produced >= 5
        })
        .await;
    // From here on the first sidecar refuses every call. Once the producer retries a refused
    // one, every call before it was answered and no other is on its way: what the first sidecar
    // has taken is final, and its status says how much. Its log could not: a SIGKILL loses the
    // lines its writer still holds (src/telemetry/output.rs).
    first
        .fault(json!({"kind": "unavailable", "seconds": 600}))
        .await;
    let refused = producer
        .service
        .wait_for("a call refused", |e| {
            e["message"] == "retrying InvokeBinding"
        })
        .await;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("unavailable")),
        "the fault refused it: {refused}"
    );
    let before = first.counts("message-queue").await.produced;
    assert!(before >= 5, "{before}");
    first.service.kill();
    assert_eq!(
        first.service.exit_code(WAIT).await,
        None,
        "killed by a signal"
    );
    // Where the producer dials: the restarted sidecar must come back on the same port.
    let second = Devstack::start_on(port, &[], &[]).await;

    let (status, body) = running.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sent"], 40, "{body}");
    // The refused call, sent again until the second sidecar took it, and every one after it
    // are in the second queue; none of them is in both, none in neither.
    let after = second.counts("message-queue").await.produced;
    assert_eq!(
        before + after,
        40,
        "the sidecars took {before} + {after} of the 40 sent"
    );

    producer.stop().await;
    second.stop().await;
}

/// The header timeout of the slow-client tests: short, so they run fast.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// How late after its limit a connection may close, on a busy machine.
const SLACK: Duration = Duration::from_secs(5);

/// A client sending `GET /healthz` every 20 ms until `stop`, on its own connections; answers how
/// many it sent, every one of them answered 200.
fn healthz_throughout(
    producer: &Producer,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let (http, url) = (support::http_client(), producer.url("/healthz"));
    tokio::spawn(async move {
        let mut sent = 0;
        // Bounded: the tests stop it within seconds.
        while !stop.is_cancelled() && sent < 10_000 {
            let status = http.get(&url).send().await.map(|r| r.status());
            assert_eq!(status.ok(), Some(StatusCode::OK), "request {sent} failed");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_after_the_header_timeout_while_requests_go_on() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(
        &sidecar.port(),
        &[
            ("HTTP_HEADER_READ_TIMEOUT", "500ms"),
            ("HTTP_MAX_CONNECTIONS", "600"),
        ],
    )
    .await;
    let before = producer.service.memory();
    let stop = tokio_util::sync::CancellationToken::new();
    let normal = healthz_throughout(&producer, stop.clone());

    let stalled = slow_client::stall(producer.addr(), 500).await;
    let held = producer.service.memory();
    let closed = slow_client::closed_after(stalled, WAIT).await;
    slow_client::assert_closed_between(&closed, HEADER_TIMEOUT, HEADER_TIMEOUT + SLACK);
    let after = producer.service.memory();
    eprintln!(
        "producer RSS: {} KiB before, {} KiB with 500 stalled connections, {} KiB after they \
         were closed (peak {} KiB)",
        before.rss_kib, held.rss_kib, after.rss_kib, after.peak_kib
    );

    stop.cancel();
    let sent = normal.await.unwrap();
    assert!(
        sent >= 10,
        "only {sent} normal requests while the stalled ones were held"
    );
    producer.send(3, None).await;
    let m = producer.metrics().await;
    assert_eq!(
        slow_client::closed_total(&m, "producer", "header_timeout"),
        500.0
    );
    assert_eq!(
        slow_client::closed_total(&m, "producer", "max_connections"),
        0.0
    );
    producer.stop().await;
    sidecar.stop().await;
}

/// The connections beyond the cap are closed as they are accepted, long before the header
/// timeout (1 s on the held clock) frees a place; the held ones at that timeout.
#[tokio::test(start_paused = true)]
async fn connections_beyond_the_cap_are_closed_at_once_and_the_port_recovers() {
    let clock = Held::hold();
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let args = ["--header-read-timeout=1s", "--max-connections=8"];
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;

    let held = slow_client::stall(producer.addr(), 8).await;
    let beyond = slow_client::stall(producer.addr(), 20).await;
    let soon = Duration::from_millis(900);
    let beyond = clock
        .run(STEP, soon, slow_client::closed_after(beyond, soon))
        .await;
    slow_client::assert_closed_between(&beyond, Duration::ZERO, soon);
    let held = clock
        .run(STEP, WAIT, slow_client::closed_after(held, WAIT))
        .await;
    slow_client::assert_closed_between(
        &held,
        Duration::from_secs(1),
        Duration::from_secs(1) + SLACK,
    );

    assert_eq!(producer.get("/healthz").await, StatusCode::OK);
    let m = producer.metrics().await;
    assert_eq!(
        slow_client::closed_total(&m, "producer", "max_connections"),
        20.0
    );
    assert_eq!(
        slow_client::closed_total(&m, "producer", "header_timeout"),
        8.0
    );
    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_trickling_body_is_cut_off_at_the_body_timeout() {
    let clock = Held::hold();
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let args = ["--body-timeout=500ms"];
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;

    // One byte every 100 ms: a timeout on each read alone would never fire.
    let trickle = slow_client::trickle_body(
        producer.addr(),
        "/MessageProducer",
        1_000,
        Duration::from_millis(100),
    );
    let (status, took) = clock.run(STEP, WAIT, trickle).await;
    assert_eq!(status, Some(400), "after {took:?}");
    assert!(
        Duration::from_millis(500) <= took && took < Duration::from_millis(500) + SLACK,
        "{took:?}"
    );

    producer.send(2, None).await;
    let m = producer.metrics().await;
    assert_eq!(
        slow_client::closed_total(&m, "producer", "body_timeout"),
        1.0
    );
    assert_eq!(sidecar.calls().len(), 2, "the cut-off request sent nothing");
    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_http1_and_http2_connections_are_closed_after_the_idle_timeout() {
    let clock = Held::hold();
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let args = ["--idle-timeout=500ms", "--header-read-timeout=10s"];
    let producer = in_process::Producer::start(&sidecar.port(), &args).await;
    let idle = Duration::from_millis(500);
    // Before the header timeout, which hyper also runs while HTTP/1 waits for a next request.
    let max = Duration::from_secs(10);

    // HTTP/1.1 keep-alive: one request, then nothing.
    let http1 = async {
        let started = Instant::now();
        let mut http1 = tokio::net::TcpStream::connect(producer.addr())
            .await
            .unwrap();
        http1
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: producer\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, http1.read_to_end(&mut answer))
            .await
            .expect("closed")
            .unwrap();
        (answer, started.elapsed())
    };
    let (answer, lasted) = clock.run(STEP, WAIT, http1).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(
        idle <= lasted && lasted < max,
        "HTTP/1 connection lasted {lasted:?}"
    );

    // HTTP/2 (h2c, prior knowledge): one request, then nothing; the server sends GOAWAY.
    let http2 = async {
        let tcp = tokio::net::TcpStream::connect(producer.addr())
            .await
            .unwrap();
        let started = Instant::now();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(producer.url("/healthz"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        let _ = tokio::time::timeout(WAIT, connection)
            .await
            .expect("closed");
        started.elapsed()
    };
    let lasted = clock.run(STEP, WAIT, http2).await;
    assert!(
        idle <= lasted && lasted < max,
        "HTTP/2 connection lasted {lasted:?}"
    );

    let m = producer.metrics().await;
    assert_eq!(
        slow_client::closed_total(&m, "producer", "idle_timeout"),
        2.0
    );
    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_closes_its_connection_and_others_go_on() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = in_process::Producer::start(&sidecar.port(), &[]).await;

    // 1000 streams opened and reset in one burst, against the default of 20 pending resets.
    let goaway = slow_client::rapid_reset(producer.addr(), 1_000).await;
    assert_eq!(goaway, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");

    assert_eq!(producer.get("/healthz").await, StatusCode::OK);
    // The server counts the connection once its task has ended, which may be after the
    // client saw it closed.
    let flood = r#"producer_http_connections_closed_total{limit="http2_flood"}"#;
    let m = exposition::wait_for(|| producer.metrics(), flood, 1.0).await;
    assert_eq!(
        slow_client::closed_total(&m, "producer", "http2_flood"),
        1.0
    );
    producer.stop().await;
    sidecar.stop().await;
}

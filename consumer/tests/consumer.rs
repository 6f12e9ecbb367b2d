//! Black-box tests of the real `consumer` binary, driven as daprd drives it: over gRPC on
//! loopback with Dapr's generated AppCallback clients, reading its JSON logs and scraping its
//! metrics as Prometheus would, stopping it with SIGTERM.

use test_support as support;

use std::{collections::HashMap, time::Instant};

use chrono::Utc;
use dapr::dapr::proto::common::v1::InvokeRequest;
use pipeline::dapr_v1::{
    BindingEventRequest, BindingEventResponse, JobEventRequest, TopicEventBulkRequest,
    TopicEventRequest,
};
use serde_json::Value;
use support::{
    TRACE_ID, TRACEPARENT, WAIT,
    consumer::{Consumer, bin, parse_line},
    http_client,
    process::{HTTP_LIMITS, TRACING, help, run_to_end},
    slow_client, traced, with_token,
};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const APP_CALLBACK: &str = "dapr.proto.runtime.v1.AppCallback";
/// Adds the consumer's debug events ("event received") to the log, without h2's or tonic's.
const DEBUG_LOG: (&str, &str) = ("RUST_LOG", "info,consumer=debug");

fn event(binding: &str, data: &[u8], metadata: &[(&str, &str)]) -> Request<BindingEventRequest> {
    Request::new(BindingEventRequest {
        name: binding.to_owned(),
        data: data.to_vec(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    })
}

fn hello(id: &str) -> Request<BindingEventRequest> {
    event("message-queue", br#"{"text":"Hello World"}"#, &[("id", id)])
}

fn assert_code(result: Result<(), Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(()) => panic!("{what}: expected {code:?}, got OK"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

#[tokio::test]
async fn help_documents_every_setting_and_hides_the_token() {
    let settings = [
        "APP_PORT",
        "BIND_ADDRESS",
        "METRICS_PORT",
        "BINDING_NAME",
        "WORK_DURATION",
        "MAX_CONCURRENCY",
        "DRAIN_TIMEOUT",
        "APP_API_TOKEN",
        "RUST_LOG",
        "LOG_FORMAT",
    ];
    let help = help(
        bin(),
        &[("APP_API_TOKEN", "s3cret")],
        &[&settings[..], HTTP_LIMITS, TRACING].concat(),
    )
    .await;
    assert!(help.contains("terminationGracePeriodSeconds"), "{help}");
    assert!(!help.contains("s3cret"), "--help shows the token:\n{help}");
}

#[tokio::test]
async fn invalid_config_exits_at_once_with_a_clear_message() {
    for (name, value, expected) in [
        ("MAX_CONCURRENCY", "0", "--max-concurrency"),
        ("MAX_CONCURRENCY", "lots", "--max-concurrency"),
        ("WORK_DURATION", "abc", "--work-duration"),
        ("DRAIN_TIMEOUT", "soon", "--drain-timeout"),
        ("BINDING_NAME", "", "must not be empty"),
        ("APP_PORT", "70000", "--app-port"),
        ("METRICS_PORT", "-1", "--metrics-port"),
        ("BIND_ADDRESS", "localhost", "--bind-address"),
        ("LOG_FORMAT", "xml", "--log-format"),
        ("RUST_LOG", "info,[", "invalid RUST_LOG filter"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4317",
            "TLS",
        ),
    ] {
        // Should the value be accepted by mistake, the process would serve on a free loopback
        // port until run_to_end's bound, and the test would fail there.
        let env = [
            ("APP_PORT", "0"),
            ("METRICS_PORT", "0"),
            ("BIND_ADDRESS", "127.0.0.1"),
            (name, value),
        ];
        let (code, output) = run_to_end(bin(), &[], &env).await;
        assert!(
            code.is_some_and(|c| c != 0),
            "{name}={value:?} exited with {code:?}:\n{output}"
        );
        assert!(
            output.contains(expected),
            "{name}={value:?}: {output:?} should mention {expected:?}"
        );
        assert!(!output.contains("panicked"), "{name}={value:?}:\n{output}");
        assert!(!output.contains("listening"), "{name}={value:?}:\n{output}");
    }
}

#[tokio::test]
async fn lists_the_configured_binding() {
    let consumer = Consumer::start(&[]).await;
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["message-queue"]);
    consumer.stop().await;

    let consumer = Consumer::start(&[("BINDING_NAME", "orders")]).await;
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["orders"]);
    // The configured name is the one accepted; the default is now unknown.
    let orders = event("orders", br#"{"text":"hi"}"#, &[("id", "o-1")]);
    consumer.send(orders).await.unwrap();
    let other = consumer.send(hello("o-2")).await;
    assert_code(other, Code::NotFound, "event for message-queue");
    consumer.stop().await;
}

#[tokio::test]
async fn good_event_is_processed_and_logs_the_original_line() {
    let mut consumer = Consumer::start(&[("WORK_DURATION", "100ms")]).await;
    let started = Utc::now().naive_utc();

    let request = event(
        "message-queue",
        br#"{"text":"Hello World","extra":true}"#,
        &[("id", "msg-1"), ("MessageId", "ignored")],
    );
    consumer.send(traced(request, TRACEPARENT)).await.unwrap();

    let logged = consumer.line_for("msg-1").await;
    let message = logged["message"].as_str().unwrap();
    let (text, received, finished) = parse_line(message).unwrap();
    assert_eq!(text, "Hello World", "{logged}");
    // Whole seconds, UTC: within the test's own run, give or take the truncation.
    let now = Utc::now().naive_utc();
    assert!(
        received >= started - chrono::Duration::seconds(1),
        "{logged}"
    );
    assert!(received <= finished && finished <= now, "{logged}");
    assert_eq!(logged["level"], "INFO", "{logged}");
    assert_eq!(logged["binding"], "message-queue", "{logged}");
    assert_eq!(logged["trace_id"], TRACE_ID, "{logged}");
    assert!(logged["duration_ms"].as_u64().unwrap() >= 100, "{logged}");

    // Only `id` is the message id (daprd sends no `MessageId`); no traceparent, no trace_id field.
    let no_id = event(
        "message-queue",
        br#"{"text":"without an id"}"#,
        &[("MessageId", "sb-7")],
    );
    consumer.send(no_id).await.unwrap();
    let logged = consumer
        .service
        .wait_for("the line of the event without an id", |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("without an id -- Received at: "))
        })
        .await;
    assert!(logged.get("id").is_none(), "{logged}");
    assert!(logged.get("trace_id").is_none(), "{logged}");

    let stopped = consumer.stop().await;
    assert_eq!(stopped["processed"], 2, "{stopped}");
}

#[tokio::test]
async fn bad_payloads_are_invalid_argument_and_logged_with_their_id() {
    let mut consumer = Consumer::start(&[]).await;
    for (i, payload) in [
        &b"not json"[..],
        b"",
        b"{}",
        br#"{"txt":"typo"}"#,
        br#"{"text":5}"#,
        br#"{"text":null}"#,
        br#"["Hello World"]"#,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad-{i}");
        let result = consumer
            .send(event("message-queue", payload, &[("id", &id)]))
            .await;
        let status = assert_code(result, Code::InvalidArgument, &id);
        assert!(
            status.message().starts_with("payload is not a message"),
            "{id}: {status:?}"
        );
        let warning = consumer
            .service
            .wait_for(&format!("warning for {id}"), |e| e["id"] == id.as_str())
            .await;
        assert_eq!(warning["level"], "WARN", "{warning}");
        assert_eq!(warning["message"], "binding event rejected", "{warning}");
        assert!(
            warning["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("payload is not a message")),
            "{warning}"
        );
    }
    let stopped = consumer.stop().await;
    assert_eq!(stopped["processed"], 0, "{stopped}");
}

#[tokio::test]
async fn unknown_binding_is_not_found() {
    let consumer = Consumer::start(&[]).await;
    let result = consumer
        .send(event("other-queue", br#"{"text":"hi"}"#, &[]))
        .await;
    let status = assert_code(result, Code::NotFound, "other-queue");
    assert!(status.message().contains("other-queue"), "{status:?}");
    let stopped = consumer.stop().await;
    assert_eq!(stopped["processed"], 0, "{stopped}");
}

#[tokio::test]
async fn token_is_required_on_events_only_when_configured() {
    let mut consumer = Consumer::start(&[("APP_API_TOKEN", "s3cret")]).await;
    let missing = consumer.send(hello("t-1")).await;
    assert_code(missing, Code::Unauthenticated, "no token");
    let wrong = consumer.send(with_token(hello("t-2"), "s3cres")).await;
    assert_code(wrong, Code::Unauthenticated, "wrong token");
    let longer = consumer.send(with_token(hello("t-3"), "s3crets")).await;
    assert_code(longer, Code::Unauthenticated, "longer token");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("unauthenticated")), 3.0);
    consumer
        .send(with_token(hello("t-4"), "s3cret"))
        .await
        .unwrap();
    // daprd sends no token on these.
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["message-queue"]);
    consumer.health_check().await.unwrap();
    let stopped = consumer.stop().await;
    assert_eq!(stopped["processed"], 1, "{stopped}");

    let consumer = Consumer::start(&[]).await;
    consumer.send(hello("n-1")).await.unwrap();
    consumer
        .send(with_token(hello("n-2"), "anything"))
        .await
        .unwrap();
    let stopped = consumer.stop().await;
    assert_eq!(stopped["processed"], 2, "{stopped}");
}

#[tokio::test]
async fn health_is_serving_and_other_callbacks_are_declined() {
    let consumer = Consumer::start(&[]).await;
    assert_eq!(
        consumer.grpc_health("").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        consumer.grpc_health(APP_CALLBACK).await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = consumer.grpc_health("no.such.Service").await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    consumer.health_check().await.unwrap();

    let mut callback = consumer.callback();
    let topics = callback.list_topic_subscriptions(()).await.unwrap();
    assert!(topics.into_inner().subscriptions.is_empty());
    let declined = [
        callback
            .on_invoke(InvokeRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_topic_event(TopicEventRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_bulk_topic_event(TopicEventBulkRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_job_event(JobEventRequest::default())
            .await
            .map(|_| ()),
    ];
    for (i, result) in declined.into_iter().enumerate() {
        let status = assert_code(result, Code::Unimplemented, &format!("call {i}"));
        assert!(
            status.message().contains("only consumes input bindings"),
            "{status:?}"
        );
    }
    consumer.stop().await;
}

#[tokio::test]
async fn max_concurrency_one_processes_events_one_after_the_other() {
    let mut consumer = Consumer::start(&[
        ("WORK_DURATION", "300ms"),
        ("MAX_CONCURRENCY", "1"),
        DEBUG_LOG,
    ])
    .await;
    let started = Instant::now();
    let (a, b) = tokio::join!(consumer.send(hello("a")), consumer.send(hello("b")));
    let elapsed = started.elapsed();
    a.unwrap();
    b.unwrap();
    // A lower bound only: two 300 ms jobs in a row cannot take less.
    assert!(elapsed.as_millis() >= 600, "{elapsed:?}");

    consumer.line_for("a").await;
    consumer.line_for("b").await;
    // Whatever came first, the other was not even started until it had finished.
    let order: Vec<String> = consumer
        .service
        .events()
        .await
        .iter()
        .filter(|e| e["id"] == "a" || e["id"] == "b")
        .map(|e| {
            let what = if e["message"] == "event received" {
                "start"
            } else {
                "end"
            };
            format!("{what} {}", e["id"].as_str().unwrap_or_default())
        })
        .collect();
    let first = order.first().cloned().unwrap_or_default();
    let (x, y) = if first == "start a" {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert_eq!(
        order,
        [
            format!("start {x}"),
            format!("end {x}"),
            format!("start {y}"),
            format!("end {y}")
        ],
        "events overlapped"
    );
    consumer.stop().await;
}

/// The drain's window is the in-flight event's work: 10 s, where the calls made in it (all at
/// once) take milliseconds, so even a machine too loaded to answer for seconds cannot close it on
/// them. The test then waits for the event's answer, not for a time.
#[tokio::test]
async fn sigterm_drains_the_in_flight_event_and_exits_zero() {
    let mut consumer = Consumer::start(&[("WORK_DURATION", "10s"), DEBUG_LOG]).await;
    let in_flight = consumer.in_flight(hello("drain-1")).await;

    consumer.service.terminate();
    let draining = consumer.service.wait_for_message("draining").await;
    assert_eq!(draining["in_flight"], 1, "{draining}");

    // While the first event works: unhealthy, and new events are sent back to the broker.
    let (health, app_callback_health, health_check, refused) = tokio::join!(
        consumer.grpc_health(""),
        consumer.grpc_health(APP_CALLBACK),
        consumer.health_check(),
        consumer.send(hello("drain-2")),
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight event ended before the calls made while it works"
    );
    assert_eq!(health.unwrap(), ServingStatus::NotServing);
    assert_eq!(app_callback_health.unwrap(), ServingStatus::NotServing);
    assert_code(
        health_check,
        Code::Unavailable,
        "HealthCheck while draining",
    );
    let status = assert_code(refused, Code::Unavailable, "event while draining");
    assert!(status.message().contains("shutting down"), "{status:?}");

    let response = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight event answers")
        .expect("the task runs");
    assert_eq!(
        response.unwrap().into_inner(),
        BindingEventResponse::default()
    );
    assert_eq!(consumer.service.exit_code(WAIT).await, Some(0));

    let drained = consumer.service.wait_for_message("drained").await;
    assert_eq!(drained["in_flight"], 1, "{drained}");
    consumer.line_for("drain-1").await;
    let stopped = consumer.service.wait_for_message("stopped").await;
    assert_eq!(stopped["processed"], 1, "{stopped}");
    assert_eq!(stopped["drained"], true, "{stopped}");
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown_with_events_still_running() {
    // Two minute-long events run at once; the process must not wait for them.
    let mut consumer = Consumer::start(&[
        ("WORK_DURATION", "60s"),
        ("MAX_CONCURRENCY", "2"),
        ("DRAIN_TIMEOUT", "200ms"),
        DEBUG_LOG,
    ])
    .await;
    let events = [
        consumer.in_flight(hello("slow-1")).await,
        consumer.in_flight(hello("slow-2")).await,
    ];

    consumer.service.terminate();
    assert_eq!(consumer.service.exit_code(WAIT).await, Some(0));

    let overrun = consumer
        .service
        .wait_for("drain timeout warning", |e| {
            e["level"] == "WARN"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("drain timeout elapsed"))
        })
        .await;
    assert_eq!(overrun["unfinished"], 2, "{overrun}");
    let stopped = consumer.service.wait_for_message("stopped").await;
    assert_eq!(stopped["processed"], 0, "{stopped}");
    assert_eq!(stopped["drained"], false, "{stopped}");
    // Their connection is gone, so daprd would abandon them and the broker redeliver them.
    for event in events {
        let result = tokio::time::timeout(WAIT, event)
            .await
            .expect("the call ends with the process")
            .expect("the task runs");
        assert!(result.is_err(), "{result:?}");
    }
}

#[tokio::test]
async fn every_log_event_of_an_event_carries_its_ids() {
    let mut consumer = Consumer::start(&[("APP_API_TOKEN", "s3cret"), DEBUG_LOG]).await;
    consumer
        .send(with_token(traced(hello("tr-ok"), TRACEPARENT), "s3cret"))
        .await
        .unwrap();
    let bad = event("message-queue", b"{", &[("id", "tr-bad")]);
    let result = consumer
        .send(with_token(traced(bad, TRACEPARENT), "s3cret"))
        .await;
    assert_code(result, Code::InvalidArgument, "bad payload");
    let result = consumer
        .send(traced(hello("tr-unauthenticated"), TRACEPARENT))
        .await;
    assert_code(result, Code::Unauthenticated, "no token");

    consumer.line_for("tr-ok").await;
    let events = consumer.stop_with_events().await;
    // Each id's events: "event received" and the original line; a rejection; a refusal.
    for (id, expected) in [("tr-ok", 2), ("tr-bad", 1), ("tr-unauthenticated", 1)] {
        let of_id: Vec<&Value> = events.iter().filter(|e| e["id"] == id).collect();
        assert_eq!(of_id.len(), expected, "{id}: {of_id:?}");
        for e in of_id {
            assert_eq!(e["trace_id"], TRACE_ID, "{e}");
            assert_eq!(e["binding"], "message-queue", "{e}");
        }
    }
    // The events outside any binding event carry none of them.
    let listening = events.iter().find(|e| e["message"] == "listening").unwrap();
    assert!(listening.get("trace_id").is_none(), "{listening}");
}

const RECEIVED: &str = r#"consumer_events_received_total{binding="message-queue"}"#;
const PROCESSED: &str = r#"consumer_events_processed_total{binding="message-queue"}"#;
const IN_FLIGHT: &str = "consumer_events_in_flight";
const DRAINING: &str = "consumer_draining";
const PROCESSING_COUNT: &str = "consumer_event_processing_seconds_count";

fn failed(reason: &str) -> String {
    format!(r#"consumer_events_failed_total{{binding="message-queue",reason="{reason}"}}"#)
}

/// Each event works 5 s (the original sample's work), the window for the scrapes made while it
/// is in flight; each window is checked to have held.
#[tokio::test]
async fn metrics_follow_the_events_and_the_drain() {
    let mut consumer = Consumer::start(&[("WORK_DURATION", "5s"), DEBUG_LOG]).await;
    let page = consumer.scrape().await;
    for series in [RECEIVED, PROCESSED, IN_FLIGHT, DRAINING, PROCESSING_COUNT] {
        assert_eq!(page.get(series), 0.0, "{series}");
    }
    for reason in [
        "unauthenticated",
        "unknown_binding",
        "bad_payload",
        "draining",
    ] {
        assert_eq!(page.get(&failed(reason)), 0.0, "{reason}");
    }
    assert_eq!(page.types["consumer_event_processing_seconds"], "histogram");

    // A good event is in flight while it works, then processed.
    let first = consumer.in_flight(hello("m-1")).await;
    let page = consumer.scrape().await;
    assert!(!first.is_finished(), "m-1 ended before the scrape");
    assert_eq!(page.get(IN_FLIGHT), 1.0);
    assert_eq!(page.get(RECEIVED), 1.0);
    assert_eq!(page.get(PROCESSED), 0.0);
    let answer = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    let page = consumer.scrape().await;
    assert_eq!(page.get(IN_FLIGHT), 0.0);
    assert_eq!(page.get(PROCESSED), 1.0);
    assert_eq!(page.get(PROCESSING_COUNT), 1.0);
    let work = page.get("consumer_event_processing_seconds_sum");
    assert!((5.0..WAIT.as_secs_f64()).contains(&work), "{work}");
    assert_eq!(
        page.get(r#"consumer_event_processing_seconds_bucket{le="1.0"}"#),
        0.0
    );

    // Rejections count by reason; another binding's name is not a label value.
    let bad = consumer
        .send(event("message-queue", b"not json", &[("id", "m-bad")]))
        .await;
    assert_code(bad, Code::InvalidArgument, "bad payload");
    let unknown = consumer
        .send(event("someone-else's-queue", br#"{"text":"hi"}"#, &[]))
        .await;
    assert_code(unknown, Code::NotFound, "unknown binding");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("bad_payload")), 1.0);
    assert_eq!(
        page.get(r#"consumer_events_failed_total{binding="(other)",reason="unknown_binding"}"#),
        1.0
    );
    assert_eq!(
        page.get(r#"consumer_events_received_total{binding="(other)"}"#),
        1.0
    );
    assert_eq!(page.get(RECEIVED), 2.0);
    assert_eq!(page.get(PROCESSED), 1.0);
    assert!(
        !page.samples.keys().any(|s| s.contains("someone-else")),
        "{:?}",
        page.samples
    );

    // While an event drains: draining is 1, it is still in flight, a new event is refused.
    let draining = consumer.in_flight(hello("m-2")).await;
    consumer.service.terminate();
    consumer.service.wait_for_message("draining").await;
    let page = consumer.scrape().await;
    assert_eq!(page.get(DRAINING), 1.0);
    assert_eq!(page.get(IN_FLIGHT), 1.0);
    let refused = consumer.send(hello("m-3")).await;
    assert_code(refused, Code::Unavailable, "event while draining");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("draining")), 1.0);
    assert_eq!(page.get(RECEIVED), 4.0);
    assert_eq!(page.get(IN_FLIGHT), 1.0);
    assert!(
        !draining.is_finished(),
        "m-2 ended before the drain's checks"
    );

    let answer = tokio::time::timeout(WAIT, draining).await.unwrap().unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(consumer.service.exit_code(WAIT).await, Some(0));
    // The metrics server went with the process.
    let addr = consumer.metrics_addr().await;
    let gone = http_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
}

#[tokio::test]
async fn a_taken_metrics_port_stops_the_consumer_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let env = [
        ("APP_PORT", "0"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("METRICS_PORT", port.as_str()),
    ];
    let (code, output) = run_to_end(bin(), &[], &env).await;
    assert!(code.is_some_and(|c| c != 0), "{code:?}:\n{output}");
    assert!(
        output.contains(&format!("binding the metrics port 127.0.0.1:{port}")),
        "{output}"
    );
}

/// The metrics port is served with the shared HTTP limits: stalled scrapers are closed after the
/// header timeout, counted, and a scrape still works.
#[tokio::test]
async fn stalled_connections_to_the_metrics_port_are_closed_and_counted() {
    let timeout = std::time::Duration::from_millis(500);
    let mut consumer = Consumer::start(&[("HTTP_HEADER_READ_TIMEOUT", "500ms")]).await;
    let addr = consumer.metrics_addr().await;

    let stalled = slow_client::stall(addr, 20).await;
    let closed = slow_client::closed_after(stalled, WAIT).await;
    slow_client::assert_closed_between(&closed, timeout, timeout + WAIT / 4);

    let page = consumer.scrape().await;
    assert_eq!(
        slow_client::closed_total(&page, "consumer", "header_timeout"),
        20.0
    );
    consumer.stop().await;
}

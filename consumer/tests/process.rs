//! Black-box tests of the real `consumer` binary, for what only the process shows: `--help`,
//! configuration errors and exit codes, its ports, its JSON log lines, and SIGTERM. Driven as
//! daprd drives it, over gRPC on loopback with Dapr's generated AppCallback clients.

use test_support as support;

use chrono::Utc;
use pipeline::dapr_v1::BindingEventResponse;
use serde_json::Value;
use support::{
    TRACE_ID, TRACEPARENT, WAIT,
    consumer::{Consumer, assert_code, bin, event, hello, parse_line},
    http_client,
    process::{HTTP_LIMITS, TRACING, help, run_to_end},
    traced, with_token,
};
use tonic::Code;

/// Adds the consumer's debug events ("event received") to the log, without h2's or tonic's.
const DEBUG_LOG: (&str, &str) = ("RUST_LOG", "info,consumer=debug");

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

/// SIGTERM while an event works: the process drains it, answers it and exits 0, logging the
/// drain, the event's line and its count; its metrics port goes with it. (What daprd sees
/// meanwhile, health and refusals, is `app_callback.rs`'s.) The event works 1.5 s: the window
/// in which SIGTERM must reach the process once the test has read `event received`, a few
/// milliseconds even on a loaded machine.
#[tokio::test]
async fn sigterm_drains_the_in_flight_event_and_exits_zero() {
    let mut consumer = Consumer::start(&[("WORK_DURATION", "1500ms"), DEBUG_LOG]).await;
    let metrics = consumer.metrics_addr().await;
    let in_flight = consumer.in_flight(hello("drain-1")).await;

    consumer.service.terminate();
    let draining = consumer.service.wait_for_message("draining").await;
    assert_eq!(draining["in_flight"], 1, "{draining}");

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
    // The metrics server went with the process.
    let gone = http_client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
}

/// No log line is lost on the way out: lines are written in batches by a thread of their own,
/// and SIGTERM lands while messages keep coming, with a batch still gathering. After the exit,
/// every message the consumer answered OK has its line, once, and no other message has one.
#[tokio::test]
async fn every_completed_message_has_its_line_after_a_sigterm_mid_batch() {
    use std::collections::BTreeSet;

    use futures::StreamExt;

    const MESSAGES: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    const BEFORE_SIGTERM: usize = 500;
    let mut consumer = Consumer::start(&[
        ("WORK_DURATION", "2ms"),
        ("MAX_CONCURRENCY", &IN_FLIGHT.to_string()),
    ])
    .await;
    let (answered_ok, _) = tokio::sync::watch::channel(0usize);
    let (callback, ok_tx) = (consumer.callback(), answered_ok.clone());
    let sender = tokio::spawn(async move {
        let answers: Vec<(String, Result<(), tonic::Status>)> = futures::stream::iter(0..MESSAGES)
            .map(|i| {
                let mut callback = callback.clone();
                let ok_tx = ok_tx.clone();
                async move {
                    let id = format!("m-{i}");
                    let answer = callback.on_binding_event(hello(&id)).await.map(drop);
                    if answer.is_ok() {
                        ok_tx.send_modify(|n| *n += 1);
                    }
                    (id, answer)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        answers
    });
    support::wait_count(&answered_ok, BEFORE_SIGTERM, "answers before the SIGTERM").await;
    consumer.service.terminate();
    let answers = tokio::time::timeout(WAIT, sender)
        .await
        .expect("every call ends")
        .expect("the sender runs");
    assert_eq!(consumer.service.exit_code(WAIT).await, Some(0));
    let events = consumer.service.events_to_end().await;

    let completed: BTreeSet<&str> = answers
        .iter()
        .filter(|(_, answer)| answer.is_ok())
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        completed.len() > BEFORE_SIGTERM && completed.len() < MESSAGES,
        "the SIGTERM came mid-way: {} of {MESSAGES} completed",
        completed.len()
    );
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| support::consumer::is_original_line(e))
        .filter_map(|e| e["id"].as_str())
        .collect();
    let logged: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), logged.len(), "a message logged twice");
    assert_eq!(logged, completed, "lines and completed messages differ");
    let stopped = events.iter().find(|e| e["message"] == "stopped");
    assert_eq!(
        stopped.map(|e| e["processed"].clone()),
        Some(completed.len().into()),
        "the last line, `stopped`, is there too"
    );
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

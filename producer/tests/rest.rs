//! The REST front of the `producer` library, served in the test process against a fake Dapr
//! sidecar on loopback: the `InvokeBinding` wire contract, the REST contract, pacing and
//! concurrency, and failures of the sidecar.

use test_support as support;

use std::time::{Duration, Instant};

use pipeline::trace_context;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    TRACEPARENT,
    in_process::Producer,
    port::ClosedPort,
    sidecar::{Behaviour, FakeSidecar},
};
use tonic::Code;

#[tokio::test]
async fn original_body_becomes_one_invoke_binding_with_token_and_trace() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &["--dapr-api-token=s3cret"]).await;

    let headers = [
        (trace_context::TRACEPARENT, TRACEPARENT),
        (trace_context::TRACESTATE, "congo=t61rcWkgMzE"),
    ];
    let answer = producer.post_with(&headers, json!({"count": 1, "intervalMilliseconds": 0}));
    assert_eq!(answer.await, (StatusCode::OK, json!({"sent": 1})));

    let calls = sidecar.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.name, "message-queue");
    assert_eq!(call.operation, "create");
    assert_eq!(
        call.data, br#"{"text":"Hello World"}"#,
        "exactly the original's JSON"
    );
    // Only the message's id: nothing else is added to the binding's metadata.
    let keys: Vec<_> = call.metadata.keys().collect();
    assert_eq!(keys, ["MessageId"]);
    assert_eq!(
        call.headers.get("dapr-api-token").map(String::as_str),
        Some("s3cret")
    );
    assert_eq!(
        call.headers.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    assert_eq!(
        call.headers.get("tracestate").map(String::as_str),
        Some("congo=t61rcWkgMzE")
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn endpoint_binding_name_text_and_no_token_or_invalid_trace() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    // The endpoint (DAPR_GRPC_ENDPOINT) wins over a wrong port (DAPR_GRPC_PORT, 1 here), as in
    // the Dapr SDKs.
    let endpoint = format!("--dapr-grpc-endpoint=http://{}", sidecar.addr);
    let producer = Producer::start("1", &["--binding-name=orders", &endpoint]).await;

    let headers = [(trace_context::TRACEPARENT, "not-a-trace")];
    let answer = producer.post_with(&headers, json!({"count": 3, "text": "Grüße \"quoted\""}));
    assert_eq!(answer.await, (StatusCode::OK, json!({"sent": 3})));

    let calls = sidecar.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_eq!(call.name, "orders");
        let data: Value = serde_json::from_slice(&call.data).unwrap();
        assert_eq!(data, json!({"text": "Grüße \"quoted\""}));
        assert!(!call.headers.contains_key("dapr-api-token"));
        assert!(
            !call.headers.contains_key("traceparent"),
            "invalid traceparent is not forwarded"
        );
    }
    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_sends_nothing() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &["--max-count=5"]).await;
    let json = Some("application/json");

    let cases: &[(Option<&str>, &str, u16, &str)] = &[
        (json, r#"{"count":1"#, 400, "malformed JSON"),
        (json, "", 400, "request body is missing"),
        (json, "  ", 400, "request body is missing"),
        // A bare `curl -X POST`: no body and no Content-Type; the missing body is the news.
        (None, "", 400, "request body is missing"),
        (
            None,
            r#"{"count":1}"#,
            415,
            "Content-Type: application/json",
        ),
        (
            Some("text/plain"),
            r#"{"count":1}"#,
            415,
            "Content-Type: application/json",
        ),
        (json, r#"{"count":"1"}"#, 422, "invalid type: string"),
        (
            json,
            r#"{"count":1.5}"#,
            422,
            "invalid type: floating point",
        ),
        (
            json,
            r#"{"count":1,"intervalMilliseconds":"0"}"#,
            422,
            "invalid type",
        ),
        (
            json,
            r#"{"count":1,"text":5}"#,
            422,
            "invalid type: integer",
        ),
        (
            json,
            r#"{"intervalMilliseconds":0}"#,
            422,
            "missing field `count`",
        ),
        (
            json,
            r#"{"count":1,"intervalMs":5}"#,
            422,
            "unknown field `intervalMs`",
        ),
        (json, r#"[1]"#, 422, "expected a JSON object"),
        (json, "null", 422, "expected a JSON object"),
        (
            json,
            r#"{"count":0}"#,
            422,
            "count must be between 1 and 5, got 0",
        ),
        (
            json,
            r#"{"count":-3}"#,
            422,
            "count must be between 1 and 5, got -3",
        ),
        (
            json,
            r#"{"count":6}"#,
            422,
            "count must be between 1 and 5, got 6",
        ),
        (
            json,
            r#"{"count":1,"intervalMilliseconds":-1}"#,
            422,
            "intervalMilliseconds must be between 0 and 60000",
        ),
        (
            json,
            r#"{"count":1,"intervalMilliseconds":60001}"#,
            422,
            "intervalMilliseconds must be between 0 and 60000",
        ),
    ];
    for (content_type, body, status, error) in cases {
        let headers: Vec<_> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let (got, answer) = producer.post_raw(&headers, body).await;
        assert_eq!(got.as_u16(), *status, "{body:?} -> {answer}");
        let text = answer["error"].as_str().unwrap_or_default();
        assert!(
            text.contains(error),
            "{body:?}: {text:?} should contain {error:?}"
        );
    }

    // The text is limited in characters, as the document states it; the body limit in bytes
    // holds the longest text however it is written, even as escaped UTF-16 pairs, 12 bytes each.
    let escaped = |n: usize| format!(r#"{{"count":1,"text":"{}"}}"#, r"\ud83d\ude00".repeat(n));
    let (got, answer) = producer
        .post_raw(&[("content-type", "application/json")], &escaped(16_385))
        .await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(
        answer["error"],
        "text must be at most 16384 characters, got 16385"
    );
    let long_text = "x".repeat(70 * 1024);
    let (got, answer) = producer.post(json!({"count": 1, "text": long_text})).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    // Answered before the body is read, so the server closes the connection: not one to reuse.
    let huge = json!({"count": 1, "text": "x".repeat(300 * 1024)});
    let (got, answer) = producer.post_with(&[("connection", "close")], huge).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"], "request body is larger than 204800 bytes");

    assert_eq!(
        producer.get("/MessageProducer").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(producer.get("/nowhere").await, StatusCode::NOT_FOUND);
    assert!(sidecar.calls().is_empty(), "nothing is sent for bad input");

    // The bounds themselves are accepted.
    let (got, answer) = producer
        .post(json!({"count": 5, "intervalMilliseconds": 0}))
        .await;
    assert_eq!((got, answer), (StatusCode::OK, json!({"sent": 5})));
    let (got, answer) = producer
        .post(json!({"count": 1, "intervalMilliseconds": 60000}))
        .await;
    assert_eq!((got, answer), (StatusCode::OK, json!({"sent": 1})));
    let (got, answer) = producer
        .post_raw(&[("content-type", "application/json")], &escaped(16_384))
        .await;
    assert_eq!((got, answer), (StatusCode::OK, json!({"sent": 1})));
    let calls = sidecar.calls();
    assert_eq!(calls.len(), 7);
    let sent: Value = serde_json::from_slice(&calls[6].data).unwrap();
    assert_eq!(sent["text"], "\u{1F600}".repeat(16_384));

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn sidecar_down_then_up_recovers_without_restart() {
    // Nothing listens there until the sidecar "starts".
    let port = ClosedPort::ephemeral();
    // Retries are not what is tested here: quick ones.
    let producer = Producer::start(&port.port(), &["--retry-backoff=1ms"]).await;

    assert_eq!(producer.get("/healthz").await, StatusCode::OK);
    assert_eq!(
        producer.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, body) = producer.post(json!({"count": 2})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["sent"], 0);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("sidecar unreachable"),
        "{body}"
    );

    let sidecar = FakeSidecar::start_at(port, Behaviour::default());
    assert_eq!(producer.get("/readyz").await, StatusCode::OK);
    let (status, body) = producer.post(json!({"count": 2})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 2})));

    // And again after the sidecar restarts.
    let (_, port) = sidecar.stop_holding_port().await;
    let sidecar = FakeSidecar::start_at(port, Behaviour::default());
    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 1})));
    assert_eq!(sidecar.calls().len(), 1);

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn sidecar_failing_mid_batch_reports_the_sent_count() {
    for (code, status) in [
        (Code::Internal, StatusCode::BAD_GATEWAY),
        (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
    ] {
        let behaviour = Behaviour {
            fail_after: Some((3, code)),
            ..Default::default()
        };
        let sidecar = FakeSidecar::start(behaviour).await;
        let args = ["--send-concurrency=1", "--retry-backoff=1ms"];
        let producer = Producer::start(&sidecar.port(), &args).await;

        let (got, body) = producer.post(json!({"count": 10})).await;
        assert_eq!(got, status, "{code:?}: {body}");
        assert_eq!(body["sent"], 3, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("3 of 10 messages were sent"),
            "{body}"
        );

        // The process lives on and serves the next request.
        assert_eq!(producer.get("/healthz").await, StatusCode::OK);
        producer.stop().await;
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn slow_sidecar_gets_a_timeout_not_a_hang() {
    let behaviour = Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    // The sidecar takes 3 s: each attempt's deadline runs out, however slow the machine.
    let args = ["--sidecar-timeout=100ms", "--retry-backoff=1ms"];
    let producer = Producer::start(&sidecar.port(), &args).await;

    let (status, body) = producer.post(json!({"count": 1})).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["sent"], 0);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("within the deadline"),
        "{body}"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn interval_zero_keeps_the_configured_concurrency_in_flight() {
    let behaviour = Behaviour {
        delay: Duration::from_millis(100),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let producer = Producer::start(&sidecar.port(), &["--send-concurrency=4"]).await;

    let (status, body) = producer
        .post(json!({"count": 12, "intervalMilliseconds": 0}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 12})));
    assert_eq!(
        sidecar.max_in_flight(),
        4,
        "never more, and the limit is used"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn interval_paces_messages_one_at_a_time() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &[]).await;

    let started = Instant::now();
    let interval = Duration::from_millis(50);
    let (status, body) = producer
        .post(json!({"count": 5, "intervalMilliseconds": 50}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 5})));
    // Lower bounds from the start, which no delay on a loaded machine can break (a gap between
    // two arrivals can: the first may be received late): message k goes k intervals in at the
    // earliest.
    for (k, call) in sidecar.calls().iter().enumerate() {
        let at = call.at - started;
        assert!(at >= interval * k as u32, "{k}: {at:?}");
    }
    assert_eq!(sidecar.max_in_flight(), 1);

    producer.stop().await;
    sidecar.stop().await;
}

//! Black-box tests of the real `producer` binary against a fake Dapr sidecar, for what only the
//! process shows: `--help`, configuration errors and exit codes, its ports, its JSON log lines
//! (trace ids, batches stopped, refusals that never show the token), and SIGTERM.

use test_support as support;

use std::time::Duration;

use pipeline::trace_context;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    TRACE_ID, TRACEPARENT, WAIT, http_client,
    port::free_port,
    process::{HTTP_LIMITS, Service, TRACING, help, run_to_end},
    producer::{Producer, batch, bearer, bin},
    sidecar::{Behaviour, FakeSidecar},
    traced,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn help_documents_every_setting_and_bad_config_exits_at_once() {
    let settings = [
        "PORT",
        "BIND_ADDRESS",
        "BINDING_NAME",
        "DAPR_GRPC_ENDPOINT",
        "DAPR_GRPC_PORT",
        "DAPR_API_TOKEN",
        "MAX_COUNT",
        "SEND_CONCURRENCY",
        "SIDECAR_TIMEOUT",
        "DRAIN_TIMEOUT",
        "RUST_LOG",
        "LOG_FORMAT",
        "MAX_BATCHES",
        "SIDECAR_RETRIES",
        "RETRY_BACKOFF",
        "MAX_RETRY_BACKOFF",
        "PRODUCER_API_TOKEN",
    ];
    help(bin(), &[], &[&settings[..], HTTP_LIMITS, TRACING].concat()).await;

    for (env, reason) in [
        (("MAX_COUNT", "0"), "MAX_COUNT"),
        (("DAPR_GRPC_ENDPOINT", "https://dapr:443"), "TLS"),
        (("SIDECAR_TIMEOUT", "forever"), "SIDECAR_TIMEOUT"),
        (("PORT", "http"), "PORT"),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            "--otlp-endpoint",
        ),
    ] {
        let (code, output) = run_to_end(bin(), &[], &[env]).await;
        assert_eq!(code, Some(2), "{env:?}: {output}");
        assert!(output.contains(reason), "{env:?}: {output}");
    }
}

/// The ports come from the environment as daprd and Kubernetes give them: `PORT` is where the
/// producer serves REST and gRPC, `DAPR_GRPC_PORT` where it finds its sidecar.
#[tokio::test]
async fn port_and_dapr_grpc_port_become_working_endpoints() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let port = free_port();
    let mut service = Service::spawn(
        bin(),
        &[
            ("PORT", &port.to_string()),
            ("DAPR_GRPC_PORT", &sidecar.port()),
        ],
    );
    assert_eq!(service.addr().await.port(), port);

    let response = http_client()
        .post(format!("http://127.0.0.1:{port}/MessageProducer"))
        .json(&json!({"count": 2, "intervalMilliseconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sidecar.calls().len(), 2);
    let mut grpc = pipeline::proto::producer_client::ProducerClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    let request = batch(1, 0);
    assert_eq!(grpc.produce(request).await.unwrap().into_inner().sent, 1);
    assert_eq!(sidecar.calls().len(), 3);

    service.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn sigterm_stops_a_running_batch_after_the_drain_time_and_exits_zero() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let mut producer = Producer::start(&sidecar.port(), &[("DRAIN_TIMEOUT", "300ms")]).await;

    let running = tokio::spawn(producer.post(json!({"count": 100, "intervalMilliseconds": 50})));
    sidecar.wait_for_calls(1).await;

    producer.service.terminate();
    let (status, body) = running.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let sent = body["sent"].as_u64().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert_eq!(sidecar.calls().len() as u64, sent);
    assert_eq!(producer.service.exit_code(WAIT).await, Some(0));
    sidecar.stop().await;
}

/// Every log event of a traced request carries its trace id, over REST and gRPC: the batch's
/// outcome, a retry, a failure.
#[tokio::test]
async fn every_log_event_of_a_traced_request_carries_its_trace_id() {
    // Call 1 is refused as unreachable (and retried), calls 2 and 3 are accepted, the rest
    // rejected (not retried).
    let sidecar = FakeSidecar::start(Behaviour {
        fail_first: Some((1, Code::Unavailable)),
        fail_after: Some((2, Code::PermissionDenied)),
        ..Default::default()
    })
    .await;
    let mut producer = Producer::start(
        &sidecar.port(),
        &[
            ("RUST_LOG", "info,producer=debug"),
            ("RETRY_BACKOFF", "1ms"),
        ],
    )
    .await;
    let trace = |n: u8| format!("00-{}-00f067aa0ba902b7-01", format!("{n:x}").repeat(32));
    let post = |traceparent: String| {
        let body = json!({"count": 1, "intervalMilliseconds": 0});
        producer.post_with(&[(trace_context::TRACEPARENT, &traceparent)], body)
    };

    assert_eq!(post(trace(1)).await.0, StatusCode::OK);
    let request = traced(batch(1, 0), &trace(2));
    let mut client = producer.client().await;
    assert_eq!(client.produce(request).await.unwrap().into_inner().sent, 1);
    assert_eq!(post(trace(3)).await.0, StatusCode::BAD_GATEWAY);

    let expected = [
        ("retrying InvokeBinding", 1),
        ("batch sent", 1),
        ("batch sent", 2),
        ("batch failed", 3),
    ];
    for (message, n) in expected {
        let trace_id = format!("{n:x}").repeat(32);
        producer
            .service
            .wait_for(&format!("{message} with trace id {trace_id}"), |e| {
                e["message"] == message && e["trace_id"] == trace_id.as_str()
            })
            .await;
    }
    // And no event of those kinds without one.
    let events = producer.service.events().await;
    let untraced: Vec<&Value> = events
        .iter()
        .filter(|e| expected.iter().any(|(m, _)| e["message"] == *m))
        .filter(|e| e.get("trace_id").is_none())
        .collect();
    assert!(untraced.is_empty(), "{untraced:?}");

    producer.stop().await;
    sidecar.stop().await;
}

/// Under `RUST_LOG=warn` the warnings of a batch, which runs on a task of its own, still carry
/// the trace id of the request that asked for it.
#[tokio::test]
async fn a_batch_warning_keeps_its_trace_id_under_a_warn_filter() {
    let sidecar = FakeSidecar::start(Behaviour {
        fail_first: Some((1, Code::PermissionDenied)),
        ..Default::default()
    })
    .await;
    // The `listening` event (INFO) tells the test the producer's address.
    let env = [("RUST_LOG", "warn,producer::server=info")];
    let mut producer = Producer::start(&sidecar.port(), &env).await;
    let response = producer
        .http
        .post(producer.url("/MessageProducer"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"count": 1, "intervalMilliseconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let failed = producer
        .service
        .wait_for("the batch failed warning", |e| {
            e["message"] == "batch failed"
        })
        .await;
    assert_eq!(failed["trace_id"], TRACE_ID, "{failed}");

    producer.stop().await;
    sidecar.stop().await;
}

/// The client goes away once the sidecar has a message, not after a time: whatever the
/// machine's speed, something was sent, and the 10 s batch is far from done.
#[tokio::test]
async fn client_going_away_stops_the_batch_and_logs_the_sent_count() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let mut producer = Producer::start(&sidecar.port(), &[]).await;

    let client = tokio::spawn(producer.post(json!({"count": 100, "intervalMilliseconds": 100})));
    sidecar.wait_for_calls(1).await;
    // Dropping the request closes its connection, as a client's timeout does.
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());

    let event = producer
        .service
        .wait_for_message("batch stopped: the client went away")
        .await;
    let sent = event["sent"].as_u64().unwrap();
    assert!((1..100).contains(&sent), "{event}");
    assert_eq!(
        sidecar.calls().len() as u64,
        sent,
        "the log matches what the sidecar got"
    );

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn grpc_clients_going_away_stop_their_batches_too() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let mut producer = Producer::start(&sidecar.port(), &[]).await;
    let mut client = producer.client().await;
    // 10 s a batch: far longer than any wait below, so neither can end on its own.
    let paced = batch(100, 100);

    // A stream dropped after two progress messages.
    let mut stream = client
        .produce_stream(paced.clone())
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        stream.next().await.expect("progress").unwrap();
    }
    drop(stream);
    let event = producer
        .service
        .wait_for_message("batch stopped: the client went away")
        .await;
    let streamed = event["sent"].as_u64().unwrap();
    assert!((2..100).contains(&streamed), "{event}");

    // A unary call whose deadline runs out: the client cancels it. The first message goes at
    // once on the connection the stream warmed up; the deadline leaves it a second.
    let mut request = tonic::Request::new(paced);
    request.set_timeout(Duration::from_secs(1));
    let status = client.produce(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    let events = producer
        .service
        .wait_for_events("two stopped batches", 2, |e| {
            e["message"] == "batch stopped: the client went away"
        })
        .await;
    let unary = events[1]["sent"].as_u64().unwrap();
    assert!((1..100).contains(&unary), "{}", events[1]);
    assert_eq!(
        sidecar.calls().len() as u64,
        streamed + unary,
        "the logs match what the sidecar got"
    );

    producer.stop().await;
    sidecar.stop().await;
}

/// A token as an operator would make one (`openssl rand -base64 24`), never in any output.
const TOKEN: &str = "pr0ducer+T0ken/xyz_~.-Az=";

/// With PRODUCER_API_TOKEN set, the API proper takes only callers with the token, on both
/// fronts: without one, with another scheme or a wrong token they get 401 / UNAUTHENTICATED,
/// counted and logged (never the token), and nothing is sent. Probes, metrics and the API
/// documents stay open, and the document tells Swagger UI to ask for the token.
#[tokio::test]
async fn the_token_guards_the_api_on_both_fronts_and_nothing_else() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    // Debug logs too: whatever is logged about a request, the token is not.
    let env = [
        ("PRODUCER_API_TOKEN", TOKEN),
        ("MAX_COUNT", "5"),
        ("RUST_LOG", "debug"),
    ];
    let mut producer = Producer::start(&sidecar.port(), &env).await;

    let post = |authorization: Option<String>| {
        let mut request = producer
            .http
            .post(producer.url("/MessageProducer"))
            .json(&json!({"count": 1}));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (status, challenge, body)
        }
    };
    let invalid = r#"Bearer error="invalid_token""#;
    let refused = [
        (
            None,
            "Bearer",
            "missing token: send `authorization: Bearer <token>`",
        ),
        (Some(format!("Basic {TOKEN}")), "Bearer", "missing token"),
        (Some(TOKEN.to_owned()), "Bearer", "missing token"),
        (
            Some(bearer("wrong")),
            invalid,
            "invalid token: the bearer token does not match",
        ),
        (Some(bearer(&TOKEN[1..])), invalid, "invalid token"),
        (
            Some(format!("{} ", bearer(TOKEN)) + "x"),
            invalid,
            "invalid token",
        ),
    ];
    for (authorization, challenge, error) in &refused {
        let (status, got, body) = post(authorization.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{authorization:?}: {body}"
        );
        assert_eq!(got.as_deref(), Some(*challenge), "{authorization:?}");
        assert!(body["error"].as_str().unwrap().starts_with(error), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "an ErrorBody: {body}");
    }
    assert!(
        sidecar.calls().is_empty(),
        "nothing is sent without the token"
    );
    let (status, _, body) = post(Some(bearer(TOKEN))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sent": 1})));
    // The scheme is case-insensitive; the helpers send the token the same way.
    let (status, _, _) = post(Some(format!("bearer {TOKEN}"))).await;
    assert_eq!(status, StatusCode::OK);
    producer.send(2, None).await;
    assert_eq!(sidecar.calls().len(), 4);

    // gRPC, both methods, the same.
    let mut client = producer.client().await;
    let mut wrong = tonic::Request::new(batch(1, 0));
    let value = bearer("wrong").parse().unwrap();
    wrong.metadata_mut().insert("authorization", value);
    for (request, message) in [
        (tonic::Request::new(batch(1, 0)), "missing token"),
        (wrong, "invalid token"),
    ] {
        let status = client.produce(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().starts_with(message), "{status:?}");
    }
    let status = client.produce_stream(batch(1, 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        sidecar.calls().len(),
        4,
        "nothing is sent without the token"
    );
    let reply = client.produce(producer.authorized(batch(2, 0))).await;
    assert_eq!(reply.unwrap().into_inner().sent, 2);
    let stream = client
        .produce_stream(producer.authorized(batch(1, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.collect::<Vec<_>>().await.len(), 1);
    assert_eq!(sidecar.calls().len(), 7);

    // Open without the token: probes, metrics, the documents, gRPC health and reflection.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/swagger-ui/",
    ] {
        assert_eq!(producer.get(path).await, StatusCode::OK, "{path}");
    }
    let mut health = HealthClient::new(producer.channel().await);
    let service = "producer.v1.Producer".to_owned();
    health.check(HealthCheckRequest { service }).await.unwrap();
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            producer.channel().await,
        );
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    answers.next().await.unwrap().unwrap();

    // The document states the configured MAX_COUNT and the scheme Swagger UI asks for.
    let doc: Value = producer.get_json("/openapi.json").await;
    let count = &doc["components"]["schemas"]["ProduceBody"]["properties"]["count"];
    assert_eq!(
        (&count["minimum"], &count["maximum"]),
        (&json!(1), &json!(5))
    );
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    let produce = &doc["paths"]["/MessageProducer"]["post"];
    assert_eq!(produce["security"], json!([{"bearer": []}]));
    assert!(produce["responses"]["401"].is_object(), "{produce}");
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());

    // Refusals are counted as any other answer.
    let metrics = producer.metrics().await;
    let refusals = refused.len() as f64;
    for (series, n) in [
        (
            r#"producer_http_requests_total{route="/MessageProducer",status="401"}"#,
            refusals,
        ),
        (
            r#"producer_http_requests_total{route="/MessageProducer",status="200"}"#,
            3.0,
        ),
        (
            r#"producer_grpc_requests_total{method="Produce",code="UNAUTHENTICATED"}"#,
            2.0,
        ),
        (
            r#"producer_grpc_requests_total{method="ProduceStream",code="UNAUTHENTICATED"}"#,
            1.0,
        ),
        (
            r#"producer_grpc_requests_total{method="Produce",code="OK"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metrics.get(series), n, "{series}");
    }

    // Each refusal is a warning with its reason, and no line shows the token.
    producer.service.terminate();
    assert_eq!(producer.service.exit_code(WAIT).await, Some(0));
    let events = producer.service.events_to_end().await;
    let warnings: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "request refused")
        .collect();
    assert_eq!(warnings.len(), refused.len() + 3, "{warnings:?}");
    for warning in &warnings {
        assert_eq!(warning["level"], "WARN", "{warning}");
        assert!(
            warning["reason"].as_str().unwrap().contains(" token"),
            "{warning}"
        );
    }
    let lines = producer.service.lines().await;
    assert!(lines.len() > warnings.len());
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "{leaks:?}");
    sidecar.stop().await;
}

/// `--help` names PRODUCER_API_TOKEN but never shows its value, and a malformed token stops
/// the producer at once with the reason, without quoting it.
#[tokio::test]
async fn help_and_config_errors_never_show_the_token() {
    let env = [
        ("PRODUCER_API_TOKEN", TOKEN),
        ("DAPR_API_TOKEN", "dapr-T0ken"),
    ];
    let help = help(bin(), &env, &["PRODUCER_API_TOKEN", "DAPR_API_TOKEN"]).await;
    assert!(
        !help.contains(TOKEN) && !help.contains("dapr-T0ken"),
        "{help}"
    );

    for bad in ["", "pr0ducer T0ken", "pr0ducer-T0ken\n"] {
        let (code, output) = run_to_end(bin(), &[], &[("PRODUCER_API_TOKEN", bad)]).await;
        assert_eq!(code, Some(2), "{bad:?}: {output}");
        assert!(output.contains("PRODUCER_API_TOKEN"), "{output}");
        assert!(output.contains("bearer token"), "{output}");
        assert!(!output.contains("pr0ducer"), "{output}");
    }
}

//! Apps written with the official Dapr Python SDK (`dapr`, `dapr-ext-grpc` from PyPI, see
//! `test_support::python`) against devstack's sidecar, as against daprd: its `DaprClient` as a
//! producer, through the SDK's start-up wait; its gRPC `App` as a consumer behind the sidecar.

use pipeline::dapr_v1::InvokeBindingRequest;
use test_support::devstack::Settled as _;
use test_support::{WAIT, port::free_port, python};
use tracing::Level;

use crate::{QUEUE, harness::InProcess};

/// The SDK waits for its sidecar before its first call: started before the sidecar is up, it
/// polls until the sidecar answers, then enqueues, with the API token the sidecar requires.
#[tokio::test]
async fn python_sdk_client_waits_for_the_sidecar_then_invokes_the_binding() {
    // Installed first, so the time the producer waits is the sidecar's start alone.
    python::python().await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let (grpc, http) = (grpc_port.to_string(), http_port.to_string());
    let mut producer = python::spawn(
        "producer.py",
        &[QUEUE, "Hello from Python"],
        &[
            ("DAPR_RUNTIME_HOST", "127.0.0.1"),
            ("DAPR_GRPC_PORT", &grpc),
            ("DAPR_HTTP_PORT", &http),
            ("DAPR_API_TOKEN", "s3cret"),
            ("DAPR_HEALTH_TIMEOUT", "15"),
        ],
    )
    .await;
    // The SDK says so when its first health check finds no sidecar.
    producer
        .wait_for_line("a failed health check", |l| {
            l.contains("/v1.0/healthz/outbound failed")
        })
        .await;
    let sidecar = InProcess::start_at(
        grpc_port,
        http_port,
        &["--dapr-api-token", "s3cret"],
        Level::INFO,
    )
    .await;

    let invoked = producer.wait_for_message("invoked").await;
    assert_eq!(invoked["binding"], QUEUE);
    assert_eq!(producer.exit_code(WAIT).await, Some(0));
    let c = sidecar.counts(QUEUE).await;
    assert_eq!((c.produced, c.active), (1, 1), "{c:?}");

    sidecar.stop().await;
}

/// The SDK's `App` lists its binding, gets each event, and its answer settles the message: a
/// handler that returns completes it, one that raises abandons it until it is dead-lettered.
#[tokio::test]
async fn python_sdk_app_consumes_behind_the_sidecar() {
    python::python().await;
    let port = free_port();
    let app = format!("127.0.0.1:{port}");
    let sidecar = InProcess::start(&[
        "--app",
        &app,
        "--max-delivery-count",
        "2",
        "--app-api-token",
        "app-s3cret",
    ])
    .await;
    let mut consumer = python::spawn("consumer.py", &[QUEUE, &port.to_string()], &[]).await;
    consumer.wait_for_message("serving").await;
    // The sidecar asks the app for its bindings until it answers.
    sidecar.wait_consumers(1).await;

    let mut client = sidecar.dapr_client().await;
    for text in ["Hello from Rust", "poison"] {
        let request = InvokeBindingRequest {
            name: QUEUE.to_owned(),
            data: serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap(),
            operation: "create".to_owned(),
            ..Default::default()
        };
        client.invoke_binding(request).await.expect("InvokeBinding");
    }

    let events = consumer
        .wait_for_events("the events", 3, |e| e["message"] == "event")
        .await;
    let hello = events.iter().find(|e| e["text"] == "Hello from Rust");
    assert!(hello.is_some(), "{events:?}");
    let status = sidecar
        .wait_status("one completed, one dead-lettered", |s| {
            let c = test_support::devstack::counts(s, QUEUE);
            (c.completed, c.dead_lettered) == (1, 1) && c.settled()
        })
        .await;
    let poison = events.iter().filter(|e| e["text"] == "poison").count();
    assert_eq!(
        poison, 2,
        "delivered max-delivery-count times: {events:?}; {status}"
    );

    consumer.stop().await;
    sidecar.stop().await;
}

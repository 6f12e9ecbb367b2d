//! How a failing message comes back: at once, paced only by the binding's retriable-error limit,
//! and, under the committed Resiliency, retried within one delivery before it is abandoned.

use std::time::Instant;

use serde_json::Value;
use test_support::{
    app::{Behaviour, FakeApp},
    devstack::counts,
};
use tonic::Code;

use crate::{QUEUE, harness::InProcess, invoke};

/// Sends one message through the sidecar's gRPC API and waits until it is dead-lettered; returns
/// the status then, and how long that took from the send.
async fn send_one_until_dead_lettered(sidecar: &InProcess) -> (Value, std::time::Duration) {
    let mut client = sidecar.dapr_client().await;
    let sent = Instant::now();
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let status = sidecar
        .wait_status("the message dead-lettered", |s| {
            counts(s, QUEUE).dead_lettered == 1
        })
        .await;
    (status, sent.elapsed())
}

/// As in production, an abandoned message is available again at once: what spaces out a poison
/// message's deliveries is only the binding's retriable-error pacing (`maxRetriableErrorsPerSec`,
/// 10 a second), so its 10 deliveries take about a second, not a growing backoff.
#[tokio::test]
async fn a_failing_message_is_redelivered_at_once_paced_only_as_the_binding_paces_errors() {
    let app = FakeApp::start(Behaviour {
        fail_every: Some(1),
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::for_apps(&[app.addr], &["--resiliency", "none"]).await;
    sidecar.wait_consumers(1).await;
    let (status, elapsed) = send_one_until_dead_lettered(&sidecar).await;
    assert_eq!(
        status["deadLetters"][QUEUE][0]["deliveryCount"], 10,
        "{status}"
    );
    assert_eq!(app.deliveries().len(), 10);
    // 9 permits 100 ms apart after the first failure: at least 0.8 s. The former backoff
    // (100 ms doubling to 5 s) took over 15 s.
    assert!(
        elapsed >= std::time::Duration::from_millis(800),
        "paced: {elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "no backoff: {elapsed:?}"
    );

    sidecar.stop().await;
    app.stop().await;
}

/// The committed Resiliency (deploy/base/resiliency.yaml): its inbound retry policy's
/// `maxRetries`, as the file says it.
fn committed_max_retries() -> u64 {
    let text = std::fs::read_to_string(COMMITTED_RESILIENCY).expect("the committed Resiliency");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let policy = doc["spec"]["targets"]["components"][QUEUE]["inbound"]["retry"]
        .as_str()
        .expect("an inbound retry for the binding");
    doc["spec"]["policies"]["retries"][policy]["maxRetries"]
        .as_u64()
        .expect("a maxRetries")
}

const COMMITTED_RESILIENCY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/base/resiliency.yaml"
);

/// The app's calls for one delivery of one message that always fails with `code`, under the
/// committed Resiliency, and how long until it was dead-lettered.
async fn calls_for_one_failing_delivery(code: Code) -> (usize, std::time::Duration) {
    let app = FakeApp::start(Behaviour {
        fail_every: Some(1),
        fail_with: code,
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &[
            "--resiliency",
            COMMITTED_RESILIENCY,
            "--max-delivery-count",
            "1",
        ],
    )
    .await;
    sidecar.wait_consumers(1).await;
    let (status, elapsed) = send_one_until_dead_lettered(&sidecar).await;
    assert_eq!(
        status["deadLetters"][QUEUE][0]["deliveryCount"], 1,
        "{status}"
    );
    let calls = app.deliveries().len();
    sidecar.stop().await;
    app.stop().await;
    (calls, elapsed)
}

/// With the committed Resiliency, an app answering UNAVAILABLE is called again per the policy
/// (exponential, from 500 ms +-50%) within the one delivery, and only then is the message
/// abandoned.
#[tokio::test]
async fn with_the_committed_resiliency_unavailable_is_retried_per_the_policy_before_the_abandon() {
    let max_retries = committed_max_retries();
    assert!(
        (1..=5).contains(&max_retries),
        "a few retries: {max_retries}"
    );
    let (calls, elapsed) = calls_for_one_failing_delivery(Code::Unavailable).await;
    assert_eq!(
        calls as u64,
        1 + max_retries,
        "the first call and every retry"
    );
    // The smallest exponential delays: 250 ms, 375 ms, 563 ms, ... (half of 500 ms * 1.5^n).
    let least: f64 = (0..max_retries).map(|n| 0.25 * 1.5f64.powi(n as i32)).sum();
    assert!(
        elapsed.as_secs_f64() >= least,
        "backed off: {elapsed:?} < {least}s"
    );
}

/// As daprd does for a gRPC app, INVALID_ARGUMENT is retried too: daprd tests `matching` only
/// against an HTTP app's status, and OnBindingEvent's gRPC error never reaches it (dapr/dapr
/// pkg/runtime/processor/binding/send.go). Hence the committed policy's few retries.
#[tokio::test]
async fn with_the_committed_resiliency_invalid_argument_is_retried_too_as_daprd_does() {
    let (calls, _) = calls_for_one_failing_delivery(Code::InvalidArgument).await;
    assert_eq!(calls as u64, 1 + committed_max_retries());
}

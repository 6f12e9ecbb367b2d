//! The sidecar's faults through `POST /devstack/faults`, as the dashboard's buttons and curl
//! provoke them: an outage (InvokeBinding UNAVAILABLE, the HTTP binding API 503), added latency;
//! each listed in the status with its time and counted in the metrics. And bad input to every new
//! endpoint: a 4xx with a JSON error naming the problem, after which the sidecar still delivers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    app::{Behaviour, FakeApp},
    devstack::ASPNET_BODY,
};
use tonic::Code;

use crate::{QUEUE, harness::InProcess, invoke};

#[tokio::test]
async fn an_outage_refuses_sends_until_it_ends_then_latency_slows_them() {
    let sidecar = InProcess::start(&[]).await;
    let mut client = sidecar.dapr_client().await;
    let record = sidecar
        .fault(json!({"kind": "unavailable", "seconds": 0.5}))
        .await;
    assert_eq!(
        (&record["kind"], &record["target"]),
        (&json!("unavailable"), &json!("sidecar"))
    );
    assert!(record["at"].as_str().unwrap().ends_with('Z'), "{record}");
    let refused = client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap_err();
    // What the producer retries, as daprd's UNAVAILABLE.
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let answer = sidecar.post_binding(QUEUE, ASPNET_BODY, None).await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_INVOKE_OUTPUT_BINDING", "{body}");
    // It ends on its own.
    sidecar
        .wait_status("the outage over", |s| {
            s["faults"]["unavailableUntil"].is_null()
        })
        .await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();

    sidecar
        .fault(json!({"kind": "latency", "milliseconds": 300, "seconds": 5}))
        .await;
    let sent = Instant::now();
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "{:?}",
        sent.elapsed()
    );
    let status = sidecar.status().await;
    assert_eq!(status["queues"][QUEUE]["produced"], 2, "{status}");
    let faults = &status["faults"];
    assert_eq!(faults["latencyMs"], 300, "{faults}");
    let kinds: Vec<&Value> = faults["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["kind"])
        .collect();
    assert_eq!(kinds, [&json!("unavailable"), &json!("latency")]);
    let page = sidecar.metrics().await;
    assert_eq!(
        page.get(r#"devstack_faults_total{kind="unavailable"}"#),
        1.0
    );
    assert_eq!(page.get(r#"devstack_faults_total{kind="latency"}"#), 1.0);
    sidecar.stop().await;
}

/// Every new endpoint, given bad input: a 4xx whose JSON `error` names the problem. None of it
/// touches the queue: a message sent afterwards is delivered as ever.
#[tokio::test]
async fn bad_input_to_every_new_endpoint_gets_a_4xx_naming_the_problem_and_breaks_nothing() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    sidecar.wait_consumers(1).await;
    let post = |path: &'static str, body: Value| {
        let sidecar = &sidecar;
        async move { sidecar.post_json(path, &body).await }
    };
    for (path, body, status, names) in [
        (
            "/devstack/faults",
            json!({"kind": "explode"}),
            422,
            "unknown variant `explode`",
        ),
        (
            "/devstack/faults",
            json!({"kind": "kill"}),
            422,
            "missing field `consumer`",
        ),
        (
            "/devstack/faults",
            json!({"kind": "unavailable", "seconds": 0}),
            422,
            "seconds",
        ),
        (
            "/devstack/faults",
            json!({"kind": "unavailable", "seconds": -1}),
            422,
            "seconds",
        ),
        (
            "/devstack/faults",
            json!({"kind": "latency", "milliseconds": 0, "seconds": 1}),
            422,
            "milliseconds",
        ),
        (
            "/devstack/faults",
            json!({"kind": "pause", "consumer": "consumer-1", "seconds": 99999}),
            422,
            "seconds",
        ),
        (
            "/devstack/faults",
            json!({"kind": "kill", "consumer": "consumer-1"}),
            409,
            "devstack sidecar",
        ),
        (
            "/devstack/faults",
            json!({"kind": "lost-lock"}),
            409,
            "no message is in flight",
        ),
        (
            "/devstack/faults",
            json!({"kind": "lost-complete", "message": "nope"}),
            409,
            "\"nope\" is not in flight",
        ),
        ("/devstack/faults", json!([1, 2]), 422, "invalid type"),
        (
            "/devstack/dead-letters/message-queue/replay",
            json!({}),
            422,
            "either",
        ),
        (
            "/devstack/dead-letters/message-queue/replay",
            json!({"ids": []}),
            422,
            "ids: empty",
        ),
        (
            "/devstack/dead-letters/message-queue/replay",
            json!({"ids": ["x"], "all": true}),
            422,
            "either",
        ),
        (
            "/devstack/dead-letters/message-queue/purge",
            json!({"ids": ["nope"]}),
            404,
            "no dead letter with id nope",
        ),
        (
            "/devstack/dead-letters/message-queue/purge",
            json!({"all": true, "extra": 1}),
            422,
            "unknown field `extra`",
        ),
        (
            "/devstack/dead-letters/other/purge",
            json!({"all": true}),
            404,
            "no queue \"other\"; queues: message-queue",
        ),
    ] {
        let (got, answer) = post(path, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{path} {body}: {answer}");
    }
    for (path, status, names) in [
        (
            "/devstack/messages/nope",
            404,
            "no journey of message \"nope\"",
        ),
        ("/devstack/messages?limit=0", 400, "limit: 0"),
        ("/devstack/messages?limit=many", 400, "limit"),
        (
            "/devstack/messages?colour=red",
            400,
            "unknown field `colour`",
        ),
        ("/devstack/dead-letters/other", 404, "no queue \"other\""),
        (
            "/devstack/dead-letters/message-queue?limit=1001",
            400,
            "between 1 and 1000",
        ),
        ("/devstack/dead-letters/message-queue?from=-1", 400, "from"),
    ] {
        let (got, answer) = sidecar.get_json(path).await;
        assert_eq!(got.as_u16(), status, "{path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{path}: {answer}");
    }
    // A body that is not JSON at all, sent as JSON, and JSON sent as something else.
    for (content_type, body, status) in [
        ("application/json", "{not json", 400),
        ("text/plain", r#"{"kind":"lost-lock"}"#, 415),
        ("application/x-www-form-urlencoded", "kind=kill", 415),
    ] {
        let answer = sidecar
            .http
            .post(sidecar.url("/devstack/faults"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{content_type}");
        let answer: Value = answer.json().await.expect("a JSON error");
        assert!(answer["error"].is_string(), "{answer}");
    }
    // Nothing above broke the sidecar or lost a message.
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!((c.produced, c.completed), (1, 1));
    assert_eq!(sidecar.status().await["faults"]["recent"], json!([]));
    sidecar.stop().await;
    app.stop().await;
}

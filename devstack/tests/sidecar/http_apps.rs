//! Delivery to HTTP apps (daprd's `--app-protocol http`), as daprd's HTTP app channel drives
//! them: the OPTIONS probe per binding, each event a POST with its metadata as headers, the
//! trace and the app token; `GET /healthz`; failures redelivered, a Resiliency's
//! `matching.httpStatusCodes`, and daprd's retry runner taking only 200 from an HTTP app.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};
use test_support::devstack::Settled as _;

use pipeline::{dapr_v1::InvokeBindingRequest, trace_context::TraceParent};
use reqwest::StatusCode;
use serde_json::json;
use test_support::{
    TRACE_ID, TRACEPARENT,
    devstack::{ASPNET_BODY, consumer_status, counts},
    http_app::{HttpApp, HttpBehaviour},
    traced,
};
use tonic::Request;

use crate::{HELLO, QUEUE, harness::InProcess, invoke};

#[tokio::test]
async fn http_app_is_probed_then_gets_each_event_as_a_post_with_metadata_headers_trace_and_token() {
    let app = HttpApp::start(HttpBehaviour::default()).await;
    let sidecar = InProcess::start(&[
        &app.app_arg(),
        "--bindings",
        "message-queue,other",
        "--app-api-token",
        "app-s3cret",
    ])
    .await;
    sidecar.wait_consumers(1).await;
    // OPTIONS /message-queue got axum's 405 (subscribed, as daprd reads it); OPTIONS /other a
    // 404 (not subscribed).
    let status = sidecar.status().await;
    assert_eq!(
        consumer_status(&status, app.addr)["bindings"],
        json!([QUEUE])
    );

    let mut request: Request<InvokeBindingRequest> =
        traced(invoke(QUEUE, "create", None), TRACEPARENT);
    request.get_mut().metadata = HashMap::from([
        ("correlationID".to_owned(), "corr-1".to_owned()),
        ("tenant id".to_owned(), "a&b".to_owned()),
    ]);
    let mut client = sidecar.dapr_client().await;
    client.invoke_binding(request).await.unwrap();
    client
        .invoke_binding(invoke("other", "create", None))
        .await
        .unwrap();
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    sidecar.wait_completed(QUEUE, 2).await;
    let deliveries = app.wait_for_deliveries(2).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    for d in &deliveries {
        assert_eq!(d.path, "/message-queue");
        assert_eq!(d.body, HELLO, "exactly the original's bytes");
        assert_eq!(d.headers["content-type"], "application/json");
        assert!(!d.headers["id"].is_empty());
        assert_eq!(d.headers["dapr-api-token"], "app-s3cret");
        TraceParent::parse(&d.headers["traceparent"]).expect("W3C traceparent");
    }
    assert_ne!(deliveries[0].headers["id"], deliveries[1].headers["id"]);
    // FIFO: the traced message first, its metadata as headers (names are case-insensitive).
    let first = &deliveries[0];
    assert_eq!(first.headers["correlationid"], "corr-1");
    assert_eq!(first.headers["tenant+id"], "a%26b");
    let traceparent = TraceParent::parse(&first.headers["traceparent"]).unwrap();
    assert_eq!(traceparent.trace_id(), TRACE_ID);
    assert!(!deliveries[1].headers.contains_key("correlationid"));

    // The probes came first, one per binding; the binding it does not take is never posted.
    let requests = app.requests();
    assert_eq!(
        requests[..2].iter().collect::<HashSet<_>>(),
        HashSet::from([
            &"OPTIONS /message-queue".to_owned(),
            &"OPTIONS /other".to_owned()
        ]),
        "{requests:?}"
    );
    assert_eq!(
        requests[2..],
        ["POST /message-queue", "POST /message-queue"],
        "{requests:?}"
    );
    let other = sidecar.counts("other").await;
    assert_eq!((other.active, other.locked), (1, 0), "{other:?}");

    drop(client);
    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn http_app_500_is_redelivered_then_dead_lettered_and_good_events_complete() {
    let app = HttpApp::start(HttpBehaviour {
        fail_body: Some("poison".to_owned()),
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::start(&[&app.app_arg(), "--max-delivery-count", "2"]).await;
    sidecar.wait_consumers(1).await;

    for body in [
        ASPNET_BODY,
        r#"{"data":"poison","operation":"create"}"#,
        ASPNET_BODY,
    ] {
        assert_eq!(
            sidecar.post_binding(QUEUE, body, None).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let status = sidecar
        .wait_status("2 completed and 1 dead-lettered", |s| {
            let c = counts(s, QUEUE);
            c.completed == 2 && c.dead_lettered == 1 && c.settled()
        })
        .await;
    let dead = &status["deadLetters"][QUEUE][0];
    assert_eq!(dead["deliveryCount"], 2, "{dead}");
    assert!(dead["reason"].as_str().unwrap().contains("500"), "{dead}");

    let deliveries = app.wait_for_deliveries(4).await;
    let poison: Vec<_> = deliveries.iter().filter(|d| !d.ok).collect();
    assert_eq!(
        poison.len(),
        2,
        "delivered max-delivery-count times: {deliveries:?}"
    );
    assert_eq!(poison[0].headers["id"], poison[1].headers["id"]);
    assert_eq!(poison[0].body, br#""poison""#);
    assert_eq!(deliveries.iter().filter(|d| d.ok).count(), 2);

    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn unhealthy_http_app_gets_no_deliveries_until_its_healthz_passes() {
    let app = HttpApp::start(HttpBehaviour::default()).await;
    app.set_healthy(false);
    let sidecar = InProcess::start(&[&app.app_arg(), "--app-health-interval", "50ms"]).await;
    sidecar
        .wait_status("the app's bindings probed", |s| {
            consumer_status(s, app.addr)["bindings"].is_array()
        })
        .await;
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    // Three failing GET /healthz after the send: the message must still be waiting.
    let seen = app.health_calls();
    app.wait_for_health_calls(seen + 3).await;
    assert!(app.deliveries().is_empty(), "{:?}", app.deliveries());
    let status = sidecar.status().await;
    assert_eq!(consumer_status(&status, app.addr)["healthy"], false);
    let c = counts(&status, QUEUE);
    assert_eq!((c.active, c.locked), (1, 0), "{c:?}");

    app.set_healthy(true);
    app.wait_for_deliveries(1).await;
    sidecar.wait_completed(QUEUE, 1).await;

    sidecar.stop().await;
    app.stop().await;
}

/// A Resiliency file for this test process, named after `name`: one constant 10 ms retry policy
/// with `max_retries` and, if given, `matching.httpStatusCodes`, for the binding's inbound calls.
fn resiliency_file(name: &str, max_retries: &str, http_status_codes: Option<&str>) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "devstack-test-http-{name}-{}.yaml",
        std::process::id()
    ));
    let matching = http_status_codes
        .map(|codes| format!("        matching:\n          httpStatusCodes: \"{codes}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      busy:\n        policy: constant\n        duration: 10ms\n        maxRetries: {max_retries}\n{matching}  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: busy\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A Resiliency's `matching.httpStatusCodes` applies to an HTTP app's answers, as in daprd: a
/// listed status is retried per the policy within the delivery, any other abandons at once.
#[tokio::test]
async fn http_app_answers_are_retried_as_the_resiliency_matching_says() {
    let path = resiliency_file("matching", "2", Some("503"));
    let resiliency = path.to_str().unwrap();
    for (status, calls) in [
        (StatusCode::SERVICE_UNAVAILABLE, 3),
        (StatusCode::INTERNAL_SERVER_ERROR, 1),
    ] {
        let app = HttpApp::start(HttpBehaviour {
            fail_body: Some("Hello".to_owned()),
            fail_with: status,
            ..Default::default()
        })
        .await;
        let sidecar = InProcess::start(&[
            &app.app_arg(),
            "--resiliency",
            resiliency,
            "--max-delivery-count",
            "1",
        ])
        .await;
        sidecar.wait_consumers(1).await;
        assert_eq!(
            sidecar
                .post_binding(QUEUE, ASPNET_BODY, None)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        sidecar
            .wait_status("the message dead-lettered", |s| {
                counts(s, QUEUE).dead_lettered == 1
            })
            .await;
        assert_eq!(app.deliveries().len(), calls, "{status}");
        sidecar.stop().await;
        app.stop().await;
    }
    std::fs::remove_file(&path).unwrap();
}

/// daprd's retry runner takes only 200 from an HTTP app: under a retry policy a 204 is POSTed
/// again up to the retries (once when `matching` leaves it out), then the delivery fails (the
/// runner discarded the answer), so Service Bus redelivers the message until it is
/// dead-lettered. The sidecar warns once. Without a retry policy, any 2xx completes.
#[tokio::test]
async fn an_http_app_answering_204_under_a_retry_policy_is_posted_again_then_fails() {
    let retried = resiliency_file("no-content", "2", None);
    let not_matched = resiliency_file("no-content-matching", "2", Some("503"));
    let retried = retried.to_str().unwrap();
    let not_matched = not_matched.to_str().unwrap();
    // (Resiliency, POSTs, dead-lettered): 2 deliveries of 3 calls, 2 of 1, 1 that completes.
    for (resiliency, posts, dead) in [
        (retried, 6, true),
        (not_matched, 2, true),
        ("none", 1, false),
    ] {
        let app = HttpApp::start(HttpBehaviour {
            fail_body: Some("Hello".to_owned()),
            fail_with: StatusCode::NO_CONTENT,
            ..Default::default()
        })
        .await;
        let app_arg = app.app_arg();
        let args = [
            &app_arg,
            "--resiliency",
            resiliency,
            "--max-delivery-count=2",
        ];
        let sidecar = InProcess::start(&args).await;
        sidecar.wait_consumers(1).await;
        for _ in 0..2 {
            let response = sidecar.post_binding(QUEUE, ASPNET_BODY, None).await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
        }
        let status = sidecar
            .wait_status("both messages settled", |s| {
                let c = counts(s, QUEUE);
                c.completed + c.dead_lettered == 2
            })
            .await;
        let c = counts(&status, QUEUE);
        let deliveries = app.deliveries();
        assert_eq!(deliveries.len(), 2 * posts, "{resiliency}: {c:?}");
        assert!(deliveries.iter().all(|d| !d.ok), "every answer a 204");
        let warnings = sidecar.logs.events();
        let warnings: Vec<_> = warnings
            .iter()
            .filter(|e| {
                e["message"].as_str().is_some_and(|m| {
                    m.contains("a 2xx other than 200 under a Resiliency retry policy")
                })
            })
            .collect();
        if dead {
            assert_eq!(c.dead_lettered, 2, "{resiliency}: {c:?}");
            let reason = status["deadLetters"][QUEUE][0]["reason"].as_str().unwrap();
            assert!(reason.contains("HTTP 204, not 200"), "{reason}");
            assert_eq!(warnings.len(), 1, "once per app: {warnings:?}");
            assert_eq!(warnings[0]["status"], 204);
        } else {
            assert_eq!(c.completed, 2, "{c:?}");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        sidecar.stop().await;
        app.stop().await;
    }
    std::fs::remove_file(retried).unwrap();
    std::fs::remove_file(not_matched).unwrap();
}

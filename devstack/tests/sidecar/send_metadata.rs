//! The rest of the binding's send metadata, through the runtime API as a producer sends it:
//! `ScheduledEnqueueTimeUtc` (active at its time, not before; any format but the binding's two
//! fails the send with the binding's error), `ttl` / `ttlInSeconds` (an expired message is
//! removed, or dead-lettered when the queue says so), `SessionId` on the queue, which has no
//! sessions, and duplicate detection over both APIs.

use std::{collections::HashMap, time::Duration};

use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    app::{Behaviour, FakeApp},
    devstack::counts,
};
use tonic::Code;

use crate::{QUEUE, harness::InProcess, invoke};

/// An InvokeBinding of the original's message with this binding metadata.
fn with_metadata(
    pairs: &[(&str, &str)],
) -> tonic::Request<pipeline::dapr_v1::InvokeBindingRequest> {
    let mut request = invoke(QUEUE, "create", None);
    request.get_mut().metadata = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<HashMap<_, _>>();
    request
}

/// The HTTP API's body for the same.
fn http_body(pairs: &[(&str, &str)]) -> String {
    let metadata: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({"data": {"text": "Hello World"}, "operation": "create", "metadata": metadata})
        .to_string()
}

#[tokio::test]
async fn metadata_the_binding_refuses_fails_the_send_with_its_error() {
    let sidecar = InProcess::start(&[]).await;
    let mut client = sidecar.dapr_client().await;
    let schedule = "error invoking output binding message-queue: failed to create message: \
                    invalid time format for ScheduledEnqueueTimeUtc; expected HTTP time format or \
                    RFC3339";
    let session = "error invoking output binding message-queue: failed to create message: \
                   session id s and partition key p should be equal when both present";
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("ScheduledEnqueueTimeUtc", "tomorrow")], schedule),
        (
            &[("ScheduledEnqueueTimeUtc", "2030-01-02 03:04:05")],
            schedule,
        ),
        (&[("SessionId", "s"), ("PartitionKey", "p")], session),
    ];
    for (pairs, message) in cases {
        let status = client
            .invoke_binding(with_metadata(pairs))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{pairs:?}");
        assert_eq!(status.message(), message);
        let response = sidecar.post_binding(QUEUE, &http_body(pairs), None).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"errorCode": "ERR_INVOKE_OUTPUT_BINDING", "message": message})
        );
    }
    assert_eq!(sidecar.counts(QUEUE).await.produced, 0, "nothing enqueued");

    drop(client);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_scheduled_message_is_active_and_delivered_at_its_time_not_before() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    sidecar.wait_consumers(1).await;
    let mut client = sidecar.dapr_client().await;

    let at = Utc::now() + Duration::from_millis(1500);
    let rfc3339 = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let pairs = [("ScheduledEnqueueTimeUtc", rfc3339.as_str())];
    client.invoke_binding(with_metadata(&pairs)).await.unwrap();
    // HTTP time format, over the HTTP API: one far ahead, one past (due at once).
    for time in [
        "Wed, 02 Jan 2030 03:04:05 GMT",
        "Mon, 01 Jan 2024 00:00:00 GMT",
    ] {
        let body = http_body(&[("ScheduledEnqueueTimeUtc", time)]);
        let response = sidecar.post_binding(QUEUE, &body, None).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{time}");
    }

    let c = sidecar.counts(QUEUE).await;
    // Read before its time, the first is scheduled: neither active, nor seen by KEDA.
    assert!(c.scheduled == 2 || Utc::now() >= at, "{c:?}");
    assert!(c.scheduled >= 1, "{c:?}");
    // The past one at once.
    app.wait_for_deliveries(1).await;

    let deliveries = app.wait_for_deliveries(2).await;
    assert!(Utc::now() >= at, "delivered before its time");
    assert_eq!(deliveries.len(), 2);
    let c = sidecar.counts(QUEUE).await;
    assert_eq!((c.produced, c.scheduled, c.completed), (3, 1, 2), "{c:?}");

    drop(client);
    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_expired_message_is_removed_or_dead_lettered_as_the_queue_says() {
    for dead_letter in [false, true] {
        let flag = dead_letter.to_string();
        let sidecar = InProcess::start(&["--dead-letter-on-expiration", &flag]).await;
        let mut client = sidecar.dapr_client().await;
        // Go durations and whole seconds, as the binding reads them.
        client
            .invoke_binding(with_metadata(&[("ttl", "300ms")]))
            .await
            .unwrap();
        client
            .invoke_binding(with_metadata(&[("ttlInSeconds", "3600")]))
            .await
            .unwrap();
        let status = sidecar
            .wait_status("the message expired", |s| {
                let c = counts(s, QUEUE);
                c.expired + c.dead_lettered == 1
            })
            .await;
        let c = counts(&status, QUEUE);
        assert_eq!((c.produced, c.active), (2, 1), "the other lives on: {c:?}");
        if dead_letter {
            assert_eq!(c.dead_lettered, 1);
            let dead = &status["deadLetters"][QUEUE][0];
            assert_eq!(dead["reason"], "TTLExpiredException", "{dead}");
            assert_eq!(dead["deliveryCount"], 0, "never delivered");
        } else {
            assert_eq!(c.expired, 1);
            assert_eq!(status["deadLetters"][QUEUE], json!([]));
        }
        let page = sidecar.metrics().await;
        let state = if dead_letter {
            "dead_lettered"
        } else {
            "expired"
        };
        let series = format!(r#"devstack_queue_messages{{queue="message-queue",state="{state}"}}"#);
        assert_eq!(page.get(&series), 1.0);

        drop(client);
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn a_session_id_on_the_queue_without_sessions_changes_nothing_and_is_not_delivered() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    let mut client = sidecar.dapr_client().await;
    for pairs in [
        &[("SessionId", "s")][..],
        &[("SessionId", "s"), ("PartitionKey", "s")],
    ] {
        client.invoke_binding(with_metadata(pairs)).await.unwrap();
    }
    let deliveries = app.wait_for_deliveries(2).await;
    for delivery in deliveries {
        let mut keys: Vec<_> = delivery.metadata.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["id", "traceparent"],
            "no session id, no partition key"
        );
    }
    sidecar.wait_completed(QUEUE, 2).await;

    drop(client);
    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_message_id_sent_again_within_the_window_is_dropped_over_grpc_and_http() {
    for detection in [true, false] {
        let flag = detection.to_string();
        let sidecar = InProcess::start(&["--duplicate-detection", &flag]).await;
        let mut client = sidecar.dapr_client().await;
        // The binding's two spellings of the id: the same message.
        client
            .invoke_binding(with_metadata(&[("MessageId", "order-7")]))
            .await
            .expect("accepted");
        client
            .invoke_binding(with_metadata(&[("id", "order-7")]))
            .await
            .expect("a duplicate is answered with success too");
        let body = http_body(&[("MessageId", "order-7")]);
        let response = sidecar.post_binding(QUEUE, &body, None).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        // No id: never a duplicate.
        for _ in 0..2 {
            client.invoke_binding(with_metadata(&[])).await.unwrap();
        }

        let c = sidecar.counts(QUEUE).await;
        let (produced, dropped, enqueued) = if detection { (3, 2, 0) } else { (5, 0, 2) };
        assert_eq!(c.produced, produced, "{c:?}");
        assert_eq!(
            (c.duplicates_dropped, c.duplicates_enqueued),
            (dropped, enqueued)
        );
        let page = sidecar.metrics().await;
        for (outcome, value) in [("dropped", dropped), ("enqueued", enqueued)] {
            let series = format!(
                r#"devstack_queue_duplicates_total{{queue="message-queue",outcome="{outcome}"}}"#
            );
            assert_eq!(page.get(&series), value as f64, "{series}");
        }

        drop(client);
        sidecar.stop().await;
    }
}

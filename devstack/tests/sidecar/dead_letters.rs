//! The dead-letter operations, as Service Bus Explorer offers them: peek (body, properties, the
//! last error), replay (the same body and properties, a fresh delivery count, a property saying
//! where it came from: delivered again) and purge, each counted, each in the message's journey.

use std::collections::HashMap;

use pipeline::dapr_v1::InvokeBindingRequest;
use reqwest::StatusCode;
use serde_json::json;
use test_support::app::{Behaviour, FakeApp};
use tonic::Request;

use crate::{QUEUE, harness::InProcess};

#[tokio::test]
async fn dead_letters_are_peeked_replayed_and_delivered_again_then_purged() {
    // Rejects every event: each message is dead-lettered on its first delivery.
    let app = FakeApp::start(Behaviour {
        fail_every: Some(1),
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::for_apps(&[app.addr], &["--max-delivery-count", "1"]).await;
    sidecar.wait_consumers(1).await;
    let mut client = sidecar.dapr_client().await;
    for body in ["first", "second"] {
        let request = Request::new(InvokeBindingRequest {
            name: QUEUE.to_owned(),
            data: format!("\"{body}\"").into_bytes(),
            metadata: HashMap::from([("tenant".to_owned(), "contoso".to_owned())]),
            operation: "create".to_owned(),
        });
        client.invoke_binding(request).await.unwrap();
    }
    sidecar
        .wait_status("two dead letters", |s| {
            s["queues"][QUEUE]["deadLettered"] == 2 && s["queues"][QUEUE]["locked"] == 0
        })
        .await;

    let (status, peeked) = sidecar
        .get_json("/devstack/dead-letters/message-queue?limit=10")
        .await;
    assert_eq!(status, StatusCode::OK, "{peeked}");
    assert_eq!(peeked["total"], 2, "{peeked}");
    let first = &peeked["deadLetters"][0];
    assert_eq!(first["data"], "\"first\"", "{first}");
    assert_eq!(first["dataIsUtf8"], true);
    assert_eq!(first["properties"]["tenant"], "contoso", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "the last error: {first}"
    );
    assert_eq!(first["deliveryCount"], 1);
    let id = first["id"].as_str().unwrap().to_owned();
    let (_, second_page) = sidecar
        .get_json("/devstack/dead-letters/message-queue?from=1&limit=1")
        .await;
    assert_eq!(second_page["deadLetters"][0]["data"], "\"second\"");

    // Replayed: back in the queue, delivered again (and, the app still rejecting it,
    // dead-lettered again with a fresh delivery count).
    let (status, answer) = sidecar
        .post_json(
            "/devstack/dead-letters/message-queue/replay",
            &json!({"ids": [id]}),
        )
        .await;
    assert_eq!((status, &answer), (StatusCode::OK, &json!({"replayed": 1})));
    let deliveries = app.wait_for_deliveries(3).await;
    assert_eq!(deliveries[2].metadata["id"], id);
    assert_eq!(
        deliveries[2].metadata["devstack-replayed-from"], "message-queue%2F%24DeadLetterQueue",
        "the property saying where it came from, query-escaped as the binding sends it"
    );
    assert_eq!(deliveries[2].metadata["tenant"], "contoso");
    sidecar
        .wait_status("the replayed message dead-lettered again", |s| {
            s["queues"][QUEUE]["replayed"] == 1
                && s["queues"][QUEUE]["deadLettered"] == 2
                && s["queues"][QUEUE]["locked"] == 0
        })
        .await;
    let (_, peeked) = sidecar
        .get_json("/devstack/dead-letters/message-queue")
        .await;
    let again = peeked["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(again["deliveryCount"], 1, "a fresh delivery count: {again}");

    let (status, answer) = sidecar
        .post_json(
            "/devstack/dead-letters/message-queue/purge",
            &json!({"all": true}),
        )
        .await;
    assert_eq!((status, &answer), (StatusCode::OK, &json!({"purged": 2})));
    let status = sidecar.status().await;
    let counts = &status["queues"][QUEUE];
    assert_eq!(
        (
            &counts["deadLettered"],
            &counts["purged"],
            &counts["produced"]
        ),
        (&json!(0), &json!(2), &json!(2)),
        "{status}"
    );
    assert_eq!(
        status["deadLetterOperations"][QUEUE],
        json!({"peeks": 3, "replays": 1, "purges": 1})
    );
    let page = sidecar.metrics().await;
    for (operation, n) in [("peek", 3.0), ("replay", 1.0), ("purge", 1.0)] {
        let sample = format!(
            r#"devstack_dead_letter_operations_total{{queue="{QUEUE}",operation="{operation}"}}"#
        );
        assert_eq!(page.get(&sample), n, "{sample}");
    }
    let (_, events) = sidecar.journey(&id).await;
    assert_eq!(
        events,
        [
            "enqueued",
            "delivery",
            "abandoned",
            "deadLettered",
            "replayed",
            "enqueued",
            "delivery",
            "abandoned",
            "deadLettered",
            "purged"
        ]
    );
    sidecar.stop().await;
    app.stop().await;
}

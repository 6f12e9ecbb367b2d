//! A retry never duplicates a message: the real `producer` sends 1,000 messages to the in-process
//! sidecar through a proxy that loses every tenth answer after the sidecar enqueued the message
//! (the connection is cut), so the producer retries each of those with its one `MessageId`. With
//! duplicate detection (devstack's default, the guide's queue) the consumer gets each message
//! once and the copies are counted as dropped; without it, it gets the copies too. And a client
//! that resends a request with the same `Idempotency-Key`, over REST or gRPC, adds nothing.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;
use test_support::{
    app::{Behaviour, FakeApp},
    devstack::Counts,
    lost_answers::LostAnswers,
    producer::{Producer, batch},
};
use tonic::Request;

use crate::{QUEUE, harness::InProcess};

const MESSAGES: u64 = 1_000;
/// One answer in this many is lost.
const EVERY: u64 = 10;

/// Sends [`MESSAGES`] through a lossy proxy, one call at a time, so that each cut loses exactly
/// the one answer the sidecar has just given, and waits until the consumer has completed every
/// message the queue took. Returns the final counts, the ids the consumer got, and the answers
/// lost.
async fn send_through_lost_answers(sidecar_args: &[&str]) -> (Counts, Vec<String>, u64) {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], sidecar_args).await;
    let proxy = LostAnswers::start(sidecar.grpc_addr, EVERY).await;
    let env = [("SEND_CONCURRENCY", "1"), ("RETRY_BACKOFF", "1ms")];
    let producer = Producer::start(&proxy.port(), &env).await;

    let answer = producer.post(json!({"count": MESSAGES})).await;
    assert_eq!(answer, (StatusCode::OK, json!({"sent": MESSAGES})));
    let cut = proxy.cut();
    assert_eq!(cut, proxy.responses() / EVERY, "every tenth answer lost");
    assert!(cut >= MESSAGES / EVERY, "{cut}");

    let produced = sidecar.counts(QUEUE).await.produced;
    let counts = sidecar.wait_completed(QUEUE, produced).await;
    let ids = app
        .wait_for_deliveries(produced as usize)
        .await
        .iter()
        .map(|d| d.metadata["id"].clone())
        .collect();

    producer.stop().await;
    proxy.stop().await;
    sidecar.stop().await;
    app.stop().await;
    (counts, ids, cut)
}

#[tokio::test]
async fn with_duplicate_detection_every_retried_message_is_completed_once() {
    let (counts, ids, cut) = send_through_lost_answers(&[]).await;
    assert_eq!(counts.produced, MESSAGES, "{counts:?}");
    assert_eq!(counts.completed, MESSAGES, "{counts:?}");
    assert_eq!(
        counts.duplicates_dropped, cut,
        "each lost answer's retry dropped"
    );
    assert_eq!(counts.duplicates_enqueued, 0);
    assert_eq!(ids.len() as u64, MESSAGES, "one delivery per message");
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len() as u64, MESSAGES);
}

#[tokio::test]
async fn without_it_each_lost_answer_is_a_duplicate_delivered() {
    let (counts, ids, cut) = send_through_lost_answers(&["--duplicate-detection", "false"]).await;
    assert_eq!(counts.produced, MESSAGES + cut, "{counts:?}");
    assert_eq!(counts.completed, MESSAGES + cut, "{counts:?}");
    assert_eq!(
        counts.duplicates_enqueued, cut,
        "each lost answer's retry taken"
    );
    assert_eq!(counts.duplicates_dropped, 0);
    assert_eq!(ids.len() as u64, MESSAGES + cut);
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len() as u64, MESSAGES, "the copies share their id");
}

#[tokio::test]
async fn a_resend_with_the_same_idempotency_key_adds_nothing() {
    const KEY: &str = "5f0c7c1e-8b7e-4c8e-9f5e-3a1d2b4c6e8f";
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    let producer = Producer::start(&sidecar.grpc_port(), &[]).await;
    let body = json!({"count": 20, "text": "order 42"});
    let headers = [("Idempotency-Key", KEY)];

    let first = producer.post_with(&headers, body.clone()).await;
    assert_eq!(first, (StatusCode::OK, json!({"sent": 20})));
    sidecar.wait_completed(QUEUE, 20).await;
    // The client did not see that answer, say: it sends the request again, over REST and over
    // gRPC, which derive the same ids from the same key and request.
    let again = producer.post_with(&headers, body).await;
    assert_eq!(again, (StatusCode::OK, json!({"sent": 20})));
    let mut request = Request::new(pipeline::proto::ProduceRequest {
        text: Some("order 42".to_owned()),
        ..batch(20, 0)
    });
    request
        .metadata_mut()
        .insert("idempotency-key", KEY.parse().unwrap());
    let reply = producer.client().await.produce(request).await.unwrap();
    assert_eq!(reply.into_inner().sent, 20);

    let counts = sidecar
        .wait_status("the resends counted", |s| {
            s["queues"][QUEUE]["duplicatesDropped"] == 40
        })
        .await;
    let c = test_support::devstack::counts(&counts, QUEUE);
    assert_eq!((c.produced, c.completed, c.active), (20, 20, 0), "{c:?}");
    assert_eq!(
        app.deliveries().len(),
        20,
        "nothing more reached the consumer"
    );
    let page = sidecar.metrics().await;
    let dropped = r#"devstack_queue_duplicates_total{queue="message-queue",outcome="dropped"}"#;
    assert_eq!(page.get(dropped), 40.0);

    producer.stop().await;
    sidecar.stop().await;
    app.stop().await;
}

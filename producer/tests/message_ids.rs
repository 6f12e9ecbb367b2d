//! Every message's `MessageId`, served in the test process against a fake Dapr sidecar: one per
//! message, the same on every retry of it, and with an idempotency key (REST header, gRPC
//! metadata) the same again when a client resends its request; bad keys refused before anything
//! is sent.

use test_support as support;

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;
use support::{
    in_process::Producer,
    producer::batch,
    sidecar::{Behaviour, Call, FakeSidecar},
};
use tonic::{Code, Request};

/// A valid key, and the ids it gives `{"count": 3}` (Python's `uuid` module, as docs/api.md
/// derives them).
const KEY: &str = "0123456789abcdef";
const IDS: [&str; 3] = [
    "bd07088e-6d2f-5d87-8fdc-ca6453e6ae9c",
    "423fdd9c-80b2-5e2e-a570-601f8a1101e0",
    "0f0028fe-5e93-5a6e-906a-2f11db22aa46",
];

fn message_id(call: &Call) -> &str {
    call.metadata
        .get("MessageId")
        .unwrap_or_else(|| panic!("no MessageId in {:?}", call.metadata))
}

fn message_ids(calls: &[Call]) -> Vec<&str> {
    calls.iter().map(message_id).collect()
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = key.parse().expect("ASCII");
    request.metadata_mut().insert("idempotency-key", value);
    request
}

#[tokio::test]
async fn a_retry_sends_the_message_id_the_first_attempt_sent() {
    // The first three answers are lost after the sidecar took the message: the producer tries
    // message 0 four times (SIDECAR_RETRIES 3), then sends the other four once each.
    let behaviour = Behaviour {
        lose_answers: 3,
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let args = ["--send-concurrency=1", "--retry-backoff=1ms"];
    let producer = Producer::start(&sidecar.port(), &args).await;

    let answer = producer.post(json!({"count": 5})).await;
    assert_eq!(answer, (StatusCode::OK, json!({"sent": 5})));

    let calls = sidecar.calls();
    let ids = message_ids(&calls);
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(ids[..4].iter().all(|id| *id == ids[0]), "retries: {ids:?}");
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 5, "one id per message: {ids:?}");
    for id in distinct {
        let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 4, "random: {id}");
        assert_eq!(uuid.hyphenated().to_string(), **id, "hyphenated lower case");
    }

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn a_resend_with_the_same_key_and_body_sends_the_same_ids_over_rest_and_grpc() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &[]).await;
    let body = json!({"count": 3});

    // Bare, then as the draft's quoted String: the same key.
    let quoted = format!("\"{KEY}\"");
    for key in [KEY, &quoted] {
        let answer = producer.post_with(&[("Idempotency-Key", key)], body.clone());
        assert_eq!(answer.await, (StatusCode::OK, json!({"sent": 3})));
    }
    let mut client = producer.client().await;
    let reply = client.produce(with_key(batch(3, 0), KEY)).await.unwrap();
    assert_eq!(reply.into_inner().sent, 3);
    let progress = client.produce_stream(with_key(batch(3, 0), KEY));
    let mut stream = progress.await.unwrap().into_inner();
    while let Some(report) = stream.message().await.unwrap() {
        assert_eq!(report.count, 3);
    }

    let calls = sidecar.calls();
    assert_eq!(calls.len(), 12);
    for four in calls.chunks(3) {
        let mut ids = message_ids(four);
        ids.sort_unstable_by_key(|id| IDS.iter().position(|known| known == id));
        assert_eq!(ids, IDS, "the documented ids, every time");
    }

    // Another body or another key: other ids, so a reused key drops nothing it should not.
    let other_text = producer.post_with(
        &[("Idempotency-Key", KEY)],
        json!({"count": 3, "text": "x"}),
    );
    assert_eq!(other_text.await.0, StatusCode::OK);
    let other_key = producer.post_with(&[("Idempotency-Key", "fedcba9876543210")], body.clone());
    assert_eq!(other_key.await.0, StatusCode::OK);
    let no_key = producer.post(body);
    assert_eq!(no_key.await.0, StatusCode::OK);
    let calls = sidecar.calls();
    for id in message_ids(&calls[12..]) {
        assert!(!IDS.contains(&id), "{id}");
    }

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn bad_keys_are_refused_naming_the_problem_and_nothing_is_sent() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &[]).await;
    let body = json!({"count": 1});
    let cases = [
        ("short", "must be 16 to 255 characters, got 5"),
        ("0123456789 abcdef", "character 11 is ' '"),
        ("0123456789abcdef/", "character 17 is '/'"),
        (
            "\"0123456789abcdef",
            "opens a quoted string it does not close",
        ),
    ];
    let long = "k".repeat(256);
    let cases = cases
        .iter()
        .map(|(key, message)| (key.to_string(), message.to_string()))
        .chain([(long, "got 256".to_owned())]);
    let mut client = producer.client().await;
    for (key, message) in cases {
        let (status, body) = producer
            .post_with(&[("Idempotency-Key", &key)], body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("Idempotency-Key "), "{error}");
        assert!(error.contains(&message), "{key}: {error}");

        let status = client
            .produce(with_key(batch(1, 0), &key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key}");
        assert!(status.message().contains(&message), "{status:?}");
        let status = client
            .produce_stream(with_key(batch(1, 0), &key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key}");
    }
    // The draft allows one field.
    let twice = [("Idempotency-Key", KEY), ("Idempotency-Key", KEY)];
    let (status, body) = producer.post_with(&twice, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Idempotency-Key is given more than once");
    assert!(sidecar.calls().is_empty(), "nothing was sent");

    let metrics = producer.metrics().await;
    for method in ["Produce", "ProduceStream"] {
        let refused = [("method", method), ("code", "INVALID_ARGUMENT")];
        let count = metrics.sum("producer_grpc_requests_total", &refused);
        assert_eq!(count, 5.0, "{method}");
    }

    producer.stop().await;
    sidecar.stop().await;
}

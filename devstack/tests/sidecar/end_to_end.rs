//! End to end with the real `producer` and `consumer` binaries around the in-process sidecar:
//! exactly one line and one completion per message, competing consumers, a killed consumer's
//! message redelivered, poison payloads dead-lettered, a producer restart.

use std::collections::HashSet;
use test_support::devstack::Settled as _;

use reqwest::StatusCode;
use serde_json::Value;
use test_support::{
    TRACE_ID, TRACEPARENT, WAIT,
    consumer::{Consumer, is_original_line},
    devstack::{ASPNET_BODY, consumer_status, counts},
    producer::Producer,
};

use crate::{QUEUE, harness::InProcess, id_of};

#[tokio::test]
async fn rest_and_grpc_batches_give_exactly_n_lines_and_n_completed() {
    let consumer = Consumer::start(&[]).await;
    let sidecar = InProcess::for_apps(&[consumer.addr], &["--status-interval", "100ms"]).await;
    let producer = Producer::start(&sidecar.grpc_port(), &[]).await;

    producer.send(5, Some(TRACEPARENT)).await;
    sidecar.wait_completed(QUEUE, 5).await;
    producer.produce(3).await;
    let c = sidecar.wait_completed(QUEUE, 8).await;
    assert_eq!((c.produced, c.dead_lettered), (8, 0), "{c:?}");
    sidecar
        .logs
        .wait_for("a periodic queue status with 8 completed", |e| {
            e["message"] == "queue status" && e["completed"] == 8 && e["queue"] == QUEUE
        })
        .await;

    producer.stop().await;
    sidecar.stop().await;
    let lines = consumer.stop_with_lines().await;
    assert_eq!(lines.len(), 8, "exactly one line per message");
    let ids: HashSet<_> = lines.iter().map(id_of).collect();
    assert_eq!(ids.len(), 8);
    // The REST caller's trace reaches the consumer through producer and sidecar.
    let traced = lines.iter().filter(|l| l["trace_id"] == TRACE_ID).count();
    assert_eq!(traced, 5);
    assert!(
        lines
            .iter()
            .all(|l| l["trace_id"].as_str().is_some_and(|t| t.len() == 32))
    );
}

#[tokio::test]
async fn three_consumers_share_a_batch() {
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Consumer::start(&[("WORK_DURATION", "200ms")]).await);
    }
    let addrs: Vec<_> = consumers.iter().map(|c| c.addr).collect();
    let sidecar = InProcess::for_apps(&addrs, &[]).await;
    sidecar.wait_consumers(3).await;
    let producer = Producer::start(&sidecar.grpc_port(), &[]).await;

    producer.send(9, None).await;
    sidecar.wait_completed(QUEUE, 9).await;

    producer.stop().await;
    sidecar.stop().await;
    let mut ids = HashSet::new();
    for (n, consumer) in consumers.into_iter().enumerate() {
        let lines = consumer.stop_with_lines().await;
        assert!(!lines.is_empty(), "consumer {n} processed nothing");
        ids.extend(lines.iter().map(id_of));
    }
    assert_eq!(ids.len(), 9, "each message once, across the three");
}

#[tokio::test]
async fn killed_consumer_message_is_redelivered_to_another_and_completed_once() {
    // The victim holds whatever it gets for a minute; the other is instant.
    let mut victim = Consumer::start(&[
        ("WORK_DURATION", "60s"),
        ("RUST_LOG", "info,consumer=debug"),
    ])
    .await;
    let other = Consumer::start(&[]).await;
    let sidecar = InProcess::for_apps(&[victim.addr, other.addr], &[]).await;
    sidecar.wait_consumers(2).await;

    // Send one message at a time until the victim holds one (the other completes the rest).
    let mut sent = 0;
    loop {
        assert!(sent < 10, "the victim never got a message");
        assert_eq!(
            sidecar
                .post_binding(QUEUE, ASPNET_BODY, None)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        sent += 1;
        let status = sidecar
            .wait_status("the message taken", |s| {
                consumer_status(s, victim.addr)["inFlight"] == 1
                    || counts(s, QUEUE).completed == sent
            })
            .await;
        if consumer_status(&status, victim.addr)["inFlight"] == 1 {
            break;
        }
    }
    let received = victim.service.wait_for_message("event received").await;
    let id = id_of(&received);

    victim.service.kill();
    assert_eq!(
        victim.service.exit_code(WAIT).await,
        None,
        "killed by a signal"
    );
    let c = sidecar.wait_completed(QUEUE, sent).await;
    assert_eq!((c.produced, c.dead_lettered), (sent, 0), "{c:?}");
    let abandoned = sidecar
        .logs
        .wait_for("the victim's message abandoned", |e| {
            e["message"] == "message abandoned; will be redelivered" && e["id"] == id.as_str()
        })
        .await;
    assert_eq!(abandoned["delivery_count"], 1);
    assert_eq!(abandoned["app"], victim.addr.to_string());

    sidecar.stop().await;
    let lines = other.stop_with_lines().await;
    assert_eq!(
        lines.len() as u64,
        sent,
        "the other completed every message"
    );
    assert_eq!(lines.iter().filter(|l| id_of(l) == id).count(), 1);
    assert!(
        !victim.service.events().await.iter().any(is_original_line),
        "the victim finished nothing"
    );
}

#[tokio::test]
async fn poison_payloads_are_dead_lettered_after_max_deliveries_and_the_others_complete() {
    let mut consumer = Consumer::start(&[]).await;
    let sidecar = InProcess::for_apps(&[consumer.addr], &["--max-delivery-count", "3"]).await;
    let producer = Producer::start(&sidecar.grpc_port(), &[]).await;

    for body in [
        r#"{"data":"not a message","operation":"create"}"#,
        r#"{"data":{"nottext":1},"operation":"create"}"#,
    ] {
        assert_eq!(
            sidecar.post_binding(QUEUE, body, None).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    producer.send(5, None).await;

    let status = sidecar
        .wait_status("5 completed and 2 dead-lettered", |s| {
            let c = counts(s, QUEUE);
            c.completed == 5 && c.dead_lettered == 2 && c.settled()
        })
        .await;
    let dead = status["deadLetters"][QUEUE]
        .as_array()
        .expect("dead letters");
    let mut data: Vec<_> = dead.iter().map(|d| d["data"].as_str().unwrap()).collect();
    data.sort_unstable();
    assert_eq!(data, [r#""not a message""#, r#"{"nottext":1}"#]);
    for d in dead {
        assert_eq!(d["deliveryCount"], 3, "{d}");
        assert!(
            d["reason"].as_str().unwrap().contains("InvalidArgument"),
            "{d}"
        );
    }
    let dead_ids: HashSet<String> = dead.iter().map(id_of).collect();
    let events = sidecar
        .logs
        .wait_for_events("two dead-letter warnings", 2, |e| {
            e["message"] == "message dead-lettered"
        })
        .await;
    assert!(events.iter().all(|e| e["delivery_count"] == 3));
    // Sent untraced, each gets one trace for all its deliveries: the consumer's three rejections
    // and the sidecar's warning carry the same trace id.
    let rejections = consumer
        .service
        .wait_for_events("six rejections", 6, |e| {
            e["message"] == "binding event rejected"
        })
        .await;
    for warning in &events {
        let trace_id = warning["trace_id"].as_str().expect("a trace id");
        let traces: Vec<&Value> = rejections
            .iter()
            .filter(|e| e["id"] == warning["id"])
            .map(|e| &e["trace_id"])
            .collect();
        assert_eq!(traces, [trace_id; 3], "{warning}");
    }
    assert_eq!(
        sidecar
            .metrics()
            .await
            .get(r#"devstack_queue_messages{queue="message-queue",state="dead_lettered"}"#),
        2.0
    );

    producer.stop().await;
    sidecar.stop().await;
    let events = consumer.stop_with_events().await;
    assert_eq!(events.iter().filter(|e| is_original_line(e)).count(), 5);
    for id in &dead_ids {
        let rejected = events
            .iter()
            .filter(|e| e["message"] == "binding event rejected" && e["id"] == id.as_str())
            .count();
        assert_eq!(rejected, 3, "{id} delivered max-delivery-count times");
    }
}

#[tokio::test]
async fn restarting_the_producer_changes_nothing_for_the_queue() {
    // Slow enough that messages are still queued when the producer goes away.
    let consumer = Consumer::start(&[("WORK_DURATION", "100ms")]).await;
    let sidecar = InProcess::for_apps(&[consumer.addr], &[]).await;
    sidecar.wait_consumers(1).await;

    let first = Producer::start(&sidecar.grpc_port(), &[]).await;
    first.send(4, None).await;
    first.stop().await;
    let c = sidecar.counts(QUEUE).await;
    assert_eq!(c.produced, 4, "{c:?}");

    let second = Producer::start(&sidecar.grpc_port(), &[]).await;
    second.send(2, None).await;
    let c = sidecar.wait_completed(QUEUE, 6).await;
    assert_eq!((c.produced, c.dead_lettered), (6, 0), "{c:?}");
    assert_eq!(sidecar.status().await["consumersConnected"], 1);

    second.stop().await;
    sidecar.stop().await;
    let lines = consumer.stop_with_lines().await;
    assert_eq!(lines.len(), 6);
    assert_eq!(lines.iter().map(id_of).collect::<HashSet<_>>().len(), 6);
}

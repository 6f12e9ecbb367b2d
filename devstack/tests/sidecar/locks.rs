//! Peek-lock as Service Bus and the binding keep it, seen from an app: the binding renews the lock
//! of a message its app holds, so a slow app keeps it; a lock whose renewal stops (the `lost-lock`
//! fault) runs out, the message is delivered again, and the late OK fails to complete it; a
//! complete that never reaches the queue (`lost-complete`) brings the message back. Each shows in
//! the message's journey. (The lock model itself, under a paused clock: `queue.rs`.)

use serde_json::{Value, json};
use test_support::{
    WAIT,
    app::{Behaviour, FakeApp},
};

use crate::{QUEUE, harness::InProcess, invoke};

/// An app that holds every event until the returned sender opens the gate.
async fn gated_app() -> (FakeApp, tokio::sync::watch::Sender<bool>) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = FakeApp::start(Behaviour {
        gate: Some(gate),
        ..Default::default()
    })
    .await;
    (app, open)
}

/// Waits, bounded, until message `id`'s journey has `n` events named `event`; the journey.
async fn journey_with(sidecar: &InProcess, id: &str, event: &str, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (journey, events) = sidecar.journey(id).await;
        if events.iter().filter(|e| *e == event).count() >= n {
            return journey;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} {event} events: {journey}"
        );
        // Paces the reads only: what ends the wait is the journey itself.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// While the app holds the message, the binding renews its lock every lockRenewalInSec: the app
/// keeps it past the lock duration, the message is delivered once, and no lock runs out.
#[tokio::test]
async fn the_binding_renews_the_lock_of_a_message_its_app_holds() {
    let (app, open) = gated_app().await;
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &[
            "--lock-duration",
            "400ms",
            "--lock-renewal-interval",
            "100ms",
        ],
    )
    .await;
    sidecar.wait_consumers(1).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let held = app.wait_for_deliveries(1).await;
    let id = held[0].metadata["id"].clone();
    // Eight renewals: twice the lock duration, held.
    let journey = journey_with(&sidecar, &id, "lockRenewed", 8).await;
    assert_eq!(journey["place"], "locked", "{journey}");
    assert_eq!(sidecar.counts(QUEUE).await.locked, 1);
    open.send_replace(true);
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!((c.completed, c.dead_lettered), (1, 0), "{c:?}");
    assert_eq!(app.deliveries().len(), 1, "delivered once");
    let status = sidecar.status().await;
    assert_eq!(status["queues"][QUEUE]["locksExpired"], 0, "{status}");
    let (journey, events) = sidecar.journey(&id).await;
    assert_eq!(events.first().map(String::as_str), Some("enqueued"));
    assert_eq!(events.last().map(String::as_str), Some("completed"));
    assert_eq!(journey["duplicate"], false, "{journey}");

    sidecar.stop().await;
    app.stop().await;
}

/// The `lost-lock` fault: renewal stops for a message in flight, as when its daprd dies. The
/// lock runs out while the app still works, the message is delivered again with its delivery
/// count up by one, and the first holder's late OK fails to complete it (Service Bus's
/// MessageLockLost): processed twice, completed once, flagged as a duplicate.
#[tokio::test]
async fn a_lost_lock_runs_out_the_message_comes_back_and_the_late_complete_fails() {
    let (app, open) = gated_app().await;
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &[
            "--lock-duration",
            "400ms",
            "--lock-renewal-interval",
            "100ms",
            "--max-concurrency",
            "2",
        ],
    )
    .await;
    sidecar.wait_consumers(1).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let id = app.wait_for_deliveries(1).await[0].metadata["id"].clone();
    let record = sidecar
        .fault(json!({"kind": "lost-lock", "message": id}))
        .await;
    assert_eq!(
        (&record["kind"], &record["target"], &record["source"]),
        (&json!("lost-lock"), &json!(id), &json!("api"))
    );

    // Its lock runs out: the other worker gets it, the first still holds its call.
    let deliveries = app.wait_for_deliveries(2).await;
    assert_eq!(deliveries[0].metadata["id"], deliveries[1].metadata["id"]);
    // The delivery count is in the journey, not the event (daprd's binding sends none).
    assert!(!deliveries[0].metadata.contains_key("DeliveryCount"));
    open.send_replace(true);
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!((c.completed, c.dead_lettered), (1, 0), "{c:?}");
    sidecar
        .logs
        .wait_for_message("error completing message; it will be delivered again")
        .await;

    let journey = journey_with(&sidecar, &id, "completeFailed", 1).await;
    // Renewals come between the steps, as the ticker falls.
    let events: Vec<&str> = journey["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .filter(|e| *e != "lockRenewed")
        .collect();
    assert_eq!(
        &events[..5],
        ["enqueued", "delivery", "fault", "lockExpired", "delivery"],
        "{journey}"
    );
    let mut settled = events[5..].to_vec();
    settled.sort_unstable();
    assert_eq!(settled, ["completeFailed", "completed"], "{journey}");
    let counts: Vec<&Value> = journey["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "delivery")
        .map(|e| &e["deliveryCount"])
        .collect();
    assert_eq!(counts, [&json!(1), &json!(2)]);
    assert_eq!(
        (&journey["processed"], &journey["duplicate"]),
        (&json!(2), &json!(true))
    );
    let status = sidecar.status().await;
    assert_eq!(status["faults"]["counts"]["lost-lock"], 1, "{status}");
    assert_eq!(status["journeys"]["duplicates"], 1, "{status}");

    sidecar.stop().await;
    app.stop().await;
}

/// The `lost-complete` fault: the app answered OK, but the complete never reaches the queue; no
/// longer held, the lock is not renewed and runs out, and the message is delivered again.
#[tokio::test]
async fn a_lost_complete_brings_the_message_back_once_its_lock_runs_out() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &[
            "--lock-duration",
            "300ms",
            "--lock-renewal-interval",
            "100ms",
        ],
    )
    .await;
    sidecar.wait_consumers(1).await;
    sidecar.fault(json!({"kind": "lost-complete"})).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!((c.completed, c.dead_lettered), (1, 0), "{c:?}");
    let deliveries = app.wait_for_deliveries(2).await;
    let id = deliveries[0].metadata["id"].clone();
    assert_eq!(deliveries[1].metadata["id"], id);
    let (journey, mut events) = sidecar.journey(&id).await;
    events.retain(|e| e != "lockRenewed");
    assert_eq!(
        events,
        [
            "enqueued",
            "delivery",
            "fault",
            "lockExpired",
            "delivery",
            "completed"
        ],
        "{journey}"
    );
    let fault = journey["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "fault")
        .unwrap();
    assert_eq!(fault["fault"], "lost-complete");
    assert_eq!(journey["duplicate"], true);
    let status = sidecar.status().await;
    assert_eq!(status["queues"][QUEUE]["locksExpired"], 1, "{status}");
    assert_eq!(status["faults"]["lostCompletesPending"], 0, "{status}");

    sidecar.stop().await;
    app.stop().await;
}

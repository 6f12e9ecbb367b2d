//! The consumer as daprd and Prometheus see it, served by the `consumer` library in the test
//! process: `AppCallback` and the health checks over gRPC on loopback, the metrics page, and the
//! drain once shutdown starts (a cancelled token standing in for SIGTERM). Work takes clock time
//! on a held clock, so an event stays in flight exactly as long as a test needs it to.

use test_support as support;

use std::time::Duration;

use dapr::dapr::proto::common::v1::InvokeRequest;
use pipeline::dapr_v1::{
    BindingEventRequest, BindingEventResponse, JobEventRequest, TopicEventBulkRequest,
    TopicEventRequest,
};
use support::{
    WAIT,
    clock::Held,
    consumer::{
        AppPort, assert_code, event, hello,
        series::{DRAINING, IN_FLIGHT, PROCESSED, PROCESSING_COUNT, RECEIVED, failed},
    },
    http_client,
    in_process::Consumer,
    slow_client, with_token,
};
use tokio::{task::JoinHandle, time::Instant};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const APP_CALLBACK: &str = "dapr.proto.runtime.v1.AppCallback";

/// Sends `request` in the background; the task ends with the consumer's answer.
fn spawn_event(
    port: &AppPort,
    request: Request<BindingEventRequest>,
) -> JoinHandle<Result<Response<BindingEventResponse>, Status>> {
    let mut callback = port.callback();
    tokio::spawn(async move { callback.on_binding_event(request).await })
}

/// The answer of an event sent with [`spawn_event`], which must be the empty OK daprd expects.
async fn answered(event: JoinHandle<Result<Response<BindingEventResponse>, Status>>) {
    let answer = tokio::time::timeout(WAIT, event)
        .await
        .expect("the event is answered")
        .expect("the task runs");
    assert_eq!(
        answer.unwrap().into_inner(),
        BindingEventResponse::default()
    );
}

#[tokio::test]
async fn lists_the_configured_binding() {
    let consumer = Consumer::start(&[]).await;
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["message-queue"]);
    consumer.stop().await;

    let consumer = Consumer::start(&["--binding-name=orders"]).await;
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["orders"]);
    // The configured name is the one accepted; the default is now unknown.
    let orders = event("orders", br#"{"text":"hi"}"#, &[("id", "o-1")]);
    consumer.send(orders).await.unwrap();
    let other = consumer.send(hello("o-2")).await;
    assert_code(other, Code::NotFound, "event for message-queue");
    consumer.stop().await;
}

#[tokio::test]
async fn unknown_binding_is_not_found() {
    let consumer = Consumer::start(&[]).await;
    let result = consumer
        .send(event("other-queue", br#"{"text":"hi"}"#, &[]))
        .await;
    let status = assert_code(result, Code::NotFound, "other-queue");
    assert!(status.message().contains("other-queue"), "{status:?}");
    assert_eq!(consumer.scrape().await.get(PROCESSED), 0.0);
    consumer.stop().await;
}

#[tokio::test]
async fn token_is_required_on_events_only_when_configured() {
    let consumer = Consumer::start(&["--app-api-token=s3cret"]).await;
    let missing = consumer.send(hello("t-1")).await;
    assert_code(missing, Code::Unauthenticated, "no token");
    let wrong = consumer.send(with_token(hello("t-2"), "s3cres")).await;
    assert_code(wrong, Code::Unauthenticated, "wrong token");
    let longer = consumer.send(with_token(hello("t-3"), "s3crets")).await;
    assert_code(longer, Code::Unauthenticated, "longer token");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("unauthenticated")), 3.0);
    consumer
        .send(with_token(hello("t-4"), "s3cret"))
        .await
        .unwrap();
    // daprd sends no token on these.
    let bindings = consumer.callback().list_input_bindings(()).await.unwrap();
    assert_eq!(bindings.into_inner().bindings, ["message-queue"]);
    consumer.health_check().await.unwrap();
    assert_eq!(consumer.scrape().await.get(PROCESSED), 1.0);
    consumer.stop().await;

    let consumer = Consumer::start(&[]).await;
    consumer.send(hello("n-1")).await.unwrap();
    consumer
        .send(with_token(hello("n-2"), "anything"))
        .await
        .unwrap();
    assert_eq!(consumer.scrape().await.get(PROCESSED), 2.0);
    consumer.stop().await;
}

#[tokio::test]
async fn health_is_serving_and_other_callbacks_are_declined() {
    let consumer = Consumer::start(&[]).await;
    assert_eq!(
        consumer.grpc_health("").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        consumer.grpc_health(APP_CALLBACK).await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = consumer.grpc_health("no.such.Service").await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    consumer.health_check().await.unwrap();

    let mut callback = consumer.callback();
    let topics = callback.list_topic_subscriptions(()).await.unwrap();
    assert!(topics.into_inner().subscriptions.is_empty());
    let declined = [
        callback
            .on_invoke(InvokeRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_topic_event(TopicEventRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_bulk_topic_event(TopicEventBulkRequest::default())
            .await
            .map(|_| ()),
        callback
            .on_job_event(JobEventRequest::default())
            .await
            .map(|_| ()),
    ];
    for (i, result) in declined.into_iter().enumerate() {
        let status = assert_code(result, Code::Unimplemented, &format!("call {i}"));
        assert!(
            status.message().contains("only consumes input bindings"),
            "{status:?}"
        );
    }
    consumer.stop().await;
}

/// With one slot, the second event starts only once the first has finished: after one job's
/// time exactly one is done, after two both.
#[tokio::test(start_paused = true)]
async fn max_concurrency_one_works_events_one_after_the_other() {
    let _clock = Held::hold();
    let work = Duration::from_millis(300);
    let consumer = Consumer::start(&["--work-duration=300ms", "--max-concurrency=1"]).await;
    let started = Instant::now();
    let a = spawn_event(&consumer, hello("a"));
    let b = spawn_event(&consumer, hello("b"));
    // One works, the other waits for the slot: both are in flight.
    consumer.wait_metric(IN_FLIGHT, 2.0).await;

    tokio::time::advance(work).await;
    let page = consumer.wait_metric(PROCESSED, 1.0).await;
    assert_eq!(page.get(IN_FLIGHT), 1.0, "the other one started only now");
    tokio::time::advance(work).await;
    consumer.wait_metric(PROCESSED, 2.0).await;
    answered(a).await;
    answered(b).await;
    // Two jobs in a row, not at once.
    assert_eq!(started.elapsed(), 2 * work);
    consumer.stop().await;
}

/// Shutdown while an event works: health turns NOT_SERVING, Dapr's health check fails, new
/// events are sent back to the broker; the event in flight is answered, and only then does the
/// server stop.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_the_event_in_flight_and_turns_the_rest_away() {
    let _clock = Held::hold();
    let consumer = Consumer::start(&["--work-duration=10s"]).await;
    let in_flight = spawn_event(&consumer, hello("drain-1"));
    consumer.wait_metric(IN_FLIGHT, 1.0).await;

    consumer.signal();
    consumer.wait_metric(DRAINING, 1.0).await;
    let (health, app_callback_health, health_check, refused) = tokio::join!(
        consumer.grpc_health(""),
        consumer.grpc_health(APP_CALLBACK),
        consumer.health_check(),
        consumer.send(hello("drain-2")),
    );
    assert!(!in_flight.is_finished(), "the clock has not moved");
    assert_eq!(health.unwrap(), ServingStatus::NotServing);
    assert_eq!(app_callback_health.unwrap(), ServingStatus::NotServing);
    assert_code(
        health_check,
        Code::Unavailable,
        "HealthCheck while draining",
    );
    let status = assert_code(refused, Code::Unavailable, "event while draining");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(!consumer.is_stopped(), "the drain waits for the event");

    tokio::time::advance(Duration::from_secs(10)).await;
    answered(in_flight).await;
    consumer.stop().await;
}

/// Each event works 5 s (the original sample's work) on a held clock, so the scrapes made while
/// it is in flight see it there.
#[tokio::test(start_paused = true)]
async fn metrics_follow_the_events_and_the_drain() {
    let _clock = Held::hold();
    let work = Duration::from_secs(5);
    let consumer = Consumer::start(&["--work-duration=5s"]).await;
    let page = consumer.scrape().await;
    for series in [RECEIVED, PROCESSED, IN_FLIGHT, DRAINING, PROCESSING_COUNT] {
        assert_eq!(page.get(series), 0.0, "{series}");
    }
    for reason in [
        "unauthenticated",
        "unknown_binding",
        "bad_payload",
        "draining",
    ] {
        assert_eq!(page.get(&failed(reason)), 0.0, "{reason}");
    }
    assert_eq!(page.types["consumer_event_processing_seconds"], "histogram");

    // A good event is in flight while it works, then processed.
    let first = spawn_event(&consumer, hello("m-1"));
    let page = consumer.wait_metric(IN_FLIGHT, 1.0).await;
    assert!(!first.is_finished(), "m-1 ended before the scrape");
    assert_eq!(page.get(RECEIVED), 1.0);
    assert_eq!(page.get(PROCESSED), 0.0);
    tokio::time::advance(work).await;
    answered(first).await;
    let page = consumer.scrape().await;
    assert_eq!(page.get(IN_FLIGHT), 0.0);
    assert_eq!(page.get(PROCESSED), 1.0);
    assert_eq!(page.get(PROCESSING_COUNT), 1.0);
    let worked = page.get("consumer_event_processing_seconds_sum");
    assert!((5.0..WAIT.as_secs_f64()).contains(&worked), "{worked}");
    assert_eq!(
        page.get(r#"consumer_event_processing_seconds_bucket{le="1.0"}"#),
        0.0
    );

    // Rejections count by reason; another binding's name is not a label value.
    let bad = consumer
        .send(event("message-queue", b"not json", &[("id", "m-bad")]))
        .await;
    assert_code(bad, Code::InvalidArgument, "bad payload");
    let unknown = consumer
        .send(event("someone-else's-queue", br#"{"text":"hi"}"#, &[]))
        .await;
    assert_code(unknown, Code::NotFound, "unknown binding");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("bad_payload")), 1.0);
    assert_eq!(
        page.get(r#"consumer_events_failed_total{binding="(other)",reason="unknown_binding"}"#),
        1.0
    );
    assert_eq!(
        page.get(r#"consumer_events_received_total{binding="(other)"}"#),
        1.0
    );
    assert_eq!(page.get(RECEIVED), 2.0);
    assert_eq!(page.get(PROCESSED), 1.0);
    assert!(
        !page.samples.keys().any(|s| s.contains("someone-else")),
        "{:?}",
        page.samples
    );

    // While an event drains: draining is 1, it is still in flight, a new event is refused.
    let draining = spawn_event(&consumer, hello("m-2"));
    consumer.wait_metric(IN_FLIGHT, 1.0).await;
    consumer.signal();
    let page = consumer.wait_metric(DRAINING, 1.0).await;
    assert_eq!(page.get(IN_FLIGHT), 1.0);
    let refused = consumer.send(hello("m-3")).await;
    assert_code(refused, Code::Unavailable, "event while draining");
    let page = consumer.scrape().await;
    assert_eq!(page.get(&failed("draining")), 1.0);
    assert_eq!(page.get(RECEIVED), 4.0);
    assert_eq!(page.get(IN_FLIGHT), 1.0);
    assert!(
        !draining.is_finished(),
        "m-2 ended before the drain's checks"
    );

    tokio::time::advance(work).await;
    answered(draining).await;
    let metrics = consumer.metrics;
    consumer.stop().await;
    // The metrics server stopped with the rest.
    let gone = http_client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
}

/// The metrics port is served with the shared HTTP limits: stalled scrapers are closed after the
/// header timeout (on the held clock), counted, and a scrape still works.
#[tokio::test(start_paused = true)]
async fn stalled_connections_to_the_metrics_port_are_closed_and_counted() {
    let clock = Held::hold();
    let timeout = Duration::from_millis(500);
    let consumer = Consumer::start(&["--header-read-timeout=500ms"]).await;

    let stalled = slow_client::stall(consumer.metrics, 20).await;
    let step = Duration::from_millis(10);
    let closed = clock
        .run(step, WAIT, slow_client::closed_after(stalled, WAIT))
        .await;
    slow_client::assert_closed_between(&closed, timeout, timeout + WAIT / 4);

    let page = consumer.scrape().await;
    assert_eq!(
        slow_client::closed_total(&page, "consumer", "header_timeout"),
        20.0
    );
    consumer.stop().await;
}

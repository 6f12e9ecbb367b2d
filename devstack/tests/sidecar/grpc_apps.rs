//! Delivery to gRPC apps (daprd's `--app-protocol grpc`), as daprd drives the `dapr` crate's
//! generated AppCallback server: ListInputBindings first, each event with the binding's metadata,
//! its trace and the app token; health probes; each app's concurrency. (Locks: `locks.rs`.)

use std::collections::{HashMap, HashSet};

use pipeline::trace_context::TraceParent;
use reqwest::StatusCode;
use serde_json::json;
use test_support::{
    TRACE_ID, TRACEPARENT,
    app::{Behaviour, FakeApp},
    devstack::{ASPNET_BODY, consumer_status, counts},
    port::ClosedPort,
    traced,
};
use tracing::Level;

use crate::{HELLO, QUEUE, harness::InProcess, invoke, trace_id};

#[tokio::test]
async fn app_callback_server_gets_the_bindings_call_event_metadata_trace_and_token() {
    let app = FakeApp::start(Behaviour {
        bindings: vec![QUEUE.to_owned(), "not-served".to_owned()],
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &[
            "--bindings",
            "message-queue,other",
            "--app-api-token",
            "app-s3cret",
        ],
    )
    .await;
    // The app serves no AppCallbackHealthCheck: UNIMPLEMENTED counts as healthy, as in daprd.
    sidecar.wait_consumers(1).await;
    let status = sidecar.status().await;
    assert_eq!(
        consumer_status(&status, app.addr)["bindings"],
        json!([QUEUE, "not-served"])
    );

    let mut client = sidecar.dapr_client().await;
    let request = traced(invoke(QUEUE, "create", None), TRACEPARENT);
    client.invoke_binding(request).await.unwrap();
    // A binding the app did not list: never delivered to it.
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

    let c = sidecar.wait_completed(QUEUE, 2).await;
    assert_eq!(c.produced, 2);
    let deliveries = app.wait_for_deliveries(2).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    for d in &deliveries {
        assert_eq!(d.name, QUEUE);
        assert_eq!(d.data, HELLO, "exactly the original's bytes");
        let id = d.metadata.get("id").expect("metadata id");
        assert!(!id.is_empty());
        // Exactly what daprd's Service Bus queue binding sends for a message sent with no
        // metadata: `id`, and the `traceparent` daprd added to the output binding's metadata
        // (an application property). No DeliveryCount, MessageId, SequenceNumber, ...
        let keys: HashSet<&str> = d.metadata.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            HashSet::from(["id", "traceparent"]),
            "{:?}",
            d.metadata
        );
        let property = TraceParent::parse(&d.metadata["traceparent"]).expect("W3C traceparent");
        assert_eq!(property.trace_id(), trace_id(d), "the message's own trace");
        assert_eq!(
            d.headers.get("dapr-api-token").map(String::as_str),
            Some("app-s3cret")
        );
        assert_eq!(d.listed_before, 1, "ListInputBindings comes first");
    }
    assert_ne!(deliveries[0].metadata["id"], deliveries[1].metadata["id"]);
    // One app, one in flight, FIFO: the traced message came first. Same trace, new span.
    assert_eq!(trace_id(&deliveries[0]), TRACE_ID);
    assert_ne!(deliveries[0].headers["traceparent"], TRACEPARENT);
    assert_ne!(trace_id(&deliveries[1]), TRACE_ID);

    assert_eq!(app.list_calls(), 1, "ListInputBindings once at start");
    let other = sidecar.counts("other").await;
    assert_eq!(
        (other.produced, other.active, other.locked),
        (1, 1, 0),
        "{other:?}"
    );

    drop(client);
    sidecar.stop().await;
    app.stop().await;
}

/// InvokeBinding metadata reaches the consumer as the Service Bus binding carries it, over gRPC
/// and HTTP: `id`/`correlationID`/`Label` set the message's own fields, Service Bus system keys
/// are not delivered, empty values are dropped, and every other key arrives as an application
/// property, key and value query-escaped.
#[tokio::test]
async fn invoke_binding_metadata_reaches_the_app_as_the_service_bus_binding_maps_it() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    sidecar.wait_consumers(1).await;

    let mut request = invoke(QUEUE, "create", None);
    request.get_mut().metadata = [
        ("id", "order-1"),
        ("correlationID", "corr-1"),
        ("Label", "greeting"),
        ("SessionId", "session"),
        ("ttlInSeconds", "60"),
        ("empty", ""),
        ("tenant id", "a&b é"),
        ("DeliveryCount", "99"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut client = sidecar.dapr_client().await;
    client.invoke_binding(request).await.unwrap();
    let body = r#"{"data":{"text":"Hello World"},"operation":"create",
        "metadata":{"MessageId":"order-2","CorrelationId":"corr-2","label":"a property","k":"v/w"}}"#;
    assert_eq!(
        sidecar.post_binding(QUEUE, body, None).await.status(),
        StatusCode::NO_CONTENT
    );

    let deliveries = app.wait_for_deliveries(2).await;
    let mut grpc = deliveries[0].metadata.clone();
    let mut http = deliveries[1].metadata.clone();
    assert!(grpc.remove("traceparent").is_some() && http.remove("traceparent").is_some());
    let expected = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        grpc,
        expected(&[
            ("id", "order-1"),
            ("correlationID", "corr-1"),
            ("label", "greeting"),
            ("tenant+id", "a%26b+%C3%A9"),
            // Not a Service Bus key on the way out: an application property like any other.
            ("DeliveryCount", "99"),
        ])
    );
    assert_eq!(
        http,
        expected(&[
            ("id", "order-2"),
            ("correlationID", "corr-2"),
            // `label` (lower case) is no system key on the way out; the property arrives as is.
            ("label", "a+property"),
            ("k", "v%2Fw"),
        ])
    );

    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_app_answering_list_input_bindings_with_an_error_gets_no_bindings() {
    // daprd asks once and takes an error answer as "no bindings"; it does not retry.
    let app = FakeApp::start(Behaviour {
        list_fails: true,
        ..Default::default()
    })
    .await;
    let sidecar = InProcess::for_apps(&[app.addr], &[]).await;
    sidecar
        .logs
        .wait_for_message("ListInputBindings failed; delivering no bindings to this app")
        .await;
    let status = sidecar
        .wait_status("the app healthy, with no bindings", |s| {
            let app = consumer_status(s, app.addr);
            app["bindings"] == json!([]) && app["healthy"] == true
        })
        .await;
    assert_eq!(
        status["consumersConnected"], 0,
        "healthy, but consuming nothing"
    );
    assert_eq!(app.list_calls(), 1, "asked once, not retried");
    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn unhealthy_app_gets_no_deliveries_until_it_is_healthy() {
    let app = FakeApp::start(Behaviour {
        health_check: true,
        ..Default::default()
    })
    .await;
    app.set_healthy(false);
    let sidecar = InProcess::for_apps(&[app.addr], &["--app-health-interval", "50ms"]).await;
    sidecar
        .wait_status("the app's bindings listed", |s| {
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

    // Three health checks after the send, all failing: the message must still be waiting.
    let seen = app.health_calls();
    app.wait_for_health_calls(seen + 3).await;
    assert!(app.deliveries().is_empty(), "{:?}", app.deliveries());
    let status = sidecar.status().await;
    assert_eq!(consumer_status(&status, app.addr)["healthy"], false);
    assert_eq!(
        status["consumersConnected"], 0,
        "healthy, but consuming nothing"
    );
    let c = counts(&status, QUEUE);
    assert_eq!((c.active, c.locked), (1, 0), "{c:?}");

    app.set_healthy(true);
    app.wait_for_deliveries(1).await;
    sidecar.wait_completed(QUEUE, 1).await;

    // Healthy, idle, then unhealthy: the sidecar, once it knows, delivers nothing more.
    app.set_healthy(false);
    sidecar
        .wait_status("the app unhealthy again", |s| {
            consumer_status(s, app.addr)["healthy"] == false
        })
        .await;
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let seen = app.health_calls();
    app.wait_for_health_calls(seen + 3).await;
    assert_eq!(app.deliveries().len(), 1, "{:?}", app.deliveries());
    app.set_healthy(true);
    app.wait_for_deliveries(2).await;
    sidecar.wait_completed(QUEUE, 2).await;

    sidecar.stop().await;
    app.stop().await;
}

/// Like Service Bus's default, one event at a time per app; `--app HOST:PORT=N` allows N.
#[tokio::test]
async fn each_app_gets_at_most_its_own_concurrency_limit() {
    const MESSAGES: u64 = 12;
    let (open, gate) = tokio::sync::watch::channel(false);
    let held = Behaviour {
        gate: Some(gate),
        ..Default::default()
    };
    let single = FakeApp::start(held.clone()).await;
    let triple = FakeApp::start(held).await;
    let (one, three) = (
        format!("--app={}", single.addr),
        format!("--app={}=3", triple.addr),
    );
    let sidecar = InProcess::start(&[&one, &three]).await;
    sidecar.wait_consumers(2).await;
    let mut client = sidecar.dapr_client().await;
    for _ in 0..MESSAGES {
        client
            .invoke_binding(invoke(QUEUE, "create", None))
            .await
            .unwrap();
    }

    // With every event held, each app fills its limit and the queue locks no more.
    single.wait_in_flight(1).await;
    triple.wait_in_flight(3).await;
    let status = sidecar
        .wait_status("4 locked", |s| counts(s, QUEUE).locked == 4)
        .await;
    assert_eq!(counts(&status, QUEUE).active, MESSAGES - 4);
    open.send_replace(true);
    let c = sidecar.wait_completed(QUEUE, MESSAGES).await;
    assert_eq!(c.completed, MESSAGES);
    assert_eq!(single.peak_in_flight(), 1);
    assert_eq!(triple.peak_in_flight(), 3);

    sidecar.stop().await;
}

/// Like daprd waiting for its app port, the sidecar asks an app that is not up yet for its
/// bindings until it answers, then once only.
#[tokio::test]
async fn an_app_not_up_yet_is_asked_for_its_bindings_until_it_answers() {
    let port = ClosedPort::ephemeral();
    let app = format!("--app={}", port.addr());
    let sidecar = InProcess::start_logging(&[&app], Level::DEBUG).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    sidecar
        .logs
        .wait_for_message("app not answering ListInputBindings yet")
        .await;

    let app = FakeApp::start_at(port, Behaviour::default());
    let deliveries = app.wait_for_deliveries(1).await;
    assert_eq!(deliveries[0].listed_before, 1);
    sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!(app.list_calls(), 1);

    sidecar.stop().await;
    app.stop().await;
}

//! Black-box tests of `devstack`, whose sidecar stands in for daprd and the queue: against the
//! `dapr` crate's generated client and AppCallback server, end to end with the real `producer` and
//! `consumer`, a bounded load test with injected consumer failures, its command line, and the
//! one-command stack.
//! All on 127.0.0.1 with ephemeral ports; every wait is bounded and ends on an event or a status.

use test_support as support;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use futures::StreamExt;
use pipeline::{
    dapr_v1::{GetMetadataRequest, GetStateRequest, InvokeBindingRequest},
    trace_context::TraceParent,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    TRACE_ID, TRACEPARENT, WAIT,
    app::{Behaviour, Delivery, FakeApp},
    consumer::{Consumer, is_original_line},
    devstack::{self, ASPNET_BODY, Devstack, EPHEMERAL, counts, labelled, part_event, part_events},
    http_app::{HttpApp, HttpBehaviour},
    port::ClosedPort,
    process::{HTTP_LIMITS, Service, TRACING, event_addr, help, is_running, run_to_end},
    producer::Producer,
    slow_client, traced, with_token,
};
use tonic::{Code, Request};

const QUEUE: &str = "message-queue";
/// The original sample's payload, byte for byte.
const HELLO: &[u8] = br#"{"text":"Hello World"}"#;

fn id_of(event: &Value) -> String {
    event["id"].as_str().expect("event has an id").to_owned()
}

fn invoke(name: &str, operation: &str, token: Option<&str>) -> Request<InvokeBindingRequest> {
    let request = Request::new(InvokeBindingRequest {
        name: name.to_owned(),
        data: HELLO.to_vec(),
        metadata: HashMap::new(),
        operation: operation.to_owned(),
    });
    match token {
        Some(token) => with_token(request, token),
        None => request,
    }
}

/// A consumer app's entry in the status, by address; `Null` until the sidecar registered it.
fn consumer_status(status: &Value, addr: SocketAddr) -> Value {
    status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["address"] == addr.to_string())
        .cloned()
        .unwrap_or_default()
}

fn trace_id(delivery: &Delivery) -> String {
    let value = delivery
        .headers
        .get("traceparent")
        .expect("delivery has a traceparent");
    TraceParent::parse(value)
        .unwrap_or_else(|| panic!("not a W3C traceparent: {value}"))
        .trace_id()
        .to_owned()
}

// --- Interop with the dapr crate's generated types -------------------------------------------

#[tokio::test]
async fn dapr_client_invokes_the_binding_and_gets_daprds_errors() {
    let sidecar = Devstack::start(&["--dapr-api-token", "s3cret"], &[]).await;
    let mut client = sidecar.dapr_client().await;

    client
        .invoke_binding(invoke(QUEUE, "create", Some("s3cret")))
        .await
        .expect("InvokeBinding create on the configured binding");
    let c = sidecar.counts(QUEUE).await;
    assert_eq!((c.produced, c.active), (1, 1), "{c:?}");

    for (request, code, wording) in [
        (
            invoke("nope", "create", Some("s3cret")),
            Code::Internal,
            "couldn't find output binding nope",
        ),
        (
            invoke(QUEUE, "delete", Some("s3cret")),
            Code::Internal,
            "does not support operation delete",
        ),
        (invoke(QUEUE, "create", None), Code::Unauthenticated, ""),
        (
            invoke(QUEUE, "create", Some("wrong")),
            Code::Unauthenticated,
            "",
        ),
    ] {
        let status = client.invoke_binding(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(wording), "{status:?}");
    }
    let get_state = GetStateRequest {
        store_name: "statestore".to_owned(),
        key: "k".to_owned(),
        ..Default::default()
    };
    let status = client
        .get_state(with_token(get_state, "s3cret"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        sidecar.counts(QUEUE).await.produced,
        1,
        "refused calls enqueue nothing"
    );

    // The HTTP side, as daprd's: health without a token, bindings with one.
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let response = sidecar.http.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
    }
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let response = sidecar
        .post_binding(QUEUE, ASPNET_BODY, Some("s3cret"))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for (name, body, expected) in [
        (QUEUE, "{", StatusCode::BAD_REQUEST),
        ("nope", ASPNET_BODY, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let response = sidecar.post_binding(name, body, Some("s3cret")).await;
        assert_eq!(response.status(), expected, "{name} {body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["errorCode"].is_string(),
            "daprd's error body: {error}"
        );
    }

    let c = sidecar.counts(QUEUE).await;
    assert_eq!((c.produced, c.active), (2, 2), "{c:?}");
    // OpenMetrics, labels escaped: a strict scraper must take the page.
    let page = sidecar.metrics().await;
    for (series, value) in [
        (
            r#"devstack_queue_produced_total{queue="message-queue"}"#,
            2.0,
        ),
        (
            r#"devstack_queue_messages{queue="message-queue",state="active"}"#,
            2.0,
        ),
        ("devstack_consumers_connected", 0.0),
    ] {
        assert_eq!(page.get(series), value, "{series}");
    }

    drop(client);
    sidecar.stop().await;
}

/// What SDKs that wait on the metadata API read: daprd's JSON keys over HTTP, Dapr's protobuf
/// fields over gRPC, both behind the API token as in daprd.
#[tokio::test]
async fn metadata_api_answers_as_daprd_over_http_and_grpc() {
    let app = FakeApp::start(Behaviour::default()).await;
    let sidecar = Devstack::for_apps(
        &[app.addr],
        &["--dapr-api-token", "s3cret", "--app-id", "orders"],
        &[],
    )
    .await;
    sidecar.wait_consumers(1).await;

    let url = sidecar.url("/v1.0/metadata");
    let refused = sidecar.http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let response = sidecar
        .http
        .get(&url)
        .header("dapr-api-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "actorRuntime",
            "appConnectionProperties",
            "components",
            "extended",
            "id",
            "runtimeVersion"
        ],
        "{body}"
    );
    assert_eq!(body["id"], "orders");
    assert!(
        body["runtimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("devstack-")
    );
    assert_eq!(
        body["components"],
        json!([{
            "name": QUEUE,
            "type": "bindings.azure.servicebusqueues",
            "version": "v1",
            "capabilities": ["INPUT_BINDING", "OUTPUT_BINDING"],
        }])
    );
    let app_connection = &body["appConnectionProperties"];
    assert_eq!(app_connection["port"], app.addr.port());
    assert_eq!(app_connection["protocol"], "grpc");
    assert_eq!(app_connection["channelAddress"], "127.0.0.1");
    assert_eq!(app_connection["health"]["healthProbeInterval"], "1s");

    let mut client = sidecar.dapr_client().await;
    let status = client
        .get_metadata(GetMetadataRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let metadata = client
        .get_metadata(with_token(GetMetadataRequest {}, "s3cret"))
        .await
        .expect("GetMetadata")
        .into_inner();
    assert_eq!(metadata.id, "orders");
    assert_eq!(metadata.runtime_version, body["runtimeVersion"]);
    assert!(metadata.enabled_features.is_empty());
    let component = &metadata.registered_components[0];
    assert_eq!(
        (
            component.name.as_str(),
            component.r#type.as_str(),
            component.version.as_str()
        ),
        (QUEUE, "bindings.azure.servicebusqueues", "v1")
    );
    let app_connection = metadata.app_connection_properties.unwrap();
    assert_eq!(
        (app_connection.port, app_connection.protocol.as_str()),
        (i32::from(app.addr.port()), "grpc")
    );
    assert_eq!(
        metadata.extended_metadata["daprRuntimeVersion"],
        metadata.runtime_version
    );

    sidecar.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn original_aspnet_post_reaches_the_real_consumer() {
    let mut consumer = Consumer::start(&[]).await;
    let sidecar = Devstack::for_apps(&[consumer.addr], &[], &[]).await;

    // The Dapr SDKs wait for this before their first call.
    let response = sidecar
        .http
        .get(sidecar.url("/v1.0/healthz/outbound"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let line = consumer
        .service
        .wait_for("the consumer's line", is_original_line)
        .await;
    let message = line["message"].as_str().unwrap();
    assert!(
        message.starts_with("Hello World -- Received at: "),
        "{message}"
    );
    assert_eq!(line["binding"], QUEUE);
    assert!(!id_of(&line).is_empty());
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!(c.produced, 1);

    sidecar.stop().await;
    assert_eq!(consumer.stop_with_lines().await.len(), 1);
}

#[tokio::test]
async fn app_callback_server_gets_the_bindings_call_event_metadata_trace_and_token() {
    let app = FakeApp::start(Behaviour {
        bindings: vec![QUEUE.to_owned(), "not-served".to_owned()],
        ..Default::default()
    })
    .await;
    let sidecar = Devstack::for_apps(
        &[app.addr],
        &[
            "--bindings",
            "message-queue,other",
            "--app-api-token",
            "app-s3cret",
        ],
        &[],
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
    let sidecar = Devstack::for_apps(&[app.addr], &[], &[]).await;
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
    let mut sidecar = Devstack::for_apps(&[app.addr], &[], &[]).await;
    sidecar
        .service
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
    let sidecar = Devstack::for_apps(&[app.addr], &["--app-health-interval", "50ms"], &[]).await;
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

// --- HTTP apps (daprd's --app-protocol http) --------------------------------------------------

#[tokio::test]
async fn http_app_is_probed_then_gets_each_event_as_a_post_with_metadata_headers_trace_and_token() {
    let app = HttpApp::start(HttpBehaviour::default()).await;
    let sidecar = Devstack::start(
        &[
            &app.app_arg(),
            "--bindings",
            "message-queue,other",
            "--app-api-token",
            "app-s3cret",
        ],
        &[],
    )
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
    let sidecar = Devstack::start(&[&app.app_arg(), "--max-delivery-count", "2"], &[]).await;
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
    let sidecar = Devstack::start(&[&app.app_arg(), "--app-health-interval", "50ms"], &[]).await;
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

/// A Resiliency's `matching.httpStatusCodes` applies to an HTTP app's answers, as in daprd: a
/// listed status is retried per the policy within the delivery, any other abandons at once.
#[tokio::test]
async fn http_app_answers_are_retried_as_the_resiliency_matching_says() {
    let path = std::env::temp_dir().join(format!(
        "devstack-test-http-matching-{}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      busy:\n        policy: constant\n        duration: 10ms\n        maxRetries: 2\n        matching:\n          httpStatusCodes: \"503\"\n  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: busy\n",
    )
    .unwrap();
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
        let sidecar = Devstack::start(
            &[
                &app.app_arg(),
                "--resiliency",
                resiliency,
                "--max-delivery-count",
                "1",
            ],
            &[],
        )
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

// --- End to end with the real binaries --------------------------------------------------------

#[tokio::test]
async fn rest_and_grpc_batches_give_exactly_n_lines_and_n_completed() {
    let consumer = Consumer::start(&[]).await;
    let mut sidecar =
        Devstack::for_apps(&[consumer.addr], &["--status-interval", "100ms"], &[]).await;
    let producer = Producer::start(&sidecar.grpc_port(), &[]).await;

    producer.send(5, Some(TRACEPARENT)).await;
    sidecar.wait_completed(QUEUE, 5).await;
    producer.produce(3).await;
    let c = sidecar.wait_completed(QUEUE, 8).await;
    assert_eq!((c.produced, c.dead_lettered), (8, 0), "{c:?}");
    sidecar
        .service
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
    let sidecar = Devstack::for_apps(&addrs, &[], &[]).await;
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
    let mut sidecar = Devstack::for_apps(&[victim.addr, other.addr], &[], &[]).await;
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
        .service
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
    let mut sidecar =
        Devstack::for_apps(&[consumer.addr], &["--max-delivery-count", "3"], &[]).await;
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
        .service
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
    let sidecar = Devstack::for_apps(&[consumer.addr], &[], &[]).await;
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
    let sidecar = Devstack::start(&[&one, &three], &[]).await;
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

/// Peek-lock: an app that does not answer within the lock duration loses the message, which is
/// redelivered with its delivery count up by one.
#[tokio::test]
async fn an_event_unanswered_within_the_lock_duration_is_abandoned_and_redelivered() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = FakeApp::start(Behaviour {
        gate: Some(gate),
        ..Default::default()
    })
    .await;
    let mut sidecar = Devstack::for_apps(&[app.addr], &["--lock-duration", "300ms"], &[]).await;
    sidecar.wait_consumers(1).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();

    let abandoned = sidecar
        .service
        .wait_for_message("message abandoned; will be redelivered")
        .await;
    assert!(
        abandoned["reason"]
            .as_str()
            .unwrap()
            .contains("no answer within the lock duration"),
        "{abandoned}"
    );
    let deliveries = app.wait_for_deliveries(2).await;
    open.send_replace(true);
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!((c.completed, c.dead_lettered), (1, 0), "{c:?}");
    // The delivery count is in the sidecar's log, not the event (daprd's binding sends none).
    assert_eq!(abandoned["delivery_count"], 1, "{abandoned}");
    assert!(!deliveries[0].metadata.contains_key("DeliveryCount"));
    assert_eq!(deliveries[0].metadata["id"], deliveries[1].metadata["id"]);

    sidecar.stop().await;
    app.stop().await;
}

/// Sends one message through the sidecar's gRPC API and waits until it is dead-lettered; returns
/// the status then, and how long that took from the send.
async fn send_one_until_dead_lettered(sidecar: &Devstack) -> (Value, std::time::Duration) {
    let mut client = sidecar.dapr_client().await;
    let sent = Instant::now();
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    let status = sidecar
        .wait_status("the message dead-lettered", |s| {
            counts(s, QUEUE).dead_lettered == 1
        })
        .await;
    (status, sent.elapsed())
}

/// As in production, an abandoned message is available again at once: what spaces out a poison
/// message's deliveries is only the binding's retriable-error pacing (`maxRetriableErrorsPerSec`,
/// 10 a second), so its 10 deliveries take about a second, not a growing backoff.
#[tokio::test]
async fn a_failing_message_is_redelivered_at_once_paced_only_as_the_binding_paces_errors() {
    let app = FakeApp::start(Behaviour {
        fail_every: Some(1),
        ..Default::default()
    })
    .await;
    let sidecar = Devstack::for_apps(&[app.addr], &["--resiliency", "none"], &[]).await;
    sidecar.wait_consumers(1).await;
    let (status, elapsed) = send_one_until_dead_lettered(&sidecar).await;
    assert_eq!(
        status["deadLetters"][QUEUE][0]["deliveryCount"], 10,
        "{status}"
    );
    assert_eq!(app.deliveries().len(), 10);
    // 9 permits 100 ms apart after the first failure: at least 0.8 s. The former backoff
    // (100 ms doubling to 5 s) took over 15 s.
    assert!(
        elapsed >= std::time::Duration::from_millis(800),
        "paced: {elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "no backoff: {elapsed:?}"
    );

    sidecar.stop().await;
    app.stop().await;
}

/// The committed Resiliency (deploy/base/resiliency.yaml): its inbound retry policy's
/// `maxRetries`, as the file says it.
fn committed_max_retries() -> u64 {
    let text = std::fs::read_to_string(COMMITTED_RESILIENCY).expect("the committed Resiliency");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let policy = doc["spec"]["targets"]["components"][QUEUE]["inbound"]["retry"]
        .as_str()
        .expect("an inbound retry for the binding");
    doc["spec"]["policies"]["retries"][policy]["maxRetries"]
        .as_u64()
        .expect("a maxRetries")
}

const COMMITTED_RESILIENCY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/base/resiliency.yaml"
);

/// The app's calls for one delivery of one message that always fails with `code`, under the
/// committed Resiliency, and how long until it was dead-lettered.
async fn calls_for_one_failing_delivery(code: Code) -> (usize, std::time::Duration) {
    let app = FakeApp::start(Behaviour {
        fail_every: Some(1),
        fail_with: code,
        ..Default::default()
    })
    .await;
    let sidecar = Devstack::for_apps(
        &[app.addr],
        &[
            "--resiliency",
            COMMITTED_RESILIENCY,
            "--max-delivery-count",
            "1",
        ],
        &[],
    )
    .await;
    sidecar.wait_consumers(1).await;
    let (status, elapsed) = send_one_until_dead_lettered(&sidecar).await;
    assert_eq!(
        status["deadLetters"][QUEUE][0]["deliveryCount"], 1,
        "{status}"
    );
    let calls = app.deliveries().len();
    sidecar.stop().await;
    app.stop().await;
    (calls, elapsed)
}

/// With the committed Resiliency, an app answering UNAVAILABLE is called again per the policy
/// (exponential, from 500 ms +-50%) within the one delivery, and only then is the message
/// abandoned.
#[tokio::test]
async fn with_the_committed_resiliency_unavailable_is_retried_per_the_policy_before_the_abandon() {
    let max_retries = committed_max_retries();
    assert!(
        (1..=5).contains(&max_retries),
        "a few retries: {max_retries}"
    );
    let (calls, elapsed) = calls_for_one_failing_delivery(Code::Unavailable).await;
    assert_eq!(
        calls as u64,
        1 + max_retries,
        "the first call and every retry"
    );
    // The smallest exponential delays: 250 ms, 375 ms, 563 ms, ... (half of 500 ms * 1.5^n).
    let least: f64 = (0..max_retries).map(|n| 0.25 * 1.5f64.powi(n as i32)).sum();
    assert!(
        elapsed.as_secs_f64() >= least,
        "backed off: {elapsed:?} < {least}s"
    );
}

/// As daprd does for a gRPC app, INVALID_ARGUMENT is retried too: daprd tests `matching` only
/// against an HTTP app's status, and OnBindingEvent's gRPC error never reaches it (dapr/dapr
/// pkg/runtime/processor/binding/send.go). Hence the committed policy's few retries.
#[tokio::test]
async fn with_the_committed_resiliency_invalid_argument_is_retried_too_as_daprd_does() {
    let (calls, _) = calls_for_one_failing_delivery(Code::InvalidArgument).await;
    assert_eq!(calls as u64, 1 + committed_max_retries());
}

/// Like daprd waiting for its app port, the sidecar asks an app that is not up yet for its
/// bindings until it answers, then once only.
#[tokio::test]
async fn an_app_not_up_yet_is_asked_for_its_bindings_until_it_answers() {
    let port = ClosedPort::ephemeral();
    let app = format!("--app={}", port.addr());
    let mut sidecar =
        Devstack::start(&[&app], &[("RUST_LOG", "info,devstack::delivery=debug")]).await;
    let mut client = sidecar.dapr_client().await;
    client
        .invoke_binding(invoke(QUEUE, "create", None))
        .await
        .unwrap();
    sidecar
        .service
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

// --- Load -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_nothing_lost_or_completed_twice_with_ten_percent_failures() {
    const MESSAGES: usize = 5_000;
    const APPS: usize = 4;
    const FAIL_EVERY: u64 = 10;
    const SEND_CONCURRENCY: usize = 32;
    let started = Instant::now();

    let mut apps = Vec::new();
    for _ in 0..APPS {
        apps.push(
            FakeApp::start(Behaviour {
                fail_every: Some(FAIL_EVERY),
                ..Default::default()
            })
            .await,
        );
    }
    let addrs: Vec<_> = apps.iter().map(|a| a.addr).collect();
    // Each abandon is an info event; keep the sidecar's log to its start and warnings.
    let sidecar = Devstack::for_apps(
        &addrs,
        // No retriable-error pacing: ~500 failures at 10/s per app would take seconds.
        &["--max-retriable-errors-per-sec", "0"],
        &[("RUST_LOG", "info,devstack::delivery=warn")],
    )
    .await;
    sidecar.wait_consumers(APPS as u64).await;

    let client = sidecar.dapr_client().await;
    let failures: Vec<_> = futures::stream::iter(0..MESSAGES)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let mut request = invoke(QUEUE, "create", None);
                request.get_mut().data = format!(r#"{{"text":"load-{i}"}}"#).into_bytes();
                client.invoke_binding(request).await
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(failures.is_empty(), "sends failed: {:?}", &failures[..1]);
    let sent_in = started.elapsed();

    let status = sidecar
        .wait_status("every message completed or dead-lettered", |s| {
            let c = counts(s, QUEUE);
            c.settled() && c.completed + c.dead_lettered == MESSAGES as u64
        })
        .await;
    let c = counts(&status, QUEUE);
    assert_eq!(c.produced, MESSAGES as u64, "{c:?}");
    assert_eq!(
        c.dead_lettered, 0,
        "10% independent failures never reach 10 deliveries"
    );

    // What the apps answered: every id OK'd once, every payload OK'd once.
    let mut by_id: HashMap<String, Vec<Delivery>> = HashMap::new();
    for app in &apps {
        let deliveries = app.deliveries();
        assert!(deliveries.iter().any(|d| d.ok), "an app got no share");
        for d in deliveries {
            by_id.entry(d.metadata["id"].clone()).or_default().push(d);
        }
    }
    let mut texts = HashSet::new();
    let mut injected = 0;
    for (id, deliveries) in &by_id {
        let ok: Vec<_> = deliveries.iter().filter(|d| d.ok).collect();
        assert_eq!(ok.len(), 1, "{id} answered OK {} times", ok.len());
        let failed = deliveries.len() - 1;
        injected += failed;
        // The event carries no delivery count (daprd's binding sends none); every delivery of
        // an id carries the same `id` and `traceparent`, and nothing else.
        assert!(
            failed < 10,
            "{id}: {failed} failures, yet not dead-lettered"
        );
        for d in deliveries {
            assert_eq!(d.metadata, ok[0].metadata, "{id}: the same event metadata");
        }
        assert_eq!(ok[0].metadata.len(), 2, "{id}: {:?}", ok[0].metadata);
        assert!(texts.insert(ok[0].data.clone()), "payload completed twice");
    }
    assert_eq!(by_id.len() as u64, c.completed, "OK'd ids == completed");
    let expected: HashSet<Vec<u8>> = (0..MESSAGES)
        .map(|i| format!(r#"{{"text":"load-{i}"}}"#).into_bytes())
        .collect();
    assert_eq!(texts, expected, "every payload completed");
    assert!(
        injected + APPS >= MESSAGES / FAIL_EVERY as usize,
        "about 10% failed: {injected}"
    );

    let elapsed = started.elapsed();
    println!(
        "load: {MESSAGES} messages, {APPS} apps, {injected} injected failures; \
         sent in {sent_in:?}, all settled in {elapsed:?}"
    );
    // How long it took is reported, not asserted: every wait above is bounded, and speed is the
    // pipeline benchmark's business.

    drop(client);
    sidecar.stop().await;
    for app in apps {
        app.stop().await;
    }
}

// --- Command line -----------------------------------------------------------------------------

#[tokio::test]
async fn help_documents_the_settings_and_bad_values_exit_2() {
    let settings = [
        "CONSUMERS",
        "PORT",
        "APP_PORT",
        "MAX_CONCURRENCY",
        "DAPR_GRPC_PORT",
        "DAPR_HTTP_PORT",
        "BINDING_NAME",
        "MAX_DELIVERY_COUNT",
        "LOCK_DURATION",
        "MAX_RETRIABLE_ERRORS_PER_SEC",
        "RESILIENCY",
        "APP_HEALTH_INTERVAL",
        "STATUS_INTERVAL",
        "DAPR_API_TOKEN",
        "APP_API_TOKEN",
        "RUST_LOG",
        "LOG_FORMAT",
    ];
    let help = help(
        devstack::bin(),
        &[("DAPR_API_TOKEN", "s3cret")],
        &[&settings[..], HTTP_LIMITS, TRACING].concat(),
    )
    .await;
    for text in ["sidecar", "Azure Service Bus", "WORK_DURATION"] {
        assert!(help.contains(text), "--help lacks {text:?}:\n{help}");
    }
    assert!(!help.contains("s3cret"), "--help shows the token:\n{help}");

    let (code, help) = run_to_end(devstack::bin(), &["sidecar", "--help"], &[]).await;
    assert_eq!(code, Some(0), "{help}");
    for text in [
        "--app",
        "HOST:PORT=CONCURRENCY",
        "http://",
        "[env: DEVSTACK_APPS",
        "[env: MAX_DELIVERY_COUNT",
    ] {
        assert!(
            help.contains(text),
            "sidecar --help lacks {text:?}:\n{help}"
        );
    }

    // Should a value be accepted by mistake, the sidecar would serve on free ports until
    // run_to_end's bound, and the test would fail there.
    for (args, env, expected) in [
        (
            &["sidecar", "--app", "nonsense"][..],
            None,
            "is not HOST:PORT",
        ),
        (&["sidecar", "--app", "127.0.0.1:1=0"], None, "concurrency"),
        (
            &["sidecar", "--app", "grpc://127.0.0.1:1"],
            None,
            "is not an app protocol",
        ),
        (
            &["sidecar", "--max-delivery-count", "0"],
            None,
            "--max-delivery-count",
        ),
        (
            &["sidecar", "--lock-duration", "soon"],
            None,
            "--lock-duration",
        ),
        (&["sidecar", "--bindings", "a b"], None, "binding name"),
        (&["sidecar", "--no-such-flag"], None, "unexpected argument"),
        (
            &["sidecar"],
            Some(("MAX_DELIVERY_COUNT", "many")),
            "--max-delivery-count",
        ),
        (&["--consumers", "0"], None, "--consumers"),
    ] {
        let mut all = EPHEMERAL.to_vec();
        all.extend(env);
        let (code, output) = run_to_end(devstack::bin(), args, &all).await;
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
}

/// A Resiliency file that is missing, or asks for what the sidecar does not emulate, stops it at
/// start with a message naming the file or the field.
#[tokio::test]
async fn a_resiliency_the_sidecar_cannot_honour_stops_it_at_once() {
    let path = std::env::temp_dir().join(format!(
        "devstack-test-resiliency-{}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      quick: 1s\n  targets:\n    components:\n      message-queue:\n        inbound:\n          timeout: quick\n",
    )
    .unwrap();
    let written = path.to_str().unwrap();
    let missing = "/nonexistent/resiliency.yaml";
    for (file, expected) in [
        (
            written,
            "spec.targets.components.message-queue.inbound.timeout",
        ),
        (missing, missing),
    ] {
        let (code, output) = run_to_end(
            devstack::bin(),
            &["sidecar", "--resiliency", file],
            &EPHEMERAL,
        )
        .await;
        assert_eq!(code, Some(1), "{file}: {output}");
        assert!(output.contains(expected), "{file}: {output}");
        assert!(!output.contains("sidecar listening"), "{output}");
    }
    std::fs::remove_file(&path).unwrap();
}

// --- The one command ------------------------------------------------------------------------

#[tokio::test]
async fn up_runs_the_whole_stack_labels_each_part_and_stops_on_sigterm() {
    let mut env = EPHEMERAL.to_vec();
    // WORK_DURATION passes through to the consumers, as the README says.
    env.extend([("CONSUMERS", "2"), ("WORK_DURATION", "300ms")]);
    // Service::spawn sets LOG_FORMAT=json, which every part inherits: each line is `label | {json}`.
    let mut service = Service::spawn(devstack::bin(), &env);
    let listening = part_event(&mut service, "sidecar", "sidecar listening").await;
    let mut stack = Devstack::attach(service, &listening);
    stack
        .service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;
    let listening = part_event(&mut stack.service, "producer", "listening").await;
    let port = event_addr(&listening, "addr").port();
    let curl = format!("localhost:{port}/MessageProducer");
    stack
        .service
        .wait_for_line("the banner's curl command", |l| l.contains(&curl))
        .await;
    stack.wait_consumers(2).await;
    // Each consumer's address, as the stack logged it, is the one the consumer bound and the one
    // the status shows.
    let mut apps = HashSet::new();
    for part in ["consumer-1", "consumer-2"] {
        let listening = part_event(&mut stack.service, part, "listening").await;
        let added = stack
            .service
            .wait_for_lines(&format!("{part} added"), |lines| {
                part_events(lines, "sidecar")
                    .into_iter()
                    .find(|e| e["message"] == "delivering to consumer" && e["part"] == part)
            })
            .await;
        assert_eq!(added["app"], listening["addr"], "{part}");
        let addr = event_addr(&listening, "addr");
        assert_ne!(addr.port(), 0);
        assert_eq!(
            consumer_status(&stack.status().await, addr)["healthy"],
            true
        );
        apps.insert(addr);
    }
    assert_eq!(apps.len(), 2, "two consumers, two addresses: {apps:?}");

    let response = stack
        .http
        .post(format!("http://127.0.0.1:{port}/MessageProducer"))
        .json(&json!({"count": 4, "intervalMilliseconds": 0}))
        .send()
        .await
        .expect("the producer answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"sent": 4}));

    let lines = stack
        .service
        .wait_for_lines("4 consumer lines", |lines| {
            let found: Vec<(String, Value)> = ["consumer-1", "consumer-2"]
                .into_iter()
                .flat_map(|part| {
                    part_events(lines, part)
                        .into_iter()
                        .filter(is_original_line)
                        .map(move |e| (part.to_owned(), e))
                })
                .collect();
            (found.len() >= 4).then_some(found)
        })
        .await;
    assert_eq!(lines.len(), 4);
    for part in ["consumer-1", "consumer-2"] {
        assert!(lines.iter().any(|(p, _)| p == part), "{part} got no share");
    }
    for (_, line) in &lines {
        assert!(line["duration_ms"].as_u64().unwrap() >= 300, "{line}");
    }
    stack.wait_completed(QUEUE, 4).await;

    let output = stack.service.lines().await;
    let pids: Vec<(String, u32)> = part_events(&output, "sidecar")
        .into_iter()
        .filter(|e| e["message"] == "started")
        .map(|e| {
            (
                e["part"].as_str().unwrap().to_owned(),
                u32::try_from(e["pid"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");

    stack.service.terminate();
    assert_eq!(stack.service.exit_code(WAIT).await, Some(0));
    let output = stack
        .service
        .wait_for_lines("the whole output", |lines| {
            lines
                .iter()
                .any(|l| l.contains("sidecar stopped"))
                .then(|| lines.to_vec())
        })
        .await;
    let own = part_events(&output, "sidecar");
    for (part, pid) in &pids {
        assert!(
            own.iter().any(|e| e["message"] == "stopped"
                && e["part"] == part.as_str()
                && e["status"] == "exit status: 0"),
            "{part} did not stop cleanly"
        );
        assert!(
            part_events(&output, part)
                .iter()
                .any(|e| e["message"] == "stopped"),
            "{part} did not log its own stop"
        );
        let alive = is_running(*pid);
        assert!(!alive, "{part} (pid {pid}) still runs");
    }
}

/// Text logs, and a filter that would hide the parts' `listening` events: devstack still learns
/// where the parts on port 0 are (it lets that one event through).
#[tokio::test]
async fn up_learns_the_addresses_from_text_logs_under_a_warn_filter() {
    let mut env = EPHEMERAL.to_vec();
    env.extend([("LOG_FORMAT", "text"), ("RUST_LOG", "warn,devstack=info")]);
    let mut service = Service::spawn(devstack::bin(), &env);
    let bound = service
        .wait_for_line("the consumer's listening line", |l| {
            labelled(l).is_some_and(|(label, line)| {
                label == "consumer" && line.contains(": listening addr=")
            })
        })
        .await;
    let addr = bound.split("addr=").nth(1).expect("addr=").trim();
    let added = format!("delivering to consumer part=consumer app={addr}");
    service
        .wait_for_line("the consumer added at its address", |l| l.contains(&added))
        .await;
    // The banner comes once every address is known and the producer is ready.
    service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;
    service.terminate();
    assert_eq!(service.exit_code(WAIT).await, Some(0));
}

/// The sidecar's HTTP port is served with the shared HTTP limits: stalled clients are closed
/// after the header timeout, counted in `/devstack/metrics`, and requests still work.
#[tokio::test]
async fn stalled_connections_to_the_sidecar_http_port_are_closed_and_counted() {
    let timeout = std::time::Duration::from_millis(500);
    let sidecar = Devstack::start(&[], &[("HTTP_HEADER_READ_TIMEOUT", "500ms")]).await;

    let stalled = slow_client::stall(sidecar.http_addr, 20).await;
    let closed = slow_client::closed_after(stalled, WAIT).await;
    slow_client::assert_closed_between(&closed, timeout, timeout + WAIT / 4);

    let answer = sidecar.post_binding(QUEUE, ASPNET_BODY, None).await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let page = sidecar.metrics().await;
    assert_eq!(
        slow_client::closed_total(&page, "devstack", "header_timeout"),
        20.0
    );
    sidecar.stop().await;
}

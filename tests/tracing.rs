//! Distributed tracing, end to end: the real producer and consumer export their spans over OTLP
//! to an in-test receiver; the fake sidecar shows what `traceparent` daprd would get.

use test_support as support;

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use pipeline::{
    dapr_v1::{BindingEventRequest, app_callback_client::AppCallbackClient},
    proto::producer_client::ProducerClient,
};
use serde_json::json;
use support::{
    TRACE_ID, TRACEPARENT, WAIT,
    consumer::Consumer,
    devstack::{self, Devstack},
    otlp::{Behaviour, Receiver, Span},
    port::ClosedPort,
    process::{Service, event_addr},
    producer::{Producer, batch},
    sidecar::{self, FakeSidecar},
    traced,
};
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The span id in [`TRACEPARENT`]: the caller's span.
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "congo=t61rcWkgMzE";
/// Exported spans leave within this delay, so the tests wait little.
const SCHEDULE_DELAY: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");
const STATUS_OK: i32 = 1;
const STATUS_ERROR: i32 = 2;

fn exporting_to(receiver: &Receiver) -> Vec<(&str, &str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        SCHEDULE_DELAY,
    ]
}

/// The parent id of a `traceparent` value.
fn parent_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).expect("a traceparent")
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

const INVOKE_BINDING: &str = "dapr.proto.runtime.v1.Dapr/InvokeBinding";
const ON_BINDING_EVENT: &str = "dapr.proto.runtime.v1.AppCallback/OnBindingEvent";

fn assert_rpc(span: &Span, service: &str, method: &str, code: Code) {
    assert_eq!(span.attribute("rpc.system"), "grpc", "{span:#?}");
    assert_eq!(span.attribute("rpc.service"), service, "{span:#?}");
    assert_eq!(span.attribute("rpc.method"), method, "{span:#?}");
    assert_eq!(
        span.attribute("rpc.grpc.status_code"),
        (code as i32).to_string(),
        "{span:#?}"
    );
}

#[tokio::test]
async fn a_traced_post_makes_a_server_span_and_a_client_span_per_message() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let sidecar = FakeSidecar::start(sidecar::Behaviour::default()).await;
    let mut env = exporting_to(&receiver);
    env.push(("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"));
    let producer = Producer::start(&sidecar.port(), &env).await;
    // Probes and scrapes are not traced: only the POST below is.
    assert!(producer.get("/healthz").await.is_success());
    assert!(producer.get("/metrics").await.is_success());
    let mut health = HealthClient::new(producer.channel().await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("gRPC health answers");

    let body = json!({"count": 3, "intervalMilliseconds": 0});
    let headers = [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)];
    let (status, answer) = producer.post_with(&headers, body).await;
    assert_eq!((status.as_u16(), answer), (200, json!({"sent": 3})));

    let spans = receiver
        .wait_for("a server span and 3 client spans", |spans| {
            named(spans, "POST /MessageProducer").len() == 1
                && named(spans, INVOKE_BINDING).len() == 3
        })
        .await;
    let server = named(&spans, "POST /MessageProducer")[0];
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(server.service, "producer");
    assert_eq!(server.resource["deployment.environment"], "test");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.trace_id, TRACE_ID);
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_eq!(server.attribute("http.request.method"), "POST");
    assert_eq!(server.attribute("http.route"), "/MessageProducer");
    assert_eq!(server.attribute("http.response.status_code"), "200");
    assert_eq!(server.status_code, STATUS_OK);

    let clients = named(&spans, INVOKE_BINDING);
    for client in &clients {
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.trace_id, TRACE_ID);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_rpc(
            client,
            "dapr.proto.runtime.v1.Dapr",
            "InvokeBinding",
            Code::Ok,
        );
        assert_eq!(client.attribute("messaging.system"), "message-queue");
        assert_eq!(
            client.attribute("messaging.destination.name"),
            "message-queue"
        );
        assert_eq!(client.attribute("messaging.operation.type"), "send");
        assert_eq!(client.status_code, STATUS_OK);
    }

    // Each call's traceparent names its own client span as the parent, so daprd's span is the
    // client span's child; tracestate goes along unchanged.
    let calls = sidecar.calls();
    assert_eq!(calls.len(), 3);
    let mut sent: Vec<&str> = calls
        .iter()
        .map(|call| {
            let traceparent = &call.headers["traceparent"];
            assert!(traceparent.contains(TRACE_ID), "{traceparent}");
            assert_eq!(call.headers["tracestate"], TRACESTATE);
            parent_id(traceparent)
        })
        .collect();
    let mut ids: Vec<&str> = clients.iter().map(|c| c.span_id.as_str()).collect();
    sent.sort_unstable();
    ids.sort_unstable();
    assert_eq!(sent, ids);

    producer.stop().await;
    sidecar.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn retries_are_spans_of_their_own_and_errors_set_the_status() {
    let receiver = Receiver::start(Behaviour::default()).await;
    // The first attempt is refused as by a sidecar not yet up, and retried.
    let sidecar = FakeSidecar::start(sidecar::Behaviour {
        fail_first: Some((1, Code::Unavailable)),
        ..sidecar::Behaviour::default()
    })
    .await;
    let mut env = exporting_to(&receiver);
    env.extend([("RETRY_BACKOFF", "1ms"), ("OTEL_SERVICE_NAME", "front")]);
    let producer = Producer::start(&sidecar.port(), &env).await;
    // No traceparent: the request starts a trace.
    producer.send(1, None).await;
    let spans = receiver
        .wait_for("a server span and 2 client spans", |spans| {
            named(spans, "POST /MessageProducer").len() == 1
                && named(spans, INVOKE_BINDING).len() == 2
        })
        .await;
    let server = named(&spans, "POST /MessageProducer")[0];
    assert_eq!(server.service, "front");
    assert_eq!(server.parent_span_id, "", "a root span: {server:#?}");
    let clients = named(&spans, INVOKE_BINDING);
    let failed: Vec<_> = clients
        .iter()
        .filter(|c| c.status_code == STATUS_ERROR)
        .collect();
    assert_eq!(failed.len(), 1, "{clients:#?}");
    assert_rpc(
        failed[0],
        "dapr.proto.runtime.v1.Dapr",
        "InvokeBinding",
        Code::Unavailable,
    );
    assert!(
        failed[0].status_message.contains("injected failure"),
        "{failed:#?}"
    );
    for client in &clients {
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, server.span_id);
    }
    let call = &sidecar.calls()[0];
    let ok = clients.iter().find(|c| c.status_code == STATUS_OK).unwrap();
    assert_eq!(parent_id(&call.headers["traceparent"]), ok.span_id);

    // A gRPC request the sidecar rejects: both spans say so.
    let rejecting = FakeSidecar::start(sidecar::Behaviour {
        fail_after: Some((0, Code::NotFound)),
        ..sidecar::Behaviour::default()
    })
    .await;
    let grpc = Producer::start(&rejecting.port(), &exporting_to(&receiver)).await;
    let mut client = ProducerClient::new(grpc.channel().await);
    let status = client
        .produce(traced(batch(1, 0), TRACEPARENT))
        .await
        .expect_err("the sidecar rejects the call");
    assert_eq!(status.code(), Code::Internal);
    let produce = "producer.v1.Producer/Produce";
    let spans = receiver
        .wait_for("the gRPC server span", |spans| {
            !named(spans, produce).is_empty()
        })
        .await;
    let server = named(&spans, produce)[0];
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.trace_id, TRACE_ID);
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_rpc(server, "producer.v1.Producer", "Produce", Code::Internal);
    assert_eq!(server.status_code, STATUS_ERROR);
    let client = spans
        .iter()
        .find(|s| s.name == INVOKE_BINDING && s.parent_span_id == server.span_id)
        .expect("the rejected call's span");
    assert_rpc(
        client,
        "dapr.proto.runtime.v1.Dapr",
        "InvokeBinding",
        Code::NotFound,
    );
    assert_eq!(client.status_code, STATUS_ERROR);

    grpc.stop().await;
    producer.stop().await;
    rejecting.stop().await;
    sidecar.stop().await;
    receiver.stop().await;
}

fn event(data: &[u8], id: &str) -> Request<BindingEventRequest> {
    let metadata = HashMap::from([("id".to_owned(), id.to_owned())]);
    traced(
        BindingEventRequest {
            name: "message-queue".to_owned(),
            data: data.to_vec(),
            metadata,
        },
        TRACEPARENT,
    )
}

#[tokio::test]
async fn the_consumer_span_is_a_child_of_the_received_traceparent() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let mut consumer = Consumer::start(&exporting_to(&receiver)).await;
    let mut callback = AppCallbackClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", consumer.addr))
            .unwrap()
            .timeout(WAIT)
            .connect_lazy(),
    );
    callback
        .on_binding_event(event(br#"{"text":"Hello World"}"#, "m-ok"))
        .await
        .expect("processed");
    let refused = callback
        .on_binding_event(event(b"not json", "m-bad"))
        .await
        .expect_err("a bad payload is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let spans = receiver
        .wait_for("two event spans", |spans| {
            named(spans, ON_BINDING_EVENT).len() == 2
        })
        .await;
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| s.attributes.get("messaging.message.id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no span for {id}: {spans:#?}"))
    };
    let ok = by_id("m-ok");
    assert_eq!(ok.service, "consumer");
    assert_eq!(ok.kind, SpanKind::Server);
    assert_eq!(ok.trace_id, TRACE_ID);
    assert_eq!(ok.parent_span_id, CALLER_SPAN);
    assert_rpc(
        ok,
        "dapr.proto.runtime.v1.AppCallback",
        "OnBindingEvent",
        Code::Ok,
    );
    assert_eq!(ok.attribute("messaging.system"), "message-queue");
    assert_eq!(ok.attribute("messaging.destination.name"), "message-queue");
    assert_eq!(ok.attribute("messaging.operation.type"), "process");
    assert_eq!(ok.status_code, STATUS_OK);

    let bad = by_id("m-bad");
    assert_eq!(bad.parent_span_id, CALLER_SPAN);
    assert_rpc(
        bad,
        "dapr.proto.runtime.v1.AppCallback",
        "OnBindingEvent",
        Code::InvalidArgument,
    );
    assert_eq!(bad.status_code, STATUS_ERROR);
    assert!(
        bad.status_message.starts_with("InvalidArgument"),
        "{bad:#?}"
    );

    // Its log line links to the span: the trace's id, and with JSON the span's.
    let line = consumer.line_for("m-ok").await;
    assert_eq!(line["trace_id"], TRACE_ID);
    assert_eq!(line["span_id"], ok.span_id.as_str());

    consumer.stop().await;
    receiver.stop().await;
}

/// What a collector that is down or slow must not do: slow requests down, or hold the exit up
/// beyond the drain time (300 ms here), which the span flush shares.
async fn nothing_waits_for(endpoint: &str, queue: &str) -> Producer {
    let sidecar = FakeSidecar::start(sidecar::Behaviour::default()).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_MAX_QUEUE_SIZE", queue),
        ("DRAIN_TIMEOUT", "300ms"),
    ];
    let producer = Producer::start(&sidecar.port(), &env).await;
    for _ in 0..5 {
        producer.send(20, Some(TRACEPARENT)).await;
    }
    sidecar.stop().await;
    producer
}

/// The exit bound: the drain time, which the flush shares, and room for a loaded machine.
const EXIT_BOUND: Duration = Duration::from_secs(6);

#[tokio::test]
async fn a_collector_down_holds_up_neither_requests_nor_the_exit() {
    let closed = ClosedPort::ephemeral();
    let endpoint = format!("http://{}", closed.addr());
    let mut producer = nothing_waits_for(&endpoint, "2048").await;
    producer.service.terminate();
    assert_eq!(producer.service.exit_code(EXIT_BOUND).await, Some(0));
}

#[tokio::test]
async fn a_slow_collector_holds_nothing_up_and_a_full_queue_drops_and_counts() {
    // Answers after the test is over: exports block, the queue of one fills.
    let receiver = Receiver::start(Behaviour {
        delay: Duration::from_secs(600),
    })
    .await;
    let mut producer = nothing_waits_for(receiver.endpoint(), "1").await;
    let dropped = producer
        .metrics()
        .await
        .get("producer_otel_spans_dropped_total");
    assert!(dropped > 0.0, "spans dropped: {dropped}");
    producer.service.terminate();
    assert_eq!(producer.service.exit_code(EXIT_BOUND).await, Some(0));
    assert!(receiver.connections() > 0, "the exporter never connected");
    receiver.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_traceparent_is_forwarded() {
    // The other signals' endpoints point at the receiver: only traces could be exported, and
    // an empty endpoint counts as unset.
    let receiver = Receiver::start(Behaviour::default()).await;
    let sidecar = FakeSidecar::start(sidecar::Behaviour::default()).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "producer"),
        SCHEDULE_DELAY,
    ];
    let producer = Producer::start(&sidecar.port(), &env).await;
    producer.send(2, Some(TRACEPARENT)).await;
    // No span of ours: the caller's traceparent goes to the sidecar as it came.
    for call in sidecar.calls() {
        assert_eq!(call.headers["traceparent"], TRACEPARENT);
    }
    let dropped = producer
        .metrics()
        .await
        .get("producer_otel_spans_dropped_total");
    assert_eq!(dropped, 0.0);
    producer.stop().await;
    assert_eq!(receiver.connections(), 0);
    sidecar.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn through_devstack_one_trace_runs_from_the_post_to_the_consumer() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let env = exporting_to(&receiver);
    let consumer = Consumer::start(&env).await;
    let stack = Devstack::for_apps(&[consumer.addr], &[], &env).await;
    let producer = Producer::start(&stack.grpc_port(), &env).await;
    producer.send(1, Some(TRACEPARENT)).await;

    let spans = receiver
        .wait_for("the spans of all three", |spans| {
            let services: Vec<_> = spans.iter().map(|s| (&*s.service, &*s.name)).collect();
            [
                ("producer", "POST /MessageProducer"),
                ("producer", INVOKE_BINDING),
                ("devstack-sidecar", "send message-queue"),
                ("devstack-sidecar", ON_BINDING_EVENT),
                ("consumer", ON_BINDING_EVENT),
            ]
            .iter()
            .all(|wanted| services.contains(wanted))
        })
        .await;
    let one = |service: &str, name: &str| {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "{service} {name}: {spans:#?}");
        found[0]
    };
    let server = one("producer", "POST /MessageProducer");
    let client = one("producer", INVOKE_BINDING);
    let send = one("devstack-sidecar", "send message-queue");
    let delivery = one("devstack-sidecar", ON_BINDING_EVENT);
    let event = one("consumer", ON_BINDING_EVENT);
    // One trace, each span the child of the one before.
    let chain = [server, client, send, delivery, event];
    for span in chain {
        assert_eq!(span.trace_id, TRACE_ID, "{span:#?}");
    }
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    for pair in chain.windows(2) {
        assert_eq!(pair[1].parent_span_id, pair[0].span_id, "{pair:#?}");
    }
    assert_eq!(send.kind, SpanKind::Producer);
    assert_eq!(send.attribute("messaging.operation.type"), "send");
    assert_eq!(delivery.kind, SpanKind::Client);
    let id = delivery.attribute("messaging.message.id");
    assert_eq!(send.attribute("messaging.message.id"), id);
    assert_eq!(event.attribute("messaging.message.id"), id);
    assert_eq!(delivery.status_code, STATUS_OK);

    producer.stop().await;
    stack.stop().await;
    consumer.stop().await;
    receiver.stop().await;
}

/// `devstack up` passes its environment on: one endpoint makes all three export, each under its
/// own name.
#[tokio::test]
async fn one_endpoint_given_to_devstack_up_reaches_all_three() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let mut env = exporting_to(&receiver);
    env.extend([
        ("PORT", "0"),
        ("APP_PORT", "0"),
        ("METRICS_PORT", "0"),
        ("DAPR_GRPC_PORT", "0"),
        ("DAPR_HTTP_PORT", "0"),
        ("WORK_DURATION", "0s"),
    ]);
    let mut stack = Service::spawn(devstack::bin(), &env);
    let line = stack
        .wait_for_line("the producer listening", |line| {
            line.starts_with("producer") && line.contains(r#""message":"listening""#)
        })
        .await;
    let (_, json) = line.split_once(" | ").expect("a labelled line");
    let listening: serde_json::Value = serde_json::from_str(json).expect("a JSON event");
    let producer = event_addr(&listening, "addr");
    let answer = support::http_client()
        .post(format!("http://{producer}/MessageProducer"))
        .json(&json!({"count": 1, "intervalMilliseconds": 0}))
        .send()
        .await
        .expect("the producer answers");
    assert!(answer.status().is_success(), "{}", answer.status());

    let spans = receiver
        .wait_for(
            "spans of the producer, the sidecar and the consumer",
            |spans| {
                ["producer", "devstack-sidecar", "consumer"]
                    .iter()
                    .all(|service| spans.iter().any(|s| s.service == *service))
            },
        )
        .await;
    // Without a traceparent the producer starts the trace, and the others join it; devstack's
    // polls of the producer's /readyz make none.
    let trace = &named(&spans, "POST /MessageProducer")[0].trace_id;
    assert!(spans.iter().all(|s| &s.trace_id == trace), "{spans:#?}");
    stack.stop().await;
    receiver.stop().await;
}

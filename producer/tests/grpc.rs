//! The gRPC front of the `producer` library (`producer.v1.Producer`, health, reflection) and its
//! API documents, served in the test process against a fake Dapr sidecar on loopback.

use test_support as support;

use pipeline::proto::ProduceRequest;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    TRACEPARENT,
    in_process::Producer,
    producer::batch,
    sidecar::{Behaviour, FakeSidecar},
    traced,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn grpc_front_produces_streams_and_validates() {
    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &["--max-count=50"]).await;
    let mut client = producer.client().await;

    let request = traced(batch(2, 0), TRACEPARENT);
    assert_eq!(client.produce(request).await.unwrap().into_inner().sent, 2);
    let calls = sidecar.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].data, br#"{"text":"Hello World"}"#);
    assert_eq!(
        calls[0].headers.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );

    let stream = client
        .produce_stream(ProduceRequest {
            count: 3,
            interval_milliseconds: 1,
            text: Some("hi".into()),
        })
        .await
        .unwrap()
        .into_inner();
    let progress: Vec<_> = stream.map(|p| p.unwrap()).collect().await;
    let sent: Vec<_> = progress.iter().map(|p| (p.sent, p.count)).collect();
    assert_eq!(sent, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(sidecar.calls()[4].data, br#"{"text":"hi"}"#);

    // The REST limits, the text in characters too.
    let text = |n: usize| ProduceRequest {
        text: Some("\u{1F600}".repeat(n)),
        ..batch(1, 0)
    };
    for bad in [batch(0, 0), batch(51, 0), batch(1, 60_001), text(16_385)] {
        let status = client.produce(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        let status = client.produce_stream(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    assert_eq!(sidecar.calls().len(), 5);
    assert_eq!(
        client
            .produce(text(16_384))
            .await
            .unwrap()
            .into_inner()
            .sent,
        1
    );
    assert_eq!(sidecar.calls().len(), 6);

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn grpc_failure_carries_the_sent_count() {
    let behaviour = Behaviour {
        fail_after: Some((2, Code::Unavailable)),
        ..Default::default()
    };
    let sidecar = FakeSidecar::start(behaviour).await;
    let args = ["--send-concurrency=1", "--retry-backoff=1ms"];
    let producer = Producer::start(&sidecar.port(), &args).await;
    let mut client = producer.client().await;

    let status = client.produce(batch(5, 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("2 of 5 messages were sent"),
        "{status:?}"
    );
    assert_eq!(status.metadata().get("producer-sent").unwrap(), "2");

    producer.stop().await;
    sidecar.stop().await;
}

#[tokio::test]
async fn health_reflection_openapi_and_swagger_ui() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let sidecar = FakeSidecar::start(Behaviour::default()).await;
    let producer = Producer::start(&sidecar.port(), &[]).await;

    let mut health = HealthClient::new(producer.channel().await);
    for service in ["", "producer.v1.Producer"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(producer.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"producer.v1.Producer".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let doc: Value = producer.get_json("/openapi.json").await;
    assert!(
        doc["paths"]["/MessageProducer"]["post"].is_object(),
        "{doc}"
    );
    // Without a token, no scheme to enter one in, and the default MAX_COUNT.
    assert!(doc["components"].get("securitySchemes").is_none(), "{doc}");
    let count = &doc["components"]["schemas"]["ProduceBody"]["properties"]["count"];
    assert_eq!(
        (&count["minimum"], &count["maximum"]),
        (&json!(1), &json!(10_000))
    );
    let ui = producer
        .http
        .get(producer.url("/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(
        ui.text().await.unwrap().contains("swagger"),
        "Swagger UI is served from the binary"
    );

    // An unknown gRPC method is UNIMPLEMENTED, not an HTTP 404.
    let mut other = pipeline::dapr_v1::dapr_client::DaprClient::new(producer.channel().await);
    let status = other
        .invoke_binding(pipeline::dapr_v1::InvokeBindingRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    producer.stop().await;
    sidecar.stop().await;
}

//! The runtime API producers call, gRPC and HTTP, as daprd's: InvokeBinding and its errors, the
//! metadata API, the health routes, the API token, and the metrics page.

use pipeline::dapr_v1::{GetMetadataRequest, GetStateRequest};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{app::Behaviour, app::FakeApp, devstack::ASPNET_BODY, with_token};
use tonic::Code;

use crate::{QUEUE, harness::InProcess, invoke};

#[tokio::test]
async fn dapr_client_invokes_the_binding_and_gets_daprds_errors() {
    let sidecar = InProcess::start(&["--dapr-api-token", "s3cret"]).await;
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
    let sidecar = InProcess::for_apps(
        &[app.addr],
        &["--dapr-api-token", "s3cret", "--app-id", "orders"],
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

//! The real consumer explains, once, why every event is refused when daprd sends no app token:
//! what a daprd older than 1.16.2 does to a consumer with `APP_API_TOKEN` set.

use std::collections::HashMap;

use pipeline::dapr_v1::BindingEventRequest;
use serde_json::Value;
use test_support::{consumer::Consumer, with_token};
use tonic::{Code, Request};

fn hello(id: &str) -> Request<BindingEventRequest> {
    Request::new(BindingEventRequest {
        name: "message-queue".to_owned(),
        data: br#"{"text":"Hello World"}"#.to_vec(),
        metadata: HashMap::from([("id".to_owned(), id.to_owned())]),
    })
}

fn is_hint(event: &Value) -> bool {
    event["message"]
        .as_str()
        .is_some_and(|m| m.contains("older than 1.16.2") && m.contains("APP_API_TOKEN"))
}

#[tokio::test]
async fn a_missing_app_token_is_explained_once_at_warn() {
    let consumer = Consumer::start(&[("APP_API_TOKEN", "s3cret")]).await;
    // A wrong token is a mismatch between two Secrets, not an old daprd: no hint for it.
    let wrong = consumer.send(with_token(hello("w-1"), "other")).await;
    assert_eq!(wrong.unwrap_err().code(), Code::Unauthenticated);
    for id in ["m-1", "m-2", "m-3"] {
        let missing = consumer.send(hello(id)).await;
        assert_eq!(missing.unwrap_err().code(), Code::Unauthenticated, "{id}");
    }
    consumer
        .send(with_token(hello("ok-1"), "s3cret"))
        .await
        .unwrap();
    let events = consumer.stop_with_events().await;

    let hints: Vec<&Value> = events.iter().filter(|e| is_hint(e)).collect();
    assert_eq!(hints.len(), 1, "the hint, exactly once: {hints:#?}");
    let hint = hints[0];
    assert_eq!(hint["level"], "WARN", "{hint}");
    assert_eq!(hint["daprd_minimum"], "1.16.2", "{hint}");
    assert!(
        hint["message"]
            .as_str()
            .is_some_and(|m| m.contains("upgrade the Dapr control plane")),
        "the hint names the fix: {hint}"
    );
    // About the sidecar, not one message: it carries no message id.
    assert!(hint.get("id").is_none(), "{hint}");
    // It follows the refusal that prompted it, the first missing token (m-1), not the wrong one.
    let refusals: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "binding event refused: missing or wrong dapr-api-token")
        .collect();
    assert_eq!(refusals.len(), 4, "every refusal is still logged");
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    assert!(
        at(&|e| is_hint(e)) > at(&|e| e["id"] == "m-1"),
        "{events:#?}"
    );
    assert!(
        at(&|e| is_hint(e)) < at(&|e| e["id"] == "m-2"),
        "{events:#?}"
    );
}

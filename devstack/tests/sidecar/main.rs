//! The sidecar's logic, with devstack's library sidecar in the test process
//! ([`harness::InProcess`], served on 127.0.0.1:0 listeners): against the `dapr` crate's generated
//! client and AppCallback server, fake gRPC and HTTP apps, the real `producer` and `consumer`
//! binaries where the test is end to end, and the official Dapr Python SDK; a bounded load test
//! with injected consumer failures; duplicate detection against a producer whose answers are
//! lost. What only the process shows (its command line, signals,
//! `devstack up`) is in `tests/devstack.rs`.
//! Every wait is bounded and ends on an event or a status.

use std::collections::HashMap;

use pipeline::{dapr_v1::InvokeBindingRequest, trace_context::TraceParent};
use serde_json::Value;
use test_support::{app::Delivery, with_token};
use tonic::Request;

mod dead_letters;
mod duplicates;
mod end_to_end;
mod faults;
mod grpc_apps;
mod harness;
mod http_apps;
mod load;
mod locks;
mod python_sdk;
mod redelivery;
mod runtime_api;
mod safety;
mod send_metadata;

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

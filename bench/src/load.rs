//! The load generators: a minimal gRPC client keeping C calls in flight on one HTTP/2 connection
//! (as the producer does towards its sidecar and daprd towards its app), and the original
//! producer's way: one message at a time, each on a new HTTP client and connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream::FuturesUnordered};
use pipeline::dapr_v1::{
    BindingEventRequest, InvokeBindingRequest, app_callback_client::AppCallbackClient,
    dapr_client::DaprClient,
};
use tonic::{
    Request, Status,
    transport::{Channel, Endpoint},
};

/// The binding every stage uses (the binaries' default).
pub const BINDING: &str = "message-queue";
/// Each message's payload, the original's bytes.
pub const MESSAGE: &[u8] = br#"{"text":"Hello World"}"#;

/// One HTTP/2 connection to `addr`, connected now.
pub async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Makes `messages` calls, `concurrency` at a time, from one task, as the producer does: a new
/// call starts as soon as one ends. Returns the elapsed time; the first failed call fails the run.
async fn drive<F, Fut>(messages: u32, concurrency: u32, call: F) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut started = 0;
    // One bound for the whole run: a timer per call would add to the client's measured cost.
    let limit = super::run_limit(messages);
    let run = async {
        loop {
            while started < messages && in_flight.len() < concurrency.max(1) as usize {
                in_flight.push(call());
                started += 1;
            }
            match in_flight.next().await {
                None => return Ok(start.elapsed()),
                Some(result) => result.context("a call failed")?,
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .with_context(|| format!("{messages} calls did not end within {limit:?}"))?
}

/// `InvokeBinding` as the producer sends it: name, `create`, the message.
pub async fn invoke_binding(
    channel: &Channel,
    messages: u32,
    concurrency: u32,
) -> anyhow::Result<Duration> {
    let client = DaprClient::new(channel.clone());
    drive(messages, concurrency, move || {
        let mut client = client.clone();
        async move {
            let request = Request::new(InvokeBindingRequest {
                name: BINDING.to_owned(),
                data: MESSAGE.to_vec(),
                metadata: HashMap::new(),
                operation: pipeline::message::OPERATION_CREATE.to_owned(),
            });
            client.invoke_binding(request).await.map(drop)
        }
    })
    .await
}

/// `OnBindingEvent` as daprd delivers it: binding name and the message.
pub async fn binding_event(
    channel: &Channel,
    messages: u32,
    concurrency: u32,
) -> anyhow::Result<Duration> {
    let client = AppCallbackClient::new(channel.clone());
    drive(messages, concurrency, move || {
        let mut client = client.clone();
        async move {
            let request = Request::new(BindingEventRequest {
                name: BINDING.to_owned(),
                data: MESSAGE.to_vec(),
                metadata: HashMap::new(),
            });
            client.on_binding_event(request).await.map(drop)
        }
    })
    .await
}

/// The original producer's loop: for each message a new HTTP client, so a new connection, and a
/// JSON POST to daprd's HTTP binding API over HTTP/1.1, awaited before the next. The body is the
/// original's, `{"data":{"text":"Hello World"}}`. The original's URL named `localhost`; an IP
/// address here leaves name resolution out, which only makes the original look faster. Each
/// request is bounded in time, as .NET's `HttpClient` bounds it (100 s by default).
pub async fn original(addr: SocketAddr, messages: u32) -> anyhow::Result<Duration> {
    let url = format!("http://{addr}/v1.0/bindings/{BINDING}");
    let body = serde_json::json!({ "data": { "text": "Hello World" } });
    let start = Instant::now();
    for _ in 0..messages {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(super::WAIT)
            .build()?;
        client
            .post(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(start.elapsed())
}

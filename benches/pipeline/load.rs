//! The load generators: a minimal gRPC client keeping C calls in flight on one HTTP/2 connection
//! (as the producer does towards its sidecar and daprd towards its app), and the original
//! producer's way: one message at a time, each on a new HTTP client and connection.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bindings::dapr_v1::{
    BindingEventRequest, InvokeBindingRequest, app_callback_client::AppCallbackClient,
    dapr_client::DaprClient,
};
use tokio::task::JoinSet;
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

/// Makes `messages` calls, `concurrency` at a time: that many tasks take the next message number
/// until all are taken. Returns the elapsed time; the first failed call fails the run.
async fn drive<F, Fut>(messages: u32, concurrency: u32, call: F) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let next = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.clamp(1, messages.max(1)) {
        let (next, call) = (Arc::clone(&next), call.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                call().await?;
            }
            Ok::<_, Status>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result?.context("a call failed")?;
    }
    Ok(start.elapsed())
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
                operation: "create".to_owned(),
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
/// JSON POST to daprd's HTTP binding API over HTTP/1.1, awaited before the next.
pub async fn original(addr: SocketAddr, messages: u32) -> anyhow::Result<Duration> {
    let url = format!("http://{addr}/v1.0/bindings/{BINDING}");
    let body = serde_json::json!({ "data": { "text": "Hello World" }, "operation": "create" });
    let start = Instant::now();
    for _ in 0..messages {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
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

//! The real `consumer` binary on an ephemeral loopback port, a gRPC channel to it as daprd
//! has ([`AppPort`], which `in_process::Consumer` shares), its metrics page, and the original
//! sample's per-message log line.

use std::{collections::HashMap, net::SocketAddr, ops::Deref};

use chrono::NaiveDateTime;
use pipeline::dapr_v1::{
    BindingEventRequest, BindingEventResponse, app_callback_client::AppCallbackClient,
    app_callback_health_check_client::AppCallbackHealthCheckClient,
};
use serde_json::Value;
use tokio::task::JoinHandle;
use tonic::{
    Code, Request, Response, Status,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{
    WAIT,
    exposition::{self, Exposition},
    http_client,
    process::{Service, event_addr},
};

pub fn bin() -> std::path::PathBuf {
    crate::process::binary("consumer")
}

/// A binding event for `binding` carrying `data`, with the binding metadata `metadata` (`id`
/// and the like, as daprd passes them on).
pub fn event(
    binding: &str,
    data: &[u8],
    metadata: &[(&str, &str)],
) -> Request<BindingEventRequest> {
    Request::new(BindingEventRequest {
        name: binding.to_owned(),
        data: data.to_vec(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    })
}

/// The original sample's message as event `id` of `message-queue`.
pub fn hello(id: &str) -> Request<BindingEventRequest> {
    event("message-queue", br#"{"text":"Hello World"}"#, &[("id", id)])
}

/// Expects `result` to have failed with `code`; returns its status.
pub fn assert_code(result: Result<(), Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(()) => panic!("{what}: expected {code:?}, got OK"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

/// Series of the consumer's metrics page, for the default binding.
pub mod series {
    pub const RECEIVED: &str = r#"consumer_events_received_total{binding="message-queue"}"#;
    pub const PROCESSED: &str = r#"consumer_events_processed_total{binding="message-queue"}"#;
    pub const IN_FLIGHT: &str = "consumer_events_in_flight";
    pub const DRAINING: &str = "consumer_draining";
    pub const PROCESSING_COUNT: &str = "consumer_event_processing_seconds_count";

    /// Events answered with an error for `reason`.
    pub fn failed(reason: &str) -> String {
        format!(r#"consumer_events_failed_total{{binding="message-queue",reason="{reason}"}}"#)
    }
}

/// The real `consumer` on an ephemeral loopback port; its [`AppPort`] is at hand through `Deref`.
pub struct Consumer {
    pub service: Service,
    port: AppPort,
}

impl Consumer {
    /// Starts one with no simulated work (`WORK_DURATION=0s`) unless `env` says otherwise.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut all = vec![("APP_PORT", "0"), ("WORK_DURATION", "0s")];
        all.extend_from_slice(env);
        let mut service = Service::spawn(bin(), &all);
        let addr = service.addr().await;
        Self {
            service,
            port: AppPort::new(addr),
        }
    }

    /// Sends `request` (with an `id` in its metadata) in the background and waits until the
    /// consumer has received it, by its `event received` debug event (`RUST_LOG` must enable
    /// it): the event is then in flight. The task ends with the consumer's answer.
    pub async fn in_flight(
        &mut self,
        request: Request<BindingEventRequest>,
    ) -> JoinHandle<Result<Response<BindingEventResponse>, Status>> {
        let id = request.get_ref().metadata["id"].clone();
        let mut callback = self.callback();
        let call = tokio::spawn(async move { callback.on_binding_event(request).await });
        self.service
            .wait_for(&format!("{id} received"), |e| {
                e["message"] == "event received" && e["id"] == id.as_str()
            })
            .await;
        call
    }

    /// The address of its metrics server, from its `metrics listening` event.
    pub async fn metrics_addr(&mut self) -> SocketAddr {
        let event = self.service.wait_for_message("metrics listening").await;
        event_addr(&event, "addr")
    }

    /// Its `GET /metrics`, scraped as Prometheus would.
    pub async fn scrape(&mut self) -> Exposition {
        let url = format!("http://{}/metrics", self.metrics_addr().await);
        exposition::scrape(&http_client(), &url).await
    }

    /// Waits for the original sample's line for the event with this id.
    pub async fn line_for(&mut self, id: &str) -> Value {
        self.service
            .wait_for(&format!("log line of {id}"), |e| {
                e["id"] == id && is_original_line(e)
            })
            .await
    }

    /// SIGTERM, then a bounded wait for exit code 0; returns the final `stopped` event.
    pub async fn stop(self) -> Value {
        let events = self.stop_with_events().await;
        let stopped = events.into_iter().find(|e| e["message"] == "stopped");
        stopped.expect("a stopped event")
    }

    /// Like [`stop`](Self::stop), returning every log event.
    pub async fn stop_with_events(self) -> Vec<Value> {
        self.service.stop().await
    }

    /// Like [`stop`](Self::stop), returning the original sample's lines it logged.
    pub async fn stop_with_lines(self) -> Vec<Value> {
        let events = self.stop_with_events().await;
        events.into_iter().filter(is_original_line).collect()
    }
}

impl Deref for Consumer {
    type Target = AppPort;

    fn deref(&self) -> &AppPort {
        &self.port
    }
}

/// A consumer's app port as daprd and the kubelet call it: Dapr's `AppCallback` and
/// `AppCallbackHealthCheck`, and gRPC health.
pub struct AppPort {
    pub addr: SocketAddr,
    channel: Channel,
}

impl AppPort {
    /// A channel to the port at `addr`, connected at its first call: a test that lets the
    /// sidecar drive the consumer makes none.
    pub fn new(addr: SocketAddr) -> Self {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(WAIT)
            // Bounds every call a test makes.
            .timeout(WAIT)
            .connect_lazy();
        Self { addr, channel }
    }

    pub fn callback(&self) -> AppCallbackClient<Channel> {
        AppCallbackClient::new(self.channel.clone())
    }

    /// Dapr's `AppCallbackHealthCheck`.
    pub async fn health_check(&self) -> Result<(), Status> {
        AppCallbackHealthCheckClient::new(self.channel.clone())
            .health_check(())
            .await
            .map(|_| ())
    }

    /// `grpc.health.v1.Health/Check` for `service`.
    pub async fn grpc_health(&self, service: &str) -> Result<ServingStatus, Status> {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let response = HealthClient::new(self.channel.clone())
            .check(request)
            .await?;
        Ok(response.into_inner().status())
    }

    /// Sends one binding event; an OK answer must be the empty response daprd expects.
    pub async fn send(&self, request: Request<BindingEventRequest>) -> Result<(), Status> {
        let response = self.callback().on_binding_event(request).await?;
        assert_eq!(response.into_inner(), BindingEventResponse::default());
        Ok(())
    }
}

/// Splits the original sample's line, `{text} -- Received at: {ts} -- Finished at: {ts}`,
/// into its parts.
pub fn parse_line(line: &str) -> Option<(&str, NaiveDateTime, NaiveDateTime)> {
    const FORMAT: &str = "%m/%d/%Y %H:%M:%S";
    let (text, rest) = line.rsplit_once(" -- Received at: ")?;
    let (received, finished) = rest.split_once(" -- Finished at: ")?;
    // Fixed width, so `12/24/2019 14:42:42` is exactly 19 characters each.
    if received.len() != 19 || finished.len() != 19 {
        return None;
    }
    Some((
        text,
        NaiveDateTime::parse_from_str(received, FORMAT).ok()?,
        NaiveDateTime::parse_from_str(finished, FORMAT).ok()?,
    ))
}

/// Whether a log event is the original sample's line for a message.
pub fn is_original_line(event: &Value) -> bool {
    event["message"].as_str().and_then(parse_line).is_some()
}

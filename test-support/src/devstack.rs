//! Runs `devstack sidecar` (devstack's sidecar, which stands in for daprd and the queue) on
//! loopback ports and reads its two addresses from its `sidecar listening` event; and, however
//! the sidecar runs (that process, `devstack up`, or devstack's library in the test process), a
//! client that posts to its HTTP binding API, calls its gRPC API, and reads its queue status with
//! a bounded poll, checking the queue invariant on every read.

use std::{net::SocketAddr, ops::Deref, time::Duration};

use pipeline::{api_token::API_TOKEN_METADATA, dapr_v1::dapr_client::DaprClient};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::{
    WAIT,
    exposition::{self, Exposition},
    http_client,
    process::{Service, event_addr},
};

pub fn bin() -> std::path::PathBuf {
    crate::process::binary("devstack")
}
/// What the original ASP.NET producer POSTed to daprd's `/v1.0/bindings/message-queue`.
pub const ASPNET_BODY: &str = r#"{"data":{"text":"Hello World"},"operation":"create"}"#;
/// Most status reads one wait makes; with [`POLL_PACING`] this spans about [`WAIT`].
const MAX_POLLS: u32 = 400;
/// Pause between two status reads. Only paces the poll: what ends a wait is the status itself.
const POLL_PACING: Duration = Duration::from_millis(50);

/// One queue's counts, as `GET /devstack/status` shows them: devstack's own type, read back.
pub use ::devstack::queue::Counts;

/// Whether a queue is at rest.
pub trait Settled {
    /// Nothing waiting (scheduled ones included) and nothing in flight.
    fn settled(&self) -> bool;
}

impl Settled for Counts {
    fn settled(&self) -> bool {
        self.scheduled == 0 && self.active == 0 && self.locked == 0
    }
}

/// A running `devstack sidecar` (or the sidecar inside `devstack up`); its
/// [`SidecarClient`]'s methods are its own.
pub struct Devstack {
    pub service: Service,
    client: SidecarClient,
}

impl Deref for Devstack {
    type Target = SidecarClient;

    fn deref(&self) -> &SidecarClient {
        &self.client
    }
}

/// A client of a running sidecar's two ports.
#[derive(Debug, Clone)]
pub struct SidecarClient {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub http: reqwest::Client,
}

impl Devstack {
    /// Starts `devstack sidecar` on ephemeral ports with `args` after the ports.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(0, args, env).await
    }

    /// Like [`start`](Self::start), with the gRPC API on `grpc_port`: a sidecar restarted there
    /// comes back where the producer dials.
    ///
    /// No Resiliency unless the test gives one (`--resiliency PATH`, or RESILIENCY in `env`):
    /// these tests are about the queue and the delivery, where a failed call abandons at once.
    pub async fn start_on(grpc_port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_at(grpc_port, 0, args, env).await
    }

    /// Like [`start`](Self::start), on both ports given: where a client started first dials.
    pub async fn start_at(
        grpc_port: u16,
        http_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let (grpc_port, http_port) = (grpc_port.to_string(), http_port.to_string());
        let mut all = vec![
            "sidecar",
            "--grpc-port",
            &grpc_port,
            "--http-port",
            &http_port,
        ];
        all.extend_from_slice(args);
        let mut env_all = vec![("RESILIENCY", "none")];
        env_all.extend_from_slice(env);
        let mut service = Service::spawn_with_args(bin(), &all, &env_all);
        let event = service.wait_for_message("sidecar listening").await;
        Self::attach(service, &event)
    }

    /// Wraps a sidecar started some other way (inside `devstack up`), at the addresses its
    /// `sidecar listening` event gives.
    pub fn attach(service: Service, listening: &Value) -> Self {
        let client = SidecarClient::new(
            event_addr(listening, "grpc_addr"),
            event_addr(listening, "http_addr"),
        );
        Self { service, client }
    }

    /// Starts delivering to these apps, with extra arguments.
    pub async fn for_apps(apps: &[SocketAddr], args: &[&str], env: &[(&str, &str)]) -> Self {
        let apps: Vec<String> = apps.iter().map(|a| format!("--app={a}")).collect();
        let mut all: Vec<&str> = apps.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        Self::start(&all, env).await
    }

    /// SIGTERM, then expect exit code 0 after its `sidecar stopped` event.
    pub async fn stop(mut self) {
        self.service.terminate();
        assert_eq!(self.service.exit_code(WAIT).await, Some(0));
        self.service.wait_for_message("sidecar stopped").await;
    }
}

impl SidecarClient {
    /// A client of the sidecar at these addresses.
    pub fn new(grpc_addr: SocketAddr, http_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            http_addr,
            http: http_client(),
        }
    }

    /// The gRPC port, as a string for a producer's DAPR_GRPC_PORT.
    pub fn grpc_port(&self) -> String {
        self.grpc_addr.port().to_string()
    }

    /// An HTTP URL on the sidecar's HTTP port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// `POST /v1.0/bindings/{name}` on the HTTP port with a raw body, as .NET's
    /// `HttpClient.PostAsJsonAsync` sends it, with daprd's API token if given.
    pub async fn post_binding(
        &self,
        name: &str,
        body: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(&format!("/v1.0/bindings/{name}")))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.header(API_TOKEN_METADATA, token);
        }
        request.send().await.expect("the sidecar answers")
    }

    /// `GET path` on the HTTP port: the status and the JSON body (`Null` when not JSON).
    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the sidecar answers");
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// `POST path` on the HTTP port with a JSON body, as the dashboard and curl send devstack's
    /// state changes: the status and the JSON body (`Null` when not JSON).
    pub async fn post_json(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the sidecar answers");
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// `POST /devstack/faults`: provokes `fault`, and expects it to be provoked; its record.
    pub async fn fault(&self, fault: Value) -> Value {
        let (status, body) = self.post_json("/devstack/faults", &fault).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{fault}: {body}");
        body["fault"].clone()
    }

    /// The journey of message `id` (`GET /devstack/messages/{id}`), and the names of its events.
    pub async fn journey(&self, id: &str) -> (Value, Vec<String>) {
        let (status, journey) = self.get_json(&format!("/devstack/messages/{id}")).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{journey}");
        let events = journey["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event"].as_str().expect("an event name").to_owned())
            .collect();
        (journey, events)
    }

    /// Its `GET /devstack/metrics`, scraped as Prometheus would.
    pub async fn metrics(&self) -> Exposition {
        exposition::scrape(&self.http, &self.url("/devstack/metrics")).await
    }

    /// A channel to the runtime gRPC API.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect_timeout(WAIT)
            .timeout(WAIT)
            .connect()
            .await
            .expect("connecting to the sidecar")
    }

    /// The Dapr crate's generated client on the runtime API.
    pub async fn dapr_client(&self) -> DaprClient<Channel> {
        DaprClient::new(self.channel().await)
    }

    /// `GET /devstack/status`; asserts produced = scheduled + active + locked + completed +
    /// dead-lettered + expired + purged.
    pub async fn status(&self) -> Value {
        let response = self
            .http
            .get(self.url("/devstack/status"))
            .send()
            .await
            .expect("status answers");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let status: Value = response.json().await.expect("status is JSON");
        for (queue, counts) in status["queues"].as_object().expect("queues") {
            let c: Counts = serde_json::from_value(counts.clone()).expect("queue counts");
            assert_eq!(
                c.produced,
                c.scheduled
                    + c.active
                    + c.locked
                    + c.completed
                    + c.dead_lettered
                    + c.expired
                    + c.purged,
                "queue {queue} breaks the invariant: {c:?}"
            );
        }
        status
    }

    /// One queue's counts from the status.
    pub async fn counts(&self, queue: &str) -> Counts {
        counts(&self.status().await, queue)
    }

    /// Reads the status until `pred` holds: at most [`MAX_POLLS`] reads within [`WAIT`].
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let polled = tokio::time::timeout(WAIT, async {
            for _ in 0..MAX_POLLS {
                last = self.status().await;
                if pred(&last) {
                    return true;
                }
                tokio::time::sleep(POLL_PACING).await;
            }
            false
        })
        .await;
        match polled {
            Ok(true) => last,
            _ => panic!("the sidecar's status never showed {what}; last: {last}"),
        }
    }

    /// Waits until `queue` has `completed` completed messages and nothing active or locked.
    pub async fn wait_completed(&self, queue: &str, completed: u64) -> Counts {
        let status = self
            .wait_status(&format!("{completed} completed on {queue}"), |s| {
                let c = counts(s, queue);
                c.completed == completed && c.settled()
            })
            .await;
        counts(&status, queue)
    }

    /// Waits until `n` consumer apps have listed their bindings and are healthy.
    pub async fn wait_consumers(&self, n: u64) {
        self.wait_status(&format!("{n} consumers connected"), |s| {
            s["consumersConnected"] == n
        })
        .await;
    }
}

/// Every port devstack binds, 0: each part reports the address it chose, in its log and status.
pub const EPHEMERAL: [(&str, &str); 5] = [
    ("PORT", "0"),
    ("APP_PORT", "0"),
    ("METRICS_PORT", "0"),
    ("DAPR_GRPC_PORT", "0"),
    ("DAPR_HTTP_PORT", "0"),
];

/// A `devstack up` output line, `label | line`, as (label, line).
pub fn labelled(line: &str) -> Option<(&str, &str)> {
    let (label, rest) = line.split_once(" | ")?;
    Some((label.trim_end(), rest))
}

/// The JSON events of one part (`sidecar`, `producer`, `consumer-2`) in `devstack up`'s output.
pub fn part_events(lines: &[String], part: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| labelled(l))
        .filter(|(label, _)| *label == part)
        .filter_map(|(_, rest)| serde_json::from_str(rest).ok())
        .collect()
}

/// Waits for the first event `message` of `part` in `devstack up`'s output.
pub async fn part_event(service: &mut Service, part: &str, message: &str) -> Value {
    service
        .wait_for_lines(&format!("{part}'s {message:?} event"), |lines| {
            part_events(lines, part)
                .into_iter()
                .find(|e| e["message"] == message)
        })
        .await
}

/// One queue's counts from a status document.
pub fn counts(status: &Value, queue: &str) -> Counts {
    serde_json::from_value(status["queues"][queue].clone())
        .unwrap_or_else(|e| panic!("status has no queue {queue}: {e}; {status}"))
}

/// A consumer app's entry in a status document, by address; `Null` until the sidecar registered
/// it.
pub fn consumer_status(status: &Value, addr: SocketAddr) -> Value {
    status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["address"] == addr.to_string())
        .cloned()
        .unwrap_or_default()
}

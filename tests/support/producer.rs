//! The real `producer` binary on an ephemeral loopback port, with an HTTP and a gRPC client.

use bindings::{
    proto::{ProduceRequest, producer_client::ProducerClient},
    trace_context::TRACEPARENT,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{WAIT, process::Service};

pub const BIN: &str = env!("CARGO_BIN_EXE_producer");

/// A producer on an ephemeral port, talking to the sidecar on `sidecar_port`.
pub struct Producer {
    pub service: Service,
    /// `http://{addr}`: REST and gRPC share the port.
    pub base: String,
    pub http: reqwest::Client,
}

impl Producer {
    pub async fn start(sidecar_port: &str, env: &[(&str, &str)]) -> Self {
        let mut all = vec![("PORT", "0"), ("DAPR_GRPC_PORT", sidecar_port)];
        all.extend_from_slice(env);
        let mut service = Service::spawn(BIN, &all);
        let addr = service.addr().await;
        Self {
            service,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    /// A URL on the producer's port.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a raw body with a content type; returns status and JSON body.
    pub async fn post_raw(&self, content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url("/MessageProducer"))
            .body(body.to_owned());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("producer answers");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn post(&self, body: Value) -> (StatusCode, Value) {
        self.post_raw(Some("application/json"), &body.to_string())
            .await
    }

    /// `POST /MessageProducer` of `count` messages, unpaced, with a `traceparent` if given;
    /// asserts `{"sent": count}`.
    pub async fn send(&self, count: u32, traceparent: Option<&str>) {
        let mut request = self
            .http
            .post(self.url("/MessageProducer"))
            .json(&json!({"count": count, "intervalMilliseconds": 0}));
        if let Some(traceparent) = traceparent {
            request = request.header(TRACEPARENT, traceparent);
        }
        let response = request.send().await.expect("producer answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<Value>().await.expect("JSON body"),
            json!({ "sent": count })
        );
    }

    /// `producer.v1.Producer/Produce` of `count` messages, unpaced; asserts all were sent.
    pub async fn produce(&self, count: u32) {
        let request = ProduceRequest {
            count,
            interval_milliseconds: 0,
            text: None,
        };
        let reply = self.client().await.produce(request).await;
        assert_eq!(reply.expect("Produce succeeds").into_inner().sent, count);
    }

    pub async fn get(&self, path: &str) -> StatusCode {
        self.http.get(self.url(path)).send().await.unwrap().status()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.base.clone()).unwrap();
        endpoint.connect().await.expect("gRPC connects")
    }

    pub async fn client(&self) -> ProducerClient<tonic::transport::Channel> {
        ProducerClient::new(self.channel().await)
    }

    /// SIGTERM, then expect a clean exit.
    pub async fn stop(self) {
        self.service.stop().await;
    }

    /// The producer's `/metrics`, parsed.
    pub async fn metrics(&self) -> super::exposition::Exposition {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::exposition::parse(&text)
    }
}

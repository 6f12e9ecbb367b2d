//! The real `producer` binary on an ephemeral loopback port, with an HTTP and a gRPC client.

use bindings::proto::producer_client::ProducerClient;
use reqwest::StatusCode;
use serde_json::Value;

use super::{WAIT, process::Service};

pub const BIN: &str = env!("CARGO_BIN_EXE_producer");

/// A producer on an ephemeral port, talking to the sidecar on `sidecar_port`.
pub struct Producer {
    pub service: Service,
    pub base: String,
    pub grpc: String,
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
            grpc: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    /// POSTs a raw body with a content type; returns status and JSON body.
    pub async fn post_raw(&self, content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/MessageProducer", self.base))
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

    pub async fn get(&self, path: &str) -> StatusCode {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.grpc.clone()).unwrap();
        endpoint.connect().await.expect("gRPC connects")
    }

    pub async fn client(&self) -> ProducerClient<tonic::transport::Channel> {
        ProducerClient::new(self.channel().await)
    }

    /// SIGTERM, then expect a clean exit.
    pub async fn stop(mut self) {
        self.service.terminate();
        assert_eq!(self.service.exit_code(WAIT).await, Some(0));
    }

    /// The producer's `/metrics`, parsed.
    pub async fn metrics(&self) -> super::exposition::Exposition {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::exposition::parse(&text)
    }
}

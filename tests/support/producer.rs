//! The real `producer` binary on an ephemeral loopback port, with an HTTP and a gRPC client.

use bindings::{
    proto::{ProduceRequest, producer_client::ProducerClient},
    trace_context::TRACEPARENT,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{
    exposition::{self, Exposition},
    http_client,
    process::Service,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_producer");

/// A gRPC `ProduceRequest` of `count` messages of the default text, `interval_ms` apart.
pub fn batch(count: u32, interval_ms: u32) -> ProduceRequest {
    ProduceRequest {
        count,
        interval_milliseconds: interval_ms,
        text: None,
    }
}

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
            http: http_client(),
        }
    }

    /// The producer's port.
    pub fn addr(&self) -> std::net::SocketAddr {
        let addr = self.base.strip_prefix("http://").expect("an http:// base");
        addr.parse().expect("an IP address and port")
    }

    /// A URL on the producer's port.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /MessageProducer` with `headers` and a raw `body`; answers the status and the JSON
    /// body. The future owns what it needs: a test may spawn it and act while the batch runs.
    pub fn post_raw(
        &self,
        headers: &[(&str, &str)],
        body: &str,
    ) -> impl Future<Output = (StatusCode, Value)> + Send + use<> {
        let mut request = self
            .http
            .post(self.url("/MessageProducer"))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.expect("the producer answers");
            let status = response.status();
            (status, response.json().await.expect("a JSON body"))
        }
    }

    /// [`post_raw`](Self::post_raw) of a JSON `body`, with `headers`.
    pub fn post_with(
        &self,
        headers: &[(&str, &str)],
        body: Value,
    ) -> impl Future<Output = (StatusCode, Value)> + Send + use<> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.post_raw(&all, &body.to_string())
    }

    /// [`post_raw`](Self::post_raw) of a JSON `body`.
    pub fn post(&self, body: Value) -> impl Future<Output = (StatusCode, Value)> + Send + use<> {
        self.post_with(&[], body)
    }

    /// `POST /MessageProducer` of `count` messages, unpaced, with a `traceparent` if given;
    /// asserts `{"sent": count}`.
    pub async fn send(&self, count: u32, traceparent: Option<&str>) {
        let headers: Vec<_> = traceparent.map(|t| (TRACEPARENT, t)).into_iter().collect();
        let body = json!({"count": count, "intervalMilliseconds": 0});
        let answer = self.post_with(&headers, body).await;
        assert_eq!(answer, (StatusCode::OK, json!({ "sent": count })));
    }

    /// `producer.v1.Producer/Produce` of `count` messages, unpaced; asserts all were sent.
    pub async fn produce(&self, count: u32) {
        let reply = self.client().await.produce(batch(count, 0)).await;
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

    /// The producer's `/metrics`, scraped as Prometheus would.
    pub async fn metrics(&self) -> Exposition {
        exposition::scrape(&self.http, &self.url("/metrics")).await
    }
}

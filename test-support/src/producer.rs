//! The real `producer` binary on an ephemeral loopback port, and the HTTP and gRPC clients of a
//! producer's port ([`Api`]), which `in_process::Producer` shares.

use std::{net::SocketAddr, ops::Deref};

use pipeline::{
    proto::{ProduceRequest, producer_client::ProducerClient},
    trace_context::TRACEPARENT,
};
use reqwest::{StatusCode, header::AUTHORIZATION};
use serde_json::{Value, json};
use tonic::{IntoRequest, Request};

use super::{
    exposition::{self, Exposition},
    http_client,
    process::Service,
};

pub fn bin() -> std::path::PathBuf {
    crate::process::binary("producer")
}

/// A gRPC `ProduceRequest` of `count` messages of the default text, `interval_ms` apart.
pub fn batch(count: u32, interval_ms: u32) -> ProduceRequest {
    ProduceRequest {
        count,
        interval_milliseconds: interval_ms,
        text: None,
    }
}

/// `Bearer {token}`: the `authorization` value (REST header, gRPC metadata) carrying `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The real `producer` on an ephemeral port, talking to the sidecar on `sidecar_port`; its
/// [`Api`] is at hand through `Deref`.
pub struct Producer {
    pub service: Service,
    api: Api,
}

impl Producer {
    pub async fn start(sidecar_port: &str, env: &[(&str, &str)]) -> Self {
        let mut all = vec![("PORT", "0"), ("DAPR_GRPC_PORT", sidecar_port)];
        all.extend_from_slice(env);
        let mut service = Service::spawn(bin(), &all);
        let addr = service.addr().await;
        let token = env
            .iter()
            .find(|(name, _)| *name == "PRODUCER_API_TOKEN")
            .map(|(_, token)| (*token).to_owned());
        Self {
            service,
            api: Api::new(addr, token),
        }
    }

    /// SIGTERM, then expect a clean exit.
    pub async fn stop(self) {
        self.service.stop().await;
    }
}

impl Deref for Producer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A producer's port as its callers use it: REST and gRPC on one address, with its token.
pub struct Api {
    /// `http://{addr}`: REST and gRPC share the port.
    pub base: String,
    pub http: reqwest::Client,
    /// PRODUCER_API_TOKEN, which the helpers below then send.
    pub token: Option<String>,
}

impl Api {
    /// The port at `addr`, with PRODUCER_API_TOKEN `token` if it has one.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: http_client(),
            token,
        }
    }

    /// The producer's port.
    pub fn addr(&self) -> std::net::SocketAddr {
        let addr = self.base.strip_prefix("http://").expect("an http:// base");
        addr.parse().expect("an IP address and port")
    }

    /// `request` with the producer's token, when it has one, as an authorized gRPC caller sends it.
    pub fn authorized<T>(&self, request: impl IntoRequest<T>) -> Request<T> {
        let mut request = request.into_request();
        if let Some(token) = &self.token {
            let value = bearer(token).parse().expect("an ASCII token");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// A URL on the producer's port.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /MessageProducer` with `headers` and a raw `body`, and the producer's token if it has
    /// one; answers the status and the JSON body.
    /// The future owns what it needs: a test may spawn it and act while the batch runs.
    pub fn post_raw(
        &self,
        headers: &[(&str, &str)],
        body: &str,
    ) -> impl Future<Output = (StatusCode, Value)> + Send + use<> {
        let mut request = self
            .http
            .post(self.url("/MessageProducer"))
            .body(body.to_owned());
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, bearer(token));
        }
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
        let request = self.authorized(batch(count, 0));
        let reply = self.client().await.produce(request).await;
        assert_eq!(reply.expect("Produce succeeds").into_inner().sent, count);
    }

    pub async fn get(&self, path: &str) -> StatusCode {
        self.http.get(self.url(path)).send().await.unwrap().status()
    }

    /// `GET path`, read as JSON (the OpenAPI document, say).
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.base.clone()).unwrap();
        endpoint.connect().await.expect("gRPC connects")
    }

    pub async fn client(&self) -> ProducerClient<tonic::transport::Channel> {
        ProducerClient::new(self.channel().await)
    }

    /// The producer's `/metrics`, scraped as Prometheus would.
    pub async fn metrics(&self) -> Exposition {
        exposition::scrape(&self.http, &self.url("/metrics")).await
    }
}

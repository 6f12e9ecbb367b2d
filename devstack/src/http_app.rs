//! An HTTP app (daprd's `--app-protocol http`), driven as daprd's HTTP app channel drives it
//! (dapr/dapr `pkg/runtime/processor/binding/send.go`, `pkg/channel/http/http_channel.go`):
//! `OPTIONS /<binding-name>` at start asks whether the app takes a binding (any 2xx, or 405,
//! means yes); each event is `POST /<binding-name>` with the data as the body, `Content-Type:
//! application/json`, the event metadata as headers, `traceparent` and, with an app token,
//! `dapr-api-token`; any 2xx completes it, unless a Resiliency retry policy applies (`delivery`
//! then takes only 200). Health is `GET /healthz`, any 2xx healthy.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use pipeline::{api_token::API_TOKEN_METADATA, trace_context::TRACEPARENT};
use reqwest::{
    Client, Method, StatusCode,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
};
use tracing::{debug, info, warn};

use crate::app::CallError;

/// daprd's default `--app-health-check-path`.
pub const HEALTH_CHECK_PATH: &str = "/healthz";
/// daprd sends binding events (and its probe) as JSON whatever the data is
/// (`invokev1.JSONContentType`).
const JSON: &str = "application/json";
/// How long the subscription probe may take; daprd bounds it with `appBindingOptionsTimeout`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of an error answer's body goes into the log line.
const REASON_BODY_LIMIT: usize = 200;

/// The sidecar's client of one HTTP app. An event's call has no time limit of its own, as the
/// binding's handler has none (`handlerTimeoutInSec` 0): the binding renews the message's lock
/// while the app works.
#[derive(Clone)]
pub struct HttpAppClient {
    client: Client,
    base: String,
}

impl HttpAppClient {
    pub fn new(address: SocketAddr) -> reqwest::Result<Self> {
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // Loopback only: never through a proxy the environment may name.
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            base: format!("http://{address}"),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// Which of `bindings` the app takes, by daprd's `OPTIONS /<binding-name>` probe; `None`
    /// while the app is not answering (daprd waits for the app port before it probes).
    pub async fn subscribed_bindings(&self, bindings: &[String]) -> Option<Vec<String>> {
        let mut subscribed = Vec::new();
        for binding in bindings {
            let answer = self
                .client
                .request(Method::OPTIONS, self.url(binding))
                .header(CONTENT_TYPE, JSON)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await;
            let status = match answer {
                Ok(response) => response.status(),
                Err(error) => {
                    debug!(app = %self.base, binding, %error, "app not answering OPTIONS yet");
                    return None;
                }
            };
            if takes_binding(status) {
                subscribed.push(binding.clone());
            } else {
                info!(app = %self.base, binding, %status, "app has not subscribed to binding");
            }
        }
        Some(subscribed)
    }

    /// One `GET /healthz`: a 2xx is healthy. A 404 (no health endpoint) counts as healthy too,
    /// as daprd without app health checks treats an app, and as the sidecar treats a gRPC app
    /// without AppCallbackHealthCheck.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        match self
            .client
            .get(self.url(HEALTH_CHECK_PATH))
            .timeout(timeout)
            .send()
            .await
        {
            Ok(response) => {
                response.status().is_success() || response.status() == StatusCode::NOT_FOUND
            }
            Err(_) => false,
        }
    }

    /// `POST /<binding>` with one event; the status of a 2xx answer, an error otherwise.
    pub async fn deliver(
        &self,
        binding: &str,
        data: Vec<u8>,
        metadata: &HashMap<String, String>,
        traceparent: &str,
        app_api_token: Option<&[u8]>,
    ) -> Result<u16, CallError> {
        let mut headers = metadata_headers(metadata);
        if let Ok(value) = HeaderValue::from_str(traceparent) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(token) = app_api_token.and_then(|t| HeaderValue::from_bytes(t).ok()) {
            headers.insert(API_TOKEN_METADATA, token);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        let response = self
            .client
            .post(self.url(binding))
            .headers(headers)
            .body(data)
            .send()
            .await
            .map_err(|error| CallError {
                answered: false,
                http_status: None,
                reason: format!("app did not answer: {error}"),
            })?;
        let status = response.status();
        // daprd reads the whole answer either way; so the connection can be reused.
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let body = String::from_utf8_lossy(&body[..body.len().min(REASON_BODY_LIMIT)]).into_owned();
        Err(CallError {
            answered: true,
            http_status: Some(status.as_u16()),
            reason: format!("app answered HTTP {status}: {body}"),
        })
    }
}

/// daprd's answer to its OPTIONS probe: `code/100 == 2 || code == http.StatusMethodNotAllowed`.
fn takes_binding(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED
}

/// The event metadata as daprd's `InternalMetadataToHTTPHeader` turns it into headers: trace,
/// content and hop-by-hop keys are not copied, and gRPC-reserved names get the `dapr-` prefix.
fn metadata_headers(metadata: &HashMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(metadata.len() + 3);
    for (key, value) in metadata {
        let key = key.to_ascii_lowercase();
        if skipped(&key) {
            continue;
        }
        let name = if key.starts_with("grpc-") {
            format!("dapr-{key}")
        } else {
            key
        };
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => warn!(
                key = name,
                "event metadata that cannot be an HTTP header; not sent"
            ),
        }
    }
    headers
}

fn skipped(key: &str) -> bool {
    matches!(
        key,
        "traceparent"
            | "tracestate"
            | "grpc-trace-bin"
            | "destination-app-id"
            | "content-type"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "te"
            | "trailer"
            | "proxy-authorization"
            | "proxy-authenticate"
    ) || key.ends_with("-bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_probe_answers_as_daprd_reads_them() {
        for (code, takes) in [
            (200, true),
            (204, true),
            (405, true),
            (404, false),
            (500, false),
        ] {
            assert_eq!(
                takes_binding(StatusCode::from_u16(code).unwrap()),
                takes,
                "{code}"
            );
        }
    }

    #[test]
    fn metadata_becomes_headers_as_daprd_copies_it() {
        let metadata = HashMap::from(
            [
                ("id", "m-1"),
                ("correlationID", "c-1"),
                ("grpc-status", "x"),
                ("traceparent", "00-x"),
                ("content-type", "text/plain"),
                ("connection", "close"),
                ("a\nb", "v"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let headers = metadata_headers(&metadata);
        let mut names: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["correlationid", "dapr-grpc-status", "id"]);
        assert_eq!(headers["id"], "m-1");
        assert_eq!(headers["correlationid"], "c-1");
    }
}

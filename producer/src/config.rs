//! Producer configuration: every setting is a flag and an environment variable, parsed and
//! checked before any port is bound. Dapr's own variable names are reused where they exist.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use clap::Parser;
use http::Uri;
use pipeline::{
    api_token::{ApiToken, Secret},
    backoff::Backoff,
    cli::{non_empty, positive_duration},
    dapr_endpoint,
    http_server::HttpLimits,
    telemetry::LogArgs,
};

use crate::{batch::Limits, publisher::SidecarRetryPolicy};

/// REST + gRPC front that sends messages to a Dapr output binding.
#[derive(Debug, Clone, Parser)]
#[command(name = "producer", version, about, long_about = None)]
pub struct Config {
    /// Port of the single public endpoint serving both REST (HTTP/1.1, h2c) and gRPC.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on; 0.0.0.0 so the pod's Service and probes reach it.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Name of the Dapr output binding (the Component's metadata.name).
    #[arg(long, env = "BINDING_NAME", default_value = "message-queue", value_parser = non_empty)]
    pub binding_name: String,

    /// Sidecar gRPC endpoint (`host:port`, `http://host:port`, `dns:///host:port`); overrides
    /// DAPR_GRPC_PORT. TLS endpoints are refused: the sidecar is plaintext on the pod's loopback.
    #[arg(long, env = "DAPR_GRPC_ENDPOINT", value_parser = parse_endpoint)]
    pub dapr_grpc_endpoint: Option<Uri>,

    /// Sidecar gRPC port on 127.0.0.1, set by the Dapr sidecar injector and the Dapr CLI.
    #[arg(long, env = "DAPR_GRPC_PORT", default_value_t = 50001)]
    pub dapr_grpc_port: u16,

    /// Token sent as `dapr-api-token` metadata on every sidecar call, when the sidecar requires one.
    #[arg(long, env = "DAPR_API_TOKEN", hide_env_values = true, value_parser = Secret(ApiToken::from_config))]
    pub dapr_api_token: Option<ApiToken>,

    /// The producer's own token: when set, every caller must present it as `Authorization:
    /// Bearer <token>` (gRPC: `authorization` metadata), except for health, readiness, metrics
    /// and the API docs. Unset, anyone who reaches the port may send: keep it inside the cluster.
    #[arg(long, env = "PRODUCER_API_TOKEN", hide_env_values = true, value_parser = Secret(ApiToken::bearer_from_config))]
    pub producer_api_token: Option<ApiToken>,

    /// Largest `count` one request may ask for.
    #[arg(long, env = "MAX_COUNT", default_value_t = NonZeroU32::new(10_000).unwrap())]
    pub max_count: NonZeroU32,

    /// Messages in flight to the sidecar at once when the interval is 0. 32 sends up to 6,400
    /// messages/s when each send takes a broker's 5 ms, more than a Standard Service Bus namespace
    /// accepts; raise it for a Premium namespace or a slower, remote broker.
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = NonZeroU32::new(32).unwrap())]
    pub send_concurrency: NonZeroU32,

    /// Batches running at once; more get 429 / RESOURCE_EXHAUSTED instead of waiting.
    #[arg(long, env = "MAX_BATCHES", default_value_t = NonZeroU32::new(64).unwrap())]
    pub max_batches: NonZeroU32,

    /// Retries of an InvokeBinding that failed with UNAVAILABLE, lost its connection, or ran past
    /// its deadline; 0 disables. A retry after a deadline or a lost connection can send a message
    /// twice, both with its one MessageId: a queue with duplicate detection keeps one copy.
    #[arg(long, env = "SIDECAR_RETRIES", default_value_t = 3)]
    pub sidecar_retries: u32,

    /// Backoff before the first retry; doubles per retry, with full jitter.
    #[arg(long, env = "RETRY_BACKOFF", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Longest backoff between two retries.
    #[arg(long, env = "MAX_RETRY_BACKOFF", default_value = "2s", value_parser = humantime::parse_duration)]
    pub max_retry_backoff: Duration,

    /// Deadline of one InvokeBinding call (e.g. `5s`, `500ms`).
    #[arg(long, env = "SIDECAR_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub sidecar_timeout: Duration,

    /// How long running batches may go on after SIGTERM before they are stopped (their in-flight
    /// calls still complete). Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub http: HttpLimits,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// How many messages and batches the producer takes on.
    pub fn limits(&self) -> Limits {
        Limits {
            max_count: self.max_count,
            concurrency: self.send_concurrency,
            max_batches: self.max_batches,
        }
    }

    /// How failed sidecar calls are retried.
    pub fn retry_policy(&self) -> SidecarRetryPolicy {
        SidecarRetryPolicy {
            retries: self.sidecar_retries,
            backoff: Backoff {
                base: self.retry_backoff,
                max: self.max_retry_backoff.max(self.retry_backoff),
            },
        }
    }

    /// The sidecar's gRPC URI: DAPR_GRPC_ENDPOINT, else 127.0.0.1:DAPR_GRPC_PORT.
    pub fn sidecar_uri(&self) -> Uri {
        dapr_endpoint::resolve(self.dapr_grpc_endpoint.as_ref(), self.dapr_grpc_port)
    }
}

fn parse_endpoint(value: &str) -> Result<Uri, String> {
    dapr_endpoint::parse(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_dapr_and_the_original() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.binding_name, "message-queue");
        assert_eq!(c.sidecar_uri().to_string(), "http://127.0.0.1:50001/");
        assert!(c.dapr_api_token.is_none());
        assert_eq!(c.sidecar_timeout, Duration::from_secs(5));
    }

    #[test]
    fn token_is_kept_out_of_debug_output() {
        let c = parse(&["--dapr-api-token", "s3cret"]).unwrap();
        assert_eq!(
            c.dapr_api_token
                .as_ref()
                .unwrap()
                .metadata_value()
                .to_str()
                .unwrap(),
            "s3cret"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn producer_token_is_a_bearer_token_kept_out_of_debug_and_errors() {
        let c = parse(&[]).unwrap();
        assert!(c.producer_api_token.is_none());
        let c = parse(&["--producer-api-token", "s3cret-T0ken"]).unwrap();
        assert!(
            c.producer_api_token
                .as_ref()
                .unwrap()
                .matches(b"s3cret-T0ken")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        for bad in ["", "s3cret\n", "s3cret token", "s3cret:x"] {
            let err = parse(&["--producer-api-token", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--producer-api-token"), "{bad:?}: {err}");
            assert!(err.contains("bearer token"), "{bad:?}: {err}");
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn endpoint_overrides_port() {
        let c = parse(&["--dapr-grpc-port", "1", "--dapr-grpc-endpoint", "sidecar:7"]).unwrap();
        assert_eq!(c.sidecar_uri().to_string(), "http://sidecar:7/");
        let c = parse(&["--dapr-grpc-port", "3"]).unwrap();
        assert_eq!(c.sidecar_uri().to_string(), "http://127.0.0.1:3/");
    }

    #[test]
    fn rejects_bad_values_with_the_reason() {
        for (args, reason) in [
            (&["--port", "99999"][..], "99999"),
            (&["--max-count", "0"], "0"),
            (&["--send-concurrency", "0"], "0"),
            (&["--binding-name", " "], "must not be empty"),
            (&["--sidecar-timeout", "0s"], "greater than 0"),
            (&["--sidecar-timeout", "soon"], "soon"),
            (&["--dapr-grpc-endpoint", "https://x"], "TLS"),
            (&["--dapr-api-token", "bad\ntoken"], "visible ASCII"),
            (&["--producer-api-token", "bad token"], "bearer token"),
            (&["--log-format", "xml"], "xml"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }
}

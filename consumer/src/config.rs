//! Consumer configuration: every setting is a flag and an environment variable, parsed and
//! checked before any port is bound. Dapr's own variable names are reused where they exist.

use std::{net::IpAddr, time::Duration};

use clap::Parser;
use pipeline::telemetry::LogArgs;

use crate::callback::ConsumerSettings;
use pipeline::{
    api_token::{ApiToken, Secret},
    cli::non_empty,
    http_server::HttpLimits,
};

/// Dapr input-binding consumer: daprd delivers each queue message to it over gRPC (AppCallback).
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version, long_about = None)]
pub struct Config {
    /// Port of the gRPC AppCallback server; daprd's --app-port must match. 0 picks a free port.
    #[arg(long, env = "APP_PORT", default_value_t = 50051)]
    pub app_port: u16,

    /// Address to listen on; 0.0.0.0 because the kubelet's gRPC probes target the pod IP.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port of the HTTP server for Prometheus metrics (`GET /metrics`), on the same address.
    /// daprd's own metrics default to 9090 too: next to daprd in one pod, move one of them.
    /// 0 picks a free port.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,

    /// Name of the Dapr input binding (the Component's metadata.name) this app consumes.
    #[arg(long, env = "BINDING_NAME", default_value = "message-queue", value_parser = non_empty)]
    pub binding_name: String,

    /// Simulated work per message (e.g. `5s`, `250ms`, `0s`); 5 s matches the original sample.
    #[arg(long, env = "WORK_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub work_duration: Duration,

    /// Messages processed at once by this instance (1 to 65535). 1, one after the other, is the
    /// original sample's behaviour and Service Bus's default; KEDA scales out instances instead.
    #[arg(
        long,
        env = "MAX_CONCURRENCY",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub max_concurrency: u16,

    /// After SIGTERM, how long in-flight messages may run before the process stops anyway
    /// (unfinished ones are redelivered by the broker). Keep it below the pod's
    /// terminationGracePeriodSeconds (30 s by default), or the kubelet kills the process first.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Token daprd must send as `dapr-api-token` with each binding event (Dapr's app API token).
    /// Unset or empty: events are accepted without one, as daprd then sends none.
    #[arg(long, env = "APP_API_TOKEN", hide_env_values = true, value_parser = Secret(ApiToken::from_config))]
    pub app_api_token: Option<ApiToken>,

    /// Limits of the metrics port (HTTP); the HTTP/2 ones apply to the gRPC port too.
    #[command(flatten)]
    pub http: HttpLimits,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// What the AppCallback service needs from the configuration.
    pub fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            binding_name: self.binding_name.clone(),
            work_duration: self.work_duration,
            max_concurrency: usize::from(self.max_concurrency),
            drain_timeout: self.drain_timeout,
            api_token: self.app_api_token.clone().filter(|t| !t.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use pipeline::telemetry::LogFormat;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("consumer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original_sample() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.app_port, 50051);
        assert_eq!(config.bind_address.to_string(), "0.0.0.0");
        assert_eq!(config.metrics_port, 9090);
        assert_eq!(config.binding_name, "message-queue");
        assert_eq!(config.work_duration, Duration::from_secs(5));
        assert_eq!(config.max_concurrency, 1);
        assert_eq!(config.drain_timeout, Duration::from_secs(25));
        assert!(config.app_api_token.is_none());
        assert_eq!(config.log.filter, "info");
        assert_eq!(config.log.log_format, LogFormat::Text);
        assert!(config.settings().api_token.is_none());
    }

    #[test]
    fn parses_every_flag() {
        let config = parse(&[
            "--app-port=0",
            "--bind-address=127.0.0.1",
            "--metrics-port=0",
            "--binding-name=orders",
            "--work-duration=250ms",
            "--max-concurrency=4",
            "--drain-timeout=1m",
            "--app-api-token=s3cret",
            "--log-filter=debug",
            "--log-format=json",
        ])
        .unwrap();
        assert_eq!(config.app_port, 0);
        assert_eq!(config.bind_address.to_string(), "127.0.0.1");
        assert_eq!(config.metrics_port, 0);
        assert_eq!(config.binding_name, "orders");
        assert_eq!(config.work_duration, Duration::from_millis(250));
        assert_eq!(config.max_concurrency, 4);
        assert_eq!(config.drain_timeout, Duration::from_secs(60));
        assert_eq!(config.log.filter, "debug");
        assert_eq!(config.log.log_format, LogFormat::Json);
        let settings = config.settings();
        assert_eq!(settings.max_concurrency, 4);
        assert!(settings.api_token.is_some_and(|t| t.matches(b"s3cret")));
    }

    #[test]
    fn every_setting_has_its_environment_variable() {
        let command = Config::command();
        let envs: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect();
        for name in [
            "APP_PORT",
            "BIND_ADDRESS",
            "METRICS_PORT",
            "BINDING_NAME",
            "WORK_DURATION",
            "MAX_CONCURRENCY",
            "DRAIN_TIMEOUT",
            "APP_API_TOKEN",
            "HTTP_HEADER_READ_TIMEOUT",
            "HTTP_MAX_CONNECTIONS",
            "HTTP2_MAX_CONCURRENT_STREAMS",
            "RUST_LOG",
            "LOG_FORMAT",
        ] {
            assert!(
                envs.iter().any(|e| e == name),
                "{name} missing from {envs:?}"
            );
        }
    }

    #[test]
    fn zero_work_duration_is_allowed() {
        assert_eq!(
            parse(&["--work-duration=0s"]).unwrap().work_duration,
            Duration::ZERO
        );
    }

    #[test]
    fn rejects_zero_or_oversized_concurrency() {
        for bad in ["0", "-1", "65536", "many"] {
            let err = parse(&[&format!("--max-concurrency={bad}")]).unwrap_err();
            assert!(err.to_string().contains("--max-concurrency"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for flag in ["--work-duration", "--drain-timeout"] {
            for bad in ["abc", "5", "-1s", ""] {
                let err = parse(&[&format!("{flag}={bad}")]).unwrap_err();
                assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
            }
        }
    }

    #[test]
    fn rejects_an_empty_binding_name() {
        for bad in ["", "  "] {
            let err = parse(&[&format!("--binding-name={bad}")]).unwrap_err();
            assert!(err.to_string().contains("must not be empty"), "{err}");
        }
    }

    #[test]
    fn rejects_a_bad_port_and_address() {
        assert!(parse(&["--app-port=70000"]).is_err());
        assert!(parse(&["--metrics-port=70000"]).is_err());
        assert!(parse(&["--bind-address=localhost"]).is_err());
    }

    #[test]
    fn an_empty_token_disables_the_check_as_in_daprd() {
        let config = parse(&["--app-api-token="]).unwrap();
        assert!(config.settings().api_token.is_none());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = parse(&["--app-api-token=s3cret"]).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{:?}", config.settings()).contains("s3cret"));
    }
}

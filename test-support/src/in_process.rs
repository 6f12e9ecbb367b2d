//! The producer's and the consumer's libraries serving in the test process, on ephemeral loopback
//! ports, for tests of what they do rather than of their process: no binary to start, no log to
//! read, and a paused clock ([`super::clock`]) reaches them. A cancelled token stands in for
//! SIGTERM. Their settings come from command-line flags alone ([`parse_args`]).

use std::{net::SocketAddr, ops::Deref};

use tokio::net::TcpListener;

use super::{
    Served,
    consumer::AppPort,
    exposition::{self, Exposition},
    http_client,
    producer::Api,
};

/// Parses `args` (the program's name first) as `C`'s command line alone: the environment
/// variables its settings also read are left out, so nothing in the test's own environment (a
/// `PORT` or `RUST_LOG` of the developer's shell) changes a setting. A flag given twice takes
/// its last value, so callers can override the defaults they put first.
pub fn parse_args<C: clap::Parser>(args: &[&str]) -> C {
    let command = C::command()
        .args_override_self(true)
        .mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    C::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `producer::serve` on an ephemeral port, talking to the sidecar on `sidecar_port`; its
/// [`Api`] is at hand through `Deref`.
pub struct Producer {
    api: Api,
    served: Served,
}

impl Producer {
    /// Serves with `args` (e.g. `--max-count=5`) after the port settings.
    pub async fn start(sidecar_port: &str, args: &[&str]) -> Self {
        let sidecar = format!("--dapr-grpc-port={sidecar_port}");
        let mut all = vec!["producer", "--bind-address=127.0.0.1", "--port=0", &sidecar];
        all.extend_from_slice(args);
        let config: producer::Config = parse_args(&all);
        let listener = TcpListener::bind((config.bind_address, config.port))
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let token = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--producer-api-token="))
            .map(str::to_owned);
        let served = Served::spawn("the producer", |shutdown| {
            producer::serve(listener, config, shutdown)
        });
        Self {
            api: Api::new(addr, token),
            served,
        }
    }

    /// Stops it as SIGTERM does, and waits, bounded, for `serve` to end well.
    pub async fn stop(self) {
        self.served.stop("the producer").await;
    }
}

impl Deref for Producer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// `consumer::serve` on ephemeral ports, with no simulated work unless `args` say otherwise; its
/// [`AppPort`] is at hand through `Deref`.
pub struct Consumer {
    port: AppPort,
    /// The metrics port.
    pub metrics: SocketAddr,
    served: Served,
}

impl Consumer {
    /// Serves with `args` (e.g. `--work-duration=5s`) after the port settings.
    pub async fn start(args: &[&str]) -> Self {
        let mut all = vec![
            "consumer",
            "--bind-address=127.0.0.1",
            "--app-port=0",
            "--metrics-port=0",
            "--work-duration=0s",
        ];
        all.extend_from_slice(args);
        let config: consumer::Config = parse_args(&all);
        let listeners = consumer::Listeners::bind(&config)
            .await
            .expect("binding loopback ports");
        let addr = listeners.app.local_addr().expect("a bound address");
        let metrics = listeners.metrics.local_addr().expect("a bound address");
        let served = Served::spawn("the consumer", |shutdown| {
            consumer::serve(listeners, config, shutdown)
        });
        Self {
            port: AppPort::new(addr),
            metrics,
            served,
        }
    }

    /// Its `GET /metrics`, scraped as Prometheus would, on a connection of its own.
    pub async fn scrape(&self) -> Exposition {
        let url = format!("http://{}/metrics", self.metrics);
        exposition::scrape(&http_client(), &url).await
    }

    /// Scrapes until `series` reads `value` ([`exposition::wait_for`]); returns that page.
    pub async fn wait_metric(&self, series: &str, value: f64) -> Exposition {
        exposition::wait_for(|| self.scrape(), series, value).await
    }

    /// Starts its shutdown, as SIGTERM does, without waiting for it.
    pub fn signal(&self) {
        self.served.signal();
    }

    /// Whether `serve` has ended.
    pub fn is_stopped(&self) -> bool {
        self.served.is_finished()
    }

    /// Stops it as SIGTERM does, and waits, bounded, for `serve` to end well.
    pub async fn stop(self) {
        self.served.stop("the consumer").await;
    }
}

impl Deref for Consumer {
    type Target = AppPort;

    fn deref(&self) -> &AppPort {
        &self.port
    }
}

//! devstack configuration. The sidecar reuses daprd's variable names (DAPR_GRPC_PORT,
//! DAPR_HTTP_PORT, DAPR_API_TOKEN, APP_API_TOKEN) so the same environment drives both.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};
use pipeline::{
    api_token::{ApiToken, Secret},
    cli::positive_duration,
    http_server::HttpLimits,
    telemetry::LogArgs,
};
use tracing::info;

use crate::{
    app::{AppProtocol, AppTarget},
    chaos::Schedule,
    dedup::{self, DetectionSettings},
    journey,
    manifests,
    queue::QueueSettings,
    resiliency::{self, BindingRetryPolicy},
    // `devstack plan`'s arguments live with the command.
    scaling::plan::command::PlanArgs,
};

/// `--resiliency none`: no retry policy; a failed call abandons the message at once.
pub const NO_RESILIENCY: &str = "none";

/// Local stack: devstack's sidecar, which stands in for daprd and the queue, the consumer(s) and
/// the producer, on loopback.
///
/// With no subcommand, starts everything (`up`). The sidecar speaks Dapr's real gRPC protocol on
/// both sides, and drives HTTP apps as daprd does (`sidecar --app http://HOST:PORT`); it is a
/// development tool, not a broker: in production the queue is Azure Service Bus behind daprd.
///
/// The consumers and the producer inherit this environment, so their own settings (e.g.
/// WORK_DURATION, DRAIN_TIMEOUT, LOG_FORMAT) pass through; see `consumer --help`.
#[derive(Debug, Parser)]
#[command(name = "devstack", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the sidecar, the consumers and the producer (the default).
    Up(UpArgs),
    /// Run only the sidecar, for a producer and consumers started by hand.
    Sidecar(SidecarOnlyArgs),
    /// Plan what a ScaledObject will do under a load, in simulated time, before deploying it:
    /// the --autoscale rules, no process started.
    Plan(PlanArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of consumer processes (competing consumers on the one queue).
    #[arg(long, env = "CONSUMERS", default_value = "1")]
    pub consumers: NonZeroUsize,
    /// Run the consumers as the replicas of a Deployment that KEDA and the HPA scale, from this
    /// ScaledObject (and the Deployment beside it, for terminationGracePeriodSeconds):
    /// minReplicaCount to maxReplicaCount consumers as the queue fills and empties, each on free
    /// ports (APP_PORT and METRICS_PORT do not apply), shown in /devstack/status. Without
    /// PATH, the committed deploy/base/consumer-scaling.yaml and its Deployment, built into
    /// devstack. A ScaledObject devstack cannot honour stops it at start. Not with --consumers.
    #[arg(
        long,
        env = "AUTOSCALE",
        value_name = "PATH",
        num_args = 0..=1,
        conflicts_with = "consumers"
    )]
    pub autoscale: Option<Option<PathBuf>>,
    /// With --autoscale: multiplies every control-plane period (pollingInterval, cooldownPeriod,
    /// initialCooldownPeriod, the HPA's 15 s sync, stabilisation windows, policy periods), e.g.
    /// 0.1 to watch a minute's scaling in 6 s with the same decisions. The consumers' own
    /// settings (WORK_DURATION, drain) and terminationGracePeriodSeconds are not scaled.
    #[arg(
        long,
        env = "TIME_SCALE",
        default_value_t = 1.0,
        value_parser = time_scale,
        requires = "autoscale"
    )]
    pub time_scale: f64,
    /// The producer's port (REST and gRPC); 0 picks a free port, shown in the banner.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// The first consumer's app port; consumer N listens on APP_PORT + N - 1 (0: every consumer
    /// picks a free port; the addresses are logged and in /devstack/status).
    #[arg(long, env = "APP_PORT", default_value_t = 50051)]
    pub app_port: u16,
    /// The first consumer's metrics port; consumer N serves /metrics on METRICS_PORT + N - 1
    /// (0: every consumer picks a free port and logs it).
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// Events in flight per consumer; passed to each consumer too.
    #[arg(long, env = "MAX_CONCURRENCY", default_value = "1")]
    pub max_concurrency: NonZeroUsize,
    // Failures, provoked and survived.
    /// A seeded random schedule of faults: comma-separated fault kinds (kill, sigterm,
    /// pause[=5s], unavailable[=2s], latency[=500ms/5s], lost-complete, lost-lock, all) and
    /// settings (every=5s: the mean gap; seed=N; count=N), e.g.
    /// `seed=7,every=2s,kill,pause=3s,lost-lock`. See docs/failure.md.
    #[arg(long, env = "CHAOS", value_name = "SPEC", value_parser = Schedule::parse)]
    pub chaos: Option<Schedule>,
    /// Stop the whole stack when a consumer exits on its own, instead of restarting it as the
    /// kubelet does (restartPolicy: Always, with CrashLoopBackOff): for scripts that must fail
    /// on a consumer's crash.
    #[arg(long, env = "STOP_ON_CRASH")]
    pub stop_on_crash: bool,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SidecarOnlyArgs {
    /// A consumer app: `HOST:PORT` or `HOST:PORT=CONCURRENCY` for a gRPC app, the same after
    /// `http://` (e.g. `http://127.0.0.1:5000`) for an HTTP app (daprd's `--app-protocol http`);
    /// repeat for several.
    #[arg(long = "app", env = "DEVSTACK_APPS", value_delimiter = ',', value_parser = parse_app)]
    pub apps: Vec<AppSpec>,
    /// Default events in flight per app, when an `--app` gives none.
    #[arg(long, env = "MAX_CONCURRENCY", default_value = "1")]
    pub max_concurrency: NonZeroUsize,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// An `--app` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSpec {
    pub protocol: AppProtocol,
    pub address: SocketAddr,
    pub max_concurrency: Option<NonZeroUsize>,
}

impl SidecarOnlyArgs {
    pub fn targets(&self) -> Vec<AppTarget> {
        self.apps
            .iter()
            .map(|app| AppTarget {
                protocol: app.protocol,
                address: app.address,
                max_concurrency: app.max_concurrency.unwrap_or(self.max_concurrency).get(),
            })
            .collect()
    }
}

/// The sidecar's own settings.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// The app id, like daprd's `--app-id`: the metadata API reports it, and a Resiliency's
    /// `scopes` are matched against it. `consumer`, as deploy/ names the app the sidecar delivers
    /// to (its daprd is the one this sidecar plays for binding events).
    #[arg(long, env = "APP_ID", default_value = "consumer")]
    pub app_id: String,
    /// gRPC port of the runtime API (what producers call), on 127.0.0.1; 0 picks a free port.
    #[arg(long, env = "DAPR_GRPC_PORT", default_value_t = 50001)]
    pub grpc_port: u16,
    /// HTTP port (health, metadata, `POST /v1.0/bindings/{name}`, queue status), on 127.0.0.1;
    /// 0 picks a free port.
    #[arg(long, env = "DAPR_HTTP_PORT", default_value_t = 3500)]
    pub http_port: u16,
    /// Input/output binding names served, each its own queue (comma-separated).
    #[arg(long, env = "BINDING_NAME", default_value = "message-queue", value_delimiter = ',', value_parser = binding_name)]
    pub bindings: Vec<String>,
    /// Deliveries before a message is dead-lettered (Service Bus default: 10).
    #[arg(long, env = "MAX_DELIVERY_COUNT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_delivery_count: u32,
    /// How long a receive locks a message (Service Bus default: 60s); the binding renews the
    /// lock while the app works on it. A lock that runs out makes the message available again.
    #[arg(long, env = "LOCK_DURATION", default_value = "60s", value_parser = positive_duration)]
    pub lock_duration: Duration,
    /// How often the binding renews the locks of the messages its app holds: the Service Bus
    /// binding's lockRenewalInSec (its default: 20s). Keep it below LOCK_DURATION.
    #[arg(long, env = "LOCK_RENEWAL_INTERVAL", default_value = "20s", value_parser = positive_duration)]
    pub lock_renewal_interval: Duration,
    /// Duplicate detection, as the deployment guide creates the queue: a send whose MessageId the
    /// queue accepted within the window is answered with success and dropped (counted in
    /// /devstack/status and /devstack/metrics). `false` takes every copy, and counts them, to
    /// show what happens without it.
    #[arg(long, env = "DUPLICATE_DETECTION", default_value_t = true, action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub duplicate_detection: bool,
    /// How long the queue remembers an accepted MessageId: the guide's queue keeps Service Bus's
    /// default, 10 minutes; Service Bus takes 20 s to 7 days.
    #[arg(long, env = "DUPLICATE_DETECTION_WINDOW", default_value = "10m", value_parser = detection_window)]
    pub duplicate_detection_window: Duration,
    /// Dead-letter a message whose time-to-live (`ttl`, `ttlInSeconds`) runs out, rather than
    /// remove it: the queue's `deadLetteringOnMessageExpiration` (Service Bus default: false).
    #[arg(long, env = "DEAD_LETTER_ON_EXPIRATION", default_value_t = false, action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub dead_letter_on_expiration: bool,
    /// Failed deliveries handled per second, per app and binding, before the sidecar pauses
    /// receiving: the Service Bus binding's `maxRetriableErrorsPerSec` (its default: 10; 0: no
    /// limit). An abandoned message is available again at once, as in Service Bus; this is what
    /// spaces out its redeliveries.
    #[arg(long, env = "MAX_RETRIABLE_ERRORS_PER_SEC", default_value_t = 10)]
    pub max_retriable_errors_per_sec: u32,
    /// A Dapr Resiliency file: each binding's inbound retry policy is applied to the app's
    /// OnBindingEvent calls before the message is abandoned, as daprd applies it (scopes matched
    /// against app id `consumer`). Without it, the committed deploy/base/resiliency.yaml, built
    /// into devstack. `none`: no Resiliency. Inbound timeouts and circuit breakers are not
    /// emulated: a file that sets them for a binding stops devstack at start.
    #[arg(long, env = "RESILIENCY", value_name = "PATH")]
    pub resiliency: Option<PathBuf>,
    /// How often each app's health is probed: AppCallbackHealthCheck, or an HTTP app's
    /// `GET /healthz`.
    #[arg(long, env = "APP_HEALTH_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub app_health_interval: Duration,
    /// How often the queue status is logged (when it changed).
    #[arg(long, env = "STATUS_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub status_interval: Duration,
    /// Token producers must send as `dapr-api-token`, like daprd's DAPR_API_TOKEN.
    #[arg(long, env = "DAPR_API_TOKEN", hide_env_values = true, value_parser = Secret(ApiToken::from_config))]
    pub dapr_api_token: Option<ApiToken>,
    /// Token sent to apps as `dapr-api-token` on OnBindingEvent, like daprd's APP_API_TOKEN.
    #[arg(long, env = "APP_API_TOKEN", hide_env_values = true, value_parser = Secret(ApiToken::from_config))]
    pub app_api_token: Option<ApiToken>,
    /// Messages whose journey the sidecar keeps (GET /devstack/messages/{id}), the oldest
    /// forgotten first; 0 keeps none. At most 64 events each.
    #[arg(long, env = "JOURNEY_MESSAGES", default_value_t = journey::DEFAULT_CAPACITY)]
    pub journey_messages: usize,
    /// Host names the HTTP port answers besides localhost, 127.0.0.1 and [::1] (comma-separated),
    /// for a forwarded port: `devbox.lan`, or `.app.github.dev` for that domain and its
    /// subdomains. Any other Host header is refused (a DNS-rebinding page's).
    #[arg(long, env = "DEVSTACK_ALLOWED_HOSTS", value_delimiter = ',', value_parser = allowed_host)]
    pub allowed_hosts: Vec<String>,
    /// Limits of the HTTP port; the HTTP/2 ones apply to the gRPC port too.
    #[command(flatten)]
    pub http: HttpLimits,
    #[command(flatten)]
    pub log: LogArgs,
}

impl SidecarArgs {
    /// The inbound retry policy of each binding that has one, from `--resiliency`.
    pub fn retry_policies(&self) -> anyhow::Result<BTreeMap<String, BindingRetryPolicy>> {
        let (policies, source) = match self.resiliency.as_deref() {
            Some(path) if path == Path::new(NO_RESILIENCY) => return Ok(BTreeMap::new()),
            Some(path) => (
                resiliency::load(path, &self.app_id, &self.bindings)?,
                path.display().to_string(),
            ),
            None => {
                let name = manifests::RESILIENCY.to_string();
                let text = manifests::RESILIENCY.text;
                let policies = resiliency::from_text(text, &name, &self.app_id, &self.bindings)?;
                (policies, name)
            }
        };
        for (binding, policy) in &policies {
            info!(binding, policy = policy.name, backoff = ?policy.backoff, max_retries = ?policy.max_retries, resiliency = %source, "inbound retry policy");
        }
        Ok(policies)
    }

    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            max_delivery_count: self.max_delivery_count,
            lock_duration: self.lock_duration,
            duplicate_detection: DetectionSettings {
                enabled: self.duplicate_detection,
                window: self.duplicate_detection_window,
            },
            dead_letter_on_expiration: self.dead_letter_on_expiration,
        }
    }
}

fn parse_app(value: &str) -> Result<AppSpec, String> {
    let (address, concurrency) = match value.split_once('=') {
        Some((address, n)) => (address, Some(n)),
        None => (value, None),
    };
    let address = address.trim();
    // A bare address is a gRPC app, daprd's default app protocol; `http://` makes it an HTTP one.
    let (protocol, address) = match address.split_once("://") {
        None => (AppProtocol::Grpc, address),
        Some(("http", address)) => (AppProtocol::Http, address),
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not an app protocol (HOST:PORT for gRPC, http://HOST:PORT for HTTP)"
            ));
        }
    };
    let address = address
        .parse()
        .map_err(|_| format!("{address:?} is not HOST:PORT (an IP address and a port)"))?;
    let max_concurrency = concurrency
        .map(|n| {
            n.trim()
                .parse::<NonZeroUsize>()
                .map_err(|_| format!("concurrency {n:?} is not a number >= 1"))
        })
        .transpose()?;
    Ok(AppSpec {
        protocol,
        address,
        max_concurrency,
    })
}

/// A duplicate detection window Service Bus would take.
fn detection_window(value: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))?;
    if !(dedup::MIN_WINDOW..=dedup::MAX_WINDOW).contains(&window) {
        return Err(format!(
            "{value:?} is outside the 20s to 7days Service Bus takes"
        ));
    }
    Ok(window)
}

/// A positive, finite factor.
fn time_scale(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{value:?} is not a positive number (e.g. 0.1)")),
    }
}

/// A host name (`devbox.lan`), or a domain and its subdomains (`.app.github.dev`): no scheme,
/// port or path.
fn allowed_host(value: &str) -> Result<String, String> {
    let name = value.trim().strip_prefix('.').unwrap_or(value.trim());
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    ok.then(|| value.trim().to_ascii_lowercase()).ok_or_else(|| {
        format!("{value:?} is not a host name (devbox.lan, or .example.dev for a domain and its subdomains)")
    })
}

/// Binding names go into metric labels and URLs: keep them to Kubernetes-style names.
fn binding_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| value.to_owned())
        .ok_or_else(|| format!("{value:?} is not a binding name (letters, digits, '-', '_', '.')"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("devstack").chain(args.iter().copied()))
    }

    #[test]
    fn no_subcommand_means_up_with_dapr_defaults() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            (cli.up.consumers.get(), cli.up.port, cli.up.app_port),
            (1, 8080, 50051)
        );
        let s = &cli.up.sidecar;
        assert_eq!(
            (s.grpc_port, s.http_port, s.max_delivery_count),
            (50001, 3500, 10)
        );
        assert_eq!(s.bindings, ["message-queue"]);
        // The guide's queue: duplicate detection for 10 minutes, expired messages removed.
        let queue = s.queue_settings();
        let detection = queue.duplicate_detection;
        assert_eq!(
            (
                detection.enabled,
                detection.window,
                queue.dead_letter_on_expiration
            ),
            (true, Duration::from_secs(600), false)
        );
        let cli = parse(&["--consumers", "5"]).unwrap();
        assert_eq!(cli.up.consumers.get(), 5);
    }

    #[test]
    fn autoscale_takes_an_optional_path_defaulting_to_the_committed_scaled_object() {
        let cli = parse(&[]).unwrap();
        assert_eq!((cli.up.autoscale, cli.up.time_scale), (None, 1.0));
        // No path: the committed ScaledObject, built in.
        let cli = parse(&["--autoscale"]).unwrap();
        assert_eq!(cli.up.autoscale, Some(None));
        let cli = parse(&["--autoscale", "/tmp/so.yaml", "--time-scale", "0.05"]).unwrap();
        assert_eq!(cli.up.autoscale, Some(Some(PathBuf::from("/tmp/so.yaml"))));
        assert_eq!(cli.up.time_scale, 0.05);
    }

    #[test]
    fn without_resiliency_the_committed_one_applies_and_none_means_none() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.up.sidecar.resiliency, None);
        let policies = cli.up.sidecar.retry_policies().expect("the built-in one");
        assert!(policies.contains_key("message-queue"), "{policies:?}");
        let cli = parse(&["sidecar", "--resiliency", "none"]).unwrap();
        let Some(Command::Sidecar(args)) = cli.command else {
            panic!("sidecar")
        };
        assert!(args.sidecar.retry_policies().unwrap().is_empty());
    }

    #[test]
    fn the_queue_flags_set_detection_and_expiry() {
        let cli = parse(&[
            "sidecar",
            "--duplicate-detection",
            "false",
            "--duplicate-detection-window",
            "20s",
            "--dead-letter-on-expiration",
            "true",
        ])
        .unwrap();
        let Some(Command::Sidecar(args)) = cli.command else {
            panic!("sidecar")
        };
        let queue = args.sidecar.queue_settings();
        assert_eq!(
            queue.duplicate_detection,
            DetectionSettings {
                enabled: false,
                window: Duration::from_secs(20)
            }
        );
        assert!(queue.dead_letter_on_expiration);
    }

    #[test]
    fn sidecar_takes_apps_with_optional_concurrency() {
        let cli = parse(&[
            "sidecar",
            "--app",
            "127.0.0.1:1",
            "--app",
            "127.0.0.1:2=4",
            "--bindings",
            "a,b",
        ])
        .unwrap();
        let Some(Command::Sidecar(args)) = cli.command else {
            panic!("sidecar")
        };
        let targets = args.targets();
        assert_eq!(
            targets[0],
            AppTarget {
                protocol: AppProtocol::Grpc,
                address: "127.0.0.1:1".parse().unwrap(),
                max_concurrency: 1
            }
        );
        assert_eq!(targets[1].max_concurrency, 4);
        assert_eq!(targets[1].protocol, AppProtocol::Grpc);
        assert_eq!(args.sidecar.bindings, ["a", "b"]);
    }

    #[test]
    fn http_scheme_means_an_http_app() {
        let cli = parse(&["sidecar", "--app", "http://127.0.0.1:3000=2"]).unwrap();
        let Some(Command::Sidecar(args)) = cli.command else {
            panic!("sidecar")
        };
        assert_eq!(
            args.targets(),
            [AppTarget {
                protocol: AppProtocol::Http,
                address: "127.0.0.1:3000".parse().unwrap(),
                max_concurrency: 2
            }]
        );
    }

    #[test]
    fn failure_settings_default_to_the_binding_and_take_what_they_are_given() {
        let cli = parse(&[]).unwrap();
        let s = &cli.up.sidecar;
        assert_eq!(
            (s.lock_duration, s.lock_renewal_interval),
            (Duration::from_secs(60), Duration::from_secs(20))
        );
        assert_eq!(s.journey_messages, 10_000);
        assert!(s.allowed_hosts.is_empty() && cli.up.chaos.is_none() && !cli.up.stop_on_crash);
        let cli = parse(&[
            "--chaos",
            "seed=3,kill",
            "--stop-on-crash",
            "--allowed-hosts",
            "DevBox.lan,.app.github.dev",
        ])
        .unwrap();
        assert_eq!(cli.up.chaos.unwrap().seed, Some(3));
        assert!(cli.up.stop_on_crash);
        assert_eq!(
            cli.up.sidecar.allowed_hosts,
            ["devbox.lan", ".app.github.dev"]
        );
    }

    #[test]
    fn refuses_bad_values() {
        for (args, reason) in [
            (&["--consumers", "0"][..], "0"),
            (&["sidecar", "--app", "localhost"], "HOST:PORT"),
            (&["sidecar", "--app", "127.0.0.1:1=0"], "concurrency"),
            (
                &["sidecar", "--app", "https://127.0.0.1:1"],
                "https:// is not",
            ),
            (&["sidecar", "--app", "http://localhost:1"], "HOST:PORT"),
            (&["sidecar", "--bindings", "a b"], "binding name"),
            (&["sidecar", "--max-delivery-count", "0"], "0"),
            (&["sidecar", "--lock-duration", "0s"], "greater than 0"),
            (
                &["sidecar", "--duplicate-detection-window", "19s"],
                "outside the 20s to 7days",
            ),
            (
                &["sidecar", "--duplicate-detection-window", "8days"],
                "outside the 20s to 7days",
            ),
            (&["sidecar", "--duplicate-detection", "maybe"], "maybe"),
            (
                &["sidecar", "--lock-renewal-interval", "0s"],
                "greater than 0",
            ),
            (
                &["sidecar", "--allowed-hosts", "http://x"],
                "not a host name",
            ),
            (&["sidecar", "--allowed-hosts", "x:80"], "not a host name"),
            (&["--chaos", "explode"], "not a fault kind"),
            (&["sidecar", "--chaos", "kill"], "unexpected argument"),
            (&["--time-scale", "0"], "positive number"),
            (&["--time-scale=-1"], "positive number"),
            (&["--time-scale", "inf"], "positive number"),
            (&["--time-scale", "NaN"], "positive number"),
            (&["--autoscale", "--consumers", "2"], "cannot be used with"),
            (&["--time-scale", "0.1"], "--autoscale"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }
}

//! `devstack up`: devstack's sidecar in this process, the real `consumer` and `producer` binaries
//! as child processes on loopback, their output labelled by part, and a clean stop on Ctrl-C.
//! The consumers run as the pods of a Deployment (`scaling::replicas`): restarted when they exit
//! on their own, scaled by KEDA and the HPA with `--autoscale`, broken on purpose with the
//! faults and `--chaos`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    config::UpArgs,
    dashboard::Dashboard,
    faults::ConsumerControl,
    process::{self, LISTEN_LIMIT, Launch, Listening, Process, STOP_LIMIT},
    scaling::{
        clock::Clock,
        controller::{Autoscale, Controller},
        replicas::{Ports, ReplicaSet, Template},
    },
    sidecar::{Listeners, Sidecar},
};

/// Longest the producer may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Runs the whole local stack, the sidecar on `listeners`, until `signal` is cancelled or the
/// producer exits on its own (or, with `--stop-on-crash`, a consumer does).
pub async fn serve(
    listeners: Listeners,
    args: UpArgs,
    signal: CancellationToken,
) -> anyhow::Result<()> {
    let bin_dir = binaries_dir()?;
    // A ScaledObject devstack cannot honour stops it here, before anything starts.
    let autoscale = args
        .autoscale
        .as_ref()
        .map(|path| Autoscale::load(path.as_deref(), &args.sidecar.bindings, args.time_scale))
        .transpose()?;
    let sidecar_stop = CancellationToken::new();
    let mut sidecar = Sidecar::start(listeners, &args.sidecar, sidecar_stop.clone())?;
    let template = consumer_template(&args, &bin_dir);
    let mut pods = match &autoscale {
        Some(autoscale) => Pods::Scaled(Box::new(Controller::start(
            autoscale,
            template,
            &mut sidecar,
            args.stop_on_crash,
        )?)),
        None => {
            // Fixed consumers: a Deployment nobody scales, its clock at real time.
            let clock = Clock::start(1.0);
            let mut set = ReplicaSet::new(template, STOP_LIMIT, clock, args.stop_on_crash);
            let n = u32::try_from(args.consumers.get()).unwrap_or(u32::MAX);
            set.scale_to(n, &mut sidecar)?;
            Pods::Fixed(Box::new(set))
        }
    };
    sidecar.faults().set_consumers(pods.control());
    let mut output = JoinSet::new();
    let (mut producer, listening) = producer(&args, &bin_dir, &sidecar).spawn(&mut output)?;

    let stack = Stack {
        args: &args,
        autoscale: autoscale.as_ref(),
    };
    let chaos_stop = sidecar_stop.child_token();
    let parts = Parts {
        producer: &mut producer,
        listening,
        pods: &mut pods,
    };
    let outcome = run(stack, &mut sidecar, parts, &signal, &chaos_stop).await;
    chaos_stop.cancel();
    tokio::join!(
        async {
            let status = producer.stop(STOP_LIMIT).await;
            process::stopped(producer.label(), status);
        },
        pods.stop(&mut sidecar)
    );
    sidecar_stop.cancel();
    sidecar.wait().await?;
    // Drain what the parts printed last.
    while output.join_next().await.is_some() {}
    outcome
}

/// The consumers' pods: scaled by KEDA and the HPA, or fixed.
enum Pods {
    Scaled(Box<Controller>),
    Fixed(Box<ReplicaSet>),
}

impl Pods {
    fn control(&self) -> ConsumerControl {
        match self {
            Self::Scaled(controller) => controller.control(),
            Self::Fixed(set) => set.control(),
        }
    }

    /// Looks after the pods (restarts, faults, and with `scaling`, KEDA's and the HPA's
    /// loops) until that fails; cancel-safe.
    async fn run(&mut self, sidecar: &mut Sidecar, scaling: bool) -> anyhow::Result<()> {
        match self {
            Self::Scaled(controller) if scaling => controller.run(sidecar).await,
            Self::Scaled(controller) => controller.run_replicas(sidecar).await,
            Self::Fixed(set) => loop {
                let event = set.next_event().await;
                set.handle(event, sidecar)?;
            },
        }
    }

    async fn stop(&mut self, sidecar: &mut Sidecar) {
        match self {
            Self::Scaled(controller) => controller.stop(sidecar).await,
            Self::Fixed(set) => set.stop_all(sidecar).await,
        }
    }
}

/// The consumers' template: each on its own free ports with `--autoscale` (as each pod has its
/// own), else from APP_PORT and METRICS_PORT on; on a free port, devstack learns the address
/// from its `listening` event.
fn consumer_template(args: &UpArgs, bin_dir: &Path) -> Template {
    let ports = match args.autoscale {
        Some(_) => Ports::Free,
        None => Ports::From {
            app: args.app_port,
            metrics: args.metrics_port,
        },
    };
    let launch = Launch::new(bin_dir.join("consumer"), "consumer")
        .env("MAX_CONCURRENCY", args.max_concurrency);
    let launch = match (ports, args.app_port) {
        (Ports::From { .. }, port) if port != 0 => launch,
        _ => launch.log_listening(&args.sidecar.log.filter, "consumer::server"),
    };
    Template {
        launch,
        max_concurrency: args.max_concurrency.get(),
        ports,
        numbered: args.autoscale.is_some() || args.consumers.get() > 1,
    }
}

/// The producer binary on `PORT`, calling the sidecar.
fn producer(args: &UpArgs, bin_dir: &Path, sidecar: &Sidecar) -> Launch {
    let launch = Launch::new(bin_dir.join("producer"), "producer")
        .env("PORT", args.port)
        .env("DAPR_GRPC_PORT", sidecar.grpc_addr.port())
        .env("DAPR_HTTP_PORT", sidecar.http_addr.port())
        .unset("DAPR_GRPC_ENDPOINT");
    match args.port {
        0 => launch.log_listening(&args.sidecar.log.filter, "producer::server"),
        _ => launch,
    }
}

/// What the stack runs, for the banner.
#[derive(Clone, Copy)]
struct Stack<'a> {
    args: &'a UpArgs,
    autoscale: Option<&'a Autoscale>,
}

/// The running parts: the producer (and where it will say it listens), and the consumers.
struct Parts<'a> {
    producer: &'a mut Process,
    listening: Listening,
    pods: &'a mut Pods,
}

/// Learns the producer's port, waits for it and prints the banner, then starts the `--chaos`
/// schedule (until `chaos_stop`) and runs until `signal` (Ok) or until the producer stops on its
/// own or the pods fail (an error). The pods are looked after all along; KEDA's and the HPA's
/// loops start with the banner.
async fn run(
    stack: Stack<'_>,
    sidecar: &mut Sidecar,
    parts: Parts<'_>,
    signal: &CancellationToken,
    chaos_stop: &CancellationToken,
) -> anyhow::Result<()> {
    let Parts {
        producer,
        listening,
        pods,
    } = parts;
    let args = stack.args;
    let dashboard: Arc<Dashboard> = Arc::clone(&sidecar.dashboard);
    let http_port = sidecar.http_addr.port();
    let startup = async {
        let port = match args.port {
            0 => listening
                .address(Instant::now() + LISTEN_LIMIT)
                .await?
                .port(),
            port => port,
        };
        dashboard.set_producer(([127, 0, 0, 1], port).into());
        match producer_ready(port).await {
            Ok(()) => print_banner(port, http_port, stack),
            Err(e) => warn!(error = %e, "the producer did not become ready"),
        }
        anyhow::Ok(())
    };
    let label = producer.label().to_owned();
    tokio::select! {
        started = startup => started.inspect_err(|e| error!(error = %e, "stopping the stack"))?,
        _ = signal.cancelled() => return Ok(()),
        status = producer.wait() => return Err(process::died(&label, status).into()),
        failed = pods.run(sidecar, false) => return failed,
    }
    if let Some(schedule) = args.chaos.clone() {
        tokio::spawn(schedule.run(
            Arc::clone(sidecar.faults()),
            Arc::clone(sidecar.apps()),
            chaos_stop.clone(),
        ));
    }
    tokio::select! {
        _ = signal.cancelled() => Ok(()),
        status = producer.wait() => Err(process::died(&label, status).into()),
        failed = pods.run(sidecar, true) => failed,
    }
}

/// Where `producer` and `consumer` are: next to this binary, where cargo builds all three.
/// devstack does not build them itself: a missing one fails here, saying which command builds it.
fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the devstack binary")?;
    let dir = exe
        .parent()
        .context("devstack binary has no directory")?
        .to_owned();
    let build = if cfg!(debug_assertions) {
        "cargo build --bins"
    } else {
        "cargo build --release --bins"
    };
    for bin in ["producer", "consumer"] {
        let path = dir.join(bin);
        if !path.exists() {
            bail!(
                "{} not found next to devstack; `{build}` builds all three",
                path.display()
            );
        }
    }
    Ok(dir)
}

/// Polls the producer's `/readyz` until it answers 200, for at most [`READY_LIMIT`].
async fn producer_ready(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        // Each attempt is bounded too: a producer that took the connection and never answered
        // must not hold the wait past its limit.
        let attempt = tokio::time::timeout_at(deadline, http.get(&url).send()).await;
        if let Ok(Ok(response)) = attempt
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no 200 from {url} within {READY_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_banner(port: u16, http_port: u16, stack: Stack<'_>) {
    let (metrics_port, consumers) = match stack.autoscale {
        // Replicas pick free ports.
        Some(_) => (0, 0),
        None => (stack.args.metrics_port, stack.args.consumers.get()),
    };
    let scaling = match stack.autoscale {
        Some(autoscale) => format!(
            "\nConsumers: scaled {}..{} by {} (time scale {}); watch the `scaling` object of the status\n",
            autoscale.spec.min_replica_count,
            autoscale.spec.max_replica_count,
            autoscale.source,
            autoscale.time_scale
        ),
        None => String::new(),
    };
    let consumer_metrics = match (metrics_port, consumers) {
        (0, _) => "see each consumer's `metrics listening` line".to_owned(),
        (first, 1) => format!("localhost:{first}/metrics"),
        (first, n) => format!(
            "localhost:{first}/metrics .. localhost:{}/metrics",
            usize::from(first) + n - 1
        ),
    };
    println!(
        r#"
Local stack is up. Try:

  curl -X POST localhost:{port}/MessageProducer -H 'Content-Type: application/json' -d '{{"count":1,"intervalMilliseconds":0}}'
  grpcurl -plaintext localhost:{port} list
  grpcurl -plaintext -d '{{"count":5,"interval_milliseconds":200}}' localhost:{port} producer.v1.Producer/ProduceStream
  curl localhost:{http_port}/devstack/status
  open http://localhost:{port}/swagger-ui/
  open http://localhost:{http_port}/devstack/   (the live dashboard)

Metrics: localhost:{port}/metrics (producer), {consumer_metrics} (consumer), localhost:{http_port}/devstack/metrics (queue)
{scaling}
Ctrl-C stops everything.
"#
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn up(args: &[&str]) -> UpArgs {
        let cli = Cli::try_parse_from(std::iter::once("devstack").chain(args.iter().copied()))
            .expect("valid arguments");
        match cli.command {
            Some(Command::Up(up)) => up,
            _ => cli.up,
        }
    }

    fn env(launch: &Launch, key: &str) -> Option<String> {
        let mut values = launch.env.iter().filter(|(k, _)| k == key);
        values.next_back().map(|(_, v)| v.clone())
    }

    #[test]
    fn a_consumer_gets_its_ports_and_concurrency_and_on_port_0_shows_its_listening_event() {
        let args = up(&[
            "--max-concurrency",
            "3",
            "--log-filter",
            "warn",
            "--consumers",
            "2",
        ]);
        let dir = Path::new("/opt/devstack");
        let template = consumer_template(&args, dir);
        let (fixed, address) = template.replica(2).unwrap();
        assert_eq!(fixed.binary, dir.join("consumer"));
        assert_eq!(fixed.label, "consumer-2");
        assert_eq!(env(&fixed, "APP_PORT").as_deref(), Some("50052"));
        assert_eq!(env(&fixed, "METRICS_PORT").as_deref(), Some("9091"));
        assert_eq!(env(&fixed, "MAX_CONCURRENCY").as_deref(), Some("3"));
        assert_eq!(env(&fixed, "RUST_LOG"), None, "the filter is inherited");
        assert_eq!(address, Some(([127, 0, 0, 1], 50052).into()));
        let lone = consumer_template(&up(&[]), dir).replica(1).unwrap().0;
        assert_eq!(lone.label, "consumer");

        let replicas = consumer_template(
            &up(&[
                "--max-concurrency",
                "3",
                "--log-filter",
                "warn",
                "--autoscale",
            ]),
            dir,
        );
        assert_eq!(replicas.max_concurrency, 3);
        let (launch, address) = replicas.replica(4).unwrap();
        assert_eq!(launch.label, "consumer-4");
        assert_eq!(address, None, "learnt from its listening event");
        assert_eq!(env(&launch, "APP_PORT").as_deref(), Some("0"));
        assert_eq!(env(&launch, "METRICS_PORT").as_deref(), Some("0"));
        assert_eq!(
            env(&launch, "RUST_LOG").as_deref(),
            Some("warn,consumer::server=info")
        );
        let free = consumer_template(&up(&["--app-port", "0", "--log-filter", "warn"]), dir);
        let (launch, address) = free.replica(1).unwrap();
        assert_eq!(
            (env(&launch, "APP_PORT").as_deref(), address),
            (Some("0"), None)
        );
        assert_eq!(
            env(&launch, "RUST_LOG").as_deref(),
            Some("warn,consumer::server=info")
        );
    }
}

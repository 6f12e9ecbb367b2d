//! `devstack up`: devstack's sidecar in this process, the real `consumer` and `producer` binaries
//! as child processes on loopback, their output labelled by part, and a clean stop on Ctrl-C.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    config::UpArgs,
    process::{self, LISTEN_LIMIT, Launch, Listening, Process, STOP_LIMIT},
    scaling::{
        controller::{Autoscale, Controller},
        replicas::{self, Template},
    },
    sidecar::{Listeners, Sidecar},
};

/// Longest the producer may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Runs the whole local stack, the sidecar on `listeners`, until `signal` is cancelled or a part
/// exits on its own.
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
    let mut output = JoinSet::new();
    let (mut parts, unknown) = start_parts(&args, &bin_dir, &mut sidecar, &mut output)?;
    let mut controller = match &autoscale {
        Some(autoscale) => Some(Controller::start(
            autoscale,
            replica_template(&args, &bin_dir),
            &sidecar,
        )?),
        None => None,
    };

    let stack = Stack {
        args: &args,
        autoscale: autoscale.as_ref(),
    };
    let outcome = run(
        stack,
        &mut sidecar,
        &mut parts,
        controller.as_mut(),
        unknown,
        &signal,
    )
    .await;
    match controller.as_mut() {
        Some(controller) => {
            tokio::join!(stop_all(&mut parts), controller.stop(&mut sidecar));
        }
        None => stop_all(&mut parts).await,
    }
    sidecar_stop.cancel();
    sidecar.wait().await?;
    // Drain what the parts printed last.
    while output.join_next().await.is_some() {}
    outcome
}

/// The consumer binary, labelled `label`, on `app_port` and `metrics_port` (0: free ones, the
/// app port learnt from its `listening` event).
fn consumer(
    args: &UpArgs,
    bin_dir: &Path,
    label: String,
    app_port: u16,
    metrics_port: u16,
) -> Launch {
    let launch = Launch::new(bin_dir.join("consumer"), label)
        .env("APP_PORT", app_port)
        .env("METRICS_PORT", metrics_port)
        .env("MAX_CONCURRENCY", args.max_concurrency);
    match app_port {
        0 => launch.log_listening(&args.sidecar.log.filter, "consumer::server"),
        _ => launch,
    }
}

/// The replicas `--autoscale` starts: consumers on free ports, as each pod has its own.
fn replica_template(args: &UpArgs, bin_dir: &Path) -> Template {
    Template {
        launch: consumer(args, bin_dir, "consumer".to_owned(), 0, 0),
        max_concurrency: args.max_concurrency.get(),
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

/// The addresses still to learn, of the parts started on port 0.
struct Unknown {
    consumers: Vec<(String, Listening)>,
    producer: Listening,
}

/// Starts the consumers, delivering to those on a known port at once, then the producer.
fn start_parts(
    args: &UpArgs,
    bin_dir: &Path,
    sidecar: &mut Sidecar,
    output: &mut JoinSet<()>,
) -> anyhow::Result<(Vec<Process>, Unknown)> {
    let mut parts = Vec::new();
    let mut consumers = Vec::new();
    // With --autoscale, the replica set starts the consumers.
    let fixed = match args.autoscale {
        None => args.consumers.get(),
        Some(_) => 0,
    };
    for n in 0..fixed {
        let port = nth_port(args.app_port, n).context("APP_PORT + consumers is past port 65535")?;
        let metrics_port = nth_port(args.metrics_port, n)
            .context("METRICS_PORT + consumers is past port 65535")?;
        let label = if args.consumers.get() == 1 {
            "consumer".to_owned()
        } else {
            format!("consumer-{}", n + 1)
        };
        let launch = consumer(args, bin_dir, label.clone(), port, metrics_port);
        let (part, listening) = launch.spawn(output)?;
        parts.push(part);
        match port {
            0 => consumers.push((label, listening)),
            port => {
                let address = ([127, 0, 0, 1], port).into();
                replicas::deliver_to(sidecar, &label, address, args.max_concurrency.get());
            }
        }
    }
    let (part, producer) = producer(args, bin_dir, sidecar).spawn(output)?;
    parts.push(part);
    Ok((
        parts,
        Unknown {
            consumers,
            producer,
        },
    ))
}

/// What the stack runs, for the banner.
#[derive(Clone, Copy)]
struct Stack<'a> {
    args: &'a UpArgs,
    autoscale: Option<&'a Autoscale>,
}

/// Learns the ports chosen on port 0, waits for the producer and prints the banner, then runs
/// until `signal` (Ok) or until a part stops on its own (an error). With `controller`, scales
/// the consumers meanwhile.
async fn run(
    stack: Stack<'_>,
    sidecar: &mut Sidecar,
    parts: &mut [Process],
    mut controller: Option<&mut Controller>,
    unknown: Unknown,
    signal: &CancellationToken,
) -> anyhow::Result<()> {
    let args = stack.args;
    let learned = async {
        let deadline = Instant::now() + LISTEN_LIMIT;
        for (label, listening) in unknown.consumers {
            let address = listening.address(deadline).await?;
            replicas::deliver_to(sidecar, &label, address, args.max_concurrency.get());
        }
        match args.port {
            0 => Ok(unknown.producer.address(deadline).await?.port()),
            port => anyhow::Ok(port),
        }
    };
    let port = tokio::select! {
        port = learned => port.inspect_err(|e| error!(error = %e, "stopping the stack"))?,
        _ = signal.cancelled() => return Ok(()),
    };
    sidecar
        .dashboard
        .set_producer(([127, 0, 0, 1], port).into());
    tokio::select! {
        ready = producer_ready(port) => match ready {
            Ok(()) => print_banner(port, sidecar.http_addr.port(), stack),
            Err(e) => warn!(error = %e, "the producer did not become ready"),
        },
        _ = signal.cancelled() => return Ok(()),
    }
    let scaling = async {
        match controller.as_mut() {
            Some(controller) => controller.run(sidecar).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = signal.cancelled() => Ok(()),
        (label, status) = first_exit(parts) => Err(process::died(&label, status).into()),
        stopped = scaling => stopped,
    }
}

/// Consumer `n`'s port (0-based) when the first one's is `first`: the next ones follow it, and
/// 0 stays 0 (each picks a free port).
fn nth_port(first: u16, n: usize) -> Option<u16> {
    match first {
        0 => Some(0),
        first => first.checked_add(u16::try_from(n).ok()?),
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

/// The first part to exit, with how it exited.
async fn first_exit(parts: &mut [Process]) -> (String, std::io::Result<std::process::ExitStatus>) {
    let waits = parts.iter_mut().map(|part| {
        Box::pin(async move {
            let status = part.wait().await;
            (part.label().to_owned(), status)
        })
    });
    let (exited, _, _) = futures::future::select_all(waits).await;
    exited
}

/// SIGTERM to every part still running, as Kubernetes does, then each is waited for, and killed
/// if still running after [`STOP_LIMIT`].
async fn stop_all(parts: &mut [Process]) {
    let stops = parts.iter_mut().map(|part| async move {
        let status = part.stop(STOP_LIMIT).await;
        process::stopped(part.label(), status);
    });
    futures::future::join_all(stops).await;
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
        let args = up(&["--max-concurrency", "3", "--log-filter", "warn"]);
        let dir = Path::new("/opt/devstack");
        let fixed = consumer(&args, dir, "consumer-2".into(), 50052, 9091);
        assert_eq!(fixed.binary, dir.join("consumer"));
        assert_eq!(fixed.label, "consumer-2");
        assert_eq!(env(&fixed, "APP_PORT").as_deref(), Some("50052"));
        assert_eq!(env(&fixed, "METRICS_PORT").as_deref(), Some("9091"));
        assert_eq!(env(&fixed, "MAX_CONCURRENCY").as_deref(), Some("3"));
        assert_eq!(env(&fixed, "RUST_LOG"), None, "the filter is inherited");
        let replicas = replica_template(&args, dir);
        assert_eq!(replicas.max_concurrency, 3);
        let launch = replicas.launch;
        assert_eq!(env(&launch, "APP_PORT").as_deref(), Some("0"));
        assert_eq!(env(&launch, "METRICS_PORT").as_deref(), Some("0"));
        assert_eq!(
            env(&launch, "RUST_LOG").as_deref(),
            Some("warn,consumer::server=info")
        );
    }

    #[test]
    fn consumers_follow_the_first_port_or_all_pick_free_ones() {
        let ports: Vec<_> = (0..3).map(|n| nth_port(50051, n)).collect();
        assert_eq!(ports, [Some(50051), Some(50052), Some(50053)]);
        assert_eq!(nth_port(0, 7), Some(0));
        assert_eq!(nth_port(u16::MAX, 1), None);
    }
}

//! `devstack up`: devstack's sidecar in this process, the real `consumer` and `producer` binaries
//! as child processes on loopback, their output labelled by part, and a clean stop on Ctrl-C.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    app::{AppProtocol, AppTarget},
    config::UpArgs,
    scaling::controller::{Autoscale, Controller},
    sidecar::{AppHandle, Listeners, Sidecar},
};

/// Longest a child may take to stop after SIGTERM: above the consumer's default 25 s drain limit.
pub const STOP_LIMIT: Duration = Duration::from_secs(40);
/// Longest the producer may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Longest a child started on port 0 may take to log the address it bound.
pub const LISTEN_LIMIT: Duration = Duration::from_secs(30);

/// Width of the part labels, so every part's lines line up.
const LABEL_WIDTH: usize = 10;
/// How the sidecar's own log lines are labelled.
pub const OWN_LABEL: &str = "sidecar    | ";

struct Part {
    label: String,
    child: Child,
}

/// The address a child logs in its `listening` event, once it has bound its port.
pub type Listening = oneshot::Receiver<SocketAddr>;

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
        .clone()
        .map(|path| Autoscale::load(path, &args.sidecar.bindings))
        .transpose()?;
    let sidecar_stop = CancellationToken::new();
    let mut sidecar = Sidecar::start(listeners, &args.sidecar, sidecar_stop.clone())?;
    let mut output = JoinSet::new();
    let (mut parts, unknown) = start_parts(&args, &bin_dir, &mut sidecar, &mut output)?;
    let mut controller = match &autoscale {
        Some(autoscale) => Some(Controller::start(
            autoscale,
            &args,
            bin_dir.join("consumer"),
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
) -> anyhow::Result<(Vec<Part>, Unknown)> {
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
        let mut command = Command::new(bin_dir.join("consumer"));
        command
            .env("APP_PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env("MAX_CONCURRENCY", args.max_concurrency.to_string());
        if port == 0 {
            log_listening(&mut command, args, "consumer::server");
        }
        let (part, listening) = spawn(label.clone(), command, output)?;
        parts.push(part);
        match port {
            0 => consumers.push((label, listening)),
            port => {
                add_app(sidecar, &label, ([127, 0, 0, 1], port).into(), args);
            }
        }
    }
    let mut command = Command::new(bin_dir.join("producer"));
    command
        .env("PORT", args.port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_addr.port().to_string())
        .env("DAPR_HTTP_PORT", sidecar.http_addr.port().to_string())
        .env_remove("DAPR_GRPC_ENDPOINT");
    if args.port == 0 {
        log_listening(&mut command, args, "producer::server");
    }
    let (part, producer) = spawn("producer".to_owned(), command, output)?;
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
    parts: &mut [Part],
    mut controller: Option<&mut Controller>,
    unknown: Unknown,
    signal: &CancellationToken,
) -> anyhow::Result<()> {
    let args = stack.args;
    let learned = async {
        let deadline = Instant::now() + LISTEN_LIMIT;
        for (label, listening) in unknown.consumers {
            let address = listening_addr(&label, listening, deadline).await?;
            add_app(sidecar, &label, address, args);
        }
        match args.port {
            0 => Ok(listening_addr("producer", unknown.producer, deadline)
                .await?
                .port()),
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
        (label, status) = first_exit(parts) => {
            error!(part = %label, %status, "a part stopped on its own; stopping the stack");
            bail!("{label} stopped unexpectedly")
        }
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

/// A part on port 0 logs its `listening` event (INFO, from `target`) whatever RUST_LOG says
/// otherwise: devstack learns the part's address from it.
pub fn log_listening(command: &mut Command, args: &UpArgs, target: &str) {
    let filter = format!("{},{target}=info", args.sidecar.log.filter);
    command.env("RUST_LOG", filter);
}

/// Starts delivering to a consumer, and says where it is.
pub fn add_app(
    sidecar: &mut Sidecar,
    label: &str,
    address: SocketAddr,
    args: &UpArgs,
) -> AppHandle {
    info!(part = %label, app = %address, "delivering to consumer");
    sidecar.add_app(
        AppTarget {
            protocol: AppProtocol::Grpc,
            address,
            max_concurrency: args.max_concurrency.get(),
        },
        label.to_owned(),
    )
}

/// Waits, until `deadline`, for the address a child started on port 0 logs.
pub async fn listening_addr(
    label: &str,
    listening: Listening,
    deadline: Instant,
) -> anyhow::Result<SocketAddr> {
    match tokio::time::timeout_at(deadline, listening).await {
        Ok(Ok(address)) => Ok(address),
        Ok(Err(_)) => bail!("{label} stopped before logging its `listening` event"),
        Err(_) => bail!(
            "{label} did not log its `listening` event within {LISTEN_LIMIT:?}; on port 0, \
             devstack learns the address from it"
        ),
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

fn spawn(
    label: String,
    command: Command,
    output: &mut JoinSet<()>,
) -> anyhow::Result<(Part, Listening)> {
    let (child, listening) = spawn_child(&label, command, output)?;
    Ok((Part { label, child }, listening))
}

/// Starts a child labelled `label`, its output relayed by tasks in `output`.
pub fn spawn_child(
    label: &str,
    mut command: Command,
    output: &mut JoinSet<()>,
) -> anyhow::Result<(Child, Listening)> {
    command
        .env("BIND_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {label}"))?;
    let prefix = format!("{label:<LABEL_WIDTH$} | ");
    let (listening, address) = oneshot::channel();
    // Log events go to stdout; stderr has only what escapes them (a panic message).
    if let Some(stdout) = child.stdout.take() {
        output.spawn(relay(prefix.clone(), stdout, Some(listening)));
    }
    if let Some(stderr) = child.stderr.take() {
        output.spawn(relay(prefix, stderr, None));
    }
    info!(part = %label, pid = child.id(), "started");
    Ok((child, address))
}

/// Copies a child's lines to our stdout, each labelled with the part it comes from, and sends the
/// address of its first `listening` event to `listening`.
async fn relay(
    prefix: String,
    stream: impl AsyncRead + Unpin,
    mut listening: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{prefix}{line}");
        if listening.is_some()
            && let Some(address) = listening_event(&line)
            && let Some(tx) = listening.take()
        {
            let _ = tx.send(address);
        }
    }
}

/// The `addr` of a `listening` event (not `metrics listening`), in either log format:
/// `{"message":"listening","addr":"127.0.0.1:50051",...}` or
/// `2026-01-01T00:00:00.000000Z  INFO consumer::server: listening addr=127.0.0.1:50051`.
fn listening_event(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let event: Value = serde_json::from_str(line).ok()?;
        return match event["message"].as_str() {
            Some("listening") => event["addr"].as_str()?.parse().ok(),
            _ => None,
        };
    }
    let mut words = line.split_whitespace();
    let mut before = "";
    for word in words.by_ref() {
        // The message follows the target (`consumer::server:`) or, without one, the level.
        if word == "listening" && (before.ends_with(':') || before == "INFO") {
            break;
        }
        before = word;
    }
    words.find_map(|field| field.strip_prefix("addr=")?.parse().ok())
}

async fn producer_ready(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_LIMIT;
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    loop {
        // Each attempt is bounded too: a producer that took the connection and never answered
        // must not hold the wait past its limit.
        if let Ok(Ok(true)) = tokio::time::timeout_at(deadline, http_get_ok(port, request)).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no 200 from http://127.0.0.1:{port}/readyz within {READY_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 GET, enough to poll /readyz without an HTTP client dependency.
async fn http_get_ok(port: u16, request: &str) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}

async fn first_exit(parts: &mut [Part]) -> (String, std::process::ExitStatus) {
    let waits = parts.iter_mut().map(|part| {
        Box::pin(async move {
            let status = part.child.wait().await;
            (part.label.clone(), status)
        })
    });
    let ((label, status), _, _) = futures::future::select_all(waits).await;
    (
        label,
        status.unwrap_or_else(|e| panic!("waiting for a child: {e}")),
    )
}

/// SIGTERM to every part still running, as Kubernetes does, then wait (bounded) for each.
async fn stop_all(parts: &mut [Part]) {
    for part in parts.iter() {
        // A part that already exited is reaped below; nothing to signal.
        if let Some(pid) = part.child.id() {
            let _ = pipeline::shutdown::terminate(pid);
        }
    }
    for part in parts.iter_mut() {
        match tokio::time::timeout(STOP_LIMIT, part.child.wait()).await {
            Ok(Ok(status)) => info!(part = %part.label, %status, "stopped"),
            Ok(Err(e)) => warn!(part = %part.label, error = %e, "cannot wait for the part"),
            Err(_) => {
                warn!(part = %part.label, "did not stop in time; killing it");
                let _ = part.child.kill().await;
            }
        }
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
            autoscale.path.display(),
            stack.args.time_scale
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
    use super::*;

    #[test]
    fn consumers_follow_the_first_port_or_all_pick_free_ones() {
        let ports: Vec<_> = (0..3).map(|n| nth_port(50051, n)).collect();
        assert_eq!(ports, [Some(50051), Some(50052), Some(50053)]);
        assert_eq!(nth_port(0, 7), Some(0));
        assert_eq!(nth_port(u16::MAX, 1), None);
    }

    #[test]
    fn finds_the_listening_address_in_text_and_json_lines() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        for line in [
            "2026-11-23T19:20:22.000000Z  INFO consumer::server: listening addr=127.0.0.1:50051",
            "2026-11-23T19:20:22.000000Z  INFO producer::server: listening addr=127.0.0.1:50051 binding=\"message-queue\"",
            "2026-11-23T19:20:22.000000Z  INFO listening addr=127.0.0.1:50051",
            r#"{"timestamp":"2026-11-23T19:20:22.000000Z","level":"INFO","message":"listening","addr":"127.0.0.1:50051","target":"consumer::server"}"#,
        ] {
            assert_eq!(listening_event(line), Some(addr), "{line}");
        }
        for line in [
            "2026-11-23T19:20:22.000000Z  INFO consumer::metrics: metrics listening addr=127.0.0.1:9090",
            r#"{"level":"INFO","message":"metrics listening","addr":"127.0.0.1:9090"}"#,
            "2026-11-23T19:20:22.000000Z  INFO consumer::server: listening",
            r#"{"message":"listening","addr":"not an address"}"#,
            "Hello World -- Received at: 11/23/2026 19:20:22 -- Finished at: 11/23/2026 19:20:27",
            "{not json",
        ] {
            assert_eq!(listening_event(line), None, "{line}");
        }
    }
}

//! `devstack up`: the stand-in in this process, the real `consumer` and `producer` binaries as
//! child processes on loopback, their output labelled by part, and a clean stop on Ctrl-C.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{config::UpArgs, delivery::AppTarget, sidecar::Sidecar};

/// Longest a child may take to stop after SIGTERM: above the consumer's default 25 s drain limit.
const STOP_LIMIT: Duration = Duration::from_secs(40);
/// Longest the producer may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Width of the part labels, so every part's lines line up.
const LABEL_WIDTH: usize = 10;
/// How the stand-in's own log lines are labelled.
pub const OWN_LABEL: &str = "sidecar    | ";

struct Part {
    label: String,
    child: Child,
}

/// Runs the whole local stack until `signal` is cancelled or a part exits on its own.
pub async fn up(args: UpArgs, signal: CancellationToken) -> anyhow::Result<()> {
    let bin_dir = binaries_dir()?;
    let sidecar_stop = CancellationToken::new();
    let mut sidecar = Sidecar::start(&args.sidecar, sidecar_stop.clone()).await?;

    let mut parts = Vec::new();
    let mut output = JoinSet::new();
    for n in 0..args.consumers.get() {
        let offset = u16::try_from(n)?;
        let port = args
            .app_port
            .checked_add(offset)
            .context("APP_PORT + consumers is past port 65535")?;
        let metrics_port = match args.metrics_port {
            0 => 0,
            base => base
                .checked_add(offset)
                .context("METRICS_PORT + consumers is past port 65535")?,
        };
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
        parts.push(spawn(label, command, &mut output)?);
        sidecar.add_app(AppTarget {
            address: ([127, 0, 0, 1], port).into(),
            max_concurrency: args.max_concurrency.get(),
        });
    }
    let mut producer = Command::new(bin_dir.join("producer"));
    producer
        .env("PORT", args.port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_addr.port().to_string())
        .env("DAPR_HTTP_PORT", sidecar.http_addr.port().to_string())
        .env_remove("DAPR_GRPC_ENDPOINT");
    parts.push(spawn("producer".to_owned(), producer, &mut output)?);

    let ready = tokio::select! {
        ready = producer_ready(args.port) => ready,
        _ = signal.cancelled() => Ok(()),
    };
    match ready {
        Ok(()) if !signal.is_cancelled() => print_banner(
            args.port,
            sidecar.http_addr.port(),
            args.metrics_port,
            args.consumers.get(),
        ),
        Ok(()) => {}
        Err(e) => warn!(error = %e, "the producer did not become ready"),
    }

    // Run until Ctrl-C / SIGTERM, or until a part stops on its own.
    let exited = tokio::select! {
        _ = signal.cancelled() => None,
        exited = first_exit(&mut parts) => Some(exited),
    };
    if let Some((label, status)) = &exited {
        error!(part = %label, %status, "a part stopped on its own; stopping the stack");
    }

    stop_all(&mut parts).await;
    sidecar_stop.cancel();
    sidecar.wait().await?;
    // Drain what the parts printed last.
    while output.join_next().await.is_some() {}
    match exited {
        Some((label, _)) => bail!("{label} stopped unexpectedly"),
        None => Ok(()),
    }
}

/// Where `producer` and `consumer` are: next to this binary (cargo builds them all into one
/// target directory). Under `cargo run`, they are built first, so the one command is enough.
fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the devstack binary")?;
    let dir = exe
        .parent()
        .context("devstack binary has no directory")?
        .to_owned();
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--bin", "producer", "--bin", "consumer"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        info!("building producer and consumer (cargo build)");
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of producer and consumer failed ({status})");
        }
    }
    for bin in ["producer", "consumer"] {
        if !dir.join(bin).exists() {
            bail!(
                "{} not found next to devstack; run `cargo build --release` first",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

fn spawn(label: String, mut command: Command, output: &mut JoinSet<()>) -> anyhow::Result<Part> {
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
    if let Some(stdout) = child.stdout.take() {
        output.spawn(relay(prefix.clone(), stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        output.spawn(relay(prefix, stderr));
    }
    info!(part = %label, pid = child.id(), "started");
    Ok(Part { label, child })
}

/// Copies a child's lines to our stdout, each labelled with the part it comes from.
async fn relay(prefix: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{prefix}{line}");
    }
}

async fn producer_ready(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_LIMIT;
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    loop {
        if let Ok(true) = http_get_ok(port, request).await {
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
            let _ = bindings::shutdown::terminate(pid);
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

fn print_banner(port: u16, http_port: u16, metrics_port: u16, consumers: usize) {
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

Metrics: localhost:{port}/metrics (producer), {consumer_metrics} (consumer), localhost:{http_port}/devstack/metrics (queue)

Ctrl-C stops everything.
"#
    );
}

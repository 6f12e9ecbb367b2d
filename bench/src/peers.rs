//! The peer rows: our consumer and producer beside what a user would pick instead, the official
//! Dapr SDKs, each through a `devstack sidecar` of its own, with the same messages and zero work.
//!
//! - Consumers: ours; the Python SDK's gRPC `App` (`dapr-ext-grpc`); the JavaScript SDK's gRPC
//!   `DaprServer` (`@dapr/dapr`). The bench's client sends into the sidecar at C in flight, the
//!   sidecar delivers C at a time, and a run ends when the sidecar's status shows every message
//!   completed.
//! - Producers: ours through REST, at the SEND_CONCURRENCY it ships with; the Python SDK's
//!   `DaprClient.invoke_binding`, one message after the other, as its docs show; the JavaScript
//!   SDK's `DaprClient.binding.send`, one after the other, and as many at once as ours keeps in
//!   flight. A run ends when the last send returns; the sidecar (no app) counts them.
//!
//! The SDKs are pinned and installed on first use (`test_support::{python, js}`); the scripts
//! that use them are in `bench/peers/`. Started once, each script sends a run whenever it gets
//! SIGUSR2, so that its interpreter's start is never measured.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid as OsPid,
};
use test_support::{js, port::free_port, python};
use tonic::transport::Channel;

use super::{
    Bench, Parts, Pid, load, measure,
    process::Service,
    processed, produce,
    report::{Runs, Sample},
    run_limit,
    sidecar::Sidecar,
    slow_producer_env,
};

/// What to do when an SDK cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Report its rows as skipped, saying what is missing (the benchmark).
    WhenAvailable,
    /// Fail the run (the smoke test where CI runs it: CI never passes without the peers).
    Required,
}

/// Which side of the pipeline a row is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Consumer,
    Producer,
}

impl Side {
    pub fn key(self) -> &'static str {
        match self {
            Self::Consumer => "consumers",
            Self::Producer => "producers",
        }
    }
}

/// One row's figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub side: Side,
    /// Its key in the JSON line, e.g. `python`.
    pub key: &'static str,
    pub what: String,
    /// Ours, which the others are compared with.
    pub ours: bool,
    pub runs: Runs,
    /// The measured process's peak RSS at the end, in KiB.
    pub peak_kib: u64,
}

impl Row {
    /// The measured process's median CPU per message, in µs.
    pub fn cpu_us(&self) -> f64 {
        let part = match self.side {
            Side::Consumer => "consumer",
            Side::Producer => "producer",
        };
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|s| s.cpu_us_per_message.iter().find(|(p, _)| *p == part))
            .map(|(_, us)| *us)
            .collect();
        super::report::median(&values)
    }
}

/// Every peer row, and the ones that could not run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub rows: Vec<Row>,
    /// Why a set of rows did not run, one line each.
    pub skipped: Vec<String>,
}

impl Figures {
    /// The rows of `side`, ours first.
    pub fn side(&self, side: Side) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.side == side)
    }

    /// Our row on `side`.
    pub fn ours(&self, side: Side) -> Option<&Row> {
        self.side(side).find(|r| r.ours)
    }
}

/// Each peer's sidecar and process, and how a run is driven.
pub(crate) struct Peers {
    peers: Vec<Peer>,
    skipped: Vec<String>,
}

struct Peer {
    row: Row,
    sidecar: Sidecar,
    process: Service,
    drive: Drive,
    parts: Parts,
}

enum Drive {
    /// The bench's client sends into the sidecar; the consumer behind it completes them.
    Consumer(Channel),
    /// Our producer: one `POST /MessageProducer`.
    Rest(SocketAddr),
    /// A script: SIGUSR2 starts a run of its fixed count, its `sent` event ends it.
    Script { runs: u64, count: u32 },
}

/// Messages each script sends before it says `ready`: its connection and its interpreter's hot
/// paths warmed up, as the bench's warm-up round warms the others.
const SCRIPT_WARM_UP: u32 = 200;
/// How often a sidecar started before its app probes it: it delivers soon after the app is up.
const PROBE: Duration = Duration::from_millis(100);

/// `bench/peers/<name>`.
fn script(name: &str) -> anyhow::Result<String> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "peers", name].iter().collect();
    path.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("{p:?} is not UTF-8"))
}

impl Peers {
    /// Starts every peer's sidecar and process, ours first; installs the SDKs on first use.
    pub async fn start(bench: &Bench<'_>, shipped: u32) -> anyhow::Result<Self> {
        let mut peers = Self {
            peers: Vec::new(),
            skipped: Vec::new(),
        };
        bench.step("peers: our consumer and producer, each behind a sidecar of its own");
        let (_, consumer, addr) = bench
            .start_consumer(bench.sizes.concurrency, "info")
            .await?;
        let sidecar = peers.app_sidecar(bench, &addr.to_string()).await?;
        let what = "ours: consumer, gRPC, logging the original's line per message";
        peers
            .consumer("ours", what.to_owned(), consumer, sidecar)
            .await?;
        let sidecar = Sidecar::start(&bench.bins.devstack, &[], None, &bench.http).await?;
        let env = slow_producer_env(sidecar.grpc, None, bench.sizes.peer_messages);
        let (_, producer, addr) = bench.start_producer_with(&env).await?;
        let what =
            format!("ours: producer, POST /MessageProducer, {shipped} in flight (its default)");
        peers.producer("ours", what, sidecar, producer, Drive::Rest(addr));

        bench.step("peers: the Python SDK (installed on first use)");
        match python::installed().await {
            Ok(python) => peers.python(bench, &python).await?,
            Err(missing) => peers.skip(bench, "the Python SDK's rows", &missing)?,
        }
        bench.step("peers: the JavaScript SDK (installed on first use)");
        match js::installed().await {
            Ok(node) => peers.js(bench, &node, shipped).await?,
            Err(missing) => peers.skip(bench, "the JavaScript SDK's rows", &missing)?,
        }
        // Consumers, then producers; ours first on each side (a stable sort keeps the rest).
        peers
            .peers
            .sort_by_key(|p| (p.row.side == Side::Producer, !p.row.ours));
        Ok(peers)
    }

    fn skip(&mut self, bench: &Bench<'_>, rows: &str, missing: &str) -> anyhow::Result<()> {
        if bench.sizes.peers == PeerPolicy::Required {
            bail!("{rows} cannot run: {missing}");
        }
        bench.step(&format!("{rows} skipped: {missing}"));
        self.skipped.push(format!("{rows} skipped: {missing}"));
        Ok(())
    }

    async fn python(&mut self, bench: &Bench<'_>, python: &Path) -> anyhow::Result<()> {
        let version = python::version("dapr-ext-grpc").unwrap_or("?");
        let port = free_port();
        let sidecar = self
            .app_sidecar(bench, &format!("127.0.0.1:{port}"))
            .await?;
        let consumer = script("consumer.py")?;
        let args = ["-u", &consumer, load::BINDING, &port.to_string()];
        let (process, _) = super::start(python, &args, &[], "serving").await;
        let what = format!("Python dapr-ext-grpc {version} App, gRPC");
        self.consumer("python", what, process, sidecar).await?;

        let version = python::version("dapr").unwrap_or("?");
        let sidecar = Sidecar::start(&bench.bins.devstack, &[], None, &bench.http).await?;
        let producer = script("producer.py")?;
        let count = bench.sizes.peer_messages;
        let args = [
            "-u",
            &producer,
            load::BINDING,
            &count.to_string(),
            &SCRIPT_WARM_UP.to_string(),
        ];
        let env = [
            ("DAPR_RUNTIME_HOST", sidecar.grpc.ip().to_string()),
            ("DAPR_GRPC_PORT", sidecar.grpc.port().to_string()),
            ("DAPR_HTTP_PORT", sidecar.http_addr.port().to_string()),
        ];
        let (process, _) = super::start(python, &args, &env, "ready").await;
        let what = format!("Python dapr {version} DaprClient.invoke_binding, one at a time");
        let drive = Drive::Script { runs: 0, count };
        self.producer("python", what, sidecar, process, drive);
        Ok(())
    }

    async fn js(&mut self, bench: &Bench<'_>, node: &js::Node, shipped: u32) -> anyhow::Result<()> {
        let version = js::version().unwrap_or_else(|| "?".to_owned());
        let port = free_port();
        let sidecar = self
            .app_sidecar(bench, &format!("127.0.0.1:{port}"))
            .await?;
        let consumer = script("consumer.js")?;
        let grpc = sidecar.grpc.port().to_string();
        let args = [consumer.as_str(), load::BINDING, &port.to_string(), &grpc];
        let (process, _) = super::start(&node.node, &args, &[node.env()], "serving").await;
        let what = format!("JavaScript @dapr/dapr {version} DaprServer, gRPC");
        self.consumer("javascript", what, process, sidecar).await?;

        let producer = script("producer.js")?;
        for (key, in_flight) in [("javascript", 1), ("javascript_concurrent", shipped)] {
            let sidecar = Sidecar::start(&bench.bins.devstack, &[], None, &bench.http).await?;
            let count = bench.sizes.peer_messages;
            let args = [
                producer.as_str(),
                load::BINDING,
                &count.to_string(),
                &SCRIPT_WARM_UP.to_string(),
                &in_flight.to_string(),
                &sidecar.grpc.port().to_string(),
            ];
            let (process, _) = super::start(&node.node, &args, &[node.env()], "ready").await;
            let what = if in_flight == 1 {
                format!("JavaScript @dapr/dapr {version} DaprClient.binding.send, one at a time")
            } else {
                format!("  same, {in_flight} in flight (as many as ours)")
            };
            let drive = Drive::Script { runs: 0, count };
            self.producer(key, what, sidecar, process, drive);
        }
        Ok(())
    }

    /// A sidecar delivering to the app at `app`, C events at a time.
    async fn app_sidecar(&self, bench: &Bench<'_>, app: &str) -> anyhow::Result<Sidecar> {
        let apps = [format!("{app}={}", bench.sizes.concurrency)];
        Sidecar::start(&bench.bins.devstack, &apps, Some(PROBE), &bench.http).await
    }

    async fn consumer(
        &mut self,
        key: &'static str,
        what: String,
        process: Service,
        sidecar: Sidecar,
    ) -> anyhow::Result<()> {
        sidecar.wait_consumers(1).await?;
        let parts = vec![
            ("consumer", vec![Pid::Child(process.pid())]),
            ("sidecar", vec![Pid::Child(sidecar.service.pid())]),
            ("client", vec![Pid::Bench]),
        ];
        let channel = load::channel(sidecar.grpc).await?;
        let ours = key == "ours";
        self.peers.push(Peer {
            row: row(Side::Consumer, key, what, ours),
            drive: Drive::Consumer(channel),
            sidecar,
            process,
            parts,
        });
        Ok(())
    }

    fn producer(
        &mut self,
        key: &'static str,
        what: String,
        sidecar: Sidecar,
        process: Service,
        drive: Drive,
    ) {
        let parts = vec![
            ("producer", vec![Pid::Child(process.pid())]),
            ("sidecar", vec![Pid::Child(sidecar.service.pid())]),
        ];
        self.peers.push(Peer {
            row: row(Side::Producer, key, what, key == "ours"),
            sidecar,
            process,
            drive,
            parts,
        });
    }

    /// Warms up the rows the bench drives with `m` messages each, unmeasured; the scripts warmed
    /// themselves up before they said `ready`.
    pub async fn warm_up(&mut self, bench: &Bench<'_>, m: u32) -> anyhow::Result<()> {
        for peer in &mut self.peers {
            if !matches!(peer.drive, Drive::Script { .. }) {
                peer.run(bench, m).await?;
            }
        }
        Ok(())
    }

    /// One run of every row, of [`Sizes::peer_messages`](super::Sizes) each.
    pub async fn round(&mut self, bench: &Bench<'_>) -> anyhow::Result<()> {
        for peer in &mut self.peers {
            let sample = peer.run(bench, bench.sizes.peer_messages).await?;
            peer.row.runs.push(sample);
        }
        Ok(())
    }

    /// Takes each process's peak RSS and stops everything; checks that our consumer processed
    /// every event its sidecar completed.
    pub async fn stop(self) -> anyhow::Result<Figures> {
        let mut rows = Vec::new();
        for mut peer in self.peers {
            peer.row.peak_kib = peer.process.memory().peak_kib;
            let completed = peer.sidecar.counts().await?.completed;
            let events = peer.process.stop().await;
            if peer.row.ours && peer.row.side == Side::Consumer {
                let processed = processed(&events)?;
                ensure!(
                    processed == completed,
                    "peers: our consumer processed {processed} events, its sidecar completed {completed}"
                );
            }
            peer.sidecar.stop().await;
            rows.push(peer.row);
        }
        Ok(Figures {
            rows,
            skipped: self.skipped,
        })
    }
}

fn row(side: Side, key: &'static str, what: String, ours: bool) -> Row {
    Row {
        side,
        key,
        what,
        ours,
        runs: Vec::new(),
        peak_kib: 0,
    }
}

impl Peer {
    /// One run of `m` messages.
    async fn run(&mut self, bench: &Bench<'_>, m: u32) -> anyhow::Result<Sample> {
        let name = format!("peers ({} {})", self.row.side.key(), self.row.key);
        let before = self.sidecar.counts().await?;
        let Self {
            sidecar,
            process,
            drive,
            parts,
            ..
        } = self;
        match drive {
            Drive::Consumer(channel) => {
                let run = async {
                    let start = Instant::now();
                    load::invoke_binding(channel, m, bench.sizes.concurrency).await?;
                    sidecar.completed(&name, before, m, start).await
                };
                measure(parts, m, run).await
            }
            Drive::Rest(addr) => {
                let sample = measure(parts, m, produce(&bench.http, *addr, m)).await?;
                sidecar.produced(&name, before, m).await?;
                Ok(sample)
            }
            Drive::Script { runs, count } => {
                ensure!(
                    m == *count,
                    "{name}: the script sends {count} a run, not {m}"
                );
                *runs += 1;
                let run = *runs;
                let pid = OsPid::from_raw(i32::try_from(process.pid()).context("a pid")?);
                let sent = async {
                    let start = Instant::now();
                    signal::kill(pid, Signal::SIGUSR2).context("signalling the script")?;
                    let end = |e: &serde_json::Value| e["message"] == "sent" && e["run"] == run;
                    process.wait_for_within(&name, run_limit(m), end).await;
                    Ok(start.elapsed())
                };
                let sample = measure(parts, m, sent).await?;
                sidecar.produced(&name, before, m).await?;
                Ok(sample)
            }
        }
    }
}

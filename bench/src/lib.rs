//! The pipeline benchmark: our producer and consumer measured against the transport they sit on,
//! all on loopback, all in one run, so the ratios hold even where absolute figures drift.
//!
//! Shared by `benches/pipeline.rs` (the full run, `cargo bench --bench pipeline`) and
//! `tests/smoke.rs` (a tiny run under `cargo test`, so this code cannot rot). Every stage
//! checks that each message it sent is accounted for; a run that loses one is an error.
//!
//! - `null`: servers that answer at once (sidecar `InvokeBinding`, app `OnBindingEvent`, HTTP),
//!   and after a broker's latency (row 6), in a process of their own.
//! - `load`: the clients that drive them, and the original producer's send loop.
//! - `sidecar`: `devstack sidecar` as rows 4, the peers and the latency rows run it.
//! - `peers`: ours beside the official Dapr SDKs (Python, JavaScript), through the sidecar.
//! - `latency`: send to `OnBindingEvent` start, open-loop, through the producer and the sidecar,
//!   the sidecar alone, and straight to the app.
//! - `burst`: row 7, a burst drained by `devstack --autoscale`, and its chart.
//! - `chaos`: row 8, a batch through `devstack --autoscale` under a seeded `--chaos` schedule,
//!   every message accounted for.
//! - `test_support::process`: the real binaries as child processes, their memory and CPU time
//!   (the tests' harness).
//! - `report`: the figures, the table and the JSON line.
//!
//! Every row pits two processes (three or more in row 4) against each other on the same cores,
//! so each run also records the CPU time every process spent per message: with all cores busy,
//! a rate is the cores divided by the sum of those costs, which says what limits it.

pub mod burst;
pub mod chaos;
mod latency;
mod load;
mod null;
mod peers;
mod report;
mod sidecar;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
pub use null::main_if_asked as null_servers_main_if_asked;
pub use peers::PeerPolicy;
pub use report::{Footprint, Report, Sample};
use serde_json::{Value, json};
use test_support::process;
use tonic::transport::Channel;

use peers::Peers;
use process::{Service, cpu_time, event_addr};
use sidecar::Sidecar;

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Messages per run of rows 1 to 4 (M).
    pub messages: u32,
    /// Calls in flight (C): the client's, the producer's SEND_CONCURRENCY, the consumer's
    /// MAX_CONCURRENCY, and the sidecar's deliveries in total.
    pub concurrency: u32,
    /// Messages per run of row 5, the original's one-connection-per-message loop.
    pub original_messages: u32,
    /// Runs of each row; figures are medians. Rows alternate within a round, so drift
    /// during the run affects them alike.
    pub rounds: usize,
    /// Starts of each binary for spawn-to-ready and idle RSS.
    pub starts: usize,
    /// Consumer processes behind the sidecar in row 4.
    pub consumers: u32,
    /// How long the slow sidecar of rows 6 and 6o takes to answer each call.
    pub sidecar_latency: Duration,
    /// About how long each run of rows 6, 6o and the sweep lasts: the sizes follow from it.
    pub latency_run: Duration,
    /// The sweep: SEND_CONCURRENCY values, each measured at every latency of `sweep_latencies`.
    pub sweep_concurrency: Vec<u32>,
    /// The sweep's sidecar latencies.
    pub sweep_latencies: Vec<Duration>,
    /// Messages per run of each peer row.
    pub peer_messages: u32,
    /// Whether the peer rows may be skipped when an SDK cannot be had.
    pub peers: PeerPolicy,
    /// The latency rows' loads, as shares of row 4's rate.
    pub latency_shares: Vec<f64>,
    /// About how long each latency run lasts; its size follows from it.
    pub latency_duration: Duration,
    /// Row 7.
    pub bursts: burst::Bursts,
    /// Row 8; `None` leaves it out.
    pub chaos: Option<chaos::Chaos>,
}

impl Sizes {
    /// Every latency a slow null server is needed for.
    fn latencies(&self) -> Vec<Duration> {
        let mut all = self.sweep_latencies.clone();
        all.push(self.sidecar_latency);
        all.sort();
        all.dedup();
        all
    }

    /// Waves of calls in one run of rows 6, 6o and the sweep at `latency` (a warm-up runs fewer).
    fn waves(&self, latency: Duration, warm_up: bool) -> u32 {
        let waves = self.latency_run.as_secs_f64() / latency.as_secs_f64();
        let waves = (waves.ceil() as u32).max(1);
        if warm_up { waves.min(20) } else { waves }
    }
}

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub producer: PathBuf,
    pub consumer: PathBuf,
    pub devstack: PathBuf,
}

impl Binaries {
    /// The optimized binaries, built by `cargo build --release --bins --workspace` under the
    /// cargo that runs the benchmark (`CARGO`), so that they are never older than their sources.
    /// `--workspace`: cargo runs a benchmark in its own package's directory, where `--bins` alone
    /// builds only that package's (none).
    pub fn build_release() -> anyhow::Result<Self> {
        let cargo = std::env::var_os("CARGO").context("CARGO is not set: run `cargo bench`")?;
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--bins", "--workspace", "--quiet"])
            .status()
            .context("running cargo build")?;
        ensure!(status.success(), "cargo build --release --bins: {status}");
        Ok(Self::from_cargo())
    }

    /// The binaries cargo built beside this test or benchmark.
    pub fn from_cargo() -> Self {
        Self {
            producer: process::binary("producer"),
            consumer: process::binary("consumer"),
            devstack: process::binary("devstack"),
        }
    }
}

/// Longest the bench waits for a stack to come up or a queue to empty.
const WAIT: Duration = Duration::from_secs(60);
/// Longest a run of `m` messages may take: [`WAIT`], and a second more per thousand messages.
fn run_limit(m: u32) -> Duration {
    WAIT + Duration::from_secs(u64::from(m) / 1_000)
}
/// How often the sidecar's status is read while waiting for the last completion.
const POLL: Duration = Duration::from_millis(5);

/// Row 8 alone (`--only chaos`): its figures, or why the run failed.
pub fn run_chaos(
    chaos: &chaos::Chaos,
    bins: &Binaries,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<chaos::ChaosRun> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    runtime.block_on(chaos::run(&bins.devstack, chaos, &http, progress))
}

/// Runs every stage and returns the figures. The clients run on two worker threads, like the
/// binaries; the null servers in their own process. `main` must call
/// [`null_servers_main_if_asked`] first: the null servers are this executable, started again.
pub fn run(sizes: &Sizes, bins: &Binaries, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    ensure!(
        sizes.messages > 0 && sizes.original_messages > 0,
        "sizes must be at least 1"
    );
    ensure!(
        sizes.concurrency > 0 && sizes.consumers > 0 && sizes.rounds > 0 && sizes.starts > 0,
        "concurrency, consumers, rounds and starts must be at least 1"
    );
    ensure!(
        sizes.latencies().iter().all(|l| !l.is_zero())
            && !sizes.latency_run.is_zero()
            && sizes.sweep_concurrency.iter().all(|c| *c > 0),
        "latencies, the latency run and the sweep's concurrencies must be more than 0"
    );
    ensure!(
        sizes.peer_messages > 0
            && !sizes.latency_duration.is_zero()
            && sizes
                .latency_shares
                .iter()
                .all(|s| *s > 0.0 && s.is_finite()),
        "the peers' messages, the latency runs and their shares must be more than 0"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // On a worker thread, as the producer's batches run: a future polled by `block_on` runs on
    // the calling thread, and each of its calls would hop to the workers and back, a cost the
    // producer does not pay.
    let (sizes, bins) = (sizes.clone(), bins.clone());
    let (steps, mut step) = tokio::sync::mpsc::unbounded_channel();
    let bench = runtime.spawn(async move { Bench::new(&sizes, &bins, steps)?.run().await });
    runtime.block_on(async {
        while let Some(message) = step.recv().await {
            progress(&message);
        }
        bench.await?
    })
}

struct Bench<'a> {
    sizes: &'a Sizes,
    bins: &'a Binaries,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
    http: reqwest::Client,
}

/// The producer's environment against a sidecar at `sidecar`.
fn producer_env(sizes: &Sizes, sidecar: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("PORT", "0".to_owned()),
        ("DAPR_GRPC_ENDPOINT", sidecar.to_string()),
        ("SEND_CONCURRENCY", sizes.concurrency.to_string()),
        ("MAX_COUNT", sizes.messages.max(10_000).to_string()),
    ]
}

/// The producer's environment against a slow sidecar: SEND_CONCURRENCY `concurrency`, or the
/// producer's own default for `None`; batches of up to `max_count`.
fn slow_producer_env(
    sidecar: SocketAddr,
    concurrency: Option<u32>,
    max_count: u32,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PORT", "0".to_owned()),
        ("DAPR_GRPC_ENDPOINT", sidecar.to_string()),
        ("MAX_COUNT", max_count.max(1).to_string()),
    ];
    if let Some(c) = concurrency {
        env.push(("SEND_CONCURRENCY", c.to_string()));
    }
    env
}

/// The SEND_CONCURRENCY the producer ships with, as its `--help` states it: row 6 runs the
/// producer without setting it, and its bound follows from it.
async fn shipped_send_concurrency(producer: &Path) -> anyhow::Result<u32> {
    let (code, help) = process::run_to_end(producer, &["--help"], &[]).await;
    ensure!(code == Some(0), "`producer --help` failed: {help}");
    help.split("--send-concurrency")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no default for --send-concurrency in `producer --help`:\n{help}"))
}

/// Row 3w's log filter: the consumer's start and stop events, none per message.
pub const QUIET_LOG: &str = "warn,consumer::server=info";

/// The consumer's environment: zero work, `concurrency` events at once, any free ports, and
/// the `RUST_LOG` filter `log` (`info` logs the original's line for every message).
fn consumer_env(concurrency: u32, log: &str) -> Vec<(&'static str, String)> {
    vec![
        ("APP_PORT", "0".to_owned()),
        ("METRICS_PORT", "0".to_owned()),
        ("WORK_DURATION", "0s".to_owned()),
        ("MAX_CONCURRENCY", concurrency.to_string()),
        ("RUST_LOG", log.to_owned()),
    ]
}

/// Starts `bin` measured (see [`Service::measured`]) and waits for its `ready` event. The bench's
/// own `OTEL_*` variables pass through, so that it measures the binaries exporting spans when
/// run with `OTEL_EXPORTER_OTLP_ENDPOINT` set (and without, when not).
async fn start(bin: &Path, args: &[&str], env: &[(&str, String)], ready: &str) -> (Service, Value) {
    let otel: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("OTEL_"))
        .collect();
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(otel.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    Service::measured(bin, args, &env, ready).await
}

/// A process whose CPU time is counted: this one (the clients) or a child.
#[derive(Debug, Clone, Copy)]
enum Pid {
    Bench,
    Child(u32),
}

impl Pid {
    fn cpu(self) -> Duration {
        match self {
            Self::Bench => cpu_time("self"),
            Self::Child(pid) => cpu_time(pid),
        }
    }
}

/// The processes taking part in a row, each named by its part.
type Parts = Vec<(&'static str, Vec<Pid>)>;

/// Runs one measurement of `messages` and returns its rate and the CPU each part spent on it.
/// `run` returns the measured duration (a run may time only part of what it does).
async fn measure(
    parts: &Parts,
    messages: u32,
    run: impl Future<Output = anyhow::Result<Duration>>,
) -> anyhow::Result<Sample> {
    let cpu = |parts: &Parts| -> Vec<Duration> {
        parts
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| p.cpu()).sum())
            .collect()
    };
    let before = cpu(parts);
    let start = Instant::now();
    let elapsed = run.await?;
    let wall = start.elapsed();
    let after = cpu(parts);
    let spent: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b).as_secs_f64())
        .collect();
    Ok(Sample {
        rate: f64::from(messages) / elapsed.as_secs_f64(),
        cpu_us_per_message: parts
            .iter()
            .zip(&spent)
            .map(|((part, _), s)| (*part, s * 1e6 / f64::from(messages)))
            .collect(),
        cores: spent.iter().sum::<f64>() / wall.as_secs_f64(),
    })
}

/// The `processed` count in a consumer's last event, `stopped`.
fn processed(events: &[Value]) -> anyhow::Result<u64> {
    events
        .iter()
        .rev()
        .find(|e| e["message"] == "stopped")
        .and_then(|e| e["processed"].as_u64())
        .context("the consumer's log does not end with a `stopped` event")
}

/// `GET url`, a success with a JSON body.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let response = http.get(url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// `POST /MessageProducer {"count": m, "intervalMilliseconds": 0}`; returns its duration.
async fn produce(http: &reqwest::Client, producer: SocketAddr, m: u32) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let response = http
        .post(format!("http://{producer}/MessageProducer"))
        .json(&json!({ "count": m, "intervalMilliseconds": 0 }))
        .timeout(run_limit(m))
        .send()
        .await?;
    let elapsed = start.elapsed();
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(
        status.is_success() && body["sent"] == m,
        "the producer answered {status} {body} to a batch of {m}"
    );
    Ok(elapsed)
}

impl<'a> Bench<'a> {
    fn new(
        sizes: &'a Sizes,
        bins: &'a Binaries,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            sizes,
            bins,
            progress,
            http: reqwest::Client::builder().timeout(WAIT).build()?,
        })
    }

    /// Reports progress to `run`'s caller.
    fn step(&self, message: &str) {
        // The receiver lives until the bench ends.
        let _ = self.progress.send(message.to_owned());
    }

    async fn run(self) -> anyhow::Result<Report> {
        let started = Instant::now();
        let load_before = report::load_average();
        let sizes = self.sizes;
        // The null servers are this executable, started again: `main` must call
        // `null_servers_main_if_asked` first, or they never log their addresses.
        let latencies: Vec<String> = sizes
            .latencies()
            .iter()
            .map(|l| l.as_micros().to_string())
            .collect();
        let mut args = vec![null::ARG];
        args.extend(latencies.iter().map(String::as_str));
        let (nulls, event) = start(&std::env::current_exe()?, &args, &[], null::READY).await;
        let null: null::Addresses = serde_json::from_value(event)?;

        let (producer_fp, consumer_fp) = self.footprints(null.sidecar).await?;
        let shipped = shipped_send_concurrency(&self.bins.producer).await?;
        let mut report = Report::new(sizes, self.bins, producer_fp, consumer_fp, shipped);

        self.step("starting the producer, the consumer and the local stack");
        let rig = Rig::start(&self, nulls, null, shipped).await?;
        let mut peers = Peers::start(&self, shipped).await?;
        // Round 0 warms every path up (connections, allocator, caches) and is not reported.
        let mut consumer_events = 0;
        for round in 0..=sizes.rounds {
            let warm_up = round == 0;
            self.step(&if warm_up {
                "warm-up round".to_owned()
            } else {
                format!("round {round} of {}", sizes.rounds)
            });
            let (m, m_original) = if warm_up {
                (sizes.messages.min(2_000), sizes.original_messages.min(200))
            } else {
                (sizes.messages, sizes.original_messages)
            };
            let samples = rig.round(m, m_original).await?;
            let latency = rig.latency_rows(warm_up).await?;
            let sweep = rig.sweep(warm_up).await?;
            consumer_events += u64::from(m);
            if warm_up {
                peers.warm_up(&self, m.min(sizes.peer_messages)).await?;
            } else {
                report.push(samples, latency, sweep);
                peers.round(&self).await?;
            }
        }
        rig.stop(&mut report, consumer_events).await?;
        report.peers = peers.stop().await?;
        report.open_loop = latency::run(
            &self,
            report::rate(&report.end_to_end),
            &sizes.latency_shares,
            sizes.latency_duration,
        )
        .await?;
        let progress = |step: String| {
            let _ = self.progress.send(step);
        };
        report.bursts =
            burst::run(&self.bins.devstack, &sizes.bursts, &self.http, &progress).await?;
        if let (Some(path), Some(first)) = (&sizes.bursts.chart, report.bursts.first())
            && let Some(run) = first.median_run()
        {
            let title = format!(
                "{} messages, {}: the median of {} runs",
                first.messages,
                burst::shown(&sizes.bursts.scaled_object),
                first.runs.len()
            );
            std::fs::write(path, burst::chart(first, run, &title))
                .with_context(|| format!("writing the chart to {}", path.display()))?;
        }
        if let Some(chaos) = &sizes.chaos {
            report.chaos =
                Some(chaos::run(&self.bins.devstack, chaos, &self.http, &progress).await?);
        }
        report.load_average = [load_before, report::load_average()];
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Each binary's spawn-to-ready time and idle RSS, over [`Sizes::starts`] starts.
    async fn footprints(&self, sidecar: SocketAddr) -> anyhow::Result<(Footprint, Footprint)> {
        self.step("footprint: spawn to ready, idle RSS");
        let mut producer = Footprint::new(&self.bins.producer)?;
        let mut consumer = Footprint::new(&self.bins.consumer)?;
        for _ in 0..self.sizes.starts {
            let (ms, service, _) = self.start_producer(sidecar).await?;
            producer.started(ms, service.memory());
            service.stop().await;
            let (ms, service, _) = self.start_consumer(self.sizes.concurrency, "info").await?;
            consumer.started(ms, service.memory());
            service.stop().await;
        }
        Ok((producer, consumer))
    }

    /// Starts a producer; returns its spawn-to-ready time in ms (ready: `/readyz` answers 200).
    async fn start_producer(
        &self,
        sidecar: SocketAddr,
    ) -> anyhow::Result<(f64, Service, SocketAddr)> {
        self.start_producer_with(&producer_env(self.sizes, sidecar))
            .await
    }

    /// Starts a producer with `env` (see [`start_producer`](Self::start_producer)).
    async fn start_producer_with(
        &self,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<(f64, Service, SocketAddr)> {
        let begun = Instant::now();
        let (service, event) = start(&self.bins.producer, &[], env, "listening").await;
        let addr = event_addr(&event, "addr");
        let url = format!("http://{addr}/readyz");
        loop {
            let response = self.http.get(&url).send().await?;
            if response.status().is_success() {
                break;
            }
            ensure!(
                begun.elapsed() < WAIT,
                "the producer is not ready: {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((begun.elapsed().as_secs_f64() * 1e3, service, addr))
    }

    /// Starts a consumer; returns its spawn-to-ready time in ms (ready: gRPC health SERVING).
    async fn start_consumer(
        &self,
        concurrency: u32,
        log: &str,
    ) -> anyhow::Result<(f64, Service, SocketAddr)> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let begun = Instant::now();
        let env = consumer_env(concurrency, log);
        let (service, event) = start(&self.bins.consumer, &[], &env, "listening").await;
        let addr = event_addr(&event, "addr");
        let mut health = HealthClient::new(load::channel(addr).await?);
        loop {
            let check = health.check(HealthCheckRequest::default());
            let status = tokio::time::timeout(WAIT, check)
                .await??
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            ensure!(begun.elapsed() < WAIT, "the consumer is not SERVING");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((begun.elapsed().as_secs_f64() * 1e3, service, addr))
    }

    /// A consumer for row 3 or 3w, with a channel to it, and the parts that row measures.
    async fn measured_consumer(&self, log: &str) -> anyhow::Result<MeasuredConsumer> {
        let (_, service, addr) = self.start_consumer(self.sizes.concurrency, log).await?;
        let parts = vec![
            ("client", vec![Pid::Bench]),
            ("consumer", vec![Pid::Child(service.pid())]),
        ];
        Ok(MeasuredConsumer {
            channel: load::channel(addr).await?,
            service,
            parts,
        })
    }

    /// The local stack of row 4: consumers, the sidecar delivering to them, and a producer.
    async fn start_stack(&self) -> anyhow::Result<Stack> {
        let per_consumer = (self.sizes.concurrency / self.sizes.consumers).max(1);
        let mut consumers = Vec::new();
        let mut apps = Vec::new();
        for _ in 0..self.sizes.consumers {
            let (_, consumer, addr) = self.start_consumer(per_consumer, "info").await?;
            consumers.push(consumer);
            apps.push(format!("{addr}={per_consumer}"));
        }
        let sidecar = Sidecar::start(&self.bins.devstack, &apps, None, &self.http).await?;
        let (_, producer, producer_addr) = self.start_producer(sidecar.grpc).await?;
        sidecar.wait_consumers(self.sizes.consumers).await?;
        Ok(Stack {
            consumers,
            sidecar,
            producer,
            producer_addr,
        })
    }
}

/// A consumer measured on its own (rows 3 and 3w).
struct MeasuredConsumer {
    service: Service,
    channel: Channel,
    parts: Parts,
}

/// A producer against a slow sidecar: row 6's, at the SEND_CONCURRENCY it ships with, or one
/// point of the sweep.
struct SlowProducer {
    concurrency: u32,
    latency: Duration,
    service: Service,
    addr: SocketAddr,
    parts: Parts,
}

impl SlowProducer {
    /// Starts a producer against `slow`'s sidecar, with SEND_CONCURRENCY `set`, or none set for
    /// its default, `concurrency`.
    async fn start(
        bench: &Bench<'_>,
        slow: null::Slow,
        nulls: Pid,
        set: Option<u32>,
        concurrency: u32,
    ) -> anyhow::Result<Self> {
        let latency = Duration::from_micros(slow.latency_us);
        let max_count = bench.sizes.waves(latency, false) * concurrency;
        let env = slow_producer_env(slow.sidecar, set, max_count);
        let (_, service, addr) = bench.start_producer_with(&env).await?;
        Ok(Self {
            concurrency,
            latency,
            parts: vec![
                ("producer", vec![Pid::Child(service.pid())]),
                ("null servers", vec![nulls]),
            ],
            service,
            addr,
        })
    }
}

/// Everything the rows run against, started once and kept for every round; one method a row.
struct Rig {
    sizes: Sizes,
    concurrency: u32,
    http: reqwest::Client,
    nulls: Service,
    null: null::Addresses,
    sidecar_channel: Channel,
    /// To row 6's slow sidecar, for row 6t.
    slow_sidecar_channel: Channel,
    null_app_channel: Channel,
    producer: Service,
    producer_addr: SocketAddr,
    consumer: MeasuredConsumer,
    quiet: MeasuredConsumer,
    stack: Stack,
    /// Row 6's producer, at the SEND_CONCURRENCY it ships with.
    shipped: SlowProducer,
    /// Row 6o's HTTP endpoint, as slow as row 6's sidecar.
    slow_http: SocketAddr,
    /// The sweep's producers, latency by latency, each at every concurrency.
    sweep: Vec<SlowProducer>,
    /// The bench's clients against the null servers.
    transport_parts: Parts,
    producer_parts: Parts,
    stack_parts: Parts,
}

impl Rig {
    async fn start(
        bench: &Bench<'_>,
        nulls: Service,
        null: null::Addresses,
        shipped: u32,
    ) -> anyhow::Result<Self> {
        let sizes = bench.sizes;
        let null_pid = Pid::Child(nulls.pid());
        let slow = |latency: Duration| {
            null.slow
                .iter()
                .find(|s| u128::from(s.latency_us) == latency.as_micros())
                .copied()
                .with_context(|| format!("no slow null server for {latency:?}"))
        };
        let row_6 = slow(sizes.sidecar_latency)?;
        let shipped = SlowProducer::start(bench, row_6, null_pid, None, shipped).await?;
        let mut sweep = Vec::new();
        for latency in &sizes.sweep_latencies {
            for &c in &sizes.sweep_concurrency {
                sweep
                    .push(SlowProducer::start(bench, slow(*latency)?, null_pid, Some(c), c).await?);
            }
        }
        let (_, producer, producer_addr) = bench.start_producer(null.sidecar).await?;
        let consumer = bench.measured_consumer("info").await?;
        let quiet = bench.measured_consumer(QUIET_LOG).await?;
        let stack = bench.start_stack().await?;
        let stack_parts = vec![
            ("producer", vec![Pid::Child(stack.producer.pid())]),
            ("sidecar", vec![Pid::Child(stack.sidecar.service.pid())]),
            (
                "consumers",
                stack
                    .consumers
                    .iter()
                    .map(|c| Pid::Child(c.pid()))
                    .collect(),
            ),
            ("bench (status polls)", vec![Pid::Bench]),
        ];
        Ok(Self {
            sizes: sizes.clone(),
            shipped,
            slow_http: row_6.http,
            sweep,
            concurrency: sizes.concurrency,
            http: bench.http.clone(),
            sidecar_channel: load::channel(null.sidecar).await?,
            slow_sidecar_channel: load::channel(row_6.sidecar).await?,
            null_app_channel: load::channel(null.app).await?,
            transport_parts: vec![
                ("client", vec![Pid::Bench]),
                ("null servers", vec![null_pid]),
            ],
            producer_parts: vec![
                ("producer", vec![Pid::Child(producer.pid())]),
                ("null servers", vec![null_pid]),
            ],
            stack_parts,
            nulls,
            null,
            producer,
            producer_addr,
            consumer,
            quiet,
            stack,
        })
    }

    /// One sample of every row, in [`Report::rows`]' order: `m` messages, `m_original` for row 5.
    async fn round(&self, m: u32, m_original: u32) -> anyhow::Result<[Sample; 7]> {
        Ok([
            self.transport(m).await?,
            self.producer(m).await?,
            self.consumer(&self.consumer, m).await?,
            self.consumer(&self.quiet, m).await?,
            self.null_app(m).await?,
            self.end_to_end(m).await?,
            self.original(m_original).await?,
        ])
    }

    /// Row 1: a tonic client's `InvokeBinding` calls to the null sidecar.
    async fn transport(&self, m: u32) -> anyhow::Result<Sample> {
        let load = load::invoke_binding(&self.sidecar_channel, m, self.concurrency);
        let sample = measure(&self.transport_parts, m, load);
        self.counted("(1)", m, |c| &mut c.sidecar, sample).await
    }

    /// Row 2: one `POST /MessageProducer` of `m` messages, sent on to the null sidecar.
    async fn producer(&self, m: u32) -> anyhow::Result<Sample> {
        let load = produce(&self.http, self.producer_addr, m);
        let sample = measure(&self.producer_parts, m, load);
        self.counted("(2)", m, |c| &mut c.sidecar, sample).await
    }

    /// Rows 3 and 3w: the client's `OnBindingEvent` calls to a consumer (its `stopped` event
    /// at the end says whether it processed them all).
    async fn consumer(&self, consumer: &MeasuredConsumer, m: u32) -> anyhow::Result<Sample> {
        let load = load::binding_event(&consumer.channel, m, self.concurrency);
        measure(&consumer.parts, m, load).await
    }

    /// Row 3n: the same calls to the null app.
    async fn null_app(&self, m: u32) -> anyhow::Result<Sample> {
        let load = load::binding_event(&self.null_app_channel, m, self.concurrency);
        let sample = measure(&self.transport_parts, m, load);
        self.counted("(3n)", m, |c| &mut c.app, sample).await
    }

    /// Row 4: from the POST of `m` messages to the sidecar's status showing them completed.
    async fn end_to_end(&self, m: u32) -> anyhow::Result<Sample> {
        measure(&self.stack_parts, m, self.stack.run(&self.http, m)).await
    }

    /// Row 5: the original producer's loop against the null HTTP binding endpoint.
    async fn original(&self, m: u32) -> anyhow::Result<Sample> {
        let sample = measure(&self.transport_parts, m, load::original(self.null.http, m));
        self.counted("(5)", m, |c| &mut c.http, sample).await
    }

    /// Rows 6, 6t and 6o: the producer at its shipped SEND_CONCURRENCY against the slow sidecar,
    /// the bench's client as many calls at once against it, and the original's loop against an
    /// HTTP endpoint as slow.
    async fn latency_rows(&self, warm_up: bool) -> anyhow::Result<[Sample; 3]> {
        let waves = self.sizes.waves(self.shipped.latency, warm_up);
        let producer = self.slow_producer("(6)", &self.shipped, waves).await?;
        let m = waves * self.shipped.concurrency;
        let load = load::invoke_binding(&self.slow_sidecar_channel, m, self.shipped.concurrency);
        let sample = measure(&self.transport_parts, m, load);
        let client = self
            .counted("(6t)", m, |c| &mut c.slow_sidecar, sample)
            .await?;
        // One message a wave: the original sends one at a time.
        let load = load::original(self.slow_http, waves);
        let sample = measure(&self.transport_parts, waves, load);
        let original = self.counted("(6o)", waves, |c| &mut c.slow_http, sample);
        Ok([producer, client, original.await?])
    }

    /// The sweep: each SEND_CONCURRENCY at each latency, in [`Sizes`]' order.
    async fn sweep(&self, warm_up: bool) -> anyhow::Result<Vec<Sample>> {
        let mut samples = Vec::new();
        for p in &self.sweep {
            let waves = self.sizes.waves(p.latency, warm_up);
            let row = format!("(6) at SEND_CONCURRENCY={} {:?}", p.concurrency, p.latency);
            samples.push(self.slow_producer(&row, p, waves).await?);
        }
        Ok(samples)
    }

    /// One `POST /MessageProducer` of `waves` × SEND_CONCURRENCY messages to `producer`.
    async fn slow_producer(
        &self,
        row: &str,
        producer: &SlowProducer,
        waves: u32,
    ) -> anyhow::Result<Sample> {
        let m = waves * producer.concurrency;
        let load = produce(&self.http, producer.addr, m);
        let sample = measure(&producer.parts, m, load);
        self.counted(row, m, |c| &mut c.slow_sidecar, sample).await
    }

    /// Runs `sample`, then checks that the null servers counted `m` more calls where `counter`
    /// points, and no other.
    async fn counted(
        &self,
        row: &str,
        m: u32,
        counter: fn(&mut null::Counts) -> &mut u64,
        sample: impl Future<Output = anyhow::Result<Sample>>,
    ) -> anyhow::Result<Sample> {
        let before = self.null_counts().await?;
        let sample = sample.await?;
        let after = self.null_counts().await?;
        let mut want = before;
        *counter(&mut want) += u64::from(m);
        ensure!(
            after == want,
            "{row}: the null servers' counts went from {before:?} to {after:?}, not {want:?}"
        );
        Ok(sample)
    }

    async fn null_counts(&self) -> anyhow::Result<null::Counts> {
        get_json(&self.http, &format!("http://{}/counts", self.null.http)).await
    }

    /// Records the peak RSS of rows 2, 3 and 4, stops everything, and checks each consumer of
    /// rows 3 and 3w processed all `consumer_events` it was sent.
    async fn stop(self, report: &mut Report, consumer_events: u64) -> anyhow::Result<()> {
        report.producer_fp.peak_kib = self.producer.memory().peak_kib;
        report.consumer_fp.peak_kib = self.consumer.service.memory().peak_kib;
        self.producer.stop().await;
        for (row, consumer) in [("(3)", self.consumer), ("(3w)", self.quiet)] {
            let processed = processed(&consumer.service.stop().await)?;
            ensure!(
                processed == consumer_events,
                "{row}: the consumer processed {processed} events, not {consumer_events}"
            );
        }
        report.stack_peak_kib = self.stack.stop().await?;
        self.shipped.service.stop().await;
        for p in self.sweep {
            p.service.stop().await;
        }
        self.nulls.stop().await;
        Ok(())
    }
}

struct Stack {
    consumers: Vec<Service>,
    sidecar: Sidecar,
    producer: Service,
    producer_addr: SocketAddr,
}

impl Stack {
    /// From the POST of `m` messages to the status showing all `m` completed.
    async fn run(&self, http: &reqwest::Client, m: u32) -> anyhow::Result<Duration> {
        let before = self.sidecar.counts().await?;
        let start = Instant::now();
        produce(http, self.producer_addr, m).await?;
        self.sidecar.completed("(4)", before, m, start).await
    }

    /// Stops everything; checks the consumers processed what the queue completed. Returns the
    /// sidecar's peak RSS in KiB.
    async fn stop(self) -> anyhow::Result<u64> {
        let completed = self.sidecar.counts().await?.completed;
        self.producer.stop().await;
        let mut processed_total = 0;
        for consumer in self.consumers {
            processed_total += processed(&consumer.stop().await)?;
        }
        let peak = self.sidecar.stop().await;
        ensure!(
            processed_total == completed,
            "(4): the consumers processed {processed_total} events, the queue completed {completed}"
        );
        Ok(peak)
    }
}

/// Where cargo put a binary: `release` or `debug` (the directory above it).
fn profile_of(path: &Path) -> String {
    path.parent().and_then(Path::file_name).map_or_else(
        || "unknown".to_owned(),
        |d| d.to_string_lossy().into_owned(),
    )
}

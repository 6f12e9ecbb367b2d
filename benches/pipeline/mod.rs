//! The pipeline benchmark: our producer and consumer measured against the transport they sit on,
//! all on loopback, all in one run, so the ratios hold even where absolute figures drift.
//!
//! Shared by `benches/pipeline.rs` (the full run, `cargo bench --bench pipeline`) and
//! `tests/bench_smoke.rs` (a tiny run under `cargo test`, so this code cannot rot). Every stage
//! checks that each message it sent is accounted for; a run that loses one is an error.
//!
//! - `null`: servers that answer at once (sidecar `InvokeBinding`, app `OnBindingEvent`, HTTP),
//!   in a process of their own.
//! - `load`: the clients that drive them, and the original producer's send loop.
//! - `process`: the real binaries as child processes, their memory and CPU time.
//! - `report`: the figures, the table and the JSON line.
//!
//! Every row pits two processes (three or more in row 4) against each other on the same cores,
//! so each run also records the CPU time every process spent per message: with all cores busy,
//! a rate is the cores divided by the sum of those costs, which says what limits it.

mod load;
mod null;
mod process;
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
pub use null::main_if_asked as null_servers_main_if_asked;
pub use report::{Footprint, Report, Sample};
use serde_json::{Value, json};

use process::{Service, cpu_time};

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Messages per run of rows 1 to 4 (M).
    pub messages: u32,
    /// Calls in flight (C): the client's, the producer's SEND_CONCURRENCY, the consumer's
    /// MAX_CONCURRENCY, and the stand-in's deliveries in total.
    pub concurrency: u32,
    /// Messages per run of row 5, the original's one-connection-per-message loop.
    pub original_messages: u32,
    /// Runs of each row; figures are medians. Rows alternate within a round, so drift
    /// during the run affects them alike.
    pub rounds: usize,
    /// Starts of each binary for spawn-to-ready and idle RSS.
    pub starts: usize,
    /// Consumer processes behind the stand-in in row 4.
    pub consumers: u32,
}

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub producer: PathBuf,
    pub consumer: PathBuf,
    pub devstack: PathBuf,
}

impl Binaries {
    /// The binaries cargo built for this target (optimized under `cargo bench`).
    pub fn from_cargo() -> Self {
        Self {
            producer: env!("CARGO_BIN_EXE_producer").into(),
            consumer: env!("CARGO_BIN_EXE_consumer").into(),
            devstack: env!("CARGO_BIN_EXE_devstack").into(),
        }
    }
}

/// Longest the bench waits for a stack to come up or a queue to empty.
const WAIT: Duration = Duration::from_secs(60);
/// How often the stand-in's status is read while waiting for the last completion.
const POLL: Duration = Duration::from_millis(5);

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // On a worker thread, as the producer's batches run: a future polled by `block_on` runs on
    // the calling thread, and each of its calls would hop to the workers and back (4 µs of CPU
    // per call more than the producer spends).
    let (sizes, bins) = (sizes.clone(), bins.clone());
    let (steps, mut step) = tokio::sync::mpsc::unbounded_channel();
    let bench = runtime.spawn(async move { Bench::new(&sizes, &bins, steps).run().await });
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

fn addr(event: &Value, field: &str) -> anyhow::Result<SocketAddr> {
    event[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address {field:?} in {event}"))
}

/// A process whose CPU time is counted: this one (the clients) or a child.
#[derive(Debug, Clone, Copy)]
enum Pid {
    Bench,
    Child(u32),
}

impl Pid {
    fn cpu(self) -> anyhow::Result<Duration> {
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
    let cpu = |parts: &Parts| -> anyhow::Result<Vec<Duration>> {
        parts
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| p.cpu()).sum())
            .collect()
    };
    let before = cpu(parts)?;
    let start = Instant::now();
    let elapsed = run.await?;
    let wall = start.elapsed();
    let after = cpu(parts)?;
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

impl<'a> Bench<'a> {
    fn new(
        sizes: &'a Sizes,
        bins: &'a Binaries,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            sizes,
            bins,
            progress,
            http: reqwest::Client::new(),
        }
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
        let (nulls, event) =
            Service::start(&std::env::current_exe()?, &[null::ARG], &[], null::READY)
                .await
                .context(
                    "starting the null servers (is null_servers_main_if_asked called in main?)",
                )?;
        let null::Addresses {
            sidecar,
            app: null_app,
            http: null_http,
        } = serde_json::from_value(event)?;
        let counts_url = format!("http://{null_http}/counts");
        let counts = || async {
            anyhow::Ok(
                self.http
                    .get(&counts_url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<null::Counts>()
                    .await?,
            )
        };

        self.step("footprint: spawn to ready, idle RSS");
        let mut producer_fp = Footprint::new(&self.bins.producer)?;
        let mut consumer_fp = Footprint::new(&self.bins.consumer)?;
        for _ in 0..sizes.starts {
            let (ms, service, _) = self.start_producer(sidecar).await?;
            producer_fp.started(ms, service.memory()?);
            service.stop().await?;
            let (ms, service, _) = self.start_consumer(sizes.concurrency, "info").await?;
            consumer_fp.started(ms, service.memory()?);
            service.stop().await?;
        }

        self.step("starting the producer, the consumer and the local stack");
        let (_, producer, producer_addr) = self.start_producer(sidecar).await?;
        let (_, consumer, consumer_addr) = self.start_consumer(sizes.concurrency, "info").await?;
        let (_, quiet, quiet_addr) = self.start_consumer(sizes.concurrency, QUIET_LOG).await?;
        let stack = self.start_stack().await?;
        let sidecar_channel = load::channel(sidecar).await?;
        let consumer_channel = load::channel(consumer_addr).await?;
        let quiet_channel = load::channel(quiet_addr).await?;
        let null_app_channel = load::channel(null_app).await?;

        let mut report = Report::new(sizes, self.bins, producer_fp, consumer_fp);
        let (bench, null_pid) = (Pid::Bench, Pid::Child(nulls.pid()));
        let transport_parts: Parts =
            vec![("client", vec![bench]), ("null servers", vec![null_pid])];
        let producer_parts: Parts = vec![
            ("producer", vec![Pid::Child(producer.pid())]),
            ("null servers", vec![null_pid]),
        ];
        let consumer_parts: Parts = vec![
            ("client", vec![bench]),
            ("consumer", vec![Pid::Child(consumer.pid())]),
        ];
        let quiet_parts: Parts = vec![
            ("client", vec![bench]),
            ("consumer", vec![Pid::Child(quiet.pid())]),
        ];
        let stack_parts: Parts = vec![
            ("producer", vec![Pid::Child(stack.producer.pid())]),
            ("stand-in", vec![Pid::Child(stack.devstack.pid())]),
            (
                "consumers",
                stack
                    .consumers
                    .iter()
                    .map(|c| Pid::Child(c.pid()))
                    .collect(),
            ),
            ("bench (status polls)", vec![bench]),
        ];
        // Round 0 warms every path up (connections, allocator, caches) and is not reported.
        let mut consumer_events = 0u64;
        for round in 0..=sizes.rounds {
            let warm_up = round == 0;
            let m = if warm_up {
                sizes.messages.min(2_000)
            } else {
                sizes.messages
            };
            let m_original = if warm_up {
                sizes.original_messages.min(200)
            } else {
                sizes.original_messages
            };
            self.step(&if warm_up {
                "warm-up round".to_owned()
            } else {
                format!("round {round} of {}", sizes.rounds)
            });
            let expect = |row: &str, before: null::Counts, after: null::Counts, want| {
                ensure!(
                    after == want,
                    "{row}: the null servers' counts went from {before:?} to {after:?}, not {want:?}"
                );
                Ok(())
            };

            let before = counts().await?;
            let transport = measure(&transport_parts, m, async {
                load::invoke_binding(&sidecar_channel, m, sizes.concurrency).await
            })
            .await?;
            let want = null::Counts {
                sidecar: before.sidecar + u64::from(m),
                ..before
            };
            expect("(1)", before, counts().await?, want)?;

            let before = counts().await?;
            let produced = measure(&producer_parts, m, self.produce(producer_addr, m)).await?;
            let want = null::Counts {
                sidecar: before.sidecar + u64::from(m),
                ..before
            };
            expect("(2)", before, counts().await?, want)?;

            let consumed = measure(&consumer_parts, m, async {
                load::binding_event(&consumer_channel, m, sizes.concurrency).await
            })
            .await?;
            consumer_events += u64::from(m);

            let quiet_consumed = measure(&quiet_parts, m, async {
                load::binding_event(&quiet_channel, m, sizes.concurrency).await
            })
            .await?;

            let before = counts().await?;
            let null_consumed = measure(&transport_parts, m, async {
                load::binding_event(&null_app_channel, m, sizes.concurrency).await
            })
            .await?;
            let want = null::Counts {
                app: before.app + u64::from(m),
                ..before
            };
            expect("(3n)", before, counts().await?, want)?;

            let end_to_end = measure(&stack_parts, m, stack.run(&self, m)).await?;

            let before = counts().await?;
            let original = measure(
                &transport_parts,
                m_original,
                load::original(null_http, m_original),
            )
            .await?;
            let want = null::Counts {
                http: before.http + u64::from(m_original),
                ..before
            };
            expect("(5)", before, counts().await?, want)?;

            if !warm_up {
                report.transport.push(transport);
                report.producer.push(produced);
                report.consumer.push(consumed);
                report.consumer_quiet.push(quiet_consumed);
                report.null_app.push(null_consumed);
                report.end_to_end.push(end_to_end);
                report.original.push(original);
            }
        }

        report.producer_fp.peak_kib = producer.memory()?.peak_kib;
        report.consumer_fp.peak_kib = consumer.memory()?.peak_kib;
        producer.stop().await?;
        let consumer_processed = processed(&consumer.stop().await?)?;
        ensure!(
            consumer_processed == consumer_events,
            "(3): the consumer processed {consumer_processed} events, not {consumer_events}"
        );
        let quiet_processed = processed(&quiet.stop().await?)?;
        ensure!(
            quiet_processed == consumer_events,
            "(3w): the consumer processed {quiet_processed} events, not {consumer_events}"
        );
        report.stack_peak_kib = stack.stop().await?;
        nulls.stop().await?;
        report.load_average = [load_before, report::load_average()];
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Starts a producer; returns its spawn-to-ready time in ms (ready: `/readyz` answers 200).
    async fn start_producer(
        &self,
        sidecar: SocketAddr,
    ) -> anyhow::Result<(f64, Service, SocketAddr)> {
        let start = Instant::now();
        let (service, event) = Service::start(
            &self.bins.producer,
            &[],
            &producer_env(self.sizes, sidecar),
            "listening",
        )
        .await?;
        let addr = addr(&event, "addr")?;
        let url = format!("http://{addr}/readyz");
        loop {
            let response = self.http.get(&url).send().await?;
            if response.status().is_success() {
                break;
            }
            ensure!(
                start.elapsed() < WAIT,
                "the producer is not ready: {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((start.elapsed().as_secs_f64() * 1e3, service, addr))
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
        let start = Instant::now();
        let (service, event) = Service::start(
            &self.bins.consumer,
            &[],
            &consumer_env(concurrency, log),
            "listening",
        )
        .await?;
        let addr = addr(&event, "addr")?;
        let mut health = HealthClient::new(load::channel(addr).await?);
        loop {
            let status = health
                .check(HealthCheckRequest::default())
                .await?
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            ensure!(start.elapsed() < WAIT, "the consumer is not SERVING");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((start.elapsed().as_secs_f64() * 1e3, service, addr))
    }

    /// `POST /MessageProducer {"count": m, "intervalMilliseconds": 0}`; returns its duration.
    async fn produce(&self, producer: SocketAddr, m: u32) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let response = self
            .http
            .post(format!("http://{producer}/MessageProducer"))
            .json(&json!({ "count": m, "intervalMilliseconds": 0 }))
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

    /// The local stack of row 4: consumers, the stand-in delivering to them, and a producer.
    async fn start_stack(&self) -> anyhow::Result<Stack> {
        let per_consumer = (self.sizes.concurrency / self.sizes.consumers).max(1);
        let mut consumers = Vec::new();
        let mut apps = Vec::new();
        for _ in 0..self.sizes.consumers {
            let (_, consumer, addr) = self.start_consumer(per_consumer, "info").await?;
            consumers.push(consumer);
            apps.push(format!("{addr}={per_consumer}"));
        }
        let mut args = vec!["sidecar", "--grpc-port", "0", "--http-port", "0"];
        for app in &apps {
            args.extend(["--app", app]);
        }
        let (devstack, event) =
            Service::start(&self.bins.devstack, &args, &[], "sidecar listening").await?;
        let status_url = format!("http://{}/devstack/status", addr(&event, "http_addr")?);
        let (_, producer, producer_addr) = self.start_producer(addr(&event, "grpc_addr")?).await?;
        let stack = Stack {
            consumers,
            devstack,
            producer,
            producer_addr,
            status_url,
            http: self.http.clone(),
        };
        let start = Instant::now();
        while stack.status().await?["consumersConnected"] != self.sizes.consumers {
            ensure!(
                start.elapsed() < WAIT,
                "the stand-in did not see {} healthy consumers",
                self.sizes.consumers
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(stack)
    }
}

struct Stack {
    consumers: Vec<Service>,
    devstack: Service,
    producer: Service,
    producer_addr: SocketAddr,
    status_url: String,
    http: reqwest::Client,
}

/// One queue's counts from the stand-in's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    produced: u64,
    completed: u64,
    dead_lettered: u64,
}

impl Stack {
    async fn status(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(&self.status_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn counts(&self) -> anyhow::Result<Counts> {
        let status = self.status().await?;
        let queue = &status["queues"][load::BINDING];
        let count = |field: &str| {
            queue[field]
                .as_u64()
                .with_context(|| format!("no {field} in the stand-in's status {status}"))
        };
        Ok(Counts {
            produced: count("produced")?,
            completed: count("completed")?,
            dead_lettered: count("deadLettered")?,
        })
    }

    /// From the POST of `m` messages to the status showing all `m` completed.
    async fn run(&self, bench: &Bench<'_>, m: u32) -> anyhow::Result<Duration> {
        let before = self.counts().await?;
        let start = Instant::now();
        bench.produce(self.producer_addr, m).await?;
        let target = before.completed + u64::from(m);
        loop {
            let now = self.counts().await?;
            if now.completed >= target {
                let elapsed = start.elapsed();
                ensure!(
                    now == Counts {
                        produced: before.produced + u64::from(m),
                        completed: target,
                        dead_lettered: before.dead_lettered,
                    },
                    "(4): expected {m} more produced and completed, none dead-lettered: \
                     before {before:?}, after {now:?}"
                );
                return Ok(elapsed);
            }
            if start.elapsed() > WAIT + Duration::from_secs(u64::from(m) / 1_000) {
                bail!(
                    "(4): {} of {m} messages completed in time",
                    now.completed - before.completed
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops everything; checks the consumers processed what the queue completed. Returns the
    /// stand-in's peak RSS in KiB.
    async fn stop(self) -> anyhow::Result<u64> {
        let completed = self.counts().await?.completed;
        let peak = self.devstack.memory()?.peak_kib;
        self.producer.stop().await?;
        let mut processed_total = 0;
        for consumer in self.consumers {
            processed_total += processed(&consumer.stop().await?)?;
        }
        self.devstack.stop().await?;
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

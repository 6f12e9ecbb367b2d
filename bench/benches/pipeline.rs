//! `cargo bench --bench pipeline`: the producer, the consumer and the local stack measured against
//! the transport they run on, on loopback; prints a table, then one JSON line with every figure.
//! See docs/performance.md for what each row means.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use pipeline_bench as pipeline;

/// A row the benchmark can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Row 8: a batch under a seeded chaos schedule, every message accounted for.
    Chaos,
}

/// Pipeline benchmark: transport limit, producer, consumer, end to end, the original's approach,
/// the producer against a sidecar with a broker's latency, ours beside the official Dapr SDKs,
/// open-loop latency through the sidecar, the drain time of a burst under autoscaling, and the
/// footprint of both binaries.
#[derive(Debug, Parser)]
#[command(name = "pipeline")]
struct Args {
    /// Messages per run of rows 1 to 4 (M).
    #[arg(long, short = 'm', default_value_t = 100_000)]
    messages: u32,
    /// Calls in flight (C).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: u32,
    /// Messages per run of row 5. Smaller than M by default: one new connection per message is
    /// slow, and every closed connection holds a local port in TIME_WAIT for a minute (Linux
    /// reuses them on loopback by default, net.ipv4.tcp_tw_reuse = 2).
    #[arg(long, default_value_t = 20_000)]
    original_messages: u32,
    /// Runs of each row; the figures are medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Starts of each binary for spawn-to-ready and idle RSS.
    #[arg(long, default_value_t = 7)]
    starts: usize,
    /// Consumer processes behind the sidecar in row 4.
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// How long the sidecar of rows 6 and 6o takes to answer each call: about a Service Bus send
    /// within one region.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    sidecar_latency: Duration,
    /// About how long each run of rows 6, 6o and the sweep lasts; their sizes follow from it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    latency_run: Duration,
    /// SEND_CONCURRENCY values the sweep measures row 6 at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    sweep_concurrency: Vec<u32>,
    /// Sidecar latencies the sweep measures each of them at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "5ms,20ms", value_parser = humantime::parse_duration)]
    sweep_latency: Vec<Duration>,
    /// Messages per run of each peer row (ours beside the official Python and JavaScript SDKs):
    /// the JavaScript SDK's one-at-a-time sends take a millisecond of its CPU each.
    #[arg(long, default_value_t = 5_000)]
    peer_messages: u32,
    /// The latency rows' loads, in percent of row 4's rate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    latency_loads: Vec<f64>,
    /// About how long each latency run lasts, through the sidecar and straight to the app.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Row 7's ScaledObject, which `devstack --autoscale` reads.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/consumer-scaling.yaml"))]
    scaled_object: PathBuf,
    /// Row 7's factor on the control plane's periods and on WORK_DURATION (5 s).
    #[arg(long, default_value_t = 0.05)]
    time_scale: f64,
    /// Row 7's burst sizes (comma-separated); the first has the target.
    #[arg(long, value_delimiter = ',', default_value = "50,500")]
    bursts: Vec<u32>,
    /// Runs of each burst, in the order of --bursts (the last repeats); the figures are medians.
    /// The HPA's phase is random: a burst waits 0 to 15 s for its sync, which moves the first
    /// burst's drain from about 1.05x to 1.6x of its ideal, so its median takes 21 runs to move
    /// little from one bench run to the next (each takes about 2 s); the long bursts vary less.
    #[arg(long, value_delimiter = ',', default_value = "21,5")]
    burst_runs: Vec<usize>,
    /// Where row 7's chart goes (SVG): replicas and queue length of the first burst's median run.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/burst-drain.svg"))]
    chart: PathBuf,
    /// Runs only this row (and builds the binaries first): `chaos`, row 8.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Row 8's batch: messages through devstack --autoscale under the chaos schedule.
    #[arg(long, default_value_t = 10_000)]
    chaos_messages: u32,
    /// Row 8's `devstack --chaos` SPEC: the seeded schedule of faults.
    #[arg(
        long,
        default_value = "seed=23,every=250ms,kill,sigterm,pause=2s,unavailable=1s,latency=200ms/1s,lost-complete,lost-lock"
    )]
    chaos_spec: String,
    /// Row 8's time scale: the control plane's periods and the consumers' restart back-off.
    #[arg(long, default_value_t = 0.01)]
    chaos_time_scale: f64,
    /// Row 8's WORK_DURATION: each message's work.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    chaos_work: Duration,
    /// Row 8's LOCK_DURATION: short, so that lost completes and lost locks come back within the
    /// run; the binding renews every quarter of it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    chaos_lock_duration: Duration,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    // The null servers are this executable, started again by `run` with a special argument.
    if let Some(code) = pipeline::null_servers_main_if_asked() {
        return code;
    }
    let args = Args::parse();
    let sizes = pipeline::Sizes {
        messages: args.messages,
        concurrency: args.concurrency,
        original_messages: args.original_messages,
        rounds: args.rounds,
        starts: args.starts,
        consumers: args.consumers,
        sidecar_latency: args.sidecar_latency,
        latency_run: args.latency_run,
        sweep_concurrency: args.sweep_concurrency,
        sweep_latencies: args.sweep_latency,
        peer_messages: args.peer_messages,
        // Without Python or Node the peer rows say so, and the rest runs.
        peers: pipeline::PeerPolicy::WhenAvailable,
        latency_shares: args.latency_loads.iter().map(|p| p / 100.0).collect(),
        latency_duration: args.latency_duration,
        bursts: pipeline::burst::Bursts {
            scaled_object: args.scaled_object.clone(),
            time_scale: args.time_scale,
            sizes: args.bursts,
            runs: args.burst_runs,
            chart: Some(args.chart),
        },
        chaos: Some(pipeline::chaos::Chaos {
            messages: args.chaos_messages,
            spec: args.chaos_spec,
            scaled_object: args.scaled_object,
            time_scale: args.chaos_time_scale,
            work: args.chaos_work,
            lock_duration: args.chaos_lock_duration,
        }),
    };
    let progress = |step: &str| eprintln!("pipeline: {step}");
    // Cargo builds a benchmark's own crate only: the binaries it measures are built here, optimized.
    let binaries = match pipeline::Binaries::build_release() {
        Ok(binaries) => binaries,
        Err(error) => {
            eprintln!("pipeline: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(Only::Chaos), Some(chaos)) = (args.only, &sizes.chaos) {
        let progress = |step: String| eprintln!("pipeline: {step}");
        return match pipeline::run_chaos(chaos, &binaries, &progress) {
            Ok(run) => {
                print!("{}", run.table(chaos));
                println!("{}", serde_json::json!({ "chaos": run.json(chaos) }));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("pipeline: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match pipeline::run(&sizes, &binaries, &progress) {
        Ok(report) => {
            print!("{}", report.table());
            println!("{}", report.json());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("pipeline: {error:#}");
            ExitCode::FAILURE
        }
    }
}

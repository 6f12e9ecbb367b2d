//! `devstack plan`: its arguments and what it prints and writes.

use std::{io::Write, num::NonZeroUsize, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;

use super::{
    Arrival, Distribution, Scenario,
    arrivals::{burst, rate},
    distribution::duration,
    plan, report,
    sweep::{self, SweepField, TargetDrain},
};
use crate::{
    manifests,
    scaling::{hpa::HPA_SYNC_PERIOD, spec::Manifest},
};

/// What a ScaledObject will do under a load, before it is deployed: the same rules as
/// `--autoscale`, in simulated time, no process started. Prints the decisions (the lines
/// `--autoscale` logs), a summary and the traps met.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The ScaledObject (and the Deployment beside it, for terminationGracePeriodSeconds). Without
    /// it, the committed deploy/base/consumer-scaling.yaml and its Deployment, built in, as
    /// --autoscale. A ScaledObject devstack cannot honour is an error naming the field.
    #[arg(value_name = "SCALEDOBJECT")]
    pub scaled_object: Option<PathBuf>,
    /// A burst: N messages at once, at a time from the start (0s when left out): `50`,
    /// `500@10m`. Repeat for several; with no arrivals given, one burst of 50.
    #[arg(long, value_name = "N[@T]", value_parser = burst)]
    pub burst: Vec<Arrival>,
    /// A steady rate for a while, from a time: `1/s:24h`, `30/m:10m@1h` (per s, m or h).
    /// Repeatable.
    #[arg(long, value_name = "R/s:D[@T]", value_parser = rate)]
    pub rate: Vec<Arrival>,
    /// A CSV file of `time,count` rows: the time in seconds (`90`, `1.5`) or as `90s`, `1h`.
    /// Repeatable.
    #[arg(long = "arrivals", value_name = "FILE")]
    pub arrival_files: Vec<PathBuf>,
    /// Each message's work: `5s`, `uniform:2s..8s`, `exponential:5s` (the mean); the consumer's
    /// WORK_DURATION.
    #[arg(long, default_value = "5s")]
    pub work: Distribution,
    /// Messages a pod works at once: the consumer's MAX_CONCURRENCY.
    #[arg(long, default_value = "1")]
    pub max_concurrency: NonZeroUsize,
    /// From a pod's creation until messages are delivered to it (scheduling, the containers'
    /// start, daprd's components and its wait for the app port): `10s`, `uniform:5s..20s`.
    #[arg(long, default_value = "10s")]
    pub pod_startup: Distribution,
    /// The consumer's DRAIN_TIMEOUT: after SIGTERM, how long what a pod holds may run (cut at
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value = "25s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// The HPA's first sync, from the start: its phase, below 15s (random in a cluster; its mean
    /// by default).
    #[arg(long, default_value = "7.5s", value_parser = hpa_phase)]
    pub hpa_phase: Duration,
    /// Deliveries before a message is dead-lettered (Service Bus default: 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_delivery_count: u32,
    /// Seeds every draw (work, start-up): the same seed, the same plan.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prints JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Writes the chart of the queue and the replicas over time to FILE (SVG); with --sweep, of
    /// the cheapest combination that meets the target.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Plans every value of a field: `pollingInterval=2,10,30`. Repeat for several fields; every
    /// combination is planned. Fields: the ScaledObject's (pollingInterval, cooldownPeriod,
    /// initialCooldownPeriod, minReplicaCount, maxReplicaCount, messageCount,
    /// activationMessageCount, value, activationValue, or a path from spec.), behavior (file or
    /// none), terminationGracePeriodSeconds, MAX_CONCURRENCY.
    #[arg(long, value_name = "FIELD=V1,V2,...")]
    pub sweep: Vec<SweepField>,
    /// With --sweep: the drain to meet, a time (`60s`) or a multiple of the ideal (`1.5x`); the
    /// cheapest combination that meets it, in pod-seconds, is marked.
    #[arg(long, value_name = "TIME|MULTIPLEx")]
    pub target_drain: Option<TargetDrain>,
}

/// Below the HPA's sync period.
fn hpa_phase(text: &str) -> Result<Duration, String> {
    let phase = duration(text)?;
    if phase >= HPA_SYNC_PERIOD {
        return Err(format!(
            "{text:?}: the HPA's first sync comes within its 15s sync period (0s to 14.9s)"
        ));
    }
    Ok(phase)
}

impl PlanArgs {
    /// The scenario: the arrivals (the CSV files read) and the pods.
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut arrivals: Vec<Arrival> = self.burst.iter().chain(&self.rate).cloned().collect();
        for file in &self.arrival_files {
            arrivals.push(Arrival::csv(file)?);
        }
        if arrivals.is_empty() {
            arrivals = Scenario::default().arrivals;
        }
        Ok(Scenario {
            arrivals,
            work: self.work,
            max_concurrency: self.max_concurrency.get(),
            pod_startup: self.pod_startup,
            drain_timeout: self.drain_timeout,
            max_delivery_count: self.max_delivery_count,
            hpa_first_sync: self.hpa_phase,
            seed: self.seed,
        })
    }
}

/// Plans as `args` say, writing the outcome to `out` (and the chart to its file).
pub fn run(args: &PlanArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (manifest, source) = match &args.scaled_object {
        Some(path) => (Manifest::load(path)?, path.display().to_string()),
        None => (Manifest::committed()?, manifests::SCALED_OBJECT.to_string()),
    };
    let spec = manifest.spec()?;
    let scenario = args.scenario()?;
    let workload = scenario.workload()?;
    if args.sweep.is_empty() {
        if args.target_drain.is_some() {
            anyhow::bail!("--target-drain marks the cheapest combination of a --sweep; give one");
        }
        let plan = plan(&spec, &scenario, &workload);
        if let Some(path) = &args.svg {
            let title = format!("{} messages, {source}: planned", plan.summary.messages);
            write_svg(path, &report::svg(&title, &spec, &plan))?;
        }
        match args.json {
            true => writeln!(out, "{:#}", report::json(&source, &spec, &scenario, &plan))?,
            false => write!(out, "{}", report::text(&source, &spec, &scenario, &plan))?,
        }
        return Ok(());
    }
    let sweep = sweep::run(
        &manifest,
        &scenario,
        &workload,
        &args.sweep,
        args.target_drain,
    )?;
    if let Some(path) = &args.svg {
        // The cheapest combination, else the first.
        let row = &sweep.rows[sweep.cheapest.unwrap_or(0)];
        let values: Vec<String> = row.values.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let title = format!(
            "{} messages, {source}, {}: planned",
            row.plan.summary.messages,
            values.join(" ")
        );
        write_svg(path, &report::svg(&title, &row.spec, &row.plan))?;
    }
    match args.json {
        true => writeln!(out, "{:#}", report::sweep_json(&source, &sweep))?,
        false => write!(
            out,
            "{}",
            report::sweep_text(&source, &spec, &scenario, &sweep)
        )?,
    }
    Ok(())
}

fn write_svg(path: &PathBuf, svg: &str) -> anyhow::Result<()> {
    std::fs::write(path, svg).with_context(|| format!("{}: cannot write the chart", path.display()))
}

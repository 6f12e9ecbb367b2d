//! The figures of one run: the table for people, and one JSON line holding every figure.

use std::{fmt::Write as _, path::Path, time::Duration};

use serde_json::{Value, json};

use super::{
    Binaries, Sizes,
    burst::{self, Burst},
    chaos::ChaosRun,
    latency,
    peers::{self, Side},
    process::Memory,
    profile_of,
};

const MIB: f64 = 1024.0;

/// One binary's footprint.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub path: String,
    /// `release` or `debug`: the directory cargo built it in.
    pub profile: String,
    pub binary_bytes: u64,
    /// Spawn to ready, per start, in ms.
    pub ready_ms: Vec<f64>,
    /// VmRSS right after ready, per start, in KiB.
    pub idle_kib: Vec<f64>,
    /// VmHWM of the process that served rows 2 or 3, at the end, in KiB.
    pub peak_kib: u64,
}

impl Footprint {
    pub fn new(binary: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: binary.display().to_string(),
            profile: profile_of(binary),
            binary_bytes: std::fs::metadata(binary)?.len(),
            ready_ms: Vec::new(),
            idle_kib: Vec::new(),
            peak_kib: 0,
        })
    }

    pub fn started(&mut self, ready_ms: f64, memory: Memory) {
        self.ready_ms.push(ready_ms);
        self.idle_kib.push(memory.rss_kib as f64);
    }

    fn json(&self) -> Value {
        json!({
            "binary": self.path,
            "profile": self.profile,
            "binary_bytes": self.binary_bytes,
            "idle_rss_kib": median(&self.idle_kib),
            "idle_rss_kib_runs": self.idle_kib,
            "peak_rss_kib": self.peak_kib,
            "ready_ms": round(median(&self.ready_ms), 2),
            "ready_ms_runs": self.ready_ms.iter().map(|v| round(*v, 2)).collect::<Vec<_>>(),
        })
    }
}

/// One run of one row.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Messages (calls) per second.
    pub rate: f64,
    /// CPU time each part (process) spent per message, in µs.
    pub cpu_us_per_message: Vec<(&'static str, f64)>,
    /// CPU time of all parts over wall time: 2.0 is both cores of a 2-core machine.
    pub cores: f64,
}

/// The runs of one row.
pub type Runs = Vec<Sample>;

fn rates(runs: &Runs) -> Vec<f64> {
    runs.iter().map(|s| s.rate).collect()
}

/// The median rate of a row.
pub fn rate(runs: &Runs) -> f64 {
    median(&rates(runs))
}

/// Each part's median CPU per message, then the median cores busy.
fn cpu(runs: &Runs) -> (Vec<(&'static str, f64)>, f64) {
    let parts: Vec<&str> = runs
        .first()
        .map(|s| s.cpu_us_per_message.iter().map(|(p, _)| *p).collect())
        .unwrap_or_default();
    let per_part = parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let values: Vec<f64> = runs.iter().map(|s| s.cpu_us_per_message[i].1).collect();
            (part, median(&values))
        })
        .collect();
    let cores: Vec<f64> = runs.iter().map(|s| s.cores).collect();
    (per_part, median(&cores))
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub sizes: Sizes,
    /// One sample per round for each row.
    pub transport: Runs,
    pub producer: Runs,
    pub consumer: Runs,
    /// Row 3 again with RUST_LOG=warn: what the per-message log line costs.
    pub consumer_quiet: Runs,
    pub null_app: Runs,
    pub end_to_end: Runs,
    pub original: Runs,
    /// Row 6: the producer at its shipped SEND_CONCURRENCY against a sidecar with a latency.
    pub latency_producer: Runs,
    /// Row 6t: the bench's client against the same sidecar at the same concurrency: what the
    /// machine allows the producer.
    pub latency_client: Runs,
    /// Row 6o: the original's loop against an HTTP endpoint with the same latency.
    pub latency_original: Runs,
    /// The producer's default SEND_CONCURRENCY, which row 6 runs with.
    pub shipped_concurrency: u32,
    /// Row 6 at other SEND_CONCURRENCY values and latencies.
    pub sweep: Vec<SweepPoint>,
    /// Row 7, one entry a burst size.
    pub bursts: Vec<Burst>,
    /// Row 8, when it ran.
    pub chaos: Option<ChaosRun>,
    /// Ours beside the official SDKs.
    pub peers: peers::Figures,
    /// Send to `OnBindingEvent` start at shares of row 4's rate, open-loop.
    pub open_loop: Vec<latency::Point>,
    pub producer_fp: Footprint,
    pub consumer_fp: Footprint,
    /// VmHWM of the sidecar during row 4, in KiB.
    pub stack_peak_kib: u64,
    pub devstack: String,
    /// The 1-minute load average before and after the run: other work on the machine.
    pub load_average: [f64; 2],
    pub elapsed: Duration,
}

/// One point of the sweep: the producer at `concurrency` against a sidecar taking `latency`.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub concurrency: u32,
    pub latency: Duration,
    pub runs: Runs,
}

impl SweepPoint {
    /// Its median rate over SEND_CONCURRENCY / latency.
    fn ratio(&self) -> f64 {
        rate(&self.runs) / bound(self.concurrency, self.latency)
    }
}

/// The most a sender keeping `concurrency` calls in flight can send when each takes `latency`.
fn bound(concurrency: u32, latency: Duration) -> f64 {
    f64::from(concurrency) / latency.as_secs_f64()
}

/// A latency in ms, as short as it can be written.
fn ms(latency: Duration) -> String {
    format!("{} ms", round(latency.as_secs_f64() * 1e3, 3))
}

/// A figure's target, and whether this run met it.
struct Target {
    name: String,
    value: f64,
    goal: &'static str,
    met: bool,
}

/// This run's targets, to print each one's verdict beside its figure.
struct Verdicts(Vec<Target>);

impl Verdicts {
    /// `met` or `MISSED` for the target `name`; nothing for a figure without one.
    fn of(&self, name: &str) -> &'static str {
        self.0
            .iter()
            .find(|t| t.name == name)
            .map_or("", |t| if t.met { "met" } else { "MISSED" })
    }
}

impl Report {
    pub fn new(
        sizes: &Sizes,
        bins: &Binaries,
        producer: Footprint,
        consumer: Footprint,
        shipped_concurrency: u32,
    ) -> Self {
        let sweep = sizes
            .sweep_latencies
            .iter()
            .flat_map(|&latency| {
                sizes
                    .sweep_concurrency
                    .iter()
                    .map(move |&concurrency| SweepPoint {
                        concurrency,
                        latency,
                        runs: Vec::new(),
                    })
            })
            .collect();
        Self {
            sizes: sizes.clone(),
            transport: Vec::new(),
            producer: Vec::new(),
            consumer: Vec::new(),
            consumer_quiet: Vec::new(),
            null_app: Vec::new(),
            end_to_end: Vec::new(),
            original: Vec::new(),
            latency_producer: Vec::new(),
            latency_client: Vec::new(),
            latency_original: Vec::new(),
            shipped_concurrency,
            sweep,
            bursts: Vec::new(),
            chaos: None,
            peers: peers::Figures::default(),
            open_loop: Vec::new(),
            producer_fp: producer,
            consumer_fp: consumer,
            stack_peak_kib: 0,
            devstack: bins.devstack.display().to_string(),
            load_average: [f64::NAN; 2],
            elapsed: Duration::ZERO,
        }
    }

    fn producer_ratio(&self) -> f64 {
        rate(&self.producer) / rate(&self.transport)
    }

    fn consumer_ratio(&self) -> f64 {
        rate(&self.consumer) / rate(&self.null_app)
    }

    fn consumer_quiet_ratio(&self) -> f64 {
        rate(&self.consumer_quiet) / rate(&self.null_app)
    }

    fn end_to_end_ratio(&self) -> f64 {
        rate(&self.end_to_end) / rate(&self.transport)
    }

    fn over_original(&self) -> f64 {
        rate(&self.producer) / rate(&self.original)
    }

    /// Row 6's bound: the shipped SEND_CONCURRENCY over the sidecar's latency.
    fn latency_bound(&self) -> f64 {
        bound(self.shipped_concurrency, self.sizes.sidecar_latency)
    }

    fn latency_ratio(&self) -> f64 {
        rate(&self.latency_producer) / self.latency_bound()
    }

    fn latency_client_ratio(&self) -> f64 {
        rate(&self.latency_client) / self.latency_bound()
    }

    /// Row 6 over row 6t: the producer against the best client this machine allows, in this run.
    fn latency_to_client(&self) -> f64 {
        rate(&self.latency_producer) / rate(&self.latency_client)
    }

    /// Our rate over each peer row's on the same side, by the row's target name.
    fn peer_ratios(&self) -> Vec<(String, f64, &peers::Row)> {
        [Side::Consumer, Side::Producer]
            .into_iter()
            .flat_map(|side| {
                let ours = self.peers.ours(side).map(|r| rate(&r.runs));
                self.peers.side(side).filter(|r| !r.ours).map(move |r| {
                    let name = format!("peer_{}_{}", side.key(), r.key);
                    (name, ours.unwrap_or(f64::NAN) / rate(&r.runs), r)
                })
            })
            .collect()
    }

    fn latency_over_original(&self) -> f64 {
        rate(&self.latency_producer) / rate(&self.latency_original)
    }

    fn targets(&self) -> Vec<Target> {
        let (p, c) = (&self.producer_fp, &self.consumer_fp);
        let at_most = |name: &str, value: f64, limit: f64, goal| Target {
            name: name.to_owned(),
            value,
            goal,
            met: value <= limit,
        };
        let at_least = |name: &str, value: f64, limit: f64, goal| Target {
            name: name.to_owned(),
            value,
            goal,
            met: value >= limit,
        };
        let burst = self
            .bursts
            .first()
            .map(|b| at_most("burst_multiple_of_ideal", b.multiple(), 1.5, "<= 1.5"));
        // Ahead of every peer: ours more than the peer's rate.
        let peers = self
            .peer_ratios()
            .into_iter()
            .map(|(name, ratio, _)| Target {
                name,
                value: ratio,
                goal: "> 1",
                met: ratio > 1.0,
            });
        vec![
            at_least("producer_ratio", self.producer_ratio(), 0.9, ">= 0.9"),
            at_least("consumer_ratio", self.consumer_ratio(), 0.9, ">= 0.9"),
            at_least("end_to_end_ratio", self.end_to_end_ratio(), 0.4, ">= 0.4"),
            at_least(
                "latency_producer_to_client",
                self.latency_to_client(),
                0.95,
                ">= 0.95",
            ),
            at_most(
                "producer_idle_rss_mib",
                median(&p.idle_kib) / MIB,
                10.0,
                "<= 10",
            ),
            at_most(
                "consumer_idle_rss_mib",
                median(&c.idle_kib) / MIB,
                10.0,
                "<= 10",
            ),
            at_most(
                "producer_peak_rss_mib",
                p.peak_kib as f64 / MIB,
                64.0,
                "<= 64",
            ),
            at_most(
                "consumer_peak_rss_mib",
                c.peak_kib as f64 / MIB,
                64.0,
                "<= 64",
            ),
            at_most("producer_ready_ms", median(&p.ready_ms), 100.0, "<= 100"),
            at_most("consumer_ready_ms", median(&c.ready_ms), 100.0, "<= 100"),
        ]
        .into_iter()
        .chain(burst)
        .chain(peers)
        .collect()
    }

    /// Adds one round's samples: rows 1 to 5 in [`rows`](Self::rows)' order, rows 6 and 6o,
    /// and the sweep's in [`Sizes`]' order.
    pub fn push(&mut self, samples: [Sample; 7], latency: [Sample; 3], sweep: Vec<Sample>) {
        let [producer, client, original] = latency;
        self.latency_producer.push(producer);
        self.latency_client.push(client);
        self.latency_original.push(original);
        for (point, sample) in self.sweep.iter_mut().zip(sweep) {
            point.runs.push(sample);
        }
        let rows = [
            &mut self.transport,
            &mut self.producer,
            &mut self.consumer,
            &mut self.consumer_quiet,
            &mut self.null_app,
            &mut self.end_to_end,
            &mut self.original,
        ];
        for (runs, sample) in rows.into_iter().zip(samples) {
            runs.push(sample);
        }
    }

    /// The human-readable tables: what ran where, the rates, the footprint, the CPU.
    pub fn table(&self) -> String {
        let machine = machine();
        let verdicts = Verdicts(self.targets());
        let out = [
            self.heading(&machine),
            self.rates_table(&verdicts),
            self.peers_table(&verdicts),
            self.open_loop_table(),
            self.sweep_table(),
            self.burst_table(&verdicts),
            self.chaos_table(),
            self.footprint_table(&verdicts),
            self.cpu_table(&machine),
        ]
        .into_iter()
        .filter(|section| !section.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
        // Columns are padded for rows that have a verdict; no line needs to end in spaces.
        out.lines()
            .map(|line| format!("{}\n", line.trim_end()))
            .collect()
    }

    /// The sizes, the machine and the binaries.
    fn heading(&self, machine: &Value) -> String {
        let s = &self.sizes;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pipeline benchmark: M={} messages, C={} in flight, {} rounds (medians); row 5 sends {} messages",
            s.messages, s.concurrency, s.rounds, s.original_messages
        );
        let _ = writeln!(
            out,
            "machine: {} x {}, {:.1} GiB, load average {:.1} before, {:.1} after; binaries: {} build ({}); took {:.0} s",
            machine["nproc"],
            machine["cpu"].as_str().unwrap_or("?"),
            machine["memory_kib"].as_f64().unwrap_or(0.0) / MIB / MIB,
            self.load_average[0],
            self.load_average[1],
            self.producer_fp.profile,
            Path::new(&self.producer_fp.path)
                .parent()
                .map_or_else(String::new, |d| d.display().to_string()),
            self.elapsed.as_secs_f64()
        );
        out
    }

    /// Each row's median rate, its ratio and its target.
    fn rates_table(&self, verdicts: &Verdicts) -> String {
        let mut out = format!(
            "{:<4}{:<58}{:>10}  {:<14}target\n",
            "row", "what", "msg/s", "ratio"
        );
        let mut row = |id: &str, what: &str, runs: &Runs, ratio: String, goal: &str, name: &str| {
            let _ = writeln!(
                out,
                "{:<4}{:<58}{:>10}  {:<14}{:<8}{}",
                id,
                what,
                thousands(rate(runs)),
                ratio,
                goal,
                verdicts.of(name)
            );
        };
        row(
            "1",
            "transport: tonic client -> null InvokeBinding server",
            &self.transport,
            "1.00".into(),
            "",
            "",
        );
        row(
            "2",
            "producer: POST /MessageProducer -> null sidecar",
            &self.producer,
            format!("{:.2} of (1)", self.producer_ratio()),
            ">= 0.9",
            "producer_ratio",
        );
        row(
            "3",
            "consumer: client -> consumer OnBindingEvent (work 0)",
            &self.consumer,
            format!("{:.2} of (3n)", self.consumer_ratio()),
            ">= 0.9",
            "consumer_ratio",
        );
        row(
            "3w",
            "  same, RUST_LOG=warn: no log line per message",
            &self.consumer_quiet,
            format!("{:.2} of (3n)", self.consumer_quiet_ratio()),
            "",
            "",
        );
        row(
            "3n",
            "  same client -> null AppCallback server",
            &self.null_app,
            String::new(),
            "",
            "",
        );
        row(
            "4",
            &format!(
                "end to end: producer -> sidecar -> {} consumers",
                self.sizes.consumers
            ),
            &self.end_to_end,
            format!("{:.2} of (1)", self.end_to_end_ratio()),
            ">= 0.4",
            "end_to_end_ratio",
        );
        row(
            "5",
            "original: new HTTP/1.1 client+connection per message",
            &self.original,
            format!("(2) is {:.0}x", self.over_original()),
            "",
            "",
        );
        let latency = ms(self.sizes.sidecar_latency);
        row(
            "6",
            &format!("producer -> sidecar answering after {latency}"),
            &self.latency_producer,
            format!("{:.2} of (6t)", self.latency_to_client()),
            ">= 0.95",
            "latency_producer_to_client",
        );
        row(
            "6t",
            "  same calls from the bench's tonic client",
            &self.latency_client,
            format!("{:.2} of bound", self.latency_client_ratio()),
            "",
            "",
        );
        row(
            "6o",
            &format!("original -> HTTP endpoint answering after {latency}"),
            &self.latency_original,
            format!("(6) is {:.0}x", self.latency_over_original()),
            "",
            "",
        );
        let _ = writeln!(
            out,
            "(6)'s bound: SEND_CONCURRENCY {} (the producer's default) / {latency} = {} msg/s; (6) is {:.2} of it",
            self.shipped_concurrency,
            thousands(self.latency_bound()),
            self.latency_ratio()
        );
        out
    }

    /// Ours beside the official SDKs: rate, CPU and peak RSS of each, our rate over each.
    fn peers_table(&self, verdicts: &Verdicts) -> String {
        let figures = &self.peers;
        if figures.rows.is_empty() && figures.skipped.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "peers: the official Dapr SDKs, each through a devstack sidecar of its own; {} messages a run, work 0, medians\n",
            self.sizes.peer_messages
        );
        let _ = writeln!(
            out,
            "{:<72}{:>10}{:>12}{:>11}  {:<9}target",
            "", "msg/s", "CPU µs/msg", "peak RSS", "ours is"
        );
        let ratios = self.peer_ratios();
        for side in [Side::Consumer, Side::Producer] {
            let _ = writeln!(
                out,
                "{}",
                match side {
                    Side::Consumer => format!(
                        "consumers (the bench's client sends at {} in flight; the sidecar delivers {} at a time)",
                        self.sizes.concurrency, self.sizes.concurrency
                    ),
                    Side::Producer => "producers (each sends to a sidecar with no app)".to_owned(),
                }
            );
            for row in figures.side(side) {
                let (ratio, goal, verdict) = ratios
                    .iter()
                    .find(|(_, _, r)| std::ptr::eq(*r, row))
                    .map_or((String::new(), "", ""), |(name, ratio, _)| {
                        (format!("{ratio:.1}x"), "> 1", verdicts.of(name))
                    });
                let _ = writeln!(
                    out,
                    "  {:<70}{:>10}{:>12.1}{:>11}  {:<9}{goal:<7}{verdict}",
                    row.what,
                    thousands(rate(&row.runs)),
                    row.cpu_us(),
                    mib(row.peak_kib as f64),
                    ratio,
                );
            }
        }
        for skipped in &figures.skipped {
            let _ = writeln!(out, "{skipped}");
        }
        out
    }

    /// Send to `OnBindingEvent` start, open-loop: through the producer and the sidecar, the
    /// sidecar alone, and straight to the app.
    fn open_loop_table(&self) -> String {
        if self.open_loop.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "latency: send -> OnBindingEvent start, arrivals on a fixed schedule; µs (HDR histogram)\n",
        );
        let _ = writeln!(
            out,
            "{:<26}{:<34}{:>9}{:>9}{:>9}{:>9}",
            "load", "path", "p50", "p99", "p99.9", "max"
        );
        for point in &self.open_loop {
            let load = format!(
                "{:.0}% of (4): {}/s",
                point.share * 100.0,
                thousands(point.rate)
            );
            let line = |path: &str, p: &latency::Percentiles| {
                format!(
                    "{:<34}{:>9.0}{:>9.0}{:>9.0}{:>9.0}",
                    path, p.p50, p.p99, p.p999, p.max
                )
            };
            let _ = writeln!(
                out,
                "{load:<26}{}",
                line("producer -> sidecar -> app", &point.producer)
            );
            let _ = writeln!(
                out,
                "{:<26}{}",
                "",
                line("client -> sidecar -> app", &point.sidecar)
            );
            let _ = writeln!(
                out,
                "{:<26}{}",
                "",
                line("transport: client -> app", &point.transport)
            );
            for (what, path) in [
                ("  producer path / transport", &point.producer),
                ("  sidecar path / transport", &point.sidecar),
            ] {
                let [p50, p99, p999] = point.over_transport(path);
                let _ = writeln!(
                    out,
                    "{:<26}{what:<34}{p50:>8.1}x{p99:>8.1}x{p999:>8.1}x",
                    ""
                );
            }
            let _ = writeln!(
                out,
                "{:<26}{}",
                "",
                line("  sends late against the schedule", &point.lag)
            );
        }
        out
    }

    /// Row 6 at each SEND_CONCURRENCY and latency of the sweep: msg/s and the ratio of the bound.
    fn sweep_table(&self) -> String {
        let s = &self.sizes;
        if self.sweep.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "row 6 by SEND_CONCURRENCY (rows) and sidecar latency (columns): msg/s (of the bound)\n",
        );
        let _ = write!(out, "{:<18}", "SEND_CONCURRENCY");
        for latency in &s.sweep_latencies {
            let _ = write!(out, "{:>22}", ms(*latency));
        }
        out.push('\n');
        for &concurrency in &s.sweep_concurrency {
            let _ = write!(out, "{concurrency:<18}");
            for point in self.sweep.iter().filter(|p| p.concurrency == concurrency) {
                let cell = format!("{} ({:.2})", thousands(rate(&point.runs)), point.ratio());
                let _ = write!(out, "{cell:>22}");
            }
            out.push('\n');
        }
        out
    }

    /// Row 8, when it ran.
    fn chaos_table(&self) -> String {
        match (&self.chaos, &self.sizes.chaos) {
            (Some(run), Some(chaos)) => run.table(chaos),
            _ => String::new(),
        }
    }

    /// Row 7: each burst's median drain time against the ideal, and the median run's steps.
    fn burst_table(&self, verdicts: &Verdicts) -> String {
        let b = &self.sizes.bursts;
        if self.bursts.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "row 7: a burst drained under devstack --autoscale {} (time scale {}, WORK_DURATION {} s scaled alike); full-scale seconds, medians of each burst's runs\n",
            burst::shown(&b.scaled_object),
            b.time_scale,
            burst::WORK.as_secs(),
        );
        for (i, burst) in self.bursts.iter().enumerate() {
            let (goal, verdict) = if i == 0 {
                ("<= 1.5x", verdicts.of("burst_multiple_of_ideal"))
            } else {
                ("", "")
            };
            let runs: Vec<String> = burst
                .runs
                .iter()
                .map(|r| format!("{:.1}", r.drained))
                .collect();
            let pods: Vec<f64> = burst.runs.iter().map(|r| r.pod_seconds).collect();
            let _ = writeln!(
                out,
                "7   {:>4} messages: drained in {:.1} s, {:.2}x the ideal {} s (ceil({}/{}) x {} s)  {goal:<8}{verdict}",
                burst.messages,
                burst.median(),
                burst.multiple(),
                burst.ideal(),
                burst.messages,
                burst.max_replicas,
                burst::WORK.as_secs(),
            );
            let _ = writeln!(
                out,
                "      {} runs: {} s; pod-seconds (median): {:.0}",
                runs.len(),
                runs.join(", "),
                median(&pods)
            );
            if let Some(run) = burst.median_run() {
                let _ = writeln!(out, "      median run: {}", burst::timeline_line(run));
            }
        }
        out
    }

    /// Both binaries' memory, start-up time and size, against their targets.
    fn footprint_table(&self, verdicts: &Verdicts) -> String {
        let mut out = format!(
            "{:<32}{:>12}{:>12}  target\n",
            "footprint", "producer", "consumer"
        );
        let (p, c) = (&self.producer_fp, &self.consumer_fp);
        let mut line = |what: &str, pv: String, cv: String, goal: &str, names: [&str; 2]| {
            let verdicts = if names[0].is_empty() {
                String::new()
            } else {
                format!("{} / {}", verdicts.of(names[0]), verdicts.of(names[1]))
            };
            let _ = writeln!(out, "{what:<32}{pv:>12}{cv:>12}  {goal:<10}{verdicts}");
        };
        line(
            "idle RSS after start (median)",
            mib(median(&p.idle_kib)),
            mib(median(&c.idle_kib)),
            "<= 10 MiB",
            ["producer_idle_rss_mib", "consumer_idle_rss_mib"],
        );
        line(
            "peak RSS over rows 2 / 3",
            mib(p.peak_kib as f64),
            mib(c.peak_kib as f64),
            "<= 64 MiB",
            ["producer_peak_rss_mib", "consumer_peak_rss_mib"],
        );
        line(
            &format!("spawn to ready (median of {})", p.ready_ms.len()),
            format!("{:.1} ms", median(&p.ready_ms)),
            format!("{:.1} ms", median(&c.ready_ms)),
            "<= 100 ms",
            ["producer_ready_ms", "consumer_ready_ms"],
        );
        line(
            "binary size",
            format!("{:.1} MiB", p.binary_bytes as f64 / MIB / MIB),
            format!("{:.1} MiB", c.binary_bytes as f64 / MIB / MIB),
            "",
            ["", ""],
        );
        let _ = writeln!(
            out,
            "(the sidecar's peak RSS during row 4: {})",
            mib(self.stack_peak_kib as f64)
        );
        out
    }

    /// Where each row's CPU went, by process, and how many cores were busy.
    fn cpu_table(&self, machine: &Value) -> String {
        let mut out = format!(
            "where the CPU goes: median µs of CPU per message, by process; cores busy (of {})\n",
            machine["nproc"]
        );
        for (id, runs) in self.rows() {
            let (parts, cores) = cpu(runs);
            let parts: Vec<String> = parts
                .iter()
                .map(|(part, us)| format!("{part} {us:.1}"))
                .collect();
            let _ = writeln!(out, "{id:<4}{:<70}{cores:>5.2}", parts.join(", "));
        }
        out
    }

    /// Each row's runs, by the row's id in the table.
    pub fn rows(&self) -> [(&'static str, &Runs); 10] {
        [
            ("1", &self.transport),
            ("2", &self.producer),
            ("3", &self.consumer),
            ("3w", &self.consumer_quiet),
            ("3n", &self.null_app),
            ("4", &self.end_to_end),
            ("5", &self.original),
            ("6", &self.latency_producer),
            ("6t", &self.latency_client),
            ("6o", &self.latency_original),
        ]
    }

    /// Each peer row's figures, and our rate over it with its target.
    fn peers_json(&self) -> Value {
        let ratios = self.peer_ratios();
        let targets = self.targets();
        let side = |side: Side| -> serde_json::Map<String, Value> {
            self.peers
                .side(side)
                .map(|row| {
                    let mut figures = json!({
                        "what": row.what,
                        "msgs_per_s": rate(&row.runs).round(),
                        "runs": rates(&row.runs).iter().map(|r| r.round()).collect::<Vec<_>>(),
                        "cpu_us_per_msg": round(row.cpu_us(), 2),
                        "cpu_us_per_msg_by_process": cpu_parts(&row.runs),
                        "peak_rss_kib": row.peak_kib,
                    });
                    if let Some((name, ratio, _)) =
                        ratios.iter().find(|(_, _, r)| std::ptr::eq(*r, row))
                    {
                        let target = targets.iter().find(|t| &t.name == name);
                        figures["ours_over_this"] = json!({
                            "value": round(*ratio, 2),
                            "target": target.map(|t| t.goal),
                            "met": target.map(|t| t.met),
                        });
                    }
                    (row.key.to_owned(), figures)
                })
                .collect()
        };
        json!({
            "messages": self.sizes.peer_messages,
            "consumers": side(Side::Consumer),
            "producers": side(Side::Producer),
            "skipped": self.peers.skipped,
        })
    }

    /// Every figure, as one JSON object.
    pub fn json(&self) -> Value {
        let s = &self.sizes;
        let rates = |runs: &Runs| {
            json!({
                "msgs_per_s": rate(runs).round(),
                "runs": rates(runs).iter().map(|r| r.round()).collect::<Vec<_>>(),
                "cpu_us_per_msg": cpu_parts(runs),
                "cores_busy": round(cpu(runs).1, 2),
            })
        };
        let targets: serde_json::Map<String, Value> = self
            .targets()
            .into_iter()
            .map(|t| {
                (
                    t.name.to_owned(),
                    json!({ "value": round(t.value, 3), "target": t.goal, "met": t.met }),
                )
            })
            .collect();
        json!({
            "benchmark": "pipeline",
            "machine": machine(),
            "load_average": { "before": self.load_average[0], "after": self.load_average[1] },
            "sizes": {
                "messages": s.messages,
                "concurrency": s.concurrency,
                "original_messages": s.original_messages,
                "rounds": s.rounds,
                "starts": s.starts,
                "consumers": s.consumers,
                "sidecar_latency_ms": s.sidecar_latency.as_secs_f64() * 1e3,
                "latency_run_s": s.latency_run.as_secs_f64(),
                "sweep_concurrency": s.sweep_concurrency,
                "sweep_latency_ms": s.sweep_latencies.iter().map(|l| l.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                "peer_messages": s.peer_messages,
                "latency_shares": s.latency_shares,
                "latency_duration_s": s.latency_duration.as_secs_f64(),
            },
            "log": {
                "RUST_LOG": "info",
                "RUST_LOG_row_3w": super::QUIET_LOG,
                "LOG_FORMAT": "json",
            },
            "transport": rates(&self.transport),
            "producer": rates(&self.producer),
            "consumer": rates(&self.consumer),
            "consumer_quiet": rates(&self.consumer_quiet),
            "null_app": rates(&self.null_app),
            "end_to_end": rates(&self.end_to_end),
            "original": rates(&self.original),
            "latency": {
                "sidecar_latency_ms": s.sidecar_latency.as_secs_f64() * 1e3,
                "send_concurrency": self.shipped_concurrency,
                "bound_msgs_per_s": self.latency_bound().round(),
                "producer": rates(&self.latency_producer),
                "client": rates(&self.latency_client),
                "original": rates(&self.latency_original),
                "sweep": self.sweep.iter().map(|p| json!({
                    "send_concurrency": p.concurrency,
                    "latency_ms": p.latency.as_secs_f64() * 1e3,
                    "bound_msgs_per_s": bound(p.concurrency, p.latency).round(),
                    "ratio": round(p.ratio(), 3),
                    "rates": rates(&p.runs),
                })).collect::<Vec<_>>(),
            },
            "ratios": {
                "producer_to_transport": round(self.producer_ratio(), 3),
                "consumer_to_null_app": round(self.consumer_ratio(), 3),
                "consumer_quiet_to_null_app": round(self.consumer_quiet_ratio(), 3),
                "end_to_end_to_transport": round(self.end_to_end_ratio(), 3),
                "producer_over_original": round(self.over_original(), 1),
                "latency_producer_to_bound": round(self.latency_ratio(), 3),
                "latency_producer_to_client": round(self.latency_to_client(), 3),
                "latency_client_to_bound": round(self.latency_client_ratio(), 3),
                "latency_producer_over_original": round(self.latency_over_original(), 1),
            },
            "footprint": {
                "producer": self.producer_fp.json(),
                "consumer": self.consumer_fp.json(),
                "devstack": { "binary": self.devstack, "peak_rss_kib": self.stack_peak_kib },
            },
            "bursts": {
                "scaled_object": burst::shown(&self.sizes.bursts.scaled_object),
                "time_scale": self.sizes.bursts.time_scale,
                "work_s": burst::WORK.as_secs_f64(),
                "runs": self.bursts.iter().map(Burst::json).collect::<Vec<_>>(),
            },
            "chaos": match (&self.chaos, &self.sizes.chaos) {
                (Some(run), Some(chaos)) => run.json(chaos),
                _ => Value::Null,
            },
            "peers": self.peers_json(),
            "latency_open_loop": self.open_loop.iter().map(latency::Point::json).collect::<Vec<_>>(),
            "targets": targets,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 1),
        })
    }
}

/// Each part's median CPU per message, in µs, by part.
fn cpu_parts(runs: &Runs) -> serde_json::Map<String, Value> {
    cpu(runs)
        .0
        .into_iter()
        .map(|(part, us)| (part.to_owned(), json!(round(us, 2))))
        .collect()
}

/// The median; the mean of the middle two for an even count; NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / MIB)
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What the run ran on: cores, CPU model, memory, kernel.
fn machine() -> Value {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    let memory_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_kib": memory_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

//! Row 7: how long a burst takes to drain while `devstack --autoscale` scales the consumers from
//! a ScaledObject, as KEDA and the HPA would, against the ideal of every replica at work from the
//! first moment. The control plane's periods and the consumers' work are shortened by one factor
//! (`--time-scale`, WORK_DURATION), so the figures, given back at full scale, hold the same
//! decisions in a fraction of the time.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, ensure};
use devstack::scaling::chart::{self, Chart};
use serde_json::{Value, json};

use super::{
    POLL, get_json, load,
    process::{Service, event_addr},
    produce,
    report::{median, round},
};

/// The work of one message at full scale: the consumer's default WORK_DURATION, the original's
/// simulated 5 s, which the ScaledObject's `messageCount` is chosen for.
pub const WORK: Duration = Duration::from_secs(5);
/// Every port `devstack` binds, 0: each part logs the address it chose.
pub(crate) const EPHEMERAL: [(&str, &str); 5] = [
    ("PORT", "0"),
    ("APP_PORT", "0"),
    ("METRICS_PORT", "0"),
    ("DAPR_GRPC_PORT", "0"),
    ("DAPR_HTTP_PORT", "0"),
];
/// The HPA's 15 s sync and KEDA's poll (2 s in the committed ScaledObject, or 5, 10, 30 s) repeat
/// together every 30 s: a burst posted at a random point of that span meets both loops at a
/// random phase, as one does in a cluster.
const PHASES: Duration = Duration::from_secs(30);

/// What row 7 runs.
#[derive(Debug, Clone)]
pub struct Bursts {
    /// The ScaledObject `devstack --autoscale` reads.
    pub scaled_object: PathBuf,
    /// The factor applied to the control plane's periods and to WORK_DURATION.
    pub time_scale: f64,
    /// Burst sizes; the first is the one with a target (the original's 50).
    pub sizes: Vec<u32>,
    /// Runs of each size, in the order of `sizes` (the last repeats for the sizes after it); the
    /// figures are medians.
    pub runs: Vec<usize>,
    /// Where to write the chart of the first size's median run (SVG); none: not written.
    pub chart: Option<PathBuf>,
}

/// One point of a run's timeline, at full scale: devstack's, which draws the chart.
pub use devstack::scaling::chart::Point;

/// One scaling decision, at full scale.
#[derive(Debug, Clone)]
pub struct Step {
    /// Seconds since the POST.
    pub at: f64,
    /// `keda` or `hpa`.
    pub by: String,
    /// Desired replicas before and after.
    pub from: u64,
    pub to: u64,
    /// The queue length it decided on.
    pub metric: u64,
}

/// One run of one burst.
#[derive(Debug, Clone)]
pub struct Run {
    /// From the POST to the last message completed, in full-scale seconds.
    pub drained: f64,
    /// Replica-seconds (desired replicas over time) until then, at full scale: what the burst
    /// cost in pods.
    pub pod_seconds: f64,
    /// The status as the bench read it while the burst drained.
    pub timeline: Vec<Point>,
    /// The scaling decisions from the POST on.
    pub steps: Vec<Step>,
}

/// The runs of one burst size.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Messages in the burst.
    pub messages: u32,
    /// The ScaledObject's maxReplicaCount, as the status gives it.
    pub max_replicas: u64,
    pub runs: Vec<Run>,
}

impl Burst {
    /// `ceil(messages / maxReplicaCount) × WORK`: every replica at work from the first moment.
    pub fn ideal(&self) -> f64 {
        (u64::from(self.messages).div_ceil(self.max_replicas.max(1))) as f64 * WORK.as_secs_f64()
    }

    /// The median drain time, full-scale seconds.
    pub fn median(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.drained).collect::<Vec<_>>())
    }

    /// The run whose drain time is the median (the lower middle one for an even count).
    pub fn median_run(&self) -> Option<&Run> {
        let mut sorted: Vec<&Run> = self.runs.iter().collect();
        sorted.sort_by(|a, b| a.drained.total_cmp(&b.drained));
        sorted.get(sorted.len().saturating_sub(1) / 2).copied()
    }

    /// The median over the ideal: the row's figure.
    pub fn multiple(&self) -> f64 {
        self.median() / self.ideal()
    }

    /// Every figure of the burst, for the bench's JSON line.
    pub fn json(&self) -> Value {
        let median_run = self.median_run();
        json!({
            "messages": self.messages,
            "max_replicas": self.max_replicas,
            "ideal_s": self.ideal(),
            "median_s": round(self.median(), 2),
            "multiple_of_ideal": round(self.multiple(), 3),
            "runs_s": self.runs.iter().map(|r| round(r.drained, 2)).collect::<Vec<_>>(),
            "pod_seconds_runs": self.runs.iter().map(|r| round(r.pod_seconds, 1)).collect::<Vec<_>>(),
            "median_run_steps": median_run.map(|r| r.steps.iter().map(|s| json!({
                "at_s": round(s.at, 2), "by": s.by, "from": s.from, "to": s.to, "metric": s.metric,
            })).collect::<Vec<_>>()),
        })
    }
}

/// The bursts' figures, or why a run failed.
pub async fn run(
    devstack: &Path,
    bursts: &Bursts,
    http: &reqwest::Client,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Vec<Burst>> {
    ensure!(
        bursts.time_scale > 0.0 && bursts.time_scale <= 1.0,
        "the time scale must be in (0, 1], got {}",
        bursts.time_scale
    );
    let mut out = Vec::new();
    for (i, &messages) in bursts.sizes.iter().enumerate() {
        let mut burst = Burst {
            messages,
            max_replicas: 0,
            runs: Vec::new(),
        };
        let runs = *bursts
            .runs
            .get(i)
            .or(bursts.runs.last())
            .context("no number of runs for the bursts")?;
        for n in 1..=runs {
            progress(format!("row 7: burst of {messages}, run {n} of {runs}"));
            let (run, max) = one(devstack, bursts, http, messages).await?;
            burst.max_replicas = max;
            burst.runs.push(run);
        }
        out.push(burst);
    }
    Ok(out)
}

/// A `devstack up` output line, `label | line`, as (label, JSON event).
pub(crate) fn part_event(line: &str) -> Option<(&str, Value)> {
    let (label, rest) = line.split_once(" | ")?;
    Some((label.trim_end(), serde_json::from_str(rest).ok()?))
}

/// Waits for `part`'s first event `message` in `devstack up`'s output.
pub(crate) async fn wait_part(service: &mut Service, part: &str, message: &str) -> Value {
    service
        .wait_for_lines(&format!("{part}'s {message:?} event"), |lines| {
            lines
                .iter()
                .filter_map(|l| part_event(l))
                .find(|(label, e)| *label == part && e["message"] == message)
                .map(|(_, e)| e)
        })
        .await
}

/// One run: a fresh stack, a random phase, the burst, the drain. Returns the run and the
/// ScaledObject's maxReplicaCount.
async fn one(
    devstack: &Path,
    bursts: &Bursts,
    http: &reqwest::Client,
    messages: u32,
) -> anyhow::Result<(Run, u64)> {
    let scale = bursts.time_scale;
    let work = format!("{}ms", (WORK.as_secs_f64() * scale * 1e3).round());
    let mut env = EPHEMERAL.to_vec();
    env.push(("WORK_DURATION", &work));
    let path = bursts.scaled_object.to_string_lossy();
    let scale_arg = scale.to_string();
    let args = ["--autoscale", &path, "--time-scale", &scale_arg];
    let mut service = Service::spawn_quiet(devstack, &args, &env);
    let listening = wait_part(&mut service, "sidecar", "sidecar listening").await;
    let status_url = format!(
        "http://{}/devstack/status",
        event_addr(&listening, "http_addr")
    );
    let producer: SocketAddr = event_addr(
        &wait_part(&mut service, "producer", "listening").await,
        "addr",
    );
    service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;
    let status: Value = get_json(http, &status_url).await?;
    let max = status["scaling"]["settings"]["maxReplicaCount"]
        .as_u64()
        .with_context(|| format!("no scaling settings in the status: {status}"))?;
    // A random point of the loops' common period: the HPA's phase is random in a cluster too.
    tokio::time::sleep(PHASES.mul_f64(scale * fastrand::f64())).await;

    let before = queue(&get_json(http, &status_url).await?)?;
    ensure!(
        before.active + before.locked == 0,
        "(7): the queue is not empty before the burst: {before:?}"
    );
    let posted = SystemTime::now();
    let start = Instant::now();
    produce(http, producer, messages).await?;
    let ideal_real = (u64::from(messages).div_ceil(max.max(1)) as f64) * WORK.as_secs_f64() * scale;
    // Generous: 20 times the ideal, and the bench's usual slack for start-up.
    let limit = Duration::from_secs_f64(ideal_real * 20.0) + super::WAIT;
    let mut timeline = Vec::new();
    let (drained, status) = loop {
        let status: Value = get_json(http, &status_url).await?;
        let at = start.elapsed();
        let q = queue(&status)?;
        let scaling = &status["scaling"];
        timeline.push(Point {
            at: at.as_secs_f64() / scale,
            queue: q.active + q.locked,
            replicas: scaling["replicas"].as_u64().unwrap_or(0),
            ready: scaling["ready"].as_u64().unwrap_or(0),
        });
        if q.completed >= before.completed + u64::from(messages) {
            break (at, status);
        }
        ensure!(
            at < limit,
            "(7): {} of {messages} messages completed within {limit:?}",
            q.completed - before.completed
        );
        tokio::time::sleep(POLL * 4).await;
    };
    let after = queue(&status)?;
    ensure!(
        after.produced == before.produced + u64::from(messages)
            && after.completed == before.completed + u64::from(messages)
            && after.dead_lettered == before.dead_lettered
            && after.active + after.locked == 0,
        "(7): expected {messages} more produced and completed, none dead-lettered or left: \
         before {before:?}, after {after:?}"
    );
    let steps = steps(&status, posted, scale)?;
    service.terminate();
    ensure!(
        service.exit_code(super::WAIT).await == Some(0),
        "(7): devstack did not exit 0 after SIGTERM"
    );
    let pod_seconds = timeline
        .windows(2)
        .map(|w| (w[1].at - w[0].at) * w[0].replicas as f64)
        .sum();
    Ok((
        Run {
            drained: drained.as_secs_f64() / scale,
            pod_seconds,
            timeline,
            steps,
        },
        max,
    ))
}

/// One queue's counts in the sidecar's status.
#[derive(Debug, Clone, Copy)]
struct Queue {
    produced: u64,
    active: u64,
    locked: u64,
    completed: u64,
    dead_lettered: u64,
}

fn queue(status: &Value) -> anyhow::Result<Queue> {
    let q = &status["queues"][load::BINDING];
    let count = |field: &str| {
        q[field]
            .as_u64()
            .with_context(|| format!("no {field} in the sidecar's status {status}"))
    };
    Ok(Queue {
        produced: count("produced")?,
        active: count("active")?,
        locked: count("locked")?,
        completed: count("completed")?,
        dead_lettered: count("deadLettered")?,
    })
}

/// The scaling events since `posted`, in full-scale seconds after it (KEDA's first poll at
/// start, before the burst, is left out).
fn steps(status: &Value, posted: SystemTime, scale: f64) -> anyhow::Result<Vec<Step>> {
    let events = status["scaling"]["events"]
        .as_array()
        .with_context(|| format!("no scaling events in the status: {status}"))?;
    let mut steps = Vec::new();
    for e in events {
        let at = e["at"].as_str().context("an event without `at`")?;
        let at: SystemTime = chrono::DateTime::parse_from_rfc3339(at)
            .with_context(|| format!("`at` {at} is not RFC 3339"))?
            .into();
        let Ok(after) = at.duration_since(posted) else {
            continue;
        };
        steps.push(Step {
            at: after.as_secs_f64() / scale,
            by: e["by"].as_str().unwrap_or("?").to_owned(),
            from: e["from"].as_u64().unwrap_or(0),
            to: e["to"].as_u64().unwrap_or(0),
            metric: e["metric"].as_u64().unwrap_or(0),
        });
    }
    Ok(steps)
}

/// The median run's steps, one line: `+4.1 s keda 0 -> 1 (metric 50); ...`.
pub fn timeline_line(run: &Run) -> String {
    let mut out = String::new();
    for (i, s) in run.steps.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(
            out,
            "+{:.1} s {} {} -> {} (metric {})",
            s.at, s.by, s.from, s.to, s.metric
        );
    }
    out
}

/// An SVG chart of a run: queue length (left axis) and desired and ready replicas (right axis)
/// against full-scale seconds, drawn as `devstack plan --svg` draws a planned one.
pub fn chart(burst: &Burst, run: &Run, title: &str) -> String {
    chart::svg(&Chart {
        title,
        x_label: "seconds after the POST (full scale)",
        points: &run.timeline,
        until: run.drained,
        ideal: burst.ideal(),
        queue_max: u64::from(burst.messages),
        replicas_max: burst.max_replicas,
    })
}

/// `path` relative to the repository when it lies inside it, as the README names files.
pub fn shown(path: &Path) -> String {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is in the repository");
    // The defaults are written `bench/../deploy/...`: fold the `..` away, as the reader would.
    let mut folded = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir if folded.pop() => {}
            part => folded.push(part),
        }
    }
    folded
        .strip_prefix(repository)
        .unwrap_or(&folded)
        .display()
        .to_string()
}

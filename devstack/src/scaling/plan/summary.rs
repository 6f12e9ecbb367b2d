//! What a plan comes to, in figures (`Summary`), and the known traps its run fell into or is set
//! up for (`Warning`).

use serde::Serialize;

use super::{
    Scenario,
    sim::{Run, Workload},
};
use crate::scaling::{clock::secs, decision::By, spec::ScalingSpec};

/// A plan's figures. Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub messages: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    /// Never taken: still queued when nothing was going to take them.
    pub left: u64,
    /// From the first arrival to the last completion; none when a message was left.
    pub drain: Option<f64>,
    /// The same, with maxReplicaCount pods at work from the start (no poll, sync or start-up).
    pub ideal: Option<f64>,
    pub multiple_of_ideal: Option<f64>,
    /// From a message's arrival to the start of the delivery that completed it.
    pub longest_wait: f64,
    pub peak_replicas: u32,
    /// What the pods cost: each pod's time from creation to exit, summed.
    pub pod_seconds: f64,
    pub cold_starts: u32,
    /// Pods scaled in while they held messages.
    pub busy_scale_ins: u64,
    /// Messages in flight on the pods when they were scaled in.
    pub in_flight_at_scale_in: u64,
    /// Of those, the ones not finished in time: abandoned and redelivered (or dead-lettered).
    pub abandoned_at_scale_in: u64,
    /// When the simulation ended.
    pub end: f64,
    /// It ended at rest (queue empty, minReplicaCount pods); else it ended when nothing had
    /// changed for longer than any window of the ScaledObject.
    pub settled: bool,
}

impl Summary {
    /// The figures of `run`, against the `ideal` run of the same messages.
    pub fn of(run: &Run, ideal: &Run) -> Self {
        let drain = |run: &Run| match (run.left, run.first_arrival, run.last_completion) {
            (0, Some(first), Some(last)) => Some(last.saturating_sub(first).as_secs_f64()),
            _ => None,
        };
        let (drained, ideal) = (drain(run), drain(ideal));
        let multiple = match (drained, ideal) {
            (Some(d), Some(i)) if i > 0.0 => Some(d / i),
            _ => None,
        };
        let busy: Vec<_> = run.scale_ins.iter().filter(|s| s.in_flight > 0).collect();
        Self {
            messages: run.messages,
            completed: run.completed,
            dead_lettered: run.dead_lettered,
            left: run.left,
            drain: drained,
            ideal,
            multiple_of_ideal: multiple,
            longest_wait: run.longest_wait.as_secs_f64(),
            peak_replicas: run.peak_replicas,
            pod_seconds: run.pod_seconds,
            cold_starts: run.cold_starts,
            busy_scale_ins: busy.len() as u64,
            in_flight_at_scale_in: busy.iter().map(|s| s.in_flight).sum(),
            abandoned_at_scale_in: busy.iter().map(|s| s.abandoned).sum(),
            end: run.end.as_secs_f64(),
            settled: run.settled,
        }
    }
}

/// A known trap, with what this plan shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable, for scripts: `cooldown-shorter-than-work`, `busy-scale-in-past-grace`,
    /// `hpa-too-slow`, `max-replicas-queue-growing`, `not-drained`.
    pub kind: &'static str,
    pub message: String,
}

/// The traps `run` fell into, or that `spec` and `scenario` set up.
pub fn warnings(
    spec: &ScalingSpec,
    scenario: &Scenario,
    workload: &Workload,
    run: &Run,
    summary: &Summary,
) -> Vec<Warning> {
    let longest_work = workload.work.iter().max().copied().unwrap_or_default();
    let mut warnings = Vec::new();
    // KEDA counts the cooldown from its last active poll; with a cooldown shorter than the work,
    // a gap between messages as long as one message's work takes the consumers to 0, and the
    // next message waits for a cold start. A metric that leaves out messages in flight
    // (excludeUnacknowledged) lets it scale to 0 while they are worked.
    if spec.min_replica_count == 0 && spec.cooldown_period < longest_work {
        warnings.push(Warning {
            kind: "cooldown-shorter-than-work",
            message: format!(
                "cooldownPeriod {} is shorter than the work (up to {} a message): KEDA counts it from its last active poll, so a pause between messages no longer than one message's work takes the consumers to 0 and the next message waits for a cold start ({} cold starts here)",
                secs(spec.cooldown_period),
                secs(longest_work),
                summary.cold_starts
            ),
        });
    }
    let grace = scenario.drain_timeout.min(spec.termination_grace_period);
    if summary.busy_scale_ins > 0 && grace < longest_work {
        warnings.push(Warning {
            kind: "busy-scale-in-past-grace",
            message: format!(
                "{} pods were scaled in while busy, and a pod's time to finish (terminationGracePeriodSeconds {}, DRAIN_TIMEOUT {}: {}) is shorter than the work (up to {}): {} of the {} messages they held were abandoned and redelivered",
                summary.busy_scale_ins,
                secs(spec.termination_grace_period),
                secs(scenario.drain_timeout),
                secs(grace),
                secs(longest_work),
                summary.abandoned_at_scale_in,
                summary.in_flight_at_scale_in
            ),
        });
    }
    if let Some(message) = hpa_too_slow(spec, run) {
        warnings.push(Warning {
            kind: "hpa-too-slow",
            message,
        });
    }
    if let Some(growth) = run.growth_at_max
        && growth.to > growth.from + spec.trigger.target.ceil() as u64
    {
        let capacity = f64::from(spec.max_replica_count) * scenario.max_concurrency as f64
            / scenario.work.mean().as_secs_f64().max(f64::MIN_POSITIVE);
        warnings.push(Warning {
            kind: "max-replicas-queue-growing",
            message: format!(
                "at maxReplicaCount {} the queue kept growing, from {} at {} to {} at {}: the arrivals outpace {} replicas x MAX_CONCURRENCY {} at {} a message (about {capacity:.2} messages a second)",
                spec.max_replica_count,
                growth.from,
                secs(growth.from_at),
                growth.to,
                secs(growth.to_at),
                spec.max_replica_count,
                scenario.max_concurrency,
                secs(scenario.work.mean())
            ),
        });
    }
    if summary.left > 0 {
        warnings.push(Warning {
            kind: "not-drained",
            message: format!(
                "{} messages were never taken: at {} the queue held them with {} replicas and nothing left to change that (activation {} on a metric of {})",
                summary.left,
                secs(run.end),
                run.decisions.last().map_or(spec.min_replica_count, |t| t.decision.to),
                spec.trigger.activation,
                summary.left
            ),
        });
    }
    warnings
}

/// The HPA's scale-ups its rate held below what it asked for, in words; none when it took every
/// step it asked for (or met maxReplicaCount).
fn hpa_too_slow(spec: &ScalingSpec, run: &Run) -> Option<String> {
    let held: Vec<_> = run
        .decisions
        .iter()
        .filter(|t| {
            let d = &t.decision;
            d.by == By::Hpa
                && d.to > d.from
                && d.to < spec.max_replica_count
                && d.recommendation.is_some_and(|r| r > d.to)
        })
        .collect();
    let first = held.first()?;
    // The whole climb, from the first held step to the count it asked for.
    let asked = first.decision.recommendation.unwrap_or(first.decision.to);
    let mut steps = vec![first.decision.from];
    let mut reached = first.at;
    for t in run.decisions.iter().skip_while(|t| t.at < first.at) {
        let d = &t.decision;
        if d.by != By::Hpa || d.to <= d.from {
            break;
        }
        steps.push(d.to);
        reached = t.at;
        if d.to >= asked.min(spec.max_replica_count) {
            break;
        }
    }
    let climb: Vec<String> = steps.iter().map(u32::to_string).collect();
    let rule = match &spec.behavior {
        None => "the legacy path: at most max(2 x current, 4) a sync".to_owned(),
        Some(_) => "its scaleUp policies".to_owned(),
    };
    Some(format!(
        "the HPA's scale-up rate held the replicas back: {} over {} while it asked for {} ({rule}); a scaleUp policy such as Pods {} per 15s takes it there in one sync",
        climb.join(" -> "),
        secs(reached.saturating_sub(first.at)),
        asked.min(spec.max_replica_count),
        spec.max_replica_count
    ))
}

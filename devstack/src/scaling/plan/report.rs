//! How a plan is written: the decision log (the lines `--autoscale` logs, at their cluster time),
//! the summary and the warnings as text or JSON, a sweep's table, and the chart.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Plan, Scenario,
    summary::{Summary, Warning},
    sweep::Sweep,
};
use crate::scaling::{
    chart::{self, Chart},
    clock::secs,
    decision::Decision,
    spec::ScalingSpec,
};

/// The inputs, as the JSON gives them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inputs<'a> {
    arrivals: &'a [super::Arrival],
    messages: u64,
    work: String,
    max_concurrency: usize,
    pod_startup: String,
    /// Seconds.
    drain_timeout: f64,
    max_delivery_count: u32,
    /// Seconds.
    hpa_first_sync: f64,
    seed: u64,
}

fn inputs<'a>(scenario: &'a Scenario, plan: &Plan) -> Inputs<'a> {
    Inputs {
        arrivals: &scenario.arrivals,
        messages: plan.summary.messages,
        work: scenario.work.to_string(),
        max_concurrency: scenario.max_concurrency,
        pod_startup: scenario.pod_startup.to_string(),
        drain_timeout: scenario.drain_timeout.as_secs_f64(),
        max_delivery_count: scenario.max_delivery_count,
        hpa_first_sync: scenario.hpa_first_sync.as_secs_f64(),
        seed: scenario.seed,
    }
}

/// A decision with its cluster time, as the status's `events` give one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimedDecision<'a> {
    cluster_time: f64,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// The plan as one JSON document.
pub fn json(source: &str, spec: &ScalingSpec, scenario: &Scenario, plan: &Plan) -> Value {
    let decisions: Vec<TimedDecision<'_>> = plan
        .run
        .decisions
        .iter()
        .map(|t| TimedDecision {
            cluster_time: t.at.as_secs_f64(),
            decision: &t.decision,
        })
        .collect();
    json!({
        "scaledObject": source,
        "settings": spec,
        "inputs": inputs(scenario, plan),
        "decisions": decisions,
        "summary": plan.summary,
        "warnings": plan.warnings,
    })
}

/// The plan as text: what ran, the decision log, the summary, the warnings.
pub fn text(source: &str, spec: &ScalingSpec, scenario: &Scenario, plan: &Plan) -> String {
    let mut out = header(source, spec, scenario, plan.summary.messages);
    let _ = writeln!(
        out,
        "\ndecisions, at their cluster time (the lines devstack --autoscale logs):"
    );
    if plan.run.decisions.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for t in &plan.run.decisions {
        let _ = writeln!(out, "  {:>9}  {}", secs(t.at), t.decision);
    }
    let _ = writeln!(out, "\nsummary:");
    out.push_str(&summary(&plan.summary));
    out.push_str(&warnings(&plan.warnings));
    out
}

/// What ran: the ScaledObject, the pods, the arrivals.
fn header(source: &str, spec: &ScalingSpec, scenario: &Scenario, messages: u64) -> String {
    let arrivals: Vec<String> = scenario.arrivals.iter().map(ToString::to_string).collect();
    let behavior = match &spec.behavior {
        Some(_) => "its behavior",
        None => "no behavior (the HPA's legacy path)",
    };
    format!(
        "devstack plan: {source}\n  ScaledObject {}: {} to {} replicas, pollingInterval {}, cooldownPeriod {}, target {} a replica, activation {}, {behavior}\n  pods: work {} a message, MAX_CONCURRENCY {}, start-up {}, terminationGracePeriodSeconds {}, DRAIN_TIMEOUT {}; the HPA's first sync at {}\n  arrivals: {} ({messages} messages)\n",
        spec.name,
        spec.min_replica_count,
        spec.max_replica_count,
        secs(spec.polling_interval),
        secs(spec.cooldown_period),
        spec.trigger.target,
        spec.trigger.activation,
        scenario.work,
        scenario.max_concurrency,
        scenario.pod_startup,
        secs(spec.termination_grace_period),
        secs(scenario.drain_timeout),
        secs(scenario.hpa_first_sync),
        arrivals.join(", "),
    )
}

fn seconds(s: f64) -> String {
    format!("{s:.1} s")
}

fn summary(s: &Summary) -> String {
    let mut out = String::new();
    match (s.drain, s.ideal, s.multiple_of_ideal) {
        _ if s.messages == 0 => {
            let _ = writeln!(out, "  no message arrived");
        }
        (Some(drain), Some(ideal), Some(multiple)) => {
            let _ = writeln!(
                out,
                "  drained in {}, {multiple:.2}x the ideal {} (maxReplicaCount pods at work from the first message)",
                seconds(drain),
                seconds(ideal)
            );
        }
        (Some(drain), _, _) => {
            let _ = writeln!(out, "  drained in {}", seconds(drain));
        }
        _ => {
            let _ = writeln!(out, "  not drained: {} messages never taken", s.left);
        }
    }
    let _ = writeln!(
        out,
        "  longest wait {} (arrival to the delivery that completed it)",
        seconds(s.longest_wait)
    );
    let _ = writeln!(
        out,
        "  peak {} replicas, {:.0} pod-seconds, {} cold starts",
        s.peak_replicas, s.pod_seconds, s.cold_starts
    );
    let _ = writeln!(
        out,
        "  scaled in while busy: {} pods holding {} messages, {} of them abandoned and redelivered",
        s.busy_scale_ins, s.in_flight_at_scale_in, s.abandoned_at_scale_in
    );
    let _ = writeln!(
        out,
        "  {} messages: {} completed, {} dead-lettered, {} left; {} at {}",
        s.messages,
        s.completed,
        s.dead_lettered,
        s.left,
        match s.settled {
            true => "back at rest",
            false => "still not at rest",
        },
        seconds(s.end)
    );
    out
}

fn warnings(warnings: &[Warning]) -> String {
    let mut out = String::from("\nwarnings:\n");
    if warnings.is_empty() {
        out.push_str("  none\n");
    }
    for w in warnings {
        let _ = writeln!(out, "  - {} ({})", w.message, w.kind);
    }
    out
}

/// The sweep's table: a row per combination, the cheapest that meets the target marked.
pub fn sweep_text(source: &str, base: &ScalingSpec, scenario: &Scenario, sweep: &Sweep) -> String {
    let messages = sweep.rows.first().map_or(0, |r| r.plan.summary.messages);
    let mut out = header(source, base, scenario, messages);
    let target = sweep.target.map_or("every combination".to_owned(), |t| {
        format!("drain within {t}")
    });
    let _ = writeln!(
        out,
        "\nsweep ({} combinations), target: {target}\n",
        sweep.rows.len()
    );
    let fields: Vec<&str> = sweep
        .rows
        .first()
        .map(|r| r.values.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let mut header: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
    header.extend(
        [
            "drain",
            "x ideal",
            "longest wait",
            "peak",
            "pod-seconds",
            "cold starts",
            "busy scale-ins",
            "warnings",
            "meets",
            "",
        ]
        .map(str::to_owned),
    );
    let mut rows = vec![header];
    for (i, row) in sweep.rows.iter().enumerate() {
        let s = &row.plan.summary;
        let mut cells: Vec<String> = row.values.iter().map(|(_, v)| v.clone()).collect();
        cells.extend([
            s.drain.map_or("-".into(), seconds),
            s.multiple_of_ideal
                .map_or("-".into(), |m| format!("{m:.2}")),
            seconds(s.longest_wait),
            s.peak_replicas.to_string(),
            format!("{:.0}", s.pod_seconds),
            s.cold_starts.to_string(),
            s.busy_scale_ins.to_string(),
            row.plan.warnings.len().to_string(),
            match row.meets {
                true => "yes",
                false => "no",
            }
            .into(),
            match sweep.cheapest == Some(i) {
                true => "<- cheapest",
                false => "",
            }
            .into(),
        ]);
        rows.push(cells);
    }
    out.push_str(&markdown(&rows));
    match sweep.cheapest {
        Some(i) => {
            let values: Vec<String> = sweep.rows[i]
                .values
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "\ncheapest that meets the target: {} ({:.0} pod-seconds)",
                values.join(" "),
                sweep.rows[i].plan.summary.pod_seconds
            );
        }
        None => {
            let _ = writeln!(out, "\nno combination meets the target");
        }
    }
    out
}

/// `rows` (the first the header) as a Markdown table, its columns aligned.
fn markdown(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(&rows[0]);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule));
    for row in &rows[1..] {
        out.push_str(&line(row));
    }
    out
}

/// The sweep as one JSON document.
pub fn sweep_json(source: &str, sweep: &Sweep) -> Value {
    let rows: Vec<Value> = sweep
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let values: serde_json::Map<String, Value> = row
                .values
                .iter()
                .map(|(n, v)| (n.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "values": values,
                "summary": row.plan.summary,
                "warnings": row.plan.warnings,
                "meetsTarget": row.meets,
                "cheapest": sweep.cheapest == Some(i),
            })
        })
        .collect();
    json!({
        "scaledObject": source,
        "targetDrain": sweep.target,
        "rows": rows,
        "cheapest": sweep.cheapest,
    })
}

/// The chart of a plan: the queue and the replicas over time, as row 7 of the benchmark draws a
/// real run.
pub fn svg(title: &str, spec: &ScalingSpec, plan: &Plan) -> String {
    let peak_queue = plan.run.timeline.iter().map(|p| p.queue).max().unwrap_or(0);
    let first = plan.run.first_arrival.map_or(0.0, |d| d.as_secs_f64());
    // Seconds from the first arrival, as the benchmark counts from its POST; the state before it
    // stands at 0.
    let before = plan
        .run
        .timeline
        .iter()
        .rposition(|p| p.at <= first)
        .unwrap_or(0);
    let points: Vec<chart::Point> = plan.run.timeline[before..]
        .iter()
        .map(|p| chart::Point {
            at: (p.at - first).max(0.0),
            ..*p
        })
        .collect();
    chart::svg(&Chart {
        title,
        x_label: "seconds after the first message (cluster time)",
        points: &points,
        until: plan.summary.drain.unwrap_or(plan.summary.end - first),
        ideal: plan.summary.ideal.unwrap_or(0.0),
        queue_max: peak_queue,
        replicas_max: u64::from(spec.max_replica_count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::plan::plan;

    fn planned() -> (ScalingSpec, Scenario, Plan) {
        let spec = ScalingSpec::committed().unwrap();
        let scenario = Scenario {
            arrivals: vec!["50@30s".parse().unwrap()],
            ..Scenario::default()
        };
        let workload = scenario.workload().unwrap();
        let plan = plan(&spec, &scenario, &workload);
        (spec, scenario, plan)
    }

    #[test]
    fn the_text_logs_each_decision_as_autoscale_does_at_its_cluster_time() {
        let (spec, scenario, plan) = planned();
        let text = text("so.yaml", &spec, &scenario, &plan);
        assert!(text.starts_with("devstack plan: so.yaml\n"), "{text}");
        assert!(
            text.contains("  arrivals: burst of 50 at 30s (50 messages)\n"),
            "{text}"
        );
        for t in &plan.run.decisions {
            let line = format!("  {:>9}  {}\n", secs(t.at), t.decision);
            assert!(text.contains(&line), "{line:?} in {text}");
        }
        assert!(
            text.contains(
                "\n        30s  keda: metric 50 > activation 0, scaling consumer 0 -> 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("drained in 42.5 s, 1.70x the ideal 25.0 s"),
            "{text}"
        );
        assert!(text.ends_with("warnings:\n  none\n"), "{text}");
    }

    #[test]
    fn the_json_holds_the_inputs_decisions_summary_and_warnings() {
        let (spec, scenario, plan) = planned();
        let json = json("so.yaml", &spec, &scenario, &plan);
        assert_eq!(json["scaledObject"], "so.yaml");
        assert_eq!(json["settings"]["pollingInterval"], 2.0);
        assert_eq!(
            json["inputs"]["arrivals"],
            serde_json::json!(["burst of 50 at 30s"])
        );
        assert_eq!(json["inputs"]["messages"], 50);
        assert_eq!(json["inputs"]["hpaFirstSync"], 7.5);
        let first = &json["decisions"][0];
        assert_eq!(
            (
                &first["clusterTime"],
                &first["by"],
                &first["from"],
                &first["to"]
            ),
            (
                &serde_json::json!(30.0),
                &serde_json::json!("keda"),
                &serde_json::json!(0),
                &serde_json::json!(1)
            )
        );
        assert_eq!(json["summary"]["drain"], 42.5);
        assert_eq!(json["summary"]["peakReplicas"], 10);
        assert_eq!(json["warnings"], serde_json::json!([]));
    }

    #[test]
    fn the_chart_counts_from_the_first_message() {
        let (spec, _, plan) = planned();
        let svg = svg("planned", &spec, &plan);
        assert!(svg.contains("ideal 25 s"), "{svg}");
        assert!(
            svg.contains("seconds after the first message (cluster time)"),
            "{svg}"
        );
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["a".to_owned(), "long header".to_owned()],
            vec!["value".to_owned(), "1".to_owned()],
        ];
        assert_eq!(
            markdown(&rows),
            "| a     | long header |\n| ----- | ----------- |\n| value | 1           |\n"
        );
    }
}

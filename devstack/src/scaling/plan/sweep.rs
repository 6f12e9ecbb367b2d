//! `--sweep FIELD=V1,V2,...`, repeatable: the plan for every combination of the values, the
//! ScaledObject edited field by field and read again as `--autoscale` reads it (the same errors,
//! naming the field), and the cheapest combination that meets `--target-drain`.

use std::{fmt, num::NonZeroUsize, str::FromStr, time::Duration};

use anyhow::{anyhow, bail};
use serde::Serialize;
use serde_yaml_ng::Value;

use super::{Plan, Scenario, distribution::duration, plan, sim::Workload};
use crate::scaling::{
    clock::secs,
    spec::{Manifest, ScalingSpec},
    trigger::TriggerKind,
};

/// The most combinations a sweep runs: each is a plan of its own.
pub const MOST_COMBINATIONS: usize = 1000;

/// Where the behavior is, in a ScaledObject.
const BEHAVIOR: &str = "spec.advanced.horizontalPodAutoscalerConfig.behavior";

/// A swept field and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepField {
    /// As written: `pollingInterval`.
    pub name: String,
    pub field: Field,
    pub values: Vec<String>,
}

/// What a swept name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A field of the ScaledObject, at this path; a trigger's metadata takes strings.
    Spec { path: String, string: bool },
    /// A field of the trigger's metadata, which only some trigger types read.
    Trigger { key: &'static str, kind: Kind },
    /// `file`: the ScaledObject's behavior; `none`: without it, the HPA's legacy path.
    Behavior,
    /// The pods' terminationGracePeriodSeconds.
    GracePeriod,
    /// MAX_CONCURRENCY.
    MaxConcurrency,
}

/// The trigger type a metadata field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ServiceBus,
    RabbitMq,
}

/// The names a sweep knows, besides paths from `spec.`.
const KNOWN: &str = "pollingInterval, cooldownPeriod, initialCooldownPeriod, minReplicaCount, maxReplicaCount, messageCount, activationMessageCount, value, activationValue, behavior (file or none), terminationGracePeriodSeconds, MAX_CONCURRENCY, or a path from spec. (e.g. spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].value)";

impl FromStr for SweepField {
    type Err = String;

    /// `NAME=V1,V2,...`.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some((name, values)) = text.split_once('=') else {
            return Err(format!(
                "{text:?} is not FIELD=V1,V2,... (e.g. pollingInterval=2,10,30)"
            ));
        };
        let name = name.trim();
        let field = match name {
            "pollingInterval"
            | "cooldownPeriod"
            | "initialCooldownPeriod"
            | "minReplicaCount"
            | "maxReplicaCount" => Field::Spec {
                path: format!("spec.{name}"),
                string: false,
            },
            "messageCount" => Field::Trigger {
                key: "messageCount",
                kind: Kind::ServiceBus,
            },
            "activationMessageCount" => Field::Trigger {
                key: "activationMessageCount",
                kind: Kind::ServiceBus,
            },
            "value" => Field::Trigger {
                key: "value",
                kind: Kind::RabbitMq,
            },
            "activationValue" => Field::Trigger {
                key: "activationValue",
                kind: Kind::RabbitMq,
            },
            "behavior" => Field::Behavior,
            "terminationGracePeriodSeconds" => Field::GracePeriod,
            "MAX_CONCURRENCY" => Field::MaxConcurrency,
            path if path.starts_with("spec.") => Field::Spec {
                path: path.to_owned(),
                string: path.contains(".metadata."),
            },
            other => return Err(format!("unknown field {other:?}; known: {KNOWN}")),
        };
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
        if values.iter().any(String::is_empty) {
            return Err(format!("{text:?}: an empty value"));
        }
        Ok(Self {
            name: name.to_owned(),
            field,
            values,
        })
    }
}

/// `--target-drain`: a drain time (`60s`), or a multiple of the ideal (`1.5x`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetDrain {
    Within(Duration),
    Multiple(f64),
}

impl TargetDrain {
    pub fn met_by(&self, plan: &Plan) -> bool {
        match *self {
            Self::Within(d) => plan.summary.drain.is_some_and(|s| s <= d.as_secs_f64()),
            Self::Multiple(x) => plan.summary.multiple_of_ideal.is_some_and(|m| m <= x),
        }
    }
}

impl FromStr for TargetDrain {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().strip_suffix('x') {
            Some(x) => match x.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 1.0 => Ok(Self::Multiple(x)),
                _ => Err(format!(
                    "{text:?}: a multiple of the ideal drain is 1x or more (e.g. 1.5x)"
                )),
            },
            None => duration(text).map(Self::Within),
        }
    }
}

/// `60s`, `1.5x the ideal`.
impl fmt::Display for TargetDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Within(d) => write!(f, "{}", secs(*d)),
            Self::Multiple(x) => write!(f, "{x}x the ideal"),
        }
    }
}

impl Serialize for TargetDrain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One combination's plan.
#[derive(Debug, Clone)]
pub struct Row {
    /// The values, in the order of the swept fields.
    pub values: Vec<(String, String)>,
    pub spec: ScalingSpec,
    pub scenario: Scenario,
    pub plan: Plan,
    pub meets: bool,
}

/// Every combination's plan, and the cheapest that meets the target.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub rows: Vec<Row>,
    pub target: Option<TargetDrain>,
    /// The row with the fewest pod-seconds among those meeting the target (the faster drain
    /// among equals); without a target, among all.
    pub cheapest: Option<usize>,
}

/// The plans of `manifest` and `scenario` with every combination of `fields`' values.
pub fn run(
    manifest: &Manifest,
    scenario: &Scenario,
    workload: &Workload,
    fields: &[SweepField],
    target: Option<TargetDrain>,
) -> anyhow::Result<Sweep> {
    for (i, field) in fields.iter().enumerate() {
        if fields[..i].iter().any(|f| f.name == field.name) {
            bail!("--sweep {}: swept twice", field.name);
        }
    }
    let count = fields
        .iter()
        .try_fold(1usize, |n, f| n.checked_mul(f.values.len()))
        .filter(|n| *n <= MOST_COMBINATIONS)
        .ok_or_else(|| {
            anyhow!("the sweep has more than {MOST_COMBINATIONS} combinations; sweep fewer values")
        })?;
    let base = manifest.spec()?;
    let mut rows = Vec::with_capacity(count);
    for index in 0..count {
        // The combination `index`, the last field varying fastest.
        let mut rest = index;
        let mut picks = vec![0; fields.len()];
        for (i, field) in fields.iter().enumerate().rev() {
            picks[i] = rest % field.values.len();
            rest /= field.values.len();
        }
        let mut manifest = manifest.clone();
        let mut scenario = scenario.clone();
        let mut values = Vec::with_capacity(fields.len());
        for (field, &pick) in fields.iter().zip(&picks) {
            let value = &field.values[pick];
            apply(field, value, &base, &mut manifest, &mut scenario)
                .map_err(|e| anyhow!("--sweep {}={value}: {e}", field.name))?;
            values.push((field.name.clone(), value.clone()));
        }
        let described: Vec<String> = values.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let spec = manifest
            .spec()
            .map_err(|e| anyhow!("--sweep {}: {e}", described.join(" ")))?;
        let plan = plan(&spec, &scenario, workload);
        let meets = target.is_none_or(|t| t.met_by(&plan));
        rows.push(Row {
            values,
            spec,
            scenario,
            plan,
            meets,
        });
    }
    let cheapest = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.meets)
        .min_by(|(_, a), (_, b)| {
            let key = |r: &Row| {
                (
                    r.plan.summary.pod_seconds,
                    r.plan.summary.drain.unwrap_or(f64::MAX),
                )
            };
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i);
    Ok(Sweep {
        rows,
        target,
        cheapest,
    })
}

/// Sets `field` to `value` in the copies of the ScaledObject and the scenario.
fn apply(
    field: &SweepField,
    value: &str,
    base: &ScalingSpec,
    manifest: &mut Manifest,
    scenario: &mut Scenario,
) -> anyhow::Result<()> {
    match &field.field {
        Field::Spec { path, string } => {
            let value = match string {
                true => Value::String(value.to_owned()),
                false => serde_yaml_ng::from_str(value)
                    .map_err(|e| anyhow!("{value:?} is not a YAML value: {e}"))?,
            };
            manifest.set(path, Some(value))
        }
        Field::Trigger { key, kind } => {
            let (is, reads) = match base.trigger.kind {
                TriggerKind::AzureServicebus => ("azure-servicebus", Kind::ServiceBus),
                TriggerKind::Rabbitmq { .. } => ("rabbitmq", Kind::RabbitMq),
            };
            if reads != *kind {
                let own = match reads {
                    Kind::ServiceBus => "messageCount, activationMessageCount",
                    Kind::RabbitMq => "value, activationValue",
                };
                bail!("the trigger is {is}, which does not read {key} (it reads {own})");
            }
            manifest.set(
                &format!("spec.triggers[0].metadata.{key}"),
                Some(Value::String(value.to_owned())),
            )
        }
        Field::Behavior => match value {
            "file" => Ok(()),
            "none" => manifest.set(BEHAVIOR, None),
            _ => bail!(
                "behavior is file (the ScaledObject's own) or none (without it: the HPA's legacy path)"
            ),
        },
        Field::GracePeriod => {
            let seconds: u64 = value
                .parse()
                .map_err(|_| anyhow!("terminationGracePeriodSeconds is 0 or more (seconds)"))?;
            manifest.set_grace_period(Duration::from_secs(seconds));
            Ok(())
        }
        Field::MaxConcurrency => {
            let n: NonZeroUsize = value
                .parse()
                .map_err(|_| anyhow!("MAX_CONCURRENCY is a whole number, 1 or more"))?;
            scenario.max_concurrency = n.get();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_and_unknown_ones_are_errors_naming_them() {
        let polling: SweepField = "pollingInterval=2,10,30".parse().unwrap();
        assert_eq!(
            polling,
            SweepField {
                name: "pollingInterval".into(),
                field: Field::Spec {
                    path: "spec.pollingInterval".into(),
                    string: false
                },
                values: vec!["2".into(), "10".into(), "30".into()],
            }
        );
        let path: SweepField = "spec.triggers[0].metadata.messageCount=5,10"
            .parse()
            .unwrap();
        assert!(matches!(path.field, Field::Spec { string: true, .. }));
        let error = "pollingIntervall=2".parse::<SweepField>().unwrap_err();
        assert!(
            error.starts_with("unknown field \"pollingIntervall\"; known: pollingInterval, "),
            "{error}"
        );
        assert_eq!(
            "pollingInterval".parse::<SweepField>().unwrap_err(),
            "\"pollingInterval\" is not FIELD=V1,V2,... (e.g. pollingInterval=2,10,30)"
        );
        assert_eq!(
            "cooldownPeriod=60,".parse::<SweepField>().unwrap_err(),
            "\"cooldownPeriod=60,\": an empty value"
        );
    }

    #[test]
    fn targets_are_a_drain_time_or_a_multiple_of_the_ideal() {
        assert_eq!(
            "60s".parse(),
            Ok(TargetDrain::Within(Duration::from_secs(60)))
        );
        assert_eq!("1.5x".parse(), Ok(TargetDrain::Multiple(1.5)));
        assert!("0.5x".parse::<TargetDrain>().is_err());
        assert!(
            "-1s"
                .parse::<TargetDrain>()
                .unwrap_err()
                .contains("negative")
        );
    }

    fn scenario() -> Scenario {
        Scenario {
            arrivals: vec!["50@1s".parse().unwrap()],
            ..Scenario::default()
        }
    }

    fn sweep(fields: &[&str], target: Option<&str>) -> anyhow::Result<Sweep> {
        let manifest = Manifest::committed().unwrap();
        let scenario = scenario();
        let workload = scenario.workload().unwrap();
        let fields: Vec<SweepField> = fields.iter().map(|f| f.parse().unwrap()).collect();
        run(
            &manifest,
            &scenario,
            &workload,
            &fields,
            target.map(|t| t.parse().unwrap()),
        )
    }

    #[test]
    fn every_combination_is_planned_and_the_cheapest_meeting_the_target_is_marked() {
        let sweep = sweep(
            &["pollingInterval=2,30", "cooldownPeriod=60,300"],
            Some("60s"),
        )
        .unwrap();
        let values: Vec<Vec<&str>> = sweep
            .rows
            .iter()
            .map(|r| r.values.iter().map(|(_, v)| v.as_str()).collect())
            .collect();
        assert_eq!(
            values,
            [["2", "60"], ["2", "300"], ["30", "60"], ["30", "300"]]
        );
        let polling: Vec<u64> = sweep
            .rows
            .iter()
            .map(|r| r.spec.polling_interval.as_secs())
            .collect();
        assert_eq!(polling, [2, 2, 30, 30]);
        // A 30 s poll finds the burst 29 s late: past the 60 s target.
        let meets: Vec<bool> = sweep.rows.iter().map(|r| r.meets).collect();
        assert_eq!(meets, [true, true, false, false]);
        assert_eq!(sweep.cheapest, Some(0), "the shorter cooldown costs less");
        let cheapest = sweep.rows[0].plan.summary.pod_seconds;
        assert!(
            sweep.rows[1..]
                .iter()
                .all(|r| r.plan.summary.pod_seconds > cheapest)
        );
        // Without a target every combination meets it.
        let all = super::tests::sweep(&["cooldownPeriod=300,60"], None).unwrap();
        assert!(all.rows.iter().all(|r| r.meets));
        assert_eq!(all.cheapest, Some(1));
    }

    #[test]
    fn behavior_grace_and_concurrency_are_swept_too() {
        let sweep = sweep(
            &[
                "behavior=file,none",
                "terminationGracePeriodSeconds=5",
                "MAX_CONCURRENCY=1,2",
            ],
            None,
        )
        .unwrap();
        assert_eq!(sweep.rows.len(), 4);
        assert!(sweep.rows[0].spec.behavior.is_some());
        assert!(sweep.rows[2].spec.behavior.is_none());
        assert!(
            sweep
                .rows
                .iter()
                .all(|r| r.spec.termination_grace_period == Duration::from_secs(5))
        );
        let concurrency: Vec<usize> = sweep
            .rows
            .iter()
            .map(|r| r.scenario.max_concurrency)
            .collect();
        assert_eq!(concurrency, [1, 2, 1, 2]);
    }

    #[test]
    fn values_devstack_cannot_honour_are_errors_naming_the_field_as_autoscale_does() {
        let error = |fields: &[&str]| sweep(fields, None).unwrap_err().to_string();
        assert_eq!(
            error(&["pollingInterval=2,-5"]),
            "--sweep pollingInterval=-5: deploy/base/consumer-scaling.yaml (built in): spec.pollingInterval: -5 must be 1 or more (seconds)"
        );
        assert_eq!(
            error(&["messageCount=five"]),
            "--sweep messageCount=five: deploy/base/consumer-scaling.yaml (built in): spec.triggers[0].metadata.messageCount: \"five\" is not a whole number"
        );
        assert_eq!(
            error(&["value=5"]),
            "--sweep value=5: the trigger is azure-servicebus, which does not read value (it reads messageCount, activationMessageCount)"
        );
        assert_eq!(
            error(&["behavior=fast"]),
            "--sweep behavior=fast: behavior is file (the ScaledObject's own) or none (without it: the HPA's legacy path)"
        );
        assert_eq!(
            error(&["MAX_CONCURRENCY=0"]),
            "--sweep MAX_CONCURRENCY=0: MAX_CONCURRENCY is a whole number, 1 or more"
        );
        assert_eq!(
            error(&[
                "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[3].value=4"
            ]),
            "--sweep spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[3].value=4: deploy/base/consumer-scaling.yaml (built in): spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[3]: no such item (the list holds 1)"
        );
        assert_eq!(
            error(&["spec.cooldownPeriods=1"]),
            "--sweep spec.cooldownPeriods=1: deploy/base/consumer-scaling.yaml (built in): spec.cooldownPeriods: unknown field (known here: scaleTargetRef, pollingInterval, initialCooldownPeriod, cooldownPeriod, idleReplicaCount, minReplicaCount, maxReplicaCount, advanced, triggers, fallback)"
        );
        assert_eq!(
            error(&["cooldownPeriod=1", "cooldownPeriod=2"]),
            "--sweep cooldownPeriod: swept twice"
        );
        let many = [
            "pollingInterval=1,2,3,4,5,6,7,8,9,10",
            "cooldownPeriod=1,2,3,4,5,6,7,8,9,10",
            "minReplicaCount=0,1,2,3,4,5,6,7,8,9,10",
        ];
        assert_eq!(
            error(&many),
            "the sweep has more than 1000 combinations; sweep fewer values"
        );
    }
}

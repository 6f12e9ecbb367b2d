//! Kubernetes' own HPA test cases, our transcription of their tables
//! (`../upstream/kubernetes-horizontal.yaml`, `../upstream/kubernetes-replica-calculator.yaml`),
//! run against these rules. Every case is ported and must pass, or is listed in the data with the
//! reason devstack does not honour it; the counts are checked, so a case cannot go missing.

use std::time::Duration;

use serde::{Deserialize, de::DeserializeOwned};

use super::*;

const HORIZONTAL: &str = include_str!("../upstream/kubernetes-horizontal.yaml");
const REPLICA_CALCULATOR: &str = include_str!("../upstream/kubernetes-replica-calculator.yaml");

/// When every case is evaluated: long after the controller started, so every "ago" of the data is
/// a time since it did.
const NOW: Duration = Duration::from_secs(100_000);

/// A case of the data: ported (its inputs and expected outputs), or listed with the reason it is
/// not honoured.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry<T> {
    Listed(Listed),
    Ported(T),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Listed {
    name: String,
    not_honoured: String,
}

/// One upstream test's cases run: how many were ported, and the failures.
#[derive(Default)]
struct Run {
    ported: usize,
    listed: usize,
    failures: Vec<String>,
}

impl Run {
    /// Runs `check` on every ported case of `test`; `check` returns what differs from upstream's
    /// expectation, if anything.
    fn cases<T>(&mut self, test: &str, entries: Vec<Entry<T>>, check: impl Fn(&T) -> Option<String>)
    where
        T: Named,
    {
        for entry in entries {
            match entry {
                Entry::Listed(listed) => {
                    assert!(
                        !listed.not_honoured.trim().is_empty(),
                        "{test}/{}: listed without a reason",
                        listed.name
                    );
                    self.listed += 1;
                }
                Entry::Ported(case) => {
                    self.ported += 1;
                    if let Some(diff) = check(&case) {
                        self.failures
                            .push(format!("{test}/{}: {diff}", case.name()));
                    }
                }
            }
        }
    }

    /// Passes when every ported case did, and there are as many of each kind as `ported` and
    /// `listed` say (the counts the docs give).
    fn expect(self, ported: usize, listed: usize) {
        assert!(self.failures.is_empty(), "{}", self.failures.join("\n"));
        assert_eq!(
            (self.ported, self.listed),
            (ported, listed),
            "(ported, listed with a reason)"
        );
    }
}

trait Named {
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($case:ty),*) => {
        $(impl Named for $case {
            fn name(&self) -> &str {
                &self.name
            }
        })*
    };
}

named!(
    Stabilize,
    StabilizeWithBehavior,
    ConvertCase,
    LimitCase,
    ScalingWithRules,
    StoreScaleEvents,
    PerPodCase
);

/// Reads one upstream test's table out of a data file.
fn table<T: DeserializeOwned>(text: &str, test: &str) -> T {
    let file: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("the data is YAML");
    let table = file
        .get(test)
        .unwrap_or_else(|| panic!("no {test} in the data"))
        .clone();
    serde_yaml_ng::from_value(table).unwrap_or_else(|e| panic!("{test}: {e}"))
}

fn ago(seconds: u64) -> Duration {
    NOW - Duration::from_secs(seconds)
}

/// The HPA under test: its bounds, no behavior unless given, a target of 5 (the proposal's only
/// input, which these tables do not reach).
fn hpa(min: i64, max: i64, behavior: Option<Behavior>) -> Hpa {
    Hpa {
        min,
        max,
        target_milli: 5000,
        target: 5.0,
        behavior,
        recommendations: None,
        scale_up_events: Vec::new(),
        scale_down_events: Vec::new(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendationDoc {
    replicas: i64,
    ago: u64,
}

fn recommendations(docs: &[RecommendationDoc]) -> Option<Vec<Recommendation>> {
    Some(
        docs.iter()
            .map(|r| Recommendation {
                replicas: r.replicas,
                at: ago(r.ago),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventDoc {
    change: i64,
    ago: u64,
}

fn events(docs: &[EventDoc]) -> Vec<ScaleEvent> {
    docs.iter()
        .map(|e| ScaleEvent {
            change: e.change,
            at: ago(e.ago),
            outdated: false,
        })
        .collect()
}

/// generateScalingRules' shape: a window, Max unless `select` says otherwise, the policies.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesDoc {
    select: Option<String>,
    window: u64,
    policies: Vec<PolicyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDoc {
    #[serde(rename = "type")]
    kind: String,
    value: u32,
    period_seconds: u64,
}

impl RulesDoc {
    fn rules(&self) -> ScalingRules {
        ScalingRules {
            stabilization_window: Duration::from_secs(self.window),
            select_policy: match self.select.as_deref() {
                None | Some("Max") => SelectPolicy::Max,
                Some("Min") => SelectPolicy::Min,
                Some("Disabled") => SelectPolicy::Disabled,
                Some(other) => panic!("selectPolicy {other:?}"),
            },
            policies: self
                .policies
                .iter()
                .map(|p| ScalingPolicy {
                    kind: match p.kind.as_str() {
                        "Pods" => PolicyKind::Pods,
                        "Percent" => PolicyKind::Percent,
                        other => panic!("policy type {other:?}"),
                    },
                    value: p.value,
                    period: Duration::from_secs(p.period_seconds),
                })
                .collect(),
            tolerance: None,
        }
    }
}

fn differs<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Option<String> {
    (got != want).then(|| format!("{what}: got {got:?}, upstream expects {want:?}"))
}

/// How a converted count differs from upstream's `replicas` and ScalingLimited `condition`.
fn converted_differs(converted: Converted, replicas: i64, condition: &str) -> Option<String> {
    first([
        differs("replicas", converted.replicas, replicas),
        differs(
            "condition",
            format!("{:?}", converted.limited).as_str(),
            condition,
        ),
    ])
}

/// The first difference among several checks.
fn first(diffs: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    diffs.into_iter().flatten().next()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stabilize {
    name: String,
    recommendations: Vec<RecommendationDoc>,
    proposed: i64,
    stabilized: i64,
    kept: usize,
}

/// TestNormalizeDesiredReplicas: `stabilize`, the legacy path's 5 min window.
#[test]
fn test_normalize_desired_replicas() {
    let mut run = Run::default();
    let cases = table(HORIZONTAL, "TestNormalizeDesiredReplicas");
    run.cases("TestNormalizeDesiredReplicas", cases, |c: &Stabilize| {
        let mut hpa = hpa(1, 100, None);
        hpa.recommendations = recommendations(&c.recommendations);
        let stabilized = hpa.stabilize(NOW, c.proposed);
        let kept = hpa.recommendations.as_ref().map_or(0, Vec::len);
        first([
            differs("stabilized", stabilized, c.stabilized),
            differs("recommendations kept", kept, c.kept),
        ])
    });
    run.expect(5, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StabilizeWithBehavior {
    name: String,
    recommendations: Vec<RecommendationDoc>,
    current: i64,
    proposed: i64,
    #[serde(default)]
    up_window: u64,
    #[serde(default)]
    down_window: u64,
    stabilized: i64,
    kept: Option<Vec<i64>>,
}

/// TestNormalizeDesiredReplicasWithBehavior: `stabilize_with_behavior`, both windows.
#[test]
fn test_normalize_desired_replicas_with_behavior() {
    let mut run = Run::default();
    let cases = table(HORIZONTAL, "TestNormalizeDesiredReplicasWithBehavior");
    run.cases(
        "TestNormalizeDesiredReplicasWithBehavior",
        cases,
        |c: &StabilizeWithBehavior| {
            let mut behavior = Behavior {
                scale_up: ScalingRules::scale_up_default(),
                scale_down: ScalingRules::scale_down_default(),
            };
            behavior.scale_up.stabilization_window = Duration::from_secs(c.up_window);
            behavior.scale_down.stabilization_window = Duration::from_secs(c.down_window);
            let mut hpa = hpa(1, 1000, Some(behavior.clone()));
            hpa.recommendations = recommendations(&c.recommendations);
            let (stabilized, _) =
                hpa.stabilize_with_behavior(NOW, c.current, c.proposed, &behavior);
            let kept: Vec<i64> = hpa
                .recommendations
                .iter()
                .flatten()
                .map(|r| r.replicas)
                .collect();
            first([
                differs("stabilized", stabilized, c.stabilized),
                c.kept
                    .as_ref()
                    .and_then(|want| differs("recommendations kept", &kept, want)),
            ])
        },
    );
    run.expect(11, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConvertTable {
    scale_up_limit_factor: i64,
    cases: Vec<Entry<ConvertCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertCase {
    name: String,
    current: i64,
    desired: i64,
    min: i64,
    max: i64,
    replicas: i64,
    condition: String,
}

/// TestConvertDesiredReplicasWithRules: `convert_with_rules`, the legacy bounds, under the
/// scale-up factor the upstream test file sets.
#[test]
fn test_convert_desired_replicas_with_rules() {
    let mut run = Run::default();
    let table: ConvertTable = table(HORIZONTAL, "TestConvertDesiredReplicasWithRules");
    let factor = table.scale_up_limit_factor;
    run.cases(
        "TestConvertDesiredReplicasWithRules",
        table.cases,
        |c: &ConvertCase| {
            let bounds = Bounds {
                min: c.min,
                max: c.max,
            };
            let converted = convert_with_rules(c.current, c.desired, bounds, factor);
            converted_differs(converted, c.replicas, &c.condition)
        },
    );
    run.expect(5, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitCase {
    name: String,
    current: i64,
    rules: RulesDoc,
    limit: i64,
}

/// TestCalculateScaleUpLimitWithScalingRules and TestCalculateScaleDownLimitWithBehaviors:
/// `scale_up_limit` and `scale_down_limit` with no event.
#[test]
fn test_calculate_scale_up_and_down_limits() {
    let mut run = Run::default();
    let up = table(HORIZONTAL, "TestCalculateScaleUpLimitWithScalingRules");
    run.cases(
        "TestCalculateScaleUpLimitWithScalingRules",
        up,
        |c: &LimitCase| {
            let (limit, _) = hpa(1, 1000, None).scale_up_limit(NOW, c.current, &c.rules.rules());
            differs("limit", limit, c.limit)
        },
    );
    let down = table(HORIZONTAL, "TestCalculateScaleDownLimitWithBehaviors");
    run.cases(
        "TestCalculateScaleDownLimitWithBehaviors",
        down,
        |c: &LimitCase| {
            let (limit, _) = hpa(1, 1000, None).scale_down_limit(NOW, c.current, &c.rules.rules());
            differs("limit", limit, c.limit)
        },
    );
    run.expect(2, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScalingWithRules {
    name: String,
    #[serde(default)]
    scale_up_events: Vec<EventDoc>,
    #[serde(default)]
    scale_down_events: Vec<EventDoc>,
    current: i64,
    desired: i64,
    min: i64,
    max: i64,
    scale_up: Option<RulesDoc>,
    scale_down: Option<RulesDoc>,
    replicas: i64,
    condition: String,
}

/// TestScalingWithRules: `convert_with_behavior_rate`, the policies' limits given the events of
/// their periods, then the bounds.
#[test]
fn test_scaling_with_rules() {
    let mut run = Run::default();
    let cases = table(HORIZONTAL, "TestScalingWithRules");
    run.cases("TestScalingWithRules", cases, |c: &ScalingWithRules| {
        let behavior = Behavior {
            scale_up: c
                .scale_up
                .as_ref()
                .map_or_else(ScalingRules::scale_up_default, RulesDoc::rules),
            scale_down: c
                .scale_down
                .as_ref()
                .map_or_else(ScalingRules::scale_down_default, RulesDoc::rules),
        };
        let mut hpa = hpa(c.min, c.max, Some(behavior.clone()));
        hpa.scale_up_events = events(&c.scale_up_events);
        hpa.scale_down_events = events(&c.scale_down_events);
        let (converted, _) = hpa.convert_with_behavior_rate(NOW, c.current, c.desired, &behavior);
        converted_differs(converted, c.replicas, &c.condition)
    });
    run.expect(40, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StoreScaleEvents {
    name: String,
    change: i64,
    previous: Vec<EventDoc>,
    rules: Option<RulesDoc>,
    change_in_period: i64,
    kept: Vec<KeptEvent>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct KeptEvent {
    change: i64,
    outdated: bool,
}

/// TestStoreScaleEvents: `change_in_period` over the previous events, then `store_scale_event`,
/// scaling up and scaling down alike.
#[test]
fn test_store_scale_events() {
    let mut run = Run::default();
    let cases = table(HORIZONTAL, "TestStoreScaleEvents");
    run.cases("TestStoreScaleEvents", cases, |c: &StoreScaleEvents| {
        let behavior = c.rules.as_ref().map(|r| Behavior {
            scale_up: r.rules(),
            scale_down: r.rules(),
        });
        let previous = events(&c.previous);
        let mut diffs = vec![differs(
            "change in the last 60 s",
            change_in_period(&previous, NOW, Duration::from_secs(60)),
            c.change_in_period,
        )];
        for (direction, to) in [("up", 10 + c.change), ("down", 10 - c.change)] {
            let mut hpa = hpa(1, 1000, behavior.clone());
            hpa.scale_up_events = previous.clone();
            hpa.scale_down_events = previous.clone();
            hpa.store_scale_event(NOW, 10, to);
            let stored = match direction {
                "up" => &hpa.scale_up_events,
                _ => &hpa.scale_down_events,
            };
            let kept: Vec<KeptEvent> = stored
                .iter()
                .map(|e| KeptEvent {
                    change: e.change,
                    outdated: e.outdated,
                })
                .collect();
            diffs.push(differs(
                &format!("{direction}: events kept"),
                &kept,
                &c.kept,
            ));
        }
        first(diffs)
    });
    run.expect(8, 0);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerPodCase {
    name: String,
    current: i64,
    usage: i64,
    target: i64,
    tolerances: Option<TolerancesDoc>,
    replicas: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TolerancesDoc {
    down: f64,
    up: f64,
}

/// TestReplicaCalcExternalPerPodMetric: `per_pod_replicas`, the proposal for an AverageValue
/// external metric; TestGetPerPodUsage is listed.
#[test]
fn test_replica_calc_external_per_pod_metric() {
    let mut run = Run::default();
    let cases = table(REPLICA_CALCULATOR, "TestReplicaCalcExternalPerPodMetric");
    run.cases(
        "TestReplicaCalcExternalPerPodMetric",
        cases,
        |c: &PerPodCase| {
            let tolerances = c
                .tolerances
                .as_ref()
                .map_or((HPA_TOLERANCE, HPA_TOLERANCE), |t| (t.down, t.up));
            let proposal = per_pod_replicas(c.usage, c.target, c.current, tolerances);
            differs("replicas", proposal.replicas, c.replicas)
        },
    );
    let usage: Vec<Entry<PerPodCase>> = table(REPLICA_CALCULATOR, "TestGetPerPodUsage");
    run.cases("TestGetPerPodUsage", usage, |_| {
        Some("a ported case in a table that is only listed".into())
    });
    run.expect(8, 3);
}

/// The data names its source, the repository and the commit it was read at.
#[test]
fn the_data_cites_its_source_and_commit() {
    for text in [HORIZONTAL, REPLICA_CALCULATOR] {
        let source: String = table(text, "source");
        assert!(
            source.starts_with("omerap12/kubernetes@")
                && source.contains("pkg/controller/podautoscaler/"),
            "{source}"
        );
    }
}

//! The HPA controller's loop for the one external metric KEDA serves (kubernetes
//! `pkg/controller/podautoscaler/horizontal.go`, `replica_calculator.go`): 1 <-> N, with the
//! controller's settings and the `behavior` it runs with.
//!
//! KEDA creates the HPA with minReplicas = max(minReplicaCount, 1) and maxReplicas =
//! maxReplicaCount (apis/keda/v1alpha1/scaledobject_types.go: GetHPAMinReplicas,
//! GetHPAMaxReplicas), one External metric with an AverageValue target, and the ScaledObject's
//! `behavior` as is (controllers/keda/hpa.go), so no `behavior` means the controller's legacy path.

use std::time::Duration;

use serde::Serialize;

use super::{
    clock::{next_tick, seconds, secs},
    decision::{By, Decision},
};

/// The HPA controller's sync period (kube-controller-manager `--horizontal-pod-autoscaler-sync-period`,
/// 15 s in kubernetes `pkg/controller/podautoscaler/config/v1alpha1/defaults.go`).
pub const HPA_SYNC_PERIOD: Duration = Duration::from_secs(15);

/// The HPA controller's tolerance on the metric's ratio to its target
/// (`--horizontal-pod-autoscaler-tolerance`, 0.1 in the same `defaults.go`).
pub const HPA_TOLERANCE: f64 = 0.1;

/// The HPA controller's scale-down stabilisation window
/// (`--horizontal-pod-autoscaler-downscale-stabilization`, 5 min in the same `defaults.go`): the
/// legacy path's window, and a `behavior`'s `scaleDown` window when it sets none
/// (horizontal.go: `maybeInitScaleDownStabilizationWindow`).
pub const DOWNSCALE_STABILISATION_WINDOW: Duration = Duration::from_secs(300);

/// An HPA `behavior` (`HorizontalPodAutoscalerBehavior`), with Kubernetes' defaults for missing
/// fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

/// `HPAScalingRules`: one direction's window, policies and tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    #[serde(serialize_with = "seconds")]
    pub stabilization_window: Duration,
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
    /// `tolerance`, honoured as Kubernetes 1.35 does (feature gate HPAConfigurableTolerance, beta
    /// and on by default there); `None`: the controller's [`HPA_TOLERANCE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

impl ScalingRules {
    /// What a `behavior` that is there scales up with where it leaves fields out (kubernetes
    /// `pkg/apis/autoscaling/v2/defaults.go`: GenerateHPAScaleUpRules): no window, the larger of
    /// 4 pods and 100% every 15 s.
    pub fn scale_up_default() -> Self {
        Self {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy::every_15s(PolicyKind::Pods, 4),
                ScalingPolicy::every_15s(PolicyKind::Percent, 100),
            ],
            tolerance: None,
        }
    }

    /// The same for scaling down (GenerateHPAScaleDownRules): 100% every 15 s, and the window nil
    /// there, which the controller sets to its own (horizontal.go:
    /// maybeInitScaleDownStabilizationWindow).
    pub fn scale_down_default() -> Self {
        Self {
            stabilization_window: DOWNSCALE_STABILISATION_WINDOW,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy::every_15s(PolicyKind::Percent, 100)],
            tolerance: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

/// `HPAScalingPolicy`: at most `value` pods or percent per `period`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub kind: PolicyKind,
    pub value: u32,
    #[serde(serialize_with = "seconds")]
    pub period: Duration,
}

impl ScalingPolicy {
    /// A default policy: every default's period is 15 s.
    fn every_15s(kind: PolicyKind, value: u32) -> Self {
        Self {
            kind,
            value,
            period: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// The legacy path's scale-up cap, max(2 × current, 4) (horizontal.go: scaleUpLimitFactor,
/// scaleUpLimitMinimum, calculateScaleUpLimit).
const SCALE_UP_LIMIT_FACTOR: i64 = 2;
const SCALE_UP_LIMIT_MINIMUM: i64 = 4;

/// A recommendation as the controller keeps it (horizontal.go: timestampedRecommendation).
#[derive(Debug, Clone, Copy)]
struct Recommendation {
    replicas: i64,
    at: Duration,
}

/// A change the HPA made, kept per direction for the policies' periods (horizontal.go:
/// timestampedScaleEvent); `change` is the number of pods added or removed.
#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: i64,
    at: Duration,
    outdated: bool,
}

/// The HPA's state: its recommendations and scale events. Times are cluster time.
#[derive(Debug)]
pub struct Hpa {
    min: i64,
    max: i64,
    /// The trigger's target in milli-units, as the HPA holds it (`MilliValue()` of the target KEDA
    /// builds: pkg/scalers/scaler.go GetMetricTarget / GetMetricTargetMili).
    target_milli: i64,
    target: f64,
    behavior: Option<Behavior>,
    /// `None` until the first sync (horizontal.go: recordInitialRecommendation).
    recommendations: Option<Vec<Recommendation>>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

/// `now` minus `window`, or `None` when the window reaches back before the controller started
/// (then no record is before the cutoff, and every record is after it).
fn cutoff(now: Duration, window: Duration) -> Option<Duration> {
    now.checked_sub(window)
}

/// Go's `t.Before(cutoff)`.
fn before(at: Duration, cutoff: Option<Duration>) -> bool {
    cutoff.is_some_and(|c| at < c)
}

/// Go's `t.After(cutoff)`.
fn after(at: Duration, cutoff: Option<Duration>) -> bool {
    cutoff.is_none_or(|c| at > c)
}

impl Hpa {
    /// The HPA KEDA creates for a ScaledObject with these `minReplicaCount`, `maxReplicaCount`,
    /// trigger target (AverageValue) and `behavior`.
    pub fn new(
        min_replica_count: u32,
        max_replica_count: u32,
        target: f64,
        behavior: Option<Behavior>,
    ) -> Self {
        Self {
            min: i64::from(min_replica_count.max(1)),
            max: i64::from(max_replica_count),
            // int64(metricValue * 1000), truncated, as KEDA builds the quantity.
            target_milli: (target * 1000.0) as i64,
            target,
            behavior,
            recommendations: None,
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
        }
    }

    /// When the first sync comes, for a ScaledObject created at `now`: within one sync period,
    /// at a phase of the controller's own, since the controller manager started long before
    /// this ScaledObject did.
    pub fn first_sync(now: Duration) -> Duration {
        now + HPA_SYNC_PERIOD.mul_f64(fastrand::f64())
    }

    /// The sync after the one due `at`, every [`HPA_SYNC_PERIOD`]; those already missed at `now`
    /// are skipped.
    pub fn next_sync(at: Duration, now: Duration) -> Duration {
        next_tick(at, HPA_SYNC_PERIOD, now)
    }

    /// One sync at `now` with the `metric` and the Deployment's `replicas`: the change to make,
    /// if any. Does nothing at 0 replicas.
    pub fn sync(&mut self, now: Duration, metric: u64, replicas: u32) -> Option<Decision> {
        let current = i64::from(replicas);
        // reconcileAutoscaler: the first sync seeds the recommendations with the current count,
        // even at 0.
        self.recommendations.get_or_insert_with(|| {
            vec![Recommendation {
                replicas: current,
                at: now,
            }]
        });

        if current == 0 {
            // shouldComputeMetricsForZeroReplicas: with HPAScaleToZero off (alpha, off by default)
            // "scaling is disabled since the replica count of the target is zero"; KEDA does 0 -> 1.
            return None;
        }

        let mut proposal = None;
        let mut recommendation = None;
        let mut limit = None;
        // reconcileAutoscaler: outside [minReplicas, maxReplicas] the count is brought back
        // without reading the metric (and without recording a recommendation).
        let (desired, reason) = if current > self.max {
            (
                self.max,
                format!("replicas {current} above maxReplicas {}", self.max),
            )
        } else if current < self.min {
            (
                self.min,
                format!("replicas {current} below minReplicas {}", self.min),
            )
        } else {
            let (proposed, proposal_text) = self.propose(metric, current);
            let (desired, stabilised, cap, rest) = match &self.behavior {
                None => self.normalize_legacy(now, current, proposed),
                Some(behavior) => {
                    // A copy, as the normalisation updates the records beside it; a few policies
                    // every 15 s.
                    let behavior = behavior.clone();
                    self.normalize_with_behavior(now, current, proposed, &behavior)
                }
            };
            proposal = Some(proposed);
            recommendation = Some(stabilised);
            limit = Some(cap);
            (desired, format!("{proposal_text}, {rest}"))
        };

        if desired == current {
            return None;
        }
        self.store_scale_event(now, current, desired);
        let to_u32 = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        Some(Decision {
            by: By::Hpa,
            from: replicas,
            to: to_u32(desired),
            metric,
            reason,
            proposal: proposal.map(to_u32),
            recommendation: recommendation.map(to_u32),
            limit: limit.map(to_u32),
        })
    }

    /// The proposal for `metric` at `current` replicas, and the rule in words.
    ///
    /// The controller divides by the scale's `status.replicas` (pods that exist, starting ones
    /// included); devstack passes `spec.replicas`, which its pods reach as soon as they are
    /// started, so the two differ only while terminating pods are being replaced.
    fn propose(&self, metric: u64, current: i64) -> (i64, String) {
        // KEDA serves the queue length in milli-units (scaler.go: GenerateMetricInMili).
        let usage = i64::try_from(metric.saturating_mul(1000)).unwrap_or(i64::MAX);
        let tolerances = self.tolerances();
        let proposal = per_pod_replicas(usage, self.target_milli, current, tolerances);
        let (down, up) = tolerances;
        let text = if proposal.within {
            format!(
                "proposal {current} ({metric}/({}*{current})={:.2} within {:.2}..{:.2})",
                self.target,
                proposal.ratio,
                1.0 - down,
                1.0 + up
            )
        } else {
            format!(
                "proposal ceil({metric}/{})={}",
                self.target, proposal.replicas
            )
        };
        (proposal.replicas, text)
    }

    /// horizontal.go: tolerancesForHpa, as (scale-down, scale-up).
    fn tolerances(&self) -> (f64, f64) {
        match &self.behavior {
            None => (HPA_TOLERANCE, HPA_TOLERANCE),
            Some(b) => (
                b.scale_down.tolerance.unwrap_or(HPA_TOLERANCE),
                b.scale_up.tolerance.unwrap_or(HPA_TOLERANCE),
            ),
        }
    }

    /// horizontal.go: normalizeDesiredReplicas = stabilizeRecommendation (the highest proposal
    /// of the downscale window) then convertDesiredReplicasWithRules (the scale-up cap, then
    /// min/max replicas). Returns (desired, stabilised, the cap, the reason's rest).
    fn normalize_legacy(
        &mut self,
        now: Duration,
        current: i64,
        proposed: i64,
    ) -> (i64, i64, i64, String) {
        let stabilised = self.stabilize(now, proposed);
        let mut text = if stabilised == proposed {
            format!("stabilised {stabilised}")
        } else {
            format!(
                "stabilised {stabilised} (highest proposal of the last {})",
                secs(DOWNSCALE_STABILISATION_WINDOW)
            )
        };
        let bounds = Bounds {
            min: self.min,
            max: self.max,
        };
        let converted = convert_with_rules(current, stabilised, bounds, SCALE_UP_LIMIT_FACTOR);
        match converted.limited {
            Limited::TooFewReplicas => {
                text.push_str(&format!(", raised to minReplicas {}", self.min));
            }
            Limited::ScaleUpLimit => text.push_str(&format!(
                ", capped by max({SCALE_UP_LIMIT_FACTOR}*{current},{SCALE_UP_LIMIT_MINIMUM})={}",
                converted.limit
            )),
            Limited::TooManyReplicas => {
                text.push_str(&format!(", capped by maxReplicas {}", self.max));
            }
            Limited::DesiredWithinRange | Limited::ScaleDownLimit => {}
        }
        (converted.replicas, stabilised, converted.limit, text)
    }

    /// horizontal.go: stabilizeRecommendation. Records `proposed` (over the oldest record left out
    /// of the window, if any) and returns the highest recommendation not before now - window.
    fn stabilize(&mut self, now: Duration, proposed: i64) -> i64 {
        let cut = cutoff(now, DOWNSCALE_STABILISATION_WINDOW);
        let records = self.recommendations.get_or_insert_with(Vec::new);
        let mut highest = proposed;
        let mut old = None;
        for (i, rec) in records.iter().enumerate() {
            if before(rec.at, cut) {
                old = Some(i);
            } else if rec.replicas > highest {
                highest = rec.replicas;
            }
        }
        record(records, old, proposed, now);
        highest
    }

    /// horizontal.go: normalizeDesiredReplicasWithBehaviors = stabilizeRecommendationWithBehaviors
    /// then convertDesiredReplicasWithBehaviorRate.
    fn normalize_with_behavior(
        &mut self,
        now: Duration,
        current: i64,
        proposed: i64,
        behavior: &Behavior,
    ) -> (i64, i64, i64, String) {
        let (stabilised, mut text) = self.stabilize_with_behavior(now, current, proposed, behavior);
        let (converted, why) = self.convert_with_behavior_rate(now, current, stabilised, behavior);
        match converted.limited {
            Limited::ScaleUpLimit => text.push_str(&format!(
                ", capped by scaleUp limit {} ({why})",
                converted.limit
            )),
            Limited::TooManyReplicas => {
                text.push_str(&format!(", capped by maxReplicas {}", self.max));
            }
            Limited::ScaleDownLimit => text.push_str(&format!(
                ", held at scaleDown limit {} ({why})",
                converted.limit
            )),
            Limited::TooFewReplicas => {
                text.push_str(&format!(", raised to minReplicas {}", self.min));
            }
            Limited::DesiredWithinRange => {}
        }
        (converted.replicas, stabilised, converted.limit, text)
    }

    /// horizontal.go: convertDesiredReplicasWithBehaviorRate. Above the current count, the
    /// scaleUp policies' limit (never below the current count) or maxReplicas, whichever is lower;
    /// below it, the scaleDown policies' limit (never above the current count) or minReplicas,
    /// whichever is higher. The limit comes with its policies in words.
    fn convert_with_behavior_rate(
        &self,
        now: Duration,
        current: i64,
        desired: i64,
        behavior: &Behavior,
    ) -> (Converted, String) {
        if desired > current {
            let (raw, why) = self.scale_up_limit(now, current, &behavior.scale_up);
            // "We shouldn't scale up further until the scaleUpEvents will be cleaned up".
            let cap = raw.max(current);
            let (allowed, limited) = if self.max > cap {
                (cap, Limited::ScaleUpLimit)
            } else {
                (self.max, Limited::TooManyReplicas)
            };
            (Converted::within(desired, allowed, limited, cap), why)
        } else if desired < current {
            let (raw, why) = self.scale_down_limit(now, current, &behavior.scale_down);
            // "We shouldn't scale down further until the scaleDownEvents will be cleaned up".
            let floor = raw.min(current);
            let (allowed, limited) = if self.min < floor {
                (floor, Limited::ScaleDownLimit)
            } else {
                (self.min, Limited::TooFewReplicas)
            };
            (Converted::within(desired, allowed, limited, floor), why)
        } else {
            (
                Converted {
                    replicas: desired,
                    limited: Limited::DesiredWithinRange,
                    limit: current,
                },
                String::new(),
            )
        }
    }

    /// horizontal.go: stabilizeRecommendationWithBehaviors. The lowest recommendation of the
    /// scale-up window is a floor, the highest of the scale-down window a ceiling, and the
    /// current count is brought within them.
    fn stabilize_with_behavior(
        &mut self,
        now: Duration,
        current: i64,
        proposed: i64,
        behavior: &Behavior,
    ) -> (i64, String) {
        let up_cut = cutoff(now, behavior.scale_up.stabilization_window);
        let down_cut = cutoff(now, behavior.scale_down.stabilization_window);
        let records = self.recommendations.get_or_insert_with(Vec::new);
        let mut up = proposed;
        let mut down = proposed;
        let mut old = None;
        for (i, rec) in records.iter().enumerate() {
            if after(rec.at, up_cut) {
                up = up.min(rec.replicas);
            }
            if after(rec.at, down_cut) {
                down = down.max(rec.replicas);
            }
            if before(rec.at, up_cut) && before(rec.at, down_cut) {
                old = Some(i);
            }
        }
        let stabilised = current.max(up).min(down);
        record(records, old, proposed, now);
        let text = if stabilised == proposed {
            format!("stabilised {stabilised}")
        } else if proposed > current {
            format!(
                "stabilised {stabilised} (lowest proposal of the last {})",
                secs(behavior.scale_up.stabilization_window)
            )
        } else {
            format!(
                "stabilised {stabilised} (highest proposal of the last {})",
                secs(behavior.scale_down.stabilization_window)
            )
        };
        (stabilised, text)
    }

    /// horizontal.go: calculateScaleUpLimitWithScalingRules. Each policy allows its value on top
    /// of the count at the start of its period; selectPolicy picks among them.
    fn scale_up_limit(&self, now: Duration, current: i64, rules: &ScalingRules) -> (i64, String) {
        self.policy_limit(now, current, rules, Direction::Up)
    }

    /// horizontal.go: calculateScaleDownLimitWithBehaviors, the mirror image: the lowest count
    /// each policy allows, Max picking the biggest change (the lowest count).
    fn scale_down_limit(&self, now: Duration, current: i64, rules: &ScalingRules) -> (i64, String) {
        self.policy_limit(now, current, rules, Direction::Down)
    }

    /// The count `rules`' policies allow in `direction`, from the count at the start of each
    /// policy's period; the current count when the direction is Disabled or has no policy.
    fn policy_limit(
        &self,
        now: Duration,
        current: i64,
        rules: &ScalingRules,
        direction: Direction,
    ) -> (i64, String) {
        if rules.select_policy == SelectPolicy::Disabled {
            let name = match direction {
                Direction::Up => "scaleUp",
                Direction::Down => "scaleDown",
            };
            return (current, format!("{name} selectPolicy Disabled"));
        }
        let mut picked: Option<i64> = None;
        let mut parts = Vec::new();
        for policy in &rules.policies {
            let start = self.period_start(now, current, policy.period);
            let value = i64::from(policy.value);
            let proposed = match (direction, policy.kind) {
                (Direction::Up, PolicyKind::Pods) => start + value,
                // "has to be rounded up because the proposed change might not increase the
                // replica count causing the target to never scale up".
                (Direction::Up, PolicyKind::Percent) => {
                    (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64
                }
                (Direction::Down, PolicyKind::Pods) => start - value,
                // int32(float64(...)): truncated toward zero.
                (Direction::Down, PolicyKind::Percent) => {
                    (start as f64 * (1.0 - value as f64 / 100.0)) as i64
                }
            };
            parts.push(policy_text(policy, start, proposed));
            // Max picks the biggest change: the highest count up, the lowest down; Min the
            // smallest.
            let biggest = match direction {
                Direction::Up => i64::max,
                Direction::Down => i64::min,
            };
            let smallest = match direction {
                Direction::Up => i64::min,
                Direction::Down => i64::max,
            };
            picked = Some(match (picked, rules.select_policy) {
                (None, _) => proposed,
                (Some(p), SelectPolicy::Min) => smallest(p, proposed),
                (Some(p), _) => biggest(p, proposed),
            });
        }
        (
            picked.unwrap_or(current),
            format!("{:?} of {}", rules.select_policy, parts.join(", ")),
        )
    }

    /// The replica count at the start of a policy's period: the current one less what the HPA
    /// added, plus what it removed, in that period.
    fn period_start(&self, now: Duration, current: i64, period: Duration) -> i64 {
        current - change_in_period(&self.scale_up_events, now, period)
            + change_in_period(&self.scale_down_events, now, period)
    }

    /// horizontal.go: storeScaleEvent. Only with a behavior; an event older than the direction's
    /// longest policy period is marked outdated (markScaleEventsOutdated) and the last such one
    /// is reused.
    fn store_scale_event(&mut self, now: Duration, from: i64, to: i64) {
        let Some(behavior) = &self.behavior else {
            return;
        };
        let (events, rules, change) = if to > from {
            (&mut self.scale_up_events, &behavior.scale_up, to - from)
        } else {
            (&mut self.scale_down_events, &behavior.scale_down, from - to)
        };
        let longest = rules
            .policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or(Duration::ZERO);
        let cut = cutoff(now, longest);
        let mut old = None;
        for (i, event) in events.iter_mut().enumerate() {
            if before(event.at, cut) {
                event.outdated = true;
            }
            if event.outdated {
                old = Some(i);
            }
        }
        let event = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match old {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

/// Which way a policy limits.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// horizontal.go: getReplicasChangePerPeriod. The pods `events` added (or removed) strictly
/// after now - period.
fn change_in_period(events: &[ScaleEvent], now: Duration, period: Duration) -> i64 {
    let cut = cutoff(now, period);
    events
        .iter()
        .filter(|e| after(e.at, cut))
        .map(|e| e.change)
        .sum()
}

/// replica_calculator.go: GetExternalPerPodMetricReplicas, the proposal for an AverageValue
/// external metric: `usage` and `target` in milli-units. The ratio is usage / (target ×
/// current); inside the tolerance band (both bounds inclusive, Tolerances.isWithin) the proposal
/// is the current count, else ceil(usage / target), saturated at int32's maximum.
fn per_pod_replicas(usage: i64, target: i64, current: i64, (down, up): (f64, f64)) -> Proposal {
    let ratio = usage as f64 / (target as f64 * current as f64);
    let within = (1.0 - down) <= ratio && ratio <= 1.0 + up;
    let replicas = if within {
        current
    } else {
        (usage as f64 / target as f64)
            .ceil()
            .min(f64::from(i32::MAX)) as i64
    };
    Proposal {
        replicas,
        ratio,
        within,
    }
}

/// What the metric calls for.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Proposal {
    replicas: i64,
    ratio: f64,
    /// The ratio was within the tolerance band: the proposal is the current count.
    within: bool,
}

/// The HPA's bounds, minReplicas and maxReplicas.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: i64,
    max: i64,
}

/// What limited a normalised count: the `ScalingLimited` condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limited {
    DesiredWithinRange,
    TooFewReplicas,
    TooManyReplicas,
    ScaleUpLimit,
    ScaleDownLimit,
}

/// A count after the rate limits and the bounds, with what limited it and the limit in force
/// (the legacy cap, or the policies' limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Converted {
    replicas: i64,
    limited: Limited,
    limit: i64,
}

impl Converted {
    /// `desired` against `allowed` (the bound that applies in its direction): held at it, with
    /// `limited` as the reason, when past it.
    fn within(desired: i64, allowed: i64, limited: Limited, limit: i64) -> Self {
        let past = match limited {
            Limited::ScaleUpLimit | Limited::TooManyReplicas => desired > allowed,
            _ => desired < allowed,
        };
        match past {
            true => Self {
                replicas: allowed,
                limited,
                limit,
            },
            false => Self {
                replicas: desired,
                limited: Limited::DesiredWithinRange,
                limit,
            },
        }
    }
}

/// horizontal.go: convertDesiredReplicasWithRules, the legacy path's bounds: never below
/// minReplicas, never above max(`factor` × current, 4) (calculateScaleUpLimit) nor maxReplicas,
/// whichever of the two is lower.
fn convert_with_rules(current: i64, desired: i64, bounds: Bounds, factor: i64) -> Converted {
    let scale_up_limit = (factor * current).max(SCALE_UP_LIMIT_MINIMUM);
    let (maximum, over) = if bounds.max > scale_up_limit {
        (scale_up_limit, Limited::ScaleUpLimit)
    } else {
        (bounds.max, Limited::TooManyReplicas)
    };
    let (replicas, limited) = if desired < bounds.min {
        (bounds.min, Limited::TooFewReplicas)
    } else if desired > maximum {
        (maximum, over)
    } else {
        (desired, Limited::DesiredWithinRange)
    };
    Converted {
        replicas,
        limited,
        limit: scale_up_limit,
    }
}

/// Stores a recommendation over the record at `old`, or appends it.
fn record(records: &mut Vec<Recommendation>, old: Option<usize>, replicas: i64, at: Duration) {
    let rec = Recommendation { replicas, at };
    match old {
        Some(i) => records[i] = rec,
        None => records.push(rec),
    }
}

fn policy_text(policy: &ScalingPolicy, start: i64, proposed: i64) -> String {
    let unit = match policy.kind {
        PolicyKind::Pods => "",
        PolicyKind::Percent => "%",
    };
    format!(
        "{:?} {}{unit}/{} from {start} -> {proposed}",
        policy.kind,
        policy.value,
        secs(policy.period)
    )
}

#[cfg(test)]
mod upstream;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// The HPA of a ScaledObject with these counts and `behavior`, and a target of 5.
    fn new_hpa(min: u32, max: u32, behavior: Option<Behavior>) -> Hpa {
        Hpa::new(min, max, 5.0, behavior)
    }

    fn policy(kind: PolicyKind, value: u32, period: u64) -> ScalingPolicy {
        ScalingPolicy {
            kind,
            value,
            period: s(period),
        }
    }

    /// Kubernetes' defaults for a `behavior: {}` (autoscaling/v2 defaults.go).
    fn default_behavior() -> Behavior {
        Behavior {
            scale_up: ScalingRules::scale_up_default(),
            scale_down: ScalingRules::scale_down_default(),
        }
    }

    /// Syncs every 15 s from `start` with `metric`, applying each change, until `end`
    /// (inclusive); the replica counts after each sync.
    fn run(hpa: &mut Hpa, start: u64, end: u64, metric: u64, replicas: &mut u32) -> Vec<u32> {
        (start..=end)
            .step_by(15)
            .map(|t| {
                if let Some(d) = hpa.sync(s(t), metric, *replicas) {
                    *replicas = d.to;
                }
                *replicas
            })
            .collect()
    }

    #[test]
    fn the_first_sync_comes_within_a_period_and_the_next_ones_every_15s() {
        for _ in 0..100 {
            let first = Hpa::first_sync(s(100));
            assert!(first >= s(100) && first < s(115), "{first:?}");
        }
        assert_eq!(Hpa::next_sync(s(107), s(107)), s(122));
        // Missed syncs are skipped, not caught up.
        assert_eq!(Hpa::next_sync(s(107), s(150)), s(152));
    }

    #[test]
    fn within_the_tolerance_band_nothing_changes() {
        // 10 replicas, target 5: 52/50 = 1.04 and 45/50 = 0.90 are within 0.9..1.1 (inclusive).
        let mut hpa = new_hpa(0, 100, None);
        assert_eq!(hpa.sync(s(0), 52, 10), None);
        assert_eq!(hpa.sync(s(15), 55, 10), None, "55/50 = 1.1 is still within");
        assert_eq!(hpa.sync(s(30), 45, 10), None);
        // 56/50 = 1.12 is out: ceil(56/5) = 12.
        let decision = hpa.sync(s(45), 56, 10).expect("scales up");
        assert_eq!((decision.from, decision.to), (10, 12));
        assert_eq!(decision.reason, "proposal ceil(56/5)=12, stabilised 12");
        assert_eq!(
            (decision.proposal, decision.recommendation, decision.limit),
            (Some(12), Some(12), Some(20))
        );
    }

    #[test]
    fn the_band_keeps_the_current_count_as_the_proposal() {
        let mut hpa = new_hpa(0, 100, None);
        hpa.sync(s(0), 50, 10);
        let (proposed, text) = hpa.propose(54, 10);
        assert_eq!(
            proposed, 10,
            "not ceil(54/5) = 11: the band keeps the current count"
        );
        assert_eq!(text, "proposal 10 (54/(5*10)=1.08 within 0.90..1.10)");
        let (proposed, _) = hpa.propose(44, 10);
        assert_eq!(proposed, 9, "44/50 = 0.88 is out of the band: ceil(44/5)");
    }

    #[test]
    fn the_legacy_cap_takes_1_to_4_to_8_to_10() {
        // The committed ScaledObject: max 10, target 5, no behavior; 50 messages.
        let mut hpa = new_hpa(0, 10, None);
        let first = hpa.sync(s(0), 50, 1).expect("1 -> 4");
        assert_eq!(
            first.to_string(),
            "hpa: proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4, scaling consumer 1 -> 4"
        );
        assert_eq!(
            (first.proposal, first.recommendation, first.limit),
            (Some(10), Some(10), Some(4))
        );
        let second = hpa.sync(s(15), 50, 4).expect("4 -> 8");
        assert_eq!(second.to, 8);
        assert_eq!(
            second.reason,
            "proposal ceil(50/5)=10, stabilised 10, capped by max(2*4,4)=8"
        );
        let third = hpa.sync(s(30), 50, 8).expect("8 -> 10");
        assert_eq!(third.to, 10);
        // 2*8 = 16 is above maxReplicas, so maxReplicas is the cap, and 10 does not exceed it.
        assert_eq!(third.reason, "proposal ceil(50/5)=10, stabilised 10");
        assert_eq!(third.limit, Some(16));
        assert_eq!(hpa.sync(s(45), 50, 10), None);
    }

    #[test]
    fn a_proposal_above_max_replicas_is_capped_by_it() {
        let mut hpa = new_hpa(0, 10, None);
        let decision = hpa.sync(s(0), 500, 8).expect("8 -> 10");
        assert_eq!(
            decision.reason,
            "proposal ceil(500/5)=100, stabilised 100, capped by maxReplicas 10"
        );
        assert_eq!(decision.to, 10);
    }

    #[test]
    fn the_300s_window_holds_a_peak_until_it_leaves() {
        let mut hpa = new_hpa(0, 10, None);
        let mut replicas = 10;
        // t=0: 50 messages, proposal 10 (and the first sync's record of the current 10).
        assert_eq!(hpa.sync(s(0), 50, replicas), None);
        // t=150: a smaller peak, proposal 8.
        run(&mut hpa, 15, 135, 0, &mut replicas);
        assert_eq!(replicas, 10, "held by the t=0 proposal of 10");
        assert_eq!(hpa.sync(s(150), 40, replicas), None);
        // The queue is empty from here on: proposals of 0.
        let held = run(&mut hpa, 165, 300, 0, &mut replicas);
        assert!(
            held.iter().all(|&r| r == 10),
            "t=0's 10 is in the window through 300s: {held:?}"
        );
        // At 315 the records of t=0 are before the cutoff (15 s); t=150's 8 is the highest left.
        let decision = hpa.sync(s(315), 0, replicas).expect("10 -> 8");
        assert_eq!((decision.from, decision.to), (10, 8));
        assert_eq!(
            decision.reason,
            "proposal ceil(0/5)=0, stabilised 8 (highest proposal of the last 300s)"
        );
        assert_eq!(
            (decision.proposal, decision.recommendation),
            (Some(0), Some(8))
        );
        replicas = decision.to;
        let held = run(&mut hpa, 330, 450, 0, &mut replicas);
        assert!(
            held.iter().all(|&r| r == 8),
            "t=150's 8 holds through 450s: {held:?}"
        );
        let decision = hpa.sync(s(465), 0, replicas).expect("8 -> 1");
        assert_eq!(
            decision.reason,
            "proposal ceil(0/5)=0, stabilised 0, raised to minReplicas 1"
        );
        assert_eq!(decision.to, 1, "the HPA's floor is 1; KEDA takes it to 0");
    }

    #[test]
    fn nothing_happens_at_zero_replicas() {
        let mut hpa = new_hpa(0, 10, None);
        assert_eq!(hpa.sync(s(0), 500, 0), None);
        assert_eq!(hpa.sync(s(15), 500, 0), None);
    }

    #[test]
    fn replicas_outside_min_and_max_are_brought_back_without_a_metric() {
        let mut hpa = new_hpa(3, 10, None);
        let up = hpa.sync(s(0), 0, 1).expect("1 -> 3");
        assert_eq!(
            (up.to, up.reason.as_str()),
            (3, "replicas 1 below minReplicas 3")
        );
        assert_eq!(
            (up.proposal, up.recommendation, up.limit),
            (None, None, None)
        );
        let down = hpa.sync(s(15), 500, 12).expect("12 -> 10");
        assert_eq!(
            (down.to, down.reason.as_str()),
            (10, "replicas 12 above maxReplicas 10")
        );
    }

    #[test]
    fn the_behavior_path_with_default_policies_adds_max_of_4_pods_or_100_percent_per_15s() {
        let mut hpa = new_hpa(0, 20, Some(default_behavior()));
        // 1 replica, 100 messages: proposal 20. Pods: 1+4 = 5; Percent: ceil(1*2) = 2; Max: 5.
        let first = hpa.sync(s(0), 100, 1).expect("1 -> 5");
        assert_eq!(first.to, 5);
        assert_eq!(
            first.reason,
            "proposal ceil(100/5)=20, stabilised 20, capped by scaleUp limit 5 (Max of Pods 4/15s from 1 -> 5, Percent 100%/15s from 1 -> 2)"
        );
        assert_eq!(
            (first.proposal, first.recommendation, first.limit),
            (Some(20), Some(20), Some(5))
        );
        // 10 s later the +4 is still inside both policies' 15 s period: the period started at 1.
        assert_eq!(hpa.sync(s(10), 100, 5), None);
        // At 15 s the event at 0 is no longer after the cutoff: Pods 5+4 = 9, Percent 10; Max 10.
        let second = hpa.sync(s(15), 100, 5).expect("5 -> 10");
        assert_eq!(second.to, 10);
        let third = hpa.sync(s(30), 100, 10).expect("10 -> 20");
        assert_eq!(third.to, 20);
    }

    #[test]
    fn the_behavior_path_scales_down_after_its_300s_window_by_up_to_100_percent() {
        let mut hpa = new_hpa(0, 20, Some(default_behavior()));
        assert_eq!(hpa.sync(s(0), 50, 10), None);
        let mut replicas = 10;
        // The 300 s window takes records strictly after now - 300: t=0's 10 holds through 285.
        let held = run(&mut hpa, 15, 285, 0, &mut replicas);
        assert!(held.iter().all(|&r| r == 10), "{held:?}");
        let decision = hpa.sync(s(300), 0, replicas).expect("10 -> 1");
        // Percent 100 allows all 10 to go; minReplicas 1 is the floor.
        assert_eq!(
            decision.reason,
            "proposal ceil(0/5)=0, stabilised 0, raised to minReplicas 1"
        );
        assert_eq!((decision.to, decision.limit), (1, Some(0)));
    }

    #[test]
    fn custom_policies_pods_versus_percent_and_select_policy_min() {
        let mut behavior = default_behavior();
        behavior.scale_up.select_policy = SelectPolicy::Min;
        let mut hpa = new_hpa(0, 100, Some(behavior));
        // 10 replicas, 500 messages: Pods 10+4 = 14, Percent ceil(10*2) = 20; Min picks 14.
        let decision = hpa.sync(s(0), 500, 10).expect("10 -> 14");
        assert_eq!(decision.to, 14);
        assert_eq!(
            decision.reason,
            "proposal ceil(500/5)=100, stabilised 100, capped by scaleUp limit 14 (Min of Pods 4/15s from 10 -> 14, Percent 100%/15s from 10 -> 20)"
        );
    }

    #[test]
    fn a_scale_down_policy_limits_each_period() {
        let mut behavior = default_behavior();
        behavior.scale_down = ScalingRules {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![
                policy(PolicyKind::Percent, 50, 60),
                policy(PolicyKind::Pods, 2, 60),
            ],
            tolerance: None,
        };
        let mut hpa = new_hpa(0, 100, Some(behavior));
        hpa.sync(s(0), 100, 20);
        // Empty queue: Percent int(20*0.5) = 10, Pods 20-2 = 18; Max (the biggest change) 10.
        let first = hpa.sync(s(15), 0, 20).expect("20 -> 10");
        assert_eq!(first.to, 10);
        assert_eq!(
            first.reason,
            "proposal ceil(0/5)=0, stabilised 0, held at scaleDown limit 10 (Max of Percent 50%/60s from 20 -> 10, Pods 2/60s from 20 -> 18)"
        );
        // Within the same 60 s the period still started at 20: no further step.
        assert_eq!(hpa.sync(s(30), 0, 10), None);
        assert_eq!(
            hpa.sync(s(60), 0, 10),
            None,
            "the 15 s event is after 60 - 60 = 0"
        );
        // At 75 the event is no longer strictly after the cutoff (15): the period starts at 10,
        // Percent 5, Pods 8; Max 5.
        assert_eq!(hpa.sync(s(75), 0, 10).map(|d| d.to), Some(5));
    }

    #[test]
    fn select_policy_disabled_stops_that_direction() {
        let mut behavior = default_behavior();
        behavior.scale_down.select_policy = SelectPolicy::Disabled;
        behavior.scale_down.stabilization_window = Duration::ZERO;
        let mut hpa = new_hpa(0, 100, Some(behavior));
        hpa.sync(s(0), 50, 10);
        assert_eq!(hpa.sync(s(15), 0, 10), None);
        assert_eq!(hpa.sync(s(1000), 0, 10), None);
        // Up still works: Pods 10+4 = 14, Percent ceil(10*2) = 20; Max 20.
        assert_eq!(hpa.sync(s(1015), 100, 10).map(|d| d.to), Some(20));
    }

    #[test]
    fn a_scale_up_window_takes_the_lowest_recent_proposal() {
        let mut behavior = default_behavior();
        behavior.scale_up.stabilization_window = s(60);
        let mut hpa = new_hpa(0, 100, Some(behavior));
        // The first sync records the current 2.
        assert_eq!(hpa.sync(s(0), 10, 2), None, "10/(5*2) = 1: in the band");
        // A burst: proposal 20, but 2 (t=0) is within the last 60 s.
        assert_eq!(hpa.sync(s(15), 100, 2), None);
        assert_eq!(hpa.sync(s(45), 100, 2), None);
        // At 60 the t=0 records are not after the cutoff (0); the lowest is 20 from 15 s.
        let decision = hpa.sync(s(60), 100, 2).expect("scales up");
        assert_eq!(decision.recommendation, Some(20));
        // Pods 2+4 = 6, Percent ceil(2*2) = 4; Max 6.
        assert_eq!(decision.to, 6);
    }

    #[test]
    fn a_behavior_tolerance_widens_the_band() {
        let mut behavior = default_behavior();
        behavior.scale_up.tolerance = Some(0.5);
        let mut hpa = new_hpa(0, 100, Some(behavior));
        assert_eq!(hpa.sync(s(0), 70, 10), None, "70/50 = 1.4 is within 1.5");
        assert_eq!(hpa.sync(s(15), 80, 10).map(|d| d.to), Some(16));
    }

    proptest::proptest! {
        /// Whatever the queue does, the legacy path stays within [max(min, 1), max], never steps
        /// up past max(2 * current, 4), and never reports a change that is none.
        #[test]
        fn the_legacy_path_stays_in_bounds_and_under_its_cap(
            min in 0u32..4,
            extra in 0u32..20,
            metrics in proptest::collection::vec(0u64..500, 1..60),
        ) {
            let max = min.max(1) + extra;
            let mut hpa = new_hpa(min, max, None);
            let mut replicas = min.max(1);
            for (i, metric) in metrics.into_iter().enumerate() {
                if let Some(d) = hpa.sync(s(15 * i as u64), metric, replicas) {
                    proptest::prop_assert_ne!(d.from, d.to);
                    proptest::prop_assert!(d.to >= min.max(1) && d.to <= max, "{d:?}");
                    if d.to > d.from {
                        proptest::prop_assert!(d.to <= (2 * d.from).max(4), "{d:?}");
                    }
                    replicas = d.to;
                }
            }
        }

        /// With Kubernetes' default behavior, a 15 s sync adds at most max(4, current) pods
        /// (Pods 4 or Percent 100 per 15 s), and every count stays within [max(min, 1), max].
        #[test]
        fn the_default_behavior_stays_in_bounds_and_under_its_rate(
            min in 0u32..4,
            extra in 0u32..40,
            metrics in proptest::collection::vec(0u64..1000, 1..60),
        ) {
            let max = min.max(1) + extra;
            let mut hpa = new_hpa(min, max, Some(default_behavior()));
            let mut replicas = min.max(1);
            for (i, metric) in metrics.into_iter().enumerate() {
                if let Some(d) = hpa.sync(s(15 * i as u64), metric, replicas) {
                    proptest::prop_assert_ne!(d.from, d.to);
                    proptest::prop_assert!(d.to >= min.max(1) && d.to <= max, "{d:?}");
                    if d.to > d.from {
                        proptest::prop_assert!(d.to - d.from <= d.from.max(4), "{d:?}");
                    }
                    replicas = d.to;
                }
            }
        }
    }
}

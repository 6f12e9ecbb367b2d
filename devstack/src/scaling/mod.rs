//! `devstack --autoscale`: the consumers run as the replicas of a Deployment that KEDA and the
//! HPA scale, from the ScaledObject that `kubectl apply -k deploy/base` applies.
//!
//! The rules (`spec`, `keda`, `hpa`) are pure: they take the cluster time (time since the
//! controller started, in the ScaledObject's own units, before `--time-scale`), the metric and the
//! Deployment's replica count, and return the change to make. The runtime (`replicas`,
//! `controller`) runs them on the clock and turns their decisions into processes.

pub mod clock;
pub mod controller;
pub mod hpa;
pub mod keda;
pub mod replicas;
pub mod spec;

pub use clock::rfc3339;
pub use controller::ScalingStatus;

use std::fmt;

use serde::Serialize;

/// Which control loop made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Keda,
    Hpa,
}

/// A change of the Deployment's replica count, with its inputs and its rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub by: By,
    pub from: u32,
    pub to: u32,
    /// The metric the decision was made on (the queue length KEDA reads).
    pub metric: u64,
    /// The rule, in words, e.g. `metric 50 > activation 0` or
    /// `proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4`.
    pub reason: String,
    /// HPA only: the replica count the metric calls for, before stabilisation and limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<u32>,
    /// HPA only: the proposal after the stabilisation window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<u32>,
    /// HPA only: the rate limit in force (the legacy cap, or the behavior policies' limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The log line: `keda: metric 50 > activation 0, scaling consumer 0 -> 1`.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = match self.by {
            By::Keda => "keda",
            By::Hpa => "hpa",
        };
        write!(
            f,
            "{by}: {}, scaling consumer {} -> {}",
            self.reason, self.from, self.to
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::{hpa::Hpa, keda::Keda, spec::ScalingSpec, *};

    /// Both loops on one clock, as the runtime runs them: KEDA every pollingInterval, the HPA
    /// every 15 s, both from 0 (the HPA first when they coincide), each change applied at once.
    fn simulate(
        spec: &ScalingSpec,
        until: u64,
        metric: impl Fn(u64) -> u64,
    ) -> Vec<(u64, By, u32, u32)> {
        let mut keda = Keda::new(spec);
        let mut hpa = Hpa::new(spec);
        let mut replicas = 0;
        let mut changes = Vec::new();
        let polling = spec.polling_interval.as_secs();
        let sync = spec::HPA_SYNC_PERIOD.as_secs();
        for t in 0..=until {
            let now = Duration::from_secs(t);
            let mut decisions = Vec::new();
            if t % sync == 0 {
                decisions.extend(hpa.sync(now, metric(t), replicas));
                if let Some(d) = decisions.last() {
                    replicas = d.to;
                }
            }
            if t % polling == 0 {
                decisions.extend(keda.poll(now, metric(t), replicas));
                if let Some(d) = decisions.last() {
                    replicas = d.to;
                }
            }
            for d in decisions {
                changes.push((t, d.by, d.from, d.to));
            }
        }
        changes
    }

    fn committed() -> ScalingSpec {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/consumer-scaling.yaml");
        ScalingSpec::load(&path).expect("the committed ScaledObject loads")
    }

    #[test]
    fn the_committed_scaled_object_takes_50_messages_0_1_10_and_back_to_0() {
        // 50 messages wait for a minute, then the queue is empty.
        let changes = simulate(&committed(), 400, |t| if t < 60 { 50 } else { 0 });
        assert_eq!(
            changes,
            vec![
                (0, By::Keda, 0, 1),
                // Its scaleUp policy (10 pods per 15 s) lets the first sync take all 10.
                (15, By::Hpa, 1, 10),
                // Last active poll at 58 s; the first poll after 58 + 60 = 118 is at 120. KEDA
                // takes all 10 to 0 at once, long before the HPA's 300 s window would have let go.
                (120, By::Keda, 10, 0),
            ]
        );
    }

    #[test]
    fn without_its_behavior_the_committed_scaled_object_takes_the_legacy_path_0_1_4_8_10() {
        let mut spec = committed();
        assert!(spec.behavior.is_some());
        // What a copy of the file without `advanced` loads as.
        spec.behavior = None;
        let changes = simulate(&spec, 400, |t| if t < 60 { 50 } else { 0 });
        assert_eq!(
            changes,
            vec![
                (0, By::Keda, 0, 1),
                (15, By::Hpa, 1, 4),
                (30, By::Hpa, 4, 8),
                (45, By::Hpa, 8, 10),
                (120, By::Keda, 10, 0),
            ]
        );
    }

    #[test]
    fn decisions_serialise_for_the_status_with_hpa_fields_only_when_set() {
        let keda = Decision {
            by: By::Keda,
            from: 0,
            to: 1,
            metric: 50,
            reason: "metric 50 > activation 0".into(),
            proposal: None,
            recommendation: None,
            limit: None,
        };
        assert_eq!(
            serde_json::to_value(&keda).expect("serialises"),
            serde_json::json!({
                "by": "keda", "from": 0, "to": 1, "metric": 50,
                "reason": "metric 50 > activation 0",
            })
        );
        let hpa = Decision {
            by: By::Hpa,
            proposal: Some(10),
            recommendation: Some(10),
            limit: Some(4),
            to: 4,
            from: 1,
            reason: "proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4".into(),
            ..keda
        };
        assert_eq!(
            serde_json::to_value(&hpa).expect("serialises"),
            serde_json::json!({
                "by": "hpa", "from": 1, "to": 4, "metric": 50,
                "reason": "proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4",
                "proposal": 10, "recommendation": 10, "limit": 4,
            })
        );
    }
}

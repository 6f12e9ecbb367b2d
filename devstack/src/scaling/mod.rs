//! `devstack --autoscale`: the consumers run as the replicas of a Deployment that KEDA and the
//! HPA scale, from the ScaledObject that `kubectl apply -k deploy/base` applies; and `devstack
//! plan`, the same decisions in simulated time.
//!
//! The rules (`spec` with its `trigger`, `keda`, `hpa`, and the `decision` they return) are pure:
//! they take the cluster time (time since the controller started, in the ScaledObject's own units,
//! before `--time-scale`), the metric and the Deployment's replica count, and return the change to
//! make. `hpa` and `keda` run Kubernetes' and KEDA's own test cases (`upstream/`, as data).
//! `autoscaler` runs both loops on one clock. The runtime (`replicas`, `controller`) runs it on the
//! `clock` against the sidecar's queue, turns its decisions into processes, restarted as the kubelet
//! restarts a container (`crashloop`), and publishes its state to the sidecar's status (`status`);
//! `plan` runs it over simulated pods and a simulated queue. `chart` draws a queue and its replicas
//! over time.

pub mod autoscaler;
pub mod chart;
pub mod clock;
pub mod controller;
pub mod crashloop;
pub mod decision;
pub mod hpa;
pub mod keda;
pub mod plan;
pub mod replicas;
pub mod spec;
pub mod status;
pub mod trigger;
mod yaml;

pub use clock::rfc3339;
pub use status::ScalingStatus;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{autoscaler::Autoscaler, decision::By, spec::ScalingSpec};

    /// Both loops on one clock, as the runtime runs them, the HPA's first sync at 0, each change
    /// applied at once.
    fn simulate(
        spec: &ScalingSpec,
        until: u64,
        metric: impl Fn(u64) -> u64,
    ) -> Vec<(u64, By, u32, u32)> {
        let mut autoscaler = Autoscaler::new(spec, Duration::ZERO);
        let mut changes = Vec::new();
        while autoscaler.next().0 <= Duration::from_secs(until) {
            let at = autoscaler.next().0;
            let (at, decision) = autoscaler.run_due(metric(at.as_secs()), at);
            if let Some(d) = decision {
                changes.push((at.as_secs(), d.by, d.from, d.to));
            }
        }
        changes
    }

    fn committed() -> ScalingSpec {
        ScalingSpec::committed().expect("the committed ScaledObject loads")
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
}

//! `devstack --autoscale`: the consumers run as the replicas of a Deployment that KEDA and the
//! HPA scale, from the ScaledObject that `kubectl apply -k deploy/base` applies.
//!
//! The rules (`spec` with its `trigger`, `keda`, `hpa`, and the `decision` they return) are pure: they take the
//! cluster time (time since the controller started, in the ScaledObject's own units, before
//! `--time-scale`), the metric and the Deployment's replica count, and return the change to make.
//! The runtime (`replicas`, `controller`) runs them on the `clock` and turns their decisions into
//! processes, restarted as the kubelet restarts a container (`crashloop`), and publishes its
//! state to the sidecar's status (`status`).

pub mod clock;
pub mod controller;
pub mod crashloop;
pub mod decision;
pub mod hpa;
pub mod keda;
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

    use super::{decision::By, hpa::HPA_SYNC_PERIOD, keda::Keda, spec::ScalingSpec};

    /// Both loops on one clock, as the runtime runs them: KEDA every pollingInterval, the HPA
    /// every 15 s, both from 0 (the HPA first when they coincide), each change applied at once.
    fn simulate(
        spec: &ScalingSpec,
        until: u64,
        metric: impl Fn(u64) -> u64,
    ) -> Vec<(u64, By, u32, u32)> {
        let mut keda = Keda::new(spec);
        let mut hpa = spec.hpa();
        let mut replicas = 0;
        let mut changes = Vec::new();
        let polling = spec.polling_interval.as_secs();
        let sync = HPA_SYNC_PERIOD.as_secs();
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

//! KEDA's own loop (kedacore/keda `pkg/scaling/executor/scale_scaledobjects.go`): 0 <-> 1 and the
//! jump back to 0 after the cooldown.
//!
//! Each rule follows KEDA v2.18's `RequestScale`, `scaleFromZeroOrIdle` and `scaleToZeroOrIdle`,
//! for a ScaledObject without `idleReplicaCount`, pause annotations or fallback (`spec` refuses
//! the first two; the stand-in's metric never fails, so the fallback never applies).

use std::time::Duration;

use super::{
    clock::{next_tick, secs},
    decision::{By, Decision},
    spec::ScalingSpec,
};

/// KEDA's state for one ScaledObject. Times are cluster time since the controller started.
#[derive(Debug)]
pub struct Keda {
    spec: ScalingSpec,
    /// The last poll's verdict (the ScaledObject's `Active` condition).
    active: bool,
    /// `status.lastActiveTime`: nil on a new ScaledObject, set by a scale from zero and by every
    /// active poll with replicas (scale_scaledobjects.go: updateLastActiveTime).
    last_active_time: Option<Duration>,
}

impl Keda {
    pub fn new(spec: &ScalingSpec) -> Self {
        Self {
            spec: spec.clone(),
            active: false,
            last_active_time: None,
        }
    }

    /// The poll after the one due `at`: KEDA polls when the ScaledObject is created, then every
    /// pollingInterval; polls already missed at `now` are skipped.
    pub fn next_poll(&self, at: Duration, now: Duration) -> Duration {
        next_tick(at, self.spec.polling_interval, now)
    }

    /// One poll at `now` with the queue's `metric` and the Deployment's `replicas`: the change
    /// to make, if any.
    pub fn poll(&mut self, now: Duration, metric: u64, replicas: u32) -> Option<Decision> {
        let activation = self.spec.trigger.activation;
        // The scalers' GetMetricsAndActivity: `queuelen > ActivationTargetLength`
        // (azure_servicebus_scaler.go), `float64(messages) > ActivationValue` (rabbitmq_scaler.go),
        // strictly greater; scale_handler.go: getScaledObjectState ORs the triggers' verdicts.
        self.active = metric as f64 > activation;
        let min = self.spec.min_replica_count;
        let decision = |to: u32, reason: String| Decision {
            by: By::Keda,
            from: replicas,
            to,
            metric,
            reason,
            proposal: None,
            recommendation: None,
            limit: None,
        };

        if self.active {
            if replicas == 0 {
                // scaleFromZeroOrIdle: minReplicaCount when above 0, else 1; a successful scale
                // also sets lastActiveTime.
                let to = min.max(1);
                self.last_active_time = Some(now);
                return Some(decision(
                    to,
                    format!("metric {metric} > activation {activation}"),
                ));
            }
            // Active with replicas: only lastActiveTime moves; the HPA owns 1 <-> N, including
            // raising replicas below minReplicaCount to it.
            self.last_active_time = Some(now);
            return None;
        }

        if replicas > 0 && min == 0 {
            // scaleToZeroOrIdle: `LastActiveTime.Add(cooldownPeriod).Before(now)`, or with no
            // LastActiveTime `CreationTimestamp.Add(initialCooldownPeriod).Before(now)`: strictly
            // after, then straight to minReplicaCount (0) in one step.
            let ends = self.cooldown_end();
            if now <= ends {
                return None;
            }
            let why = match self.last_active_time {
                Some(last) => format!(
                    "last active at {}, cooldownPeriod {} over",
                    secs(last),
                    secs(self.spec.cooldown_period)
                ),
                None => format!(
                    "never active, initialCooldownPeriod {} over",
                    secs(self.spec.initial_cooldown_period)
                ),
            };
            return Some(decision(
                0,
                format!("metric {metric} <= activation {activation}, {why}"),
            ));
        }

        if replicas < min {
            // RequestScale, inactive with fewer replicas than minReplicaCount (and no
            // idleReplicaCount): set to minReplicaCount, no cooldown.
            return Some(decision(
                min,
                format!(
                    "metric {metric} <= activation {activation}, replicas {replicas} below minReplicaCount {min}"
                ),
            ));
        }
        // Inactive and nothing to do (at 0 already, or minReplicaCount > 0: the HPA scales down).
        None
    }

    /// Whether the last poll found the metric above the activation value.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The last poll that found the trigger active.
    pub fn last_active_time(&self) -> Option<Duration> {
        self.last_active_time
    }

    /// When an inactive trigger may take the replicas to 0 (lastActiveTime + cooldownPeriod, or
    /// start + initialCooldownPeriod when never active); `None` when that does not apply.
    ///
    /// It does not apply while the trigger is active, nor with minReplicaCount above 0 (KEDA
    /// never scales to 0 then). The scale to 0 happens at the first poll strictly after this time,
    /// if there are replicas then; the time is given whatever the count, as KEDA's own
    /// `lastActiveTime` is.
    pub fn cooldown_ends(&self) -> Option<Duration> {
        if self.active || self.spec.min_replica_count > 0 {
            return None;
        }
        Some(self.cooldown_end())
    }

    fn cooldown_end(&self) -> Duration {
        match self.last_active_time {
            Some(last) => last + self.spec.cooldown_period,
            // The controller's start stands for the ScaledObject's creationTimestamp.
            None => self.spec.initial_cooldown_period,
        }
    }
}

#[cfg(test)]
mod upstream;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::trigger::{Trigger, TriggerKind};

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// The committed ScaledObject's numbers: 0..10, polls every 10 s, cooldown 60 s.
    fn spec(min: u32, activation: f64, initial_cooldown: u64) -> ScalingSpec {
        ScalingSpec {
            name: "consumer".into(),
            target: "consumer".into(),
            min_replica_count: min,
            max_replica_count: 10,
            polling_interval: s(10),
            cooldown_period: s(60),
            initial_cooldown_period: s(initial_cooldown),
            trigger: Trigger {
                kind: TriggerKind::AzureServicebus,
                queue_name: "msgqueue".into(),
                target: 5.0,
                activation,
            },
            behavior: None,
            termination_grace_period: s(30),
        }
    }

    #[test]
    fn active_at_zero_replicas_scales_to_one_and_logs_the_rule() {
        let mut keda = Keda::new(&spec(0, 0.0, 0));
        let decision = keda.poll(s(0), 50, 0).expect("scales from zero");
        assert_eq!((decision.from, decision.to, decision.by), (0, 1, By::Keda));
        assert_eq!(
            decision.to_string(),
            "keda: metric 50 > activation 0, scaling consumer 0 -> 1"
        );
        assert!(keda.active());
        assert_eq!(keda.last_active_time(), Some(s(0)));
        assert_eq!(keda.cooldown_ends(), None, "no cooldown while active");
    }

    #[test]
    fn polls_come_every_polling_interval() {
        let keda = Keda::new(&spec(0, 0.0, 0));
        assert_eq!(keda.next_poll(s(0), s(0)), s(10));
        assert_eq!(keda.next_poll(s(10), s(35)), s(40));
    }

    #[test]
    fn activation_is_strictly_greater_than_the_threshold() {
        let mut keda = Keda::new(&spec(0, 5.0, 0));
        assert_eq!(keda.poll(s(0), 5, 0), None, "5 is not > 5");
        assert!(!keda.active());
        assert_eq!(keda.last_active_time(), None);
        let decision = keda.poll(s(10), 6, 0).expect("6 > 5");
        assert_eq!(decision.reason, "metric 6 > activation 5");
        assert_eq!(decision.to, 1);
    }

    #[test]
    fn from_zero_goes_to_min_replica_count_when_above_zero() {
        let mut keda = Keda::new(&spec(3, 0.0, 0));
        assert_eq!(keda.poll(s(0), 1, 0).map(|d| d.to), Some(3));
    }

    #[test]
    fn active_with_replicas_only_refreshes_last_active_time() {
        let mut keda = Keda::new(&spec(0, 0.0, 0));
        keda.poll(s(0), 50, 0);
        assert_eq!(keda.poll(s(10), 50, 4), None);
        assert_eq!(keda.poll(s(20), 1, 8), None);
        assert_eq!(keda.last_active_time(), Some(s(20)));
    }

    #[test]
    fn cooldown_runs_from_the_last_active_poll_and_then_goes_to_zero_in_one_step() {
        let mut keda = Keda::new(&spec(0, 0.0, 0));
        keda.poll(s(0), 50, 0);
        keda.poll(s(10), 30, 10);
        keda.poll(s(20), 1, 10); // the last active poll
        for t in [30, 40, 50, 60, 70, 80] {
            assert_eq!(keda.poll(s(t), 0, 10), None, "still cooling down at {t}s");
            assert_eq!(keda.cooldown_ends(), Some(s(80)));
        }
        // lastActiveTime + cooldownPeriod must be *before* now: 80 is not, 90 is.
        let decision = keda.poll(s(90), 0, 10).expect("cooldown over");
        assert_eq!((decision.from, decision.to), (10, 0), "straight to 0");
        assert_eq!(
            decision.to_string(),
            "keda: metric 0 <= activation 0, last active at 20s, cooldownPeriod 60s over, scaling consumer 10 -> 0"
        );
        assert_eq!(keda.poll(s(100), 0, 0), None, "at 0 there is nothing to do");
    }

    #[test]
    fn an_active_poll_during_the_cooldown_restarts_it() {
        let mut keda = Keda::new(&spec(0, 0.0, 0));
        keda.poll(s(0), 5, 0);
        keda.poll(s(10), 0, 1);
        keda.poll(s(50), 1, 1);
        assert_eq!(keda.poll(s(100), 0, 1), None);
        assert_eq!(keda.cooldown_ends(), Some(s(110)));
        assert_eq!(keda.poll(s(120), 0, 1).map(|d| d.to), Some(0));
    }

    #[test]
    fn never_active_replicas_wait_for_the_initial_cooldown() {
        let mut keda = Keda::new(&spec(0, 0.0, 120));
        assert_eq!(keda.cooldown_ends(), Some(s(120)));
        for t in (0..=120).step_by(10) {
            assert_eq!(keda.poll(s(t), 0, 3), None, "initial cooldown at {t}s");
        }
        let decision = keda.poll(s(130), 0, 3).expect("initial cooldown over");
        assert_eq!((decision.from, decision.to), (3, 0));
        assert_eq!(
            decision.reason,
            "metric 0 <= activation 0, never active, initialCooldownPeriod 120s over"
        );
    }

    #[test]
    fn without_an_initial_cooldown_the_first_poll_after_start_scales_to_zero() {
        let mut keda = Keda::new(&spec(0, 0.0, 0));
        // creationTimestamp + 0 is not before a poll at the same instant.
        assert_eq!(keda.poll(s(0), 0, 2), None);
        assert_eq!(keda.poll(s(10), 0, 2).map(|d| d.to), Some(0));
    }

    #[test]
    fn inactive_below_min_replica_count_is_raised_to_it_and_never_to_zero() {
        let mut keda = Keda::new(&spec(2, 0.0, 0));
        let decision = keda.poll(s(0), 0, 0).expect("raised to the minimum");
        assert_eq!((decision.from, decision.to), (0, 2));
        assert_eq!(
            decision.reason,
            "metric 0 <= activation 0, replicas 0 below minReplicaCount 2"
        );
        assert_eq!(
            keda.poll(s(1000), 0, 5),
            None,
            "the HPA scales down, not KEDA"
        );
        assert_eq!(keda.cooldown_ends(), None);
    }
}

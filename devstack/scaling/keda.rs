//! KEDA's own loop (kedacore/keda `pkg/scaling/executor/scale_scaledobjects.go`): 0 <-> 1 and the
//! jump back to 0 after the cooldown.

use std::time::Duration;

use super::{Decision, spec::ScalingSpec};

/// KEDA's state for one ScaledObject. Times are cluster time since the controller started.
#[derive(Debug)]
pub struct Keda {
    _spec: ScalingSpec,
}

impl Keda {
    pub fn new(spec: &ScalingSpec) -> Self {
        Self {
            _spec: spec.clone(),
        }
    }

    /// One poll at `now` with the queue's `metric` and the Deployment's `replicas`: the change
    /// to make, if any.
    pub fn poll(&mut self, now: Duration, metric: u64, replicas: u32) -> Option<Decision> {
        let _ = (now, metric, replicas);
        todo!("scaling rules")
    }

    /// Whether the last poll found the metric above the activation value.
    pub fn active(&self) -> bool {
        todo!("scaling rules")
    }

    /// The last poll that found the trigger active.
    pub fn last_active_time(&self) -> Option<Duration> {
        todo!("scaling rules")
    }

    /// When an inactive trigger may take the replicas to 0 (lastActiveTime + cooldownPeriod, or
    /// start + initialCooldownPeriod when never active); `None` when that does not apply.
    pub fn cooldown_ends(&self) -> Option<Duration> {
        todo!("scaling rules")
    }
}

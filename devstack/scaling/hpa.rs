//! The HPA controller's loop for the one external metric KEDA serves (kubernetes
//! `pkg/controller/podautoscaler/horizontal.go`, `replica_calculator.go`): 1 <-> N.

use std::time::Duration;

use super::{Decision, spec::ScalingSpec};

/// The HPA's state: its recommendations and scale events. Times are cluster time.
#[derive(Debug)]
pub struct Hpa {
    _spec: ScalingSpec,
}

impl Hpa {
    pub fn new(spec: &ScalingSpec) -> Self {
        Self {
            _spec: spec.clone(),
        }
    }

    /// One sync at `now` with the `metric` and the Deployment's `replicas`: the change to make,
    /// if any. Does nothing at 0 replicas.
    pub fn sync(&mut self, now: Duration, metric: u64, replicas: u32) -> Option<Decision> {
        let _ = (now, metric, replicas);
        todo!("scaling rules")
    }
}

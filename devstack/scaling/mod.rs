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

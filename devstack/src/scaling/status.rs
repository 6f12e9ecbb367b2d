//! The `scaling` object of `GET /devstack/status`. The sidecar's status holds it; the scaling
//! runtime publishes it.

use std::collections::VecDeque;

use serde::Serialize;

use super::{decision::Decision, spec::ScalingSpec};
use crate::{
    registry::ReplicaState,
    status::{CountedScaling, ReplicaCounts, ScalingReport},
};

/// How many scaling events the status keeps.
pub const EVENTS_KEPT: usize = 256;

/// The `scaling` object of `GET /devstack/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    pub settings: ScalingSettings,
    /// The Deployment's spec.replicas, as KEDA and the HPA last set it.
    pub replicas: u32,
    pub ready: u32,
    pub starting: u32,
    pub terminating: u32,
    /// Restarting after their process exited, or waiting out a CrashLoopBackOff: not ready.
    pub restarting: u32,
    /// The last metric either loop read.
    pub metric: Option<u64>,
    pub active: bool,
    pub last_active_time: Option<String>,
    pub cooldown_ends_at: Option<String>,
    /// Every change, oldest first; the last [`EVENTS_KEPT`].
    pub events: VecDeque<ScalingEvent>,
    /// Replicas the sidecar does not know yet, counted in by [`counted`](Self::counted).
    #[serde(skip)]
    pub unregistered: Unregistered,
}

impl ScalingStatus {
    /// With the replica counts, from the states of the consumers the sidecar knows.
    pub fn counted(mut self, states: impl Iterator<Item = ReplicaState>) -> Self {
        self.ready = 0;
        self.starting = self.unregistered.starting;
        self.terminating = self.unregistered.terminating;
        self.restarting = self.unregistered.restarting;
        for state in states {
            match state {
                ReplicaState::Ready => self.ready += 1,
                ReplicaState::Starting => self.starting += 1,
                ReplicaState::Terminating => self.terminating += 1,
                ReplicaState::Restarting | ReplicaState::Crashloop => self.restarting += 1,
            }
        }
        self
    }
}

/// The status counts the replicas at each read, so they agree with the consumers it lists.
impl ScalingReport for ScalingStatus {
    fn counted(&self, states: &[ReplicaState]) -> CountedScaling {
        let counted = self.clone().counted(states.iter().copied());
        CountedScaling {
            replicas: ReplicaCounts {
                desired: counted.replicas,
                ready: counted.ready,
                starting: counted.starting,
                terminating: counted.terminating,
                restarting: counted.restarting,
            },
            metric: counted.metric,
            // Strings, numbers and maps with string keys: it always serializes.
            json: serde_json::value::to_raw_value(&counted).expect("the scaling status serializes"),
        }
    }
}

/// The scaling settings in force: the ScaledObject's (real seconds, before the time scale), the
/// factor, the HPA's sync period, and when cluster time started and the HPA first synced, by which
/// a decision's `clusterTime` can be set beside `devstack plan`'s.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSettings {
    #[serde(flatten)]
    pub spec: ScalingSpec,
    pub time_scale: f64,
    pub hpa_sync_period: f64,
    /// The wall-clock time of cluster time 0, the controller's start (RFC 3339).
    pub started_at: String,
    /// The HPA's phase: its first sync, in cluster seconds (random within a sync period).
    pub hpa_first_sync: f64,
}

/// One change of the replica count, when it was made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingEvent {
    /// Wall-clock time (RFC 3339).
    pub at: String,
    /// Cluster seconds since the controller started, as `devstack plan` gives its decisions.
    pub cluster_time: f64,
    #[serde(flatten)]
    pub decision: Decision,
}

/// Replicas not yet known to the sidecar (no address yet), by state: the status counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unregistered {
    pub starting: u32,
    pub terminating: u32,
    /// Exited before they were first known, and waiting for their restart.
    pub restarting: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_add_the_ones_the_sidecar_does_not_know_yet() {
        let status = ScalingStatus {
            settings: ScalingSettings {
                spec: ScalingSpec::committed().expect("the committed one"),
                time_scale: 1.0,
                hpa_sync_period: 15.0,
                started_at: "2026-12-06T10:00:00.000Z".into(),
                hpa_first_sync: 7.5,
            },
            replicas: 5,
            ready: 9,
            starting: 9,
            terminating: 9,
            restarting: 9,
            metric: None,
            active: false,
            last_active_time: None,
            cooldown_ends_at: None,
            events: VecDeque::new(),
            unregistered: Unregistered {
                starting: 2,
                terminating: 1,
                restarting: 0,
            },
        };
        let states = [
            ReplicaState::Ready,
            ReplicaState::Ready,
            ReplicaState::Starting,
            ReplicaState::Terminating,
            ReplicaState::Crashloop,
            ReplicaState::Restarting,
        ];
        let counted = status.counted(states.into_iter());
        assert_eq!(
            (
                counted.ready,
                counted.starting,
                counted.terminating,
                counted.restarting
            ),
            (2, 3, 2, 2)
        );
        let json = serde_json::to_value(&counted).unwrap();
        assert!(json.get("unregistered").is_none(), "{json}");
        assert_eq!(json["settings"]["timeScale"], 1.0);
        assert_eq!(json["settings"]["cooldownPeriod"], 60.0);
        assert_eq!(json["lastActiveTime"], serde_json::Value::Null);
    }
}

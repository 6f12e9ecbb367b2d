//! What devstack reads from a ScaledObject (and the Deployment it scales), with KEDA's and
//! Kubernetes' defaults for what is absent. Anything it cannot honour is an error naming the field.

use std::{path::Path, time::Duration};

use serde::Serialize;

/// The HPA controller's sync period (kube-controller-manager `--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC_PERIOD: Duration = Duration::from_secs(15);

/// A ScaledObject's scaling settings, as KEDA and the HPA it creates apply them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// `metadata.name` of the ScaledObject.
    pub name: String,
    /// `spec.scaleTargetRef.name`: the Deployment scaled.
    pub target: String,
    pub min_replica_count: u32,
    pub max_replica_count: u32,
    #[serde(serialize_with = "seconds")]
    pub polling_interval: Duration,
    #[serde(serialize_with = "seconds")]
    pub cooldown_period: Duration,
    #[serde(serialize_with = "seconds")]
    pub initial_cooldown_period: Duration,
    pub trigger: Trigger,
    /// `advanced.horizontalPodAutoscalerConfig.behavior`, Kubernetes' defaults filled in for
    /// missing fields; `None` (the legacy path) when absent.
    pub behavior: Option<Behavior>,
    /// From the target Deployment's pod template (30 s when absent).
    #[serde(serialize_with = "seconds")]
    pub termination_grace_period: Duration,
}

/// The one trigger devstack honours.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: TriggerKind,
    pub queue_name: String,
    /// `messageCount` (azure-servicebus) or `value` (rabbitmq): the HPA's AverageValue target.
    pub target: f64,
    /// `activationMessageCount` or `activationValue`: active when the metric is greater.
    pub activation: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    /// Active messages, locked ones included; dead-lettered ones not.
    AzureServicebus,
    /// Ready + unacknowledged, or ready only with `excludeUnacknowledged`.
    Rabbitmq { exclude_unacknowledged: bool },
}

/// An HPA `behavior`, with Kubernetes' defaults for missing fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
}

/// `HPAScalingRules`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    #[serde(serialize_with = "seconds")]
    pub stabilization_window: Duration,
    pub select_policy: SelectPolicy,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

/// `HPAScalingPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(rename = "type")]
    pub kind: PolicyKind,
    pub value: u32,
    #[serde(serialize_with = "seconds")]
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PolicyKind {
    Pods,
    Percent,
}

impl ScalingSpec {
    /// Reads the ScaledObject at `path` (a YAML file, possibly with other documents) and the
    /// Deployment it scales from the YAML files in the same directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let _ = path;
        todo!("scaling rules")
    }
}

fn seconds<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

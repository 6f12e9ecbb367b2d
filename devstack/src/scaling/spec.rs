//! What devstack reads from a ScaledObject (and the Deployment it scales), with KEDA's and
//! Kubernetes' defaults for what is absent. Anything it cannot honour is an error naming the field.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

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

/// A pod's `terminationGracePeriodSeconds` when its template sets none (Kubernetes'
/// `DefaultTerminationGracePeriodSeconds`).
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(30);

// KEDA v2.18's defaults for an absent field: `pollingInterval` (apis/keda/v1alpha1/
// withtriggers_types.go: defaultPollingInterval), `cooldownPeriod` and `initialCooldownPeriod`
// (pkg/scaling/executor/scale_executor.go: defaultCooldownPeriod, defaultInitialCooldownPeriod),
// `minReplicaCount` (scale_scaledobjects.go: RequestScale, "set the default value (0)") and
// `maxReplicaCount` (scaledobject_types.go: defaultHPAMaxReplicas).
const DEFAULT_POLLING_INTERVAL: i64 = 30;
const DEFAULT_COOLDOWN_PERIOD: i64 = 300;
const DEFAULT_INITIAL_COOLDOWN_PERIOD: i64 = 0;
const DEFAULT_MIN_REPLICA_COUNT: i64 = 0;
const DEFAULT_MAX_REPLICA_COUNT: i64 = 100;
// pkg/scalers/azure_servicebus_scaler.go: defaultTargetMessageCount.
const DEFAULT_SERVICEBUS_MESSAGE_COUNT: i64 = 5;
// pkg/scalers/rabbitmq_scaler.go: defaultRabbitMQQueueLength.
const DEFAULT_RABBITMQ_QUEUE_LENGTH: f64 = 20.0;
// kubernetes pkg/apis/autoscaling/validation: MaxStabilizationWindowSeconds, MaxPeriodSeconds.
const MAX_STABILIZATION_WINDOW_SECONDS: i64 = 3600;
const MAX_PERIOD_SECONDS: i64 = 1800;

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
    /// `tolerance`, honoured as Kubernetes 1.35 does (feature gate HPAConfigurableTolerance, beta
    /// and on by default there); `None`: the controller's [`HPA_TOLERANCE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
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
    ///
    /// The Deployment is optional: a ScaledObject on its own (say, copied out to be tuned) runs
    /// with Kubernetes' default grace period of 30 s, as its pods would if the Deployment's
    /// template set none. A Deployment that is there but unreadable, or found twice, is an error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let docs = read_documents(path)?;
        let mut found = None;
        for doc in &docs {
            if doc.get("kind").and_then(Value::as_str) != Some("ScaledObject") {
                continue;
            }
            if found.is_some() {
                return Err(anyhow!(
                    "{}: holds several ScaledObjects; devstack runs one, give it a file with exactly one",
                    path.display()
                ));
            }
            found = Some(doc);
        }
        let Some(doc) = found else {
            return Err(anyhow!(
                "{}: no ScaledObject (kind: ScaledObject, apiVersion: keda.sh/v1alpha1) in this file",
                path.display()
            ));
        };
        let root = Field::root(path, doc);
        let mut spec = parse_scaled_object(&root)?;
        spec.termination_grace_period = grace_period_of(path, &spec.target)?;
        Ok(spec)
    }
}

/// The YAML documents of a file; empty documents (a trailing `---`) left out.
fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the file", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .map_err(|e| anyhow!("{}: malformed YAML: {e}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A value in a YAML document and its field path, for errors that name both file and field.
struct Field<'a> {
    file: &'a Path,
    path: String,
    value: &'a Value,
}

impl<'a> Field<'a> {
    /// A document's root. The ScaledObject is the only one of its file and a Deployment is found
    /// by name, so the field path alone says where.
    fn root(file: &'a Path, value: &'a Value) -> Self {
        Self {
            file,
            path: String::new(),
            value,
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> anyhow::Error {
        if self.path.is_empty() {
            anyhow!("{}: {message}", self.file.display())
        } else {
            anyhow!("{}: {}: {message}", self.file.display(), self.path)
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn mapping(&self) -> anyhow::Result<&'a Mapping> {
        match self.value {
            Value::Mapping(m) => Ok(m),
            other => Err(self.error(format!("must be a mapping, not {}", describe(other)))),
        }
    }

    /// The field `key` of this mapping; `None` when absent or null (Kubernetes drops null fields).
    fn get(&self, key: &str) -> anyhow::Result<Option<Field<'a>>> {
        let map = self.mapping()?;
        Ok(map.get(key).filter(|v| !v.is_null()).map(|value| Field {
            file: self.file,
            path: self.child_path(key),
            value,
        }))
    }

    /// The field `key` where it is missing, for an error that names it.
    fn absent(&self, key: &str) -> Field<'a> {
        Field {
            file: self.file,
            path: self.child_path(key),
            value: &Value::Null,
        }
    }

    fn require(&self, key: &str) -> anyhow::Result<Field<'a>> {
        self.get(key)?
            .ok_or_else(|| self.absent(key).error("is required"))
    }

    /// Rejects keys outside `known`: kubectl refuses unknown fields (strict field validation),
    /// and a misspelt setting silently left at its default is what this module exists to avoid.
    fn only(&self, known: &[&str]) -> anyhow::Result<()> {
        for key in self.mapping()?.keys() {
            let name = key.as_str().unwrap_or_default();
            if !known.contains(&name) {
                return Err(self
                    .absent(&yaml_key(key))
                    .error(format!("unknown field (known here: {})", known.join(", "))));
            }
        }
        Ok(())
    }

    fn str(&self) -> anyhow::Result<&'a str> {
        match self.value {
            Value::String(s) => Ok(s),
            other => Err(self.error(format!("must be a string, not {}", describe(other)))),
        }
    }

    /// An `int32` field (every count and period of a ScaledObject and an HPA behavior).
    fn int(&self) -> anyhow::Result<i64> {
        match self.value {
            Value::Number(n) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Ok(i),
                Some(i) => Err(self.error(format!("{i} does not fit in an int32"))),
                None => Err(self.error(format!("{n} is not a whole number"))),
            },
            other => Err(self.error(format!("must be a whole number, not {}", describe(other)))),
        }
    }

    fn int_in(&self, min: i64, max: i64, rule: &str) -> anyhow::Result<i64> {
        let n = self.int()?;
        if n < min || n > max {
            return Err(self.error(format!("{n} {rule}")));
        }
        Ok(n)
    }

    fn sequence(&self) -> anyhow::Result<&'a [Value]> {
        match self.value {
            Value::Sequence(s) => Ok(s),
            other => Err(self.error(format!("must be a list, not {}", describe(other)))),
        }
    }

    fn index(&self, i: usize, value: &'a Value) -> Field<'a> {
        Field {
            file: self.file,
            path: format!("{}[{i}]", self.path),
            value,
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn yaml_key(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => describe(other),
    }
}

fn seconds_of(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

fn parse_scaled_object(root: &Field<'_>) -> anyhow::Result<ScalingSpec> {
    let api_version = root.require("apiVersion")?;
    if api_version.str()? != "keda.sh/v1alpha1" {
        return Err(api_version.error(format!(
            "{:?} is not keda.sh/v1alpha1, the ScaledObject version KEDA v2 serves",
            api_version.str()?
        )));
    }
    let metadata = root.require("metadata")?;
    let name = metadata.require("name")?.str()?.to_owned();
    check_annotations(&metadata)?;

    let spec = root.require("spec")?;
    spec.only(&[
        "scaleTargetRef",
        "pollingInterval",
        "initialCooldownPeriod",
        "cooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "advanced",
        "triggers",
        "fallback",
    ])?;

    // A kustomize patch (an overlay's scaling.yaml) has no scaleTargetRef: say what is wanted.
    let target_ref = spec.get("scaleTargetRef")?.ok_or_else(|| {
        spec.absent("scaleTargetRef").error(
            "is required (devstack reads a whole ScaledObject, not a kustomize patch of one)",
        )
    })?;
    target_ref.only(&["name", "apiVersion", "kind", "envSourceContainerName"])?;
    let target = target_ref.require("name")?.str()?.to_owned();
    // KEDA scales any resource with a scale subresource; devstack runs a Deployment's pods, and a
    // StatefulSet, say, picks its victims differently.
    if let Some(kind) = target_ref.get("kind")?
        && kind.str()? != "Deployment"
    {
        return Err(kind.error(format!(
            "{:?}: devstack runs the replicas of a Deployment only",
            kind.str()?
        )));
    }
    if let Some(api) = target_ref.get("apiVersion")?
        && api.str()? != "apps/v1"
    {
        return Err(api.error(format!("{:?}: a Deployment is apps/v1", api.str()?)));
    }

    // idleReplicaCount changes what "inactive" scales to (scale_scaledobjects.go:
    // getIdleOrMinimumReplicaCount); devstack follows the plain 0 <-> N path only.
    if let Some(idle) = spec.get("idleReplicaCount")? {
        return Err(idle.error("is not supported by devstack (it follows minReplicaCount only)"));
    }

    let min = match spec.get("minReplicaCount")? {
        Some(f) => f.int_in(0, i64::from(i32::MAX), "must be 0 or more")?,
        None => DEFAULT_MIN_REPLICA_COUNT,
    };
    let max_field = spec.get("maxReplicaCount")?;
    let max = match &max_field {
        Some(f) => f.int_in(
            1,
            i64::from(i32::MAX),
            "must be 1 or more (the HPA's maxReplicas)",
        )?,
        None => DEFAULT_MAX_REPLICA_COUNT,
    };
    // scaledobject_types.go: CheckReplicaCountBoundsAreValid.
    if min > max {
        let at = max_field.unwrap_or_else(|| spec.absent("maxReplicaCount"));
        return Err(at.error(format!("{max} is less than minReplicaCount {min}")));
    }
    let polling = match spec.get("pollingInterval")? {
        Some(f) => f.int_in(1, i64::from(i32::MAX), "must be 1 or more (seconds)")?,
        None => DEFAULT_POLLING_INTERVAL,
    };
    let cooldown = match spec.get("cooldownPeriod")? {
        Some(f) => f.int_in(0, i64::from(i32::MAX), "must be 0 or more (seconds)")?,
        None => DEFAULT_COOLDOWN_PERIOD,
    };
    let initial_cooldown = match spec.get("initialCooldownPeriod")? {
        Some(f) => f.int_in(0, i64::from(i32::MAX), "must be 0 or more (seconds)")?,
        None => DEFAULT_INITIAL_COOLDOWN_PERIOD,
    };

    let trigger = parse_triggers(&spec)?;
    let behavior = parse_advanced(&spec)?;

    Ok(ScalingSpec {
        name,
        target,
        min_replica_count: u32::try_from(min).unwrap_or(0),
        max_replica_count: u32::try_from(max).unwrap_or(0),
        polling_interval: seconds_of(polling),
        cooldown_period: seconds_of(cooldown),
        initial_cooldown_period: seconds_of(initial_cooldown),
        trigger,
        behavior,
        termination_grace_period: DEFAULT_TERMINATION_GRACE_PERIOD,
    })
}

/// KEDA's annotations that pause or force scaling (apis/keda/v1alpha1/scaledobject_types.go)
/// change every decision; devstack does not model them.
fn check_annotations(metadata: &Field<'_>) -> anyhow::Result<()> {
    const CHANGING: [&str; 5] = [
        "autoscaling.keda.sh/paused-replicas",
        "autoscaling.keda.sh/paused",
        "autoscaling.keda.sh/paused-scale-in",
        "autoscaling.keda.sh/paused-scale-out",
        "autoscaling.keda.sh/force-activation",
    ];
    let Some(annotations) = metadata.get("annotations")? else {
        return Ok(());
    };
    for key in CHANGING {
        if let Some(f) = annotations.get(key)? {
            return Err(Field {
                path: format!("{}.\"{key}\"", annotations.path),
                ..f
            }
            .error("is not supported by devstack (it pauses or forces KEDA's scaling)"));
        }
    }
    Ok(())
}

fn parse_triggers(spec: &Field<'_>) -> anyhow::Result<Trigger> {
    let triggers = spec.require("triggers")?;
    let list = triggers.sequence()?;
    let [only] = list else {
        return Err(triggers.error(format!(
            "has {} triggers; devstack honours exactly one (azure-servicebus or rabbitmq)",
            list.len()
        )));
    };
    let trigger = triggers.index(0, only);
    trigger.only(&[
        "type",
        "name",
        "metadata",
        "metricType",
        "authenticationRef",
        "useCachedMetrics",
    ])?;
    // pkg/scalers/scaler.go: GetMetricTargetType; "" is AverageValue.
    if let Some(metric_type) = trigger.get("metricType")? {
        let value = metric_type.str()?;
        if value != "AverageValue" {
            return Err(metric_type.error(format!(
                "{value:?} is not supported by devstack (only AverageValue, the default)"
            )));
        }
    }
    let kind = trigger.require("type")?;
    let metadata = trigger.require("metadata")?;
    // The CRD types every metadata value as a string (`additionalProperties: {type: string}`), so
    // the API server refuses `messageCount: 5` unquoted; so does devstack, rather than diverge.
    for (key, value) in metadata.mapping()? {
        if !value.is_string() {
            return Err(metadata.absent(&yaml_key(key)).error(format!(
                "must be a string (quote it), not {}",
                describe(value)
            )));
        }
    }
    match kind.str()? {
        "azure-servicebus" => servicebus_trigger(&metadata),
        "rabbitmq" => rabbitmq_trigger(&metadata),
        other => Err(kind.error(format!(
            "{other:?} is not supported by devstack (azure-servicebus or rabbitmq)"
        ))),
    }
}

/// pkg/scalers/azure_servicebus_scaler.go: azureServiceBusMetadata and its Validate. KEDA reads
/// these through its typed config, which parses int64 fields as JSON numbers.
fn servicebus_trigger(metadata: &Field<'_>) -> anyhow::Result<Trigger> {
    for key in ["topicName", "subscriptionName"] {
        if let Some(f) = metadata.get(key)? {
            return Err(f.error(
                "is not supported by devstack, whose stand-in serves a queue (use queueName)",
            ));
        }
    }
    refuse_regex(metadata)?;
    let queue_name = metadata.require("queueName")?.str()?.to_owned();
    let target = match metadata.get("messageCount")? {
        Some(f) => {
            let n = parse_i64(&f)?;
            // The HPA refuses a target that is not positive (autoscaling validation:
            // validateMetricTarget, "must be positive").
            if n <= 0 {
                return Err(f.error(format!(
                    "{n} must be greater than 0 (the HPA's averageValue)"
                )));
            }
            n
        }
        None => DEFAULT_SERVICEBUS_MESSAGE_COUNT,
    };
    let activation = match metadata.get("activationMessageCount")? {
        Some(f) => parse_i64(&f)?,
        None => 0,
    };
    Ok(Trigger {
        kind: TriggerKind::AzureServicebus,
        queue_name,
        target: target as f64,
        activation: activation as f64,
    })
}

/// pkg/scalers/rabbitmq_scaler.go: rabbitMQMetadata, Validate and validateTrigger.
fn rabbitmq_trigger(metadata: &Field<'_>) -> anyhow::Result<Trigger> {
    refuse_regex(metadata)?;
    let queue_name = metadata.require("queueName")?.str()?.to_owned();
    let mode = metadata.get("mode")?;
    let value = metadata.get("value")?;
    let queue_length = metadata.get("queueLength")?;
    let value_of = |f: &Field<'_>| -> anyhow::Result<f64> {
        let v = parse_f64(f)?;
        if v < 0.0 {
            return Err(f.error(format!(
                "{v} must be greater than 0 (the HPA's averageValue)"
            )));
        }
        Ok(v)
    };
    let target = match (&mode, &value, &queue_length) {
        // "If nothing is specified for the trigger then return the default".
        (None, None, None) => DEFAULT_RABBITMQ_QUEUE_LENGTH,
        (None, None, Some(length)) => nonzero(length, value_of(length)?)?,
        (_, _, Some(length)) => {
            return Err(length.error("is deprecated and cannot be combined with mode and value; use mode: QueueLength and value"));
        }
        (None, Some(v), None) => {
            return Err(v.error("needs mode: QueueLength beside it"));
        }
        (Some(m), v, None) => {
            let mode = m.str()?;
            if mode != "QueueLength" {
                return Err(m.error(format!(
                    "{mode:?} is not supported by devstack (QueueLength only)"
                )));
            }
            let Some(v) = v else {
                return Err(metadata
                    .absent("value")
                    .error("is required with mode: QueueLength"));
            };
            nonzero(v, value_of(v)?)?
        }
    };
    let activation = match metadata.get("activationValue")? {
        Some(f) => parse_f64(&f)?,
        None => 0.0,
    };
    let exclude_unacknowledged = match metadata.get("excludeUnacknowledged")? {
        Some(f) => parse_bool(&f)?,
        None => false,
    };
    if exclude_unacknowledged && rabbitmq_protocol(metadata)? == Some("amqp") {
        let f = metadata.require("excludeUnacknowledged")?;
        return Err(f.error("true needs the http protocol (KEDA refuses it over amqp)"));
    }
    Ok(Trigger {
        kind: TriggerKind::Rabbitmq {
            exclude_unacknowledged,
        },
        queue_name,
        target,
        activation,
    })
}

/// The protocol KEDA would use, when the metadata says: `protocol`, else the scheme of `host`
/// (rabbitmq_scaler.go: Validate). `None` when the host comes from a TriggerAuthentication.
fn rabbitmq_protocol<'a>(metadata: &Field<'a>) -> anyhow::Result<Option<&'a str>> {
    if let Some(p) = metadata.get("protocol")? {
        match p.str()? {
            "amqp" => return Ok(Some("amqp")),
            "http" => return Ok(Some("http")),
            "auto" => {}
            other => return Err(p.error(format!("{other:?} is not amqp, http or auto"))),
        }
    }
    let Some(host) = metadata.get("host")? else {
        return Ok(None);
    };
    let host = host.str()?;
    Ok(match host.split_once("://").map(|(scheme, _)| scheme) {
        Some("amqp" | "amqps") => Some("amqp"),
        Some("http" | "https") => Some("http"),
        _ => None,
    })
}

/// `useRegex: "true"` scales on a set of queues (their sum, max or average); devstack serves one.
fn refuse_regex(metadata: &Field<'_>) -> anyhow::Result<()> {
    if let Some(f) = metadata.get("useRegex")?
        && parse_bool(&f)?
    {
        return Err(
            f.error("true is not supported by devstack (it serves one queue, named by queueName)")
        );
    }
    Ok(())
}

fn nonzero(f: &Field<'_>, v: f64) -> anyhow::Result<f64> {
    // rabbitmq_scaler.go: a zero value counts as unset ("value must be specified"); the HPA
    // needs a positive target besides.
    if v == 0.0 {
        return Err(f.error("0 must be greater than 0 (the HPA's averageValue)"));
    }
    // KEDA hands the HPA int64(value * 1000) milli-units (scaler.go: GetMetricTargetMili): below
    // 0.001 that is 0, which the HPA refuses.
    if ((v * 1000.0) as i64) < 1 {
        return Err(f.error(format!(
            "{v} is below 0.001, which KEDA passes to the HPA as a target of 0"
        )));
    }
    Ok(v)
}

fn parse_i64(f: &Field<'_>) -> anyhow::Result<i64> {
    let s = f.str()?;
    s.trim()
        .parse::<i64>()
        .map_err(|_| f.error(format!("{s:?} is not a whole number")))
}

fn parse_f64(f: &Field<'_>) -> anyhow::Result<f64> {
    let s = f.str()?;
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| f.error(format!("{s:?} is not a number")))
}

/// Go's strconv.ParseBool, which KEDA's typed config uses.
fn parse_bool(f: &Field<'_>) -> anyhow::Result<bool> {
    let s = f.str()?;
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(f.error(format!("{s:?} is not a boolean (true or false)"))),
    }
}

fn parse_advanced(spec: &Field<'_>) -> anyhow::Result<Option<Behavior>> {
    let Some(advanced) = spec.get("advanced")? else {
        return Ok(None);
    };
    advanced.only(&[
        "horizontalPodAutoscalerConfig",
        "restoreToOriginalReplicaCount",
        "scalingModifiers",
    ])?;
    // scaledobject_types.go: IsUsingModifiers, true unless scalingModifiers is empty.
    if let Some(modifiers) = advanced.get("scalingModifiers")?
        && !modifiers.mapping()?.is_empty()
    {
        return Err(modifiers
            .error("is not supported by devstack (it computes one trigger's metric, no formula)"));
    }
    let Some(hpa) = advanced.get("horizontalPodAutoscalerConfig")? else {
        return Ok(None);
    };
    hpa.only(&["behavior", "name"])?;
    let Some(behavior) = hpa.get("behavior")? else {
        return Ok(None);
    };
    behavior.only(&["scaleUp", "scaleDown"])?;
    // kubernetes pkg/apis/autoscaling/v2/defaults.go: a behavior that is there gets every missing
    // field from defaultHPAScaleUpRules / defaultHPAScaleDownRules (GenerateHPAScale*Rules).
    let scale_up = parse_rules(
        behavior.get("scaleUp")?,
        Rules {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
            tolerance: None,
        },
    )?;
    let scale_down = parse_rules(
        behavior.get("scaleDown")?,
        Rules {
            // nil in defaults.go, then the controller's window (horizontal.go:
            // maybeInitScaleDownStabilizationWindow).
            stabilization_window: DOWNSCALE_STABILISATION_WINDOW,
            select_policy: SelectPolicy::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
            tolerance: None,
        },
    )?;
    Ok(Some(Behavior {
        scale_up,
        scale_down,
    }))
}

/// One direction's rules over `defaults` (defaults.go: copyHPAScalingRules), validated as the API
/// server does (pkg/apis/autoscaling/validation: validateScalingRules, validateScalingPolicy).
fn parse_rules(rules: Option<Field<'_>>, defaults: Rules) -> anyhow::Result<Rules> {
    let Some(rules) = rules else {
        return Ok(defaults);
    };
    rules.only(&[
        "stabilizationWindowSeconds",
        "selectPolicy",
        "policies",
        "tolerance",
    ])?;
    let mut out = defaults;
    if let Some(f) = rules.get("stabilizationWindowSeconds")? {
        out.stabilization_window = seconds_of(f.int_in(
            0,
            MAX_STABILIZATION_WINDOW_SECONDS,
            "must be between 0 and 3600 (seconds)",
        )?);
    }
    if let Some(f) = rules.get("selectPolicy")? {
        out.select_policy = match f.str()? {
            "Max" => SelectPolicy::Max,
            "Min" => SelectPolicy::Min,
            "Disabled" => SelectPolicy::Disabled,
            other => return Err(f.error(format!("{other:?} is not Max, Min or Disabled"))),
        };
    }
    if let Some(f) = rules.get("policies")? {
        let list = f.sequence()?;
        if list.is_empty() {
            return Err(f.error("must hold at least one policy"));
        }
        out.policies = list
            .iter()
            .enumerate()
            .map(|(i, v)| parse_policy(&f.index(i, v)))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(f) = rules.get("tolerance")? {
        out.tolerance = Some(parse_tolerance(&f)?);
    }
    Ok(out)
}

fn parse_policy(policy: &Field<'_>) -> anyhow::Result<Policy> {
    policy.only(&["type", "value", "periodSeconds"])?;
    let kind_field = policy.require("type")?;
    let kind = match kind_field.str()? {
        "Pods" => PolicyKind::Pods,
        "Percent" => PolicyKind::Percent,
        other => return Err(kind_field.error(format!("{other:?} is not Pods or Percent"))),
    };
    let value =
        policy
            .require("value")?
            .int_in(1, i64::from(i32::MAX), "must be greater than 0")?;
    let period = policy.require("periodSeconds")?.int_in(
        1,
        MAX_PERIOD_SECONDS,
        "must be between 1 and 1800 (seconds)",
    )?;
    Ok(Policy {
        kind,
        value: u32::try_from(value).unwrap_or(0),
        period: seconds_of(period),
    })
}

/// A `tolerance` quantity: a plain number (`0.05`, `1`) or milli-units (`50m`). Kubernetes takes
/// any quantity, but other suffixes (`k`, `Mi`, exponents) make no sense for a ratio.
fn parse_tolerance(f: &Field<'_>) -> anyhow::Result<f64> {
    let text = match f.value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(f.error(format!("must be a number, not {}", describe(other)))),
    };
    let (digits, scale) = match text.strip_suffix('m') {
        Some(d) => (d, 1000.0),
        None => (text.as_str(), 1.0),
    };
    let valid = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    match digits.parse::<f64>() {
        Ok(v) if valid && v.is_finite() => Ok(v / scale),
        _ => Err(f.error(format!(
            "{text:?} is not a tolerance of 0 or more (e.g. 0.05 or 50m)"
        ))),
    }
}

/// `terminationGracePeriodSeconds` of the Deployment `name`, found among the YAML files beside
/// `scaled_object` (the kustomize base keeps them together); 30 s when there is none.
fn grace_period_of(scaled_object: &Path, name: &str) -> anyhow::Result<Duration> {
    let dir = match scaled_object.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list the directory", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();

    let mut found: Vec<(PathBuf, Duration)> = Vec::new();
    for file in &files {
        let docs = read_documents(file)?;
        for doc in &docs {
            let is_it = doc.get("kind").and_then(Value::as_str) == Some("Deployment")
                && doc.get("apiVersion").and_then(Value::as_str) == Some("apps/v1")
                && doc
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    == Some(name);
            if !is_it {
                continue;
            }
            // A Deployment patch (an overlay's) may leave the pod template out: the field is
            // absent then, as it is from a template that does not set it.
            let root = Field::root(file, doc);
            let mut pod_spec = Some(root);
            for key in ["spec", "template", "spec"] {
                pod_spec = match pod_spec {
                    Some(f) => f.get(key)?,
                    None => None,
                };
            }
            let field = match pod_spec {
                Some(f) => f.get("terminationGracePeriodSeconds")?,
                None => None,
            };
            let grace = match field {
                Some(f) => seconds_of(f.int_in(0, i64::MAX, "must be 0 or more (seconds)")?),
                None => DEFAULT_TERMINATION_GRACE_PERIOD,
            };
            found.push((file.clone(), grace));
        }
    }
    match found.as_slice() {
        [] => Ok(DEFAULT_TERMINATION_GRACE_PERIOD),
        [(_, grace)] => Ok(*grace),
        several => {
            let mut files = String::new();
            for (i, (file, _)) in several.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(files, "{sep}{}", file.display());
            }
            Err(anyhow!(
                "{}: several Deployments named {name:?} ({files}); devstack cannot tell which one the ScaledObject scales",
                dir.display()
            ))
        }
    }
}

fn seconds<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A directory of YAML files for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "devstack-scaling-spec-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("create the test directory");
            Self(path)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write a test file");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MINIMAL: &str = "\
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: consumer
spec:
  scaleTargetRef:
    name: consumer
  triggers:
    - type: azure-servicebus
      metadata:
        queueName: msgqueue
";

    /// Loads `text` as `so.yaml`, alone in its directory.
    fn load(text: &str) -> anyhow::Result<ScalingSpec> {
        let dir = Dir::new();
        ScalingSpec::load(&dir.write("so.yaml", text))
    }

    /// The error `text` gives, with the file's path taken off the front.
    fn error(text: &str) -> String {
        let dir = Dir::new();
        let path = dir.write("so.yaml", text);
        let message = ScalingSpec::load(&path)
            .expect_err("the ScaledObject is refused")
            .to_string();
        let prefix = format!("{}: ", path.display());
        message
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{message:?} does not start with the file name"))
            .to_owned()
    }

    /// MINIMAL with `line` replaced by `with`.
    fn edit(line: &str, with: &str) -> String {
        assert!(MINIMAL.contains(line), "{line:?} not in MINIMAL");
        MINIMAL.replacen(line, with, 1)
    }

    /// MINIMAL with `lines` added under `spec:`.
    fn with_spec(lines: &str) -> String {
        edit("spec:\n", &format!("spec:\n{lines}"))
    }

    /// MINIMAL with `lines` added to the trigger's metadata.
    fn with_metadata(lines: &str) -> String {
        edit(
            "        queueName: msgqueue\n",
            &format!("        queueName: msgqueue\n{lines}"),
        )
    }

    #[test]
    fn the_committed_scaled_object_loads_with_its_deployment() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/consumer-scaling.yaml");
        let spec = ScalingSpec::load(&path).expect("the committed ScaledObject loads");
        assert_eq!(
            spec,
            ScalingSpec {
                name: "consumer".into(),
                target: "consumer".into(),
                min_replica_count: 0,
                max_replica_count: 10,
                polling_interval: Duration::from_secs(2),
                cooldown_period: Duration::from_secs(60),
                initial_cooldown_period: Duration::ZERO,
                trigger: Trigger {
                    kind: TriggerKind::AzureServicebus,
                    queue_name: "msgqueue".into(),
                    target: 5.0,
                    activation: 0.0,
                },
                // Its scaleUp as written, Kubernetes' defaults for the rest.
                behavior: Some(Behavior {
                    scale_up: Rules {
                        stabilization_window: Duration::ZERO,
                        select_policy: SelectPolicy::Max,
                        policies: vec![Policy {
                            kind: PolicyKind::Pods,
                            value: 10,
                            period: Duration::from_secs(15),
                        }],
                        tolerance: None,
                    },
                    scale_down: Rules {
                        stabilization_window: DOWNSCALE_STABILISATION_WINDOW,
                        select_policy: SelectPolicy::Max,
                        policies: vec![Policy {
                            kind: PolicyKind::Percent,
                            value: 100,
                            period: Duration::from_secs(15),
                        }],
                        tolerance: None,
                    },
                }),
                // consumer-deployment.yaml's terminationGracePeriodSeconds.
                termination_grace_period: Duration::from_secs(40),
            }
        );
    }

    #[test]
    fn absent_fields_take_kedas_defaults_and_a_lone_scaled_object_gets_30s_of_grace() {
        let spec = load(MINIMAL).expect("loads");
        assert_eq!(spec.min_replica_count, 0);
        assert_eq!(spec.max_replica_count, 100);
        assert_eq!(spec.polling_interval, Duration::from_secs(30));
        assert_eq!(spec.cooldown_period, Duration::from_secs(300));
        assert_eq!(spec.initial_cooldown_period, Duration::ZERO);
        assert_eq!(spec.trigger.target, 5.0);
        assert_eq!(spec.trigger.activation, 0.0);
        assert_eq!(spec.behavior, None);
        assert_eq!(spec.termination_grace_period, Duration::from_secs(30));
    }

    #[test]
    fn set_fields_are_read() {
        let spec = load(&with_metadata(
            "        messageCount: \"7\"\n        activationMessageCount: \"3\"\n",
        )
        .replace(
            "spec:\n",
            "spec:\n  minReplicaCount: 2\n  maxReplicaCount: 20\n  pollingInterval: 5\n  cooldownPeriod: 0\n  initialCooldownPeriod: 90\n",
        ))
        .expect("loads");
        assert_eq!((spec.min_replica_count, spec.max_replica_count), (2, 20));
        assert_eq!(spec.polling_interval, Duration::from_secs(5));
        assert_eq!(spec.cooldown_period, Duration::ZERO);
        assert_eq!(spec.initial_cooldown_period, Duration::from_secs(90));
        assert_eq!((spec.trigger.target, spec.trigger.activation), (7.0, 3.0));
    }

    #[test]
    fn fields_that_do_not_change_decisions_are_accepted() {
        let text = with_spec(
            "  fallback:\n    failureThreshold: 3\n    replicas: 2\n  advanced:\n    restoreToOriginalReplicaCount: true\n    horizontalPodAutoscalerConfig:\n      name: my-hpa\n",
        )
        .replace(
            "      metadata:\n",
            "      name: queue\n      authenticationRef:\n        name: keda-queue-auth\n      metadata:\n",
        );
        let spec = load(&format!(
            "{}---\napiVersion: keda.sh/v1alpha1\nkind: TriggerAuthentication\nmetadata:\n  name: keda-queue-auth\n",
            text.replace("  name: consumer\nspec", "  name: consumer\n  labels:\n    app: consumer\nspec")
        ))
        .expect("loads");
        assert_eq!(spec.behavior, None);
    }

    #[test]
    fn an_empty_behavior_gets_kubernetes_defaults() {
        let spec = load(&with_spec(
            "  advanced:\n    horizontalPodAutoscalerConfig:\n      behavior: {}\n",
        ))
        .expect("loads");
        let fifteen = Duration::from_secs(15);
        assert_eq!(
            spec.behavior,
            Some(Behavior {
                scale_up: Rules {
                    stabilization_window: Duration::ZERO,
                    select_policy: SelectPolicy::Max,
                    policies: vec![
                        Policy {
                            kind: PolicyKind::Pods,
                            value: 4,
                            period: fifteen
                        },
                        Policy {
                            kind: PolicyKind::Percent,
                            value: 100,
                            period: fifteen
                        },
                    ],
                    tolerance: None,
                },
                scale_down: Rules {
                    stabilization_window: Duration::from_secs(300),
                    select_policy: SelectPolicy::Max,
                    policies: vec![Policy {
                        kind: PolicyKind::Percent,
                        value: 100,
                        period: fifteen
                    }],
                    tolerance: None,
                },
            })
        );
    }

    #[test]
    fn a_partial_behavior_keeps_the_defaults_of_what_it_leaves_out() {
        let spec = load(&with_spec(
            "  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          policies:
            - type: Pods
              value: 1
              periodSeconds: 60
          tolerance: 50m
        scaleUp:
          stabilizationWindowSeconds: 30
          selectPolicy: Min
          tolerance: \"0.2\"
",
        ))
        .expect("loads");
        let behavior = spec.behavior.expect("a behavior");
        assert_eq!(
            behavior.scale_down.stabilization_window,
            Duration::from_secs(300)
        );
        assert_eq!(behavior.scale_down.select_policy, SelectPolicy::Max);
        assert_eq!(
            behavior.scale_down.policies,
            vec![Policy {
                kind: PolicyKind::Pods,
                value: 1,
                period: Duration::from_secs(60)
            }]
        );
        assert_eq!(behavior.scale_down.tolerance, Some(0.05));
        assert_eq!(
            behavior.scale_up.stabilization_window,
            Duration::from_secs(30)
        );
        assert_eq!(behavior.scale_up.select_policy, SelectPolicy::Min);
        assert_eq!(behavior.scale_up.policies.len(), 2);
        assert_eq!(behavior.scale_up.tolerance, Some(0.2));
    }

    const RABBIT: &str = "\
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: consumer
spec:
  scaleTargetRef:
    name: consumer
  triggers:
    - type: rabbitmq
      metadata:
        queueName: orders
";

    #[test]
    fn rabbitmq_queue_length_is_read_with_its_defaults() {
        let spec = load(&RABBIT.replace(
            "queueName: orders\n",
            "queueName: orders\n        mode: QueueLength\n        value: \"2.5\"\n        activationValue: \"1\"\n        excludeUnacknowledged: \"true\"\n        host: http://guest:guest@localhost:15672/\n",
        ))
        .expect("loads");
        assert_eq!(
            spec.trigger,
            Trigger {
                kind: TriggerKind::Rabbitmq {
                    exclude_unacknowledged: true
                },
                queue_name: "orders".into(),
                target: 2.5,
                activation: 1.0,
            }
        );
        // Nothing set: QueueLength 20 (rabbitmq_scaler.go: validateTrigger).
        let spec = load(RABBIT).expect("loads");
        assert_eq!(spec.trigger.target, 20.0);
        assert_eq!(
            spec.trigger.kind,
            TriggerKind::Rabbitmq {
                exclude_unacknowledged: false
            }
        );
        // The deprecated queueLength stands for mode: QueueLength with that value.
        let spec = load(&RABBIT.replace(
            "queueName: orders\n",
            "queueName: orders\n        queueLength: \"8\"\n",
        ))
        .expect("loads");
        assert_eq!(spec.trigger.target, 8.0);
    }

    #[test]
    fn the_rabbitmq_overlays_trigger_loads_once_made_a_whole_scaled_object() {
        let overlay = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/overlays/local-rabbitmq/scaling.yaml"),
        )
        .expect("read the overlay's patch");
        assert_eq!(
            error(&overlay),
            "spec.scaleTargetRef: is required (devstack reads a whole ScaledObject, not a kustomize patch of one)"
        );
        let whole = overlay.replacen(
            "spec:\n",
            "spec:\n  scaleTargetRef:\n    name: consumer\n",
            1,
        );
        let spec = load(&whole).expect("loads");
        assert_eq!(
            spec.trigger,
            Trigger {
                kind: TriggerKind::Rabbitmq {
                    exclude_unacknowledged: false
                },
                queue_name: "msgqueue".into(),
                target: 5.0,
                activation: 0.0,
            }
        );
    }

    #[test]
    fn the_grace_period_comes_from_the_deployment_beside_it() {
        let dir = Dir::new();
        let so = dir.write("scaling.yaml", MINIMAL);
        dir.write(
            "other.yml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: producer\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: 5\n",
        );
        dir.write("notes.txt", "not YAML: [");
        assert_eq!(
            ScalingSpec::load(&so)
                .expect("loads")
                .termination_grace_period,
            Duration::from_secs(30),
            "another Deployment's grace period is not taken"
        );
        dir.write(
            "consumer.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: consumer\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: 75\n",
        );
        assert_eq!(
            ScalingSpec::load(&so)
                .expect("loads")
                .termination_grace_period,
            Duration::from_secs(75)
        );
    }

    #[test]
    fn a_deployment_without_the_field_gets_30s_and_one_found_twice_is_an_error() {
        let dir = Dir::new();
        let so = dir.write("scaling.yaml", MINIMAL);
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer\nspec:\n  template:\n    spec:\n      containers: []\n";
        dir.write("a.yaml", deployment);
        assert_eq!(
            ScalingSpec::load(&so)
                .expect("loads")
                .termination_grace_period,
            Duration::from_secs(30)
        );
        // An overlay's patch of the Deployment without a pod template does not count as a value.
        dir.write(
            "patch.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer\nspec:\n  replicas: 2\n",
        );
        let message = ScalingSpec::load(&so)
            .expect_err("two Deployments named consumer")
            .to_string();
        assert!(message.contains("several Deployments"), "{message}");
        std::fs::remove_file(dir.0.join("patch.yaml")).expect("remove");
        dir.write(
            "a.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer\nspec:\n  replicas: 2\n",
        );
        assert_eq!(
            ScalingSpec::load(&so)
                .expect("loads")
                .termination_grace_period,
            Duration::from_secs(30)
        );
        dir.write("b.yaml", deployment);
        let message = ScalingSpec::load(&so).expect_err("ambiguous").to_string();
        assert_eq!(
            message,
            format!(
                "{}: several Deployments named \"consumer\" ({}, {}); devstack cannot tell which one the ScaledObject scales",
                dir.0.display(),
                dir.0.join("a.yaml").display(),
                dir.0.join("b.yaml").display()
            )
        );
    }

    #[test]
    fn a_deployment_with_a_bad_grace_period_or_malformed_yaml_beside_it_is_an_error() {
        let dir = Dir::new();
        let so = dir.write("scaling.yaml", MINIMAL);
        let bad = dir.write(
            "consumer.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: consumer\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: -1\n",
        );
        assert_eq!(
            ScalingSpec::load(&so).expect_err("refused").to_string(),
            format!(
                "{}: spec.template.spec.terminationGracePeriodSeconds: -1 must be 0 or more (seconds)",
                bad.display()
            )
        );
        std::fs::remove_file(&bad).expect("remove");
        let broken = dir.write("broken.yaml", "a: [1, 2\n");
        let message = ScalingSpec::load(&so).expect_err("refused").to_string();
        assert!(
            message.starts_with(&format!("{}: malformed YAML: ", broken.display())),
            "{message}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = Dir::new();
        let path = dir.0.join("nope.yaml");
        let message = format!("{:#}", ScalingSpec::load(&path).expect_err("refused"));
        assert!(
            message.starts_with(&format!("{}: cannot read the file: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        let message = error("spec: [unclosed\n");
        assert!(message.starts_with("malformed YAML: "), "{message}");
    }

    #[test]
    fn a_file_needs_exactly_one_scaled_object() {
        assert_eq!(
            error("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"),
            "no ScaledObject (kind: ScaledObject, apiVersion: keda.sh/v1alpha1) in this file"
        );
        assert_eq!(
            error(&format!("{MINIMAL}---\n{MINIMAL}")),
            "holds several ScaledObjects; devstack runs one, give it a file with exactly one"
        );
        assert_eq!(
            error(&MINIMAL.replace("keda.sh/v1alpha1", "keda.k8s.io/v1alpha1")),
            "apiVersion: \"keda.k8s.io/v1alpha1\" is not keda.sh/v1alpha1, the ScaledObject version KEDA v2 serves"
        );
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_the_field() {
        assert_eq!(
            error(&with_metadata("        messageCount: five\n")),
            "spec.triggers[0].metadata.messageCount: \"five\" is not a whole number"
        );
        assert_eq!(
            error(&with_metadata("        activationMessageCount: \"1.5\"\n")),
            "spec.triggers[0].metadata.activationMessageCount: \"1.5\" is not a whole number"
        );
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        mode: QueueLength\n        value: lots\n"
            )),
            "spec.triggers[0].metadata.value: \"lots\" is not a number"
        );
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        mode: QueueLength\n        value: \"0.0004\"\n"
            )),
            "spec.triggers[0].metadata.value: 0.0004 is below 0.001, which KEDA passes to the HPA as a target of 0"
        );
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        excludeUnacknowledged: maybe\n"
            )),
            "spec.triggers[0].metadata.excludeUnacknowledged: \"maybe\" is not a boolean (true or false)"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_an_error_naming_it() {
        assert_eq!(
            error(&with_spec("  minReplicaCount: \"2\"\n")),
            "spec.minReplicaCount: must be a whole number, not the string \"2\""
        );
        assert_eq!(
            error(&with_spec("  cooldownPeriod: 1.5\n")),
            "spec.cooldownPeriod: 1.5 is not a whole number"
        );
        assert_eq!(
            error(&with_spec("  maxReplicaCount: 3000000000\n")),
            "spec.maxReplicaCount: 3000000000 does not fit in an int32"
        );
        assert_eq!(
            error(&with_metadata("        messageCount: 5\n")),
            "spec.triggers[0].metadata.messageCount: must be a string (quote it), not the number 5"
        );
        assert_eq!(
            error(&edit(
                "  triggers:\n    - type: azure-servicebus\n      metadata:\n        queueName: msgqueue\n",
                "  triggers:\n    type: azure-servicebus\n"
            )),
            "spec.triggers: must be a list, not a mapping"
        );
        assert_eq!(
            error(&edit(
                "    name: consumer\n  triggers",
                "    name: [consumer]\n  triggers"
            )),
            "spec.scaleTargetRef.name: must be a string, not a list"
        );
    }

    #[test]
    fn another_trigger_type_is_an_error() {
        assert_eq!(
            error(&edit("type: azure-servicebus", "type: kafka")),
            "spec.triggers[0].type: \"kafka\" is not supported by devstack (azure-servicebus or rabbitmq)"
        );
        assert_eq!(
            error(&with_metadata(
                "        topicName: orders\n        subscriptionName: s\n"
            )),
            "spec.triggers[0].metadata.topicName: is not supported by devstack, whose stand-in serves a queue (use queueName)"
        );
    }

    #[test]
    fn several_triggers_or_none_are_an_error() {
        let two =
            format!("{MINIMAL}    - type: rabbitmq\n      metadata:\n        queueName: orders\n");
        assert_eq!(
            error(&two),
            "spec.triggers: has 2 triggers; devstack honours exactly one (azure-servicebus or rabbitmq)"
        );
        assert_eq!(
            error(&edit(
                "  triggers:\n    - type: azure-servicebus\n      metadata:\n        queueName: msgqueue\n",
                "  triggers: []\n"
            )),
            "spec.triggers: has 0 triggers; devstack honours exactly one (azure-servicebus or rabbitmq)"
        );
        assert_eq!(
            error(&edit(
                "  triggers:\n    - type: azure-servicebus\n      metadata:\n        queueName: msgqueue\n",
                ""
            )),
            "spec.triggers: is required"
        );
    }

    #[test]
    fn scaling_modifiers_are_an_error() {
        assert_eq!(
            error(&with_spec(
                "  advanced:\n    scalingModifiers:\n      formula: \"queue * 2\"\n      target: \"5\"\n"
            )),
            "spec.advanced.scalingModifiers: is not supported by devstack (it computes one trigger's metric, no formula)"
        );
    }

    #[test]
    fn idle_replica_count_is_an_error() {
        assert_eq!(
            error(&with_spec("  idleReplicaCount: 0\n  minReplicaCount: 1\n")),
            "spec.idleReplicaCount: is not supported by devstack (it follows minReplicaCount only)"
        );
    }

    #[test]
    fn a_rabbitmq_mode_other_than_queue_length_is_an_error() {
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        mode: MessageRate\n        value: \"100\"\n"
            )),
            "spec.triggers[0].metadata.mode: \"MessageRate\" is not supported by devstack (QueueLength only)"
        );
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        mode: QueueLength\n"
            )),
            "spec.triggers[0].metadata.value: is required with mode: QueueLength"
        );
        assert_eq!(
            error(&RABBIT.replace(
                "queueName: orders\n",
                "queueName: orders\n        excludeUnacknowledged: \"true\"\n        host: amqp://guest:guest@localhost:5672/\n"
            )),
            "spec.triggers[0].metadata.excludeUnacknowledged: true needs the http protocol (KEDA refuses it over amqp)"
        );
    }

    #[test]
    fn a_metric_type_other_than_average_value_is_an_error() {
        assert_eq!(
            error(&edit(
                "      metadata:\n",
                "      metricType: Value\n      metadata:\n"
            )),
            "spec.triggers[0].metricType: \"Value\" is not supported by devstack (only AverageValue, the default)"
        );
        load(&edit(
            "      metadata:\n",
            "      metricType: AverageValue\n      metadata:\n",
        ))
        .expect("AverageValue, said out loud, loads");
    }

    #[test]
    fn min_above_max_is_an_error() {
        assert_eq!(
            error(&with_spec("  minReplicaCount: 5\n  maxReplicaCount: 3\n")),
            "spec.maxReplicaCount: 3 is less than minReplicaCount 5"
        );
        assert_eq!(
            error(&with_spec("  minReplicaCount: 101\n")),
            "spec.maxReplicaCount: 100 is less than minReplicaCount 101"
        );
    }

    #[test]
    fn negative_or_zero_values_where_invalid_are_errors() {
        assert_eq!(
            error(&with_spec("  minReplicaCount: -1\n")),
            "spec.minReplicaCount: -1 must be 0 or more"
        );
        assert_eq!(
            error(&with_spec("  maxReplicaCount: 0\n")),
            "spec.maxReplicaCount: 0 must be 1 or more (the HPA's maxReplicas)"
        );
        assert_eq!(
            error(&with_spec("  pollingInterval: 0\n")),
            "spec.pollingInterval: 0 must be 1 or more (seconds)"
        );
        assert_eq!(
            error(&with_spec("  cooldownPeriod: -5\n")),
            "spec.cooldownPeriod: -5 must be 0 or more (seconds)"
        );
        assert_eq!(
            error(&with_spec("  initialCooldownPeriod: -5\n")),
            "spec.initialCooldownPeriod: -5 must be 0 or more (seconds)"
        );
        assert_eq!(
            error(&with_metadata("        messageCount: \"0\"\n")),
            "spec.triggers[0].metadata.messageCount: 0 must be greater than 0 (the HPA's averageValue)"
        );
    }

    fn behavior(lines: &str) -> String {
        with_spec(&format!(
            "  advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n{lines}"
        ))
    }

    #[test]
    fn an_unknown_policy_type_is_an_error() {
        assert_eq!(
            error(&behavior(
                "        scaleUp:\n          policies:\n            - type: Replicas\n              value: 2\n              periodSeconds: 15\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].type: \"Replicas\" is not Pods or Percent"
        );
    }

    #[test]
    fn behavior_values_out_of_kubernetes_bounds_are_errors() {
        assert_eq!(
            error(&behavior("        scaleDown:\n          policies: []\n")),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.policies: must hold at least one policy"
        );
        assert_eq!(
            error(&behavior(
                "        scaleUp:\n          policies:\n            - type: Pods\n              value: 0\n              periodSeconds: 15\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].value: 0 must be greater than 0"
        );
        assert_eq!(
            error(&behavior(
                "        scaleUp:\n          policies:\n            - type: Pods\n              value: 1\n              periodSeconds: 1801\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].periodSeconds: 1801 must be between 1 and 1800 (seconds)"
        );
        assert_eq!(
            error(&behavior(
                "        scaleDown:\n          stabilizationWindowSeconds: 3601\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds: 3601 must be between 0 and 3600 (seconds)"
        );
        assert_eq!(
            error(&behavior(
                "        scaleDown:\n          selectPolicy: Fastest\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.selectPolicy: \"Fastest\" is not Max, Min or Disabled"
        );
        assert_eq!(
            error(&behavior("        scaleDown:\n          tolerance: -0.1\n")),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.tolerance: \"-0.1\" is not a tolerance of 0 or more (e.g. 0.05 or 50m)"
        );
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        assert_eq!(
            error(&with_spec("  cooldownPeriods: 30\n")),
            "spec.cooldownPeriods: unknown field (known here: scaleTargetRef, pollingInterval, initialCooldownPeriod, cooldownPeriod, idleReplicaCount, minReplicaCount, maxReplicaCount, advanced, triggers, fallback)"
        );
        assert_eq!(
            error(&behavior(
                "        scaleUp:\n          stabilisationWindowSeconds: 30\n"
            )),
            "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.stabilisationWindowSeconds: unknown field (known here: stabilizationWindowSeconds, selectPolicy, policies, tolerance)"
        );
    }

    #[test]
    fn pause_annotations_and_other_targets_are_errors() {
        assert_eq!(
            error(&MINIMAL.replace(
                "  name: consumer\nspec",
                "  name: consumer\n  annotations:\n    autoscaling.keda.sh/paused-replicas: \"0\"\nspec"
            )),
            "metadata.annotations.\"autoscaling.keda.sh/paused-replicas\": is not supported by devstack (it pauses or forces KEDA's scaling)"
        );
        assert_eq!(
            error(&edit(
                "    name: consumer\n  triggers",
                "    name: consumer\n    kind: StatefulSet\n  triggers"
            )),
            "spec.scaleTargetRef.kind: \"StatefulSet\": devstack runs the replicas of a Deployment only"
        );
    }
}

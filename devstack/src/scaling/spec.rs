//! What devstack reads from a ScaledObject (and the Deployment it scales), with KEDA's and
//! Kubernetes' defaults for what is absent. Anything it cannot honour is an error naming the file
//! and the field.
//!
//! The manifest is read with serde derive into the structs at the end of this file, which hold it
//! as written (each field's type checked by `yaml`), then `validate` applies KEDA's and the API
//! server's rules and defaults.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_yaml_ng::Value;

use super::{
    clock::seconds,
    hpa::{Behavior, Hpa, PolicyKind, ScalingPolicy, ScalingRules, SelectPolicy},
    trigger::{Trigger, TriggerDoc},
    yaml::{self, At, Int32, List, Object, Quantity, Str, Strict},
};
use crate::manifests;

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
// kubernetes pkg/apis/autoscaling/validation: MaxStabilizationWindowSeconds, MaxPeriodSeconds.
const MAX_STABILIZATION_WINDOW_SECONDS: i64 = 3600;
const MAX_PERIOD_SECONDS: i64 = 1800;
const INT32_MAX: i64 = i32::MAX as i64;

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

impl ScalingSpec {
    /// Reads the ScaledObject at `path` (a YAML file, possibly with other documents) and the
    /// Deployment it scales from the YAML files in the same directory (see [`Manifest::load`]).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Manifest::load(path)?.spec()
    }

    /// The committed ScaledObject and its Deployment (`deploy/base`), built into devstack.
    pub fn committed() -> anyhow::Result<Self> {
        Manifest::committed()?.spec()
    }

    /// The ScaledObject in `text`, the YAML of `file`, with the default grace period.
    #[cfg(test)]
    fn parse(file: &str, text: &str) -> anyhow::Result<Self> {
        Manifest::from_text(file, text)?.spec()
    }

    /// The HPA KEDA creates for this ScaledObject.
    pub fn hpa(&self) -> Hpa {
        Hpa::new(
            self.min_replica_count,
            self.max_replica_count,
            self.trigger.target,
            self.behavior.clone(),
        )
    }
}

/// A ScaledObject as written, with the grace period of the Deployment it scales: what a
/// [`ScalingSpec`] is read from, and what `plan --sweep` edits field by field before reading each
/// copy the same way, with the same errors.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read: its path, or the built-in one's name.
    file: String,
    doc: Value,
    grace: Duration,
}

impl Manifest {
    /// The ScaledObject at `path` and the grace period of its Deployment, from the YAML files in
    /// the same directory.
    ///
    /// The Deployment is optional: a ScaledObject on its own (say, copied out to be tuned) runs
    /// with Kubernetes' default grace period of 30 s, as its pods would if the Deployment's
    /// template set none. A Deployment that is there but unreadable, or found twice, is an error,
    /// reported after any error of the ScaledObject itself.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{file}: cannot read the file"))?;
        let mut manifest = Self::from_text(&file, &text)?;
        let target = manifest.spec()?.target;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        manifest.grace = grace_period(&target, yaml_files(&dir)?, &dir.display().to_string())?;
        Ok(manifest)
    }

    /// The committed ScaledObject and its Deployment (`deploy/base`), built into devstack.
    pub fn committed() -> anyhow::Result<Self> {
        let mut manifest = Self::from_text(
            &manifests::SCALED_OBJECT.to_string(),
            manifests::SCALED_OBJECT.text,
        )?;
        let target = manifest.spec()?.target;
        let deployment = manifests::DEPLOYMENT.to_string();
        let docs = documents(&deployment, manifests::DEPLOYMENT.text);
        manifest.grace = grace_period(
            &target,
            [docs.map(|d| (deployment.clone(), d))],
            &deployment,
        )?;
        Ok(manifest)
    }

    /// The one ScaledObject in `text`, the YAML of `file`, on its own: the default grace period.
    pub fn from_text(file: &str, text: &str) -> anyhow::Result<Self> {
        let mut found = None;
        for doc in documents(file, text)? {
            if doc.get("kind").and_then(Value::as_str) != Some("ScaledObject") {
                continue;
            }
            if found.is_some() {
                return Err(anyhow!(
                    "{file}: holds several ScaledObjects; devstack runs one, give it a file with exactly one"
                ));
            }
            found = Some(doc);
        }
        let Some(doc) = found else {
            return Err(anyhow!(
                "{file}: no ScaledObject (kind: ScaledObject, apiVersion: keda.sh/v1alpha1) in this file"
            ));
        };
        Ok(Self {
            file: file.to_owned(),
            doc,
            grace: DEFAULT_TERMINATION_GRACE_PERIOD,
        })
    }

    /// Where it was read: its path, or the built-in one's name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Its settings, as KEDA and the HPA apply them; an error names what devstack cannot honour.
    pub fn spec(&self) -> anyhow::Result<ScalingSpec> {
        let spec = yaml::parse::<ScaledObject>(&self.file, self.doc.clone())?
            .validate(&At::root(&self.file))?;
        Ok(ScalingSpec {
            termination_grace_period: self.grace,
            ..spec
        })
    }

    /// Sets the field at `path` (written as errors write it, from the document's root:
    /// `spec.triggers[0].metadata.messageCount`) to `value`, or removes it when `None`. Mappings
    /// on the way are made as needed; whether the value is one devstack honours is for
    /// [`spec`](Self::spec) to say.
    pub fn set(&mut self, path: &str, value: Option<Value>) -> anyhow::Result<()> {
        yaml::set(&mut self.doc, &At::root(&self.file), path, value)
    }

    /// The pods' terminationGracePeriodSeconds, in place of the Deployment's.
    pub fn set_grace_period(&mut self, grace: Duration) {
        self.grace = grace;
    }
}

/// The YAML documents of `file`; empty documents (a trailing `---`) left out.
fn documents(file: &str, text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| anyhow!("{file}: malformed YAML: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The documents of every YAML file in `dir`, by file name, in name order; each file is read
/// when its turn comes.
fn yaml_files(
    dir: &Path,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(String, Vec<Value>)>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the directory", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(|path| {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{file}: cannot read the file"))?;
        let docs = documents(&file, &text)?;
        Ok((file, docs))
    }))
}

/// `terminationGracePeriodSeconds` of the Deployment `name` among the documents of `files` (the
/// kustomize base keeps it beside the ScaledObject); 30 s when there is none. `place` says where
/// the files are, for the error that finds it twice.
fn grace_period(
    name: &str,
    files: impl IntoIterator<Item = anyhow::Result<(String, Vec<Value>)>>,
    place: &str,
) -> anyhow::Result<Duration> {
    let mut found: Vec<(String, Duration)> = Vec::new();
    for file in files {
        let (file, docs) = file?;
        for doc in docs {
            let is_it = doc.get("kind").and_then(Value::as_str) == Some("Deployment")
                && doc.get("apiVersion").and_then(Value::as_str) == Some("apps/v1")
                && doc
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    == Some(name);
            if is_it {
                let deployment: Deployment = yaml::parse(&file, doc)?;
                let grace = deployment.grace_period(&At::root(&file))?;
                found.push((file.clone(), grace));
            }
        }
    }
    match found.as_slice() {
        [] => Ok(DEFAULT_TERMINATION_GRACE_PERIOD),
        [(_, grace)] => Ok(*grace),
        several => {
            let files: Vec<&str> = several.iter().map(|(file, _)| file.as_str()).collect();
            Err(anyhow!(
                "{place}: several Deployments named {name:?} ({}); devstack cannot tell which one the ScaledObject scales",
                files.join(", ")
            ))
        }
    }
}

/// An int32 field's value when set, if within `min..=max`; else the error `{n} {rule}`.
fn within(
    value: Option<Int32>,
    at: &At<'_>,
    (min, max): (i64, i64),
    rule: &str,
) -> anyhow::Result<Option<i64>> {
    match value {
        Some(Int32(n)) if n < min || n > max => Err(at.error(format!("{n} {rule}"))),
        Some(Int32(n)) => Ok(Some(n)),
        None => Ok(None),
    }
}

/// An int32 field that must be there, within `min..=max`.
fn required_within(
    value: Option<Int32>,
    at: &At<'_>,
    range: (i64, i64),
    rule: &str,
) -> anyhow::Result<i64> {
    at.required(within(value, at, range, rule)?)
}

fn seconds_of(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

impl ScaledObject {
    fn validate(self, root: &At<'_>) -> anyhow::Result<ScalingSpec> {
        let at = root.field("apiVersion");
        let Str(api_version) = at.required(self.api_version)?;
        if api_version != "keda.sh/v1alpha1" {
            return Err(at.error(format!(
                "{api_version:?} is not keda.sh/v1alpha1, the ScaledObject version KEDA v2 serves"
            )));
        }
        let at = root.field("metadata");
        let Object(metadata) = at.required(self.metadata)?;
        let Str(name) = at.field("name").required(metadata.name)?;
        if let Some(Object(annotations)) = &metadata.annotations {
            refuse_annotations(annotations, &at.field("annotations"))?;
        }
        let at = root.field("spec");
        let Strict(spec) = at.required(self.spec)?;
        spec.validate(name, &at)
    }
}

/// KEDA's annotations that pause or force scaling (apis/keda/v1alpha1/scaledobject_types.go)
/// change every decision; devstack does not model them.
fn refuse_annotations(annotations: &BTreeMap<String, Value>, at: &At<'_>) -> anyhow::Result<()> {
    const CHANGING: [&str; 5] = [
        "autoscaling.keda.sh/paused-replicas",
        "autoscaling.keda.sh/paused",
        "autoscaling.keda.sh/paused-scale-in",
        "autoscaling.keda.sh/paused-scale-out",
        "autoscaling.keda.sh/force-activation",
    ];
    for key in CHANGING {
        if annotations.get(key).is_some_and(|v| !v.is_null()) {
            return Err(at
                .quoted(key)
                .error("is not supported by devstack (it pauses or forces KEDA's scaling)"));
        }
    }
    Ok(())
}

impl ScaledObjectSpec {
    fn validate(self, name: String, at: &At<'_>) -> anyhow::Result<ScalingSpec> {
        // A kustomize patch (an overlay's scaling.yaml) has no scaleTargetRef: say what is wanted.
        let target_at = at.field("scaleTargetRef");
        let Strict(target_ref) = self.scale_target_ref.ok_or_else(|| {
            target_at.error(
                "is required (devstack reads a whole ScaledObject, not a kustomize patch of one)",
            )
        })?;
        let Str(target) = target_at.field("name").required(target_ref.name)?;
        // KEDA scales any resource with a scale subresource; devstack runs a Deployment's pods,
        // and a StatefulSet, say, picks its victims differently.
        if let Some(Str(kind)) = &target_ref.kind
            && kind != "Deployment"
        {
            return Err(target_at.field("kind").error(format!(
                "{kind:?}: devstack runs the replicas of a Deployment only"
            )));
        }
        if let Some(Str(api)) = &target_ref.api_version
            && api != "apps/v1"
        {
            return Err(target_at
                .field("apiVersion")
                .error(format!("{api:?}: a Deployment is apps/v1")));
        }
        // idleReplicaCount changes what "inactive" scales to (scale_scaledobjects.go:
        // getIdleOrMinimumReplicaCount); devstack follows the plain 0 <-> N path only.
        if self.idle_replica_count.is_some() {
            return Err(at
                .field("idleReplicaCount")
                .error("is not supported by devstack (it follows minReplicaCount only)"));
        }

        let min = within(
            self.min_replica_count,
            &at.field("minReplicaCount"),
            (0, INT32_MAX),
            "must be 0 or more",
        )?
        .unwrap_or(DEFAULT_MIN_REPLICA_COUNT);
        let max_at = at.field("maxReplicaCount");
        let max = within(
            self.max_replica_count,
            &max_at,
            (1, INT32_MAX),
            "must be 1 or more (the HPA's maxReplicas)",
        )?
        .unwrap_or(DEFAULT_MAX_REPLICA_COUNT);
        // scaledobject_types.go: CheckReplicaCountBoundsAreValid.
        if min > max {
            return Err(max_at.error(format!("{max} is less than minReplicaCount {min}")));
        }
        let period = |value, key, min, rule| within(value, &at.field(key), (min, INT32_MAX), rule);
        let polling = period(
            self.polling_interval,
            "pollingInterval",
            1,
            "must be 1 or more (seconds)",
        )?
        .unwrap_or(DEFAULT_POLLING_INTERVAL);
        let cooldown = period(
            self.cooldown_period,
            "cooldownPeriod",
            0,
            "must be 0 or more (seconds)",
        )?
        .unwrap_or(DEFAULT_COOLDOWN_PERIOD);
        let initial_cooldown = period(
            self.initial_cooldown_period,
            "initialCooldownPeriod",
            0,
            "must be 0 or more (seconds)",
        )?
        .unwrap_or(DEFAULT_INITIAL_COOLDOWN_PERIOD);

        let at_triggers = at.field("triggers");
        let List(triggers) = at_triggers.required(self.triggers)?;
        let n = triggers.len();
        let Ok([Strict(trigger)]) = <[_; 1]>::try_from(triggers) else {
            return Err(at_triggers.error(format!(
                "has {n} triggers; devstack honours exactly one (azure-servicebus or rabbitmq)"
            )));
        };
        let trigger = trigger.validate(&at_triggers.index(0))?;
        let behavior = match self.advanced {
            Some(Strict(advanced)) => advanced.behavior(&at.field("advanced"))?,
            None => None,
        };

        Ok(ScalingSpec {
            name,
            target,
            min_replica_count: count(min),
            max_replica_count: count(max),
            polling_interval: seconds_of(polling),
            cooldown_period: seconds_of(cooldown),
            initial_cooldown_period: seconds_of(initial_cooldown),
            trigger,
            behavior,
            termination_grace_period: DEFAULT_TERMINATION_GRACE_PERIOD,
        })
    }
}

impl Advanced {
    fn behavior(self, at: &At<'_>) -> anyhow::Result<Option<Behavior>> {
        // scaledobject_types.go: IsUsingModifiers, true unless scalingModifiers is empty.
        if let Some(Object(modifiers)) = &self.scaling_modifiers
            && !modifiers.is_empty()
        {
            return Err(at.field("scalingModifiers").error(
                "is not supported by devstack (it computes one trigger's metric, no formula)",
            ));
        }
        let Some(Strict(config)) = self.horizontal_pod_autoscaler_config else {
            return Ok(None);
        };
        let Some(Strict(behavior)) = config.behavior else {
            return Ok(None);
        };
        // kubernetes pkg/apis/autoscaling/v2/defaults.go: a behavior that is there gets every
        // missing field from defaultHPAScaleUpRules / defaultHPAScaleDownRules.
        let at = at.field("horizontalPodAutoscalerConfig").field("behavior");
        Ok(Some(Behavior {
            scale_up: rules(
                behavior.scale_up,
                &at.field("scaleUp"),
                ScalingRules::scale_up_default(),
            )?,
            scale_down: rules(
                behavior.scale_down,
                &at.field("scaleDown"),
                ScalingRules::scale_down_default(),
            )?,
        }))
    }
}

/// One direction's rules over `defaults` (defaults.go: copyHPAScalingRules), validated as the API
/// server does (pkg/apis/autoscaling/validation: validateScalingRules, validateScalingPolicy).
fn rules(
    doc: Option<Strict<RulesDoc>>,
    at: &At<'_>,
    defaults: ScalingRules,
) -> anyhow::Result<ScalingRules> {
    let Some(Strict(doc)) = doc else {
        return Ok(defaults);
    };
    let mut out = defaults;
    if let Some(window) = within(
        doc.stabilization_window_seconds,
        &at.field("stabilizationWindowSeconds"),
        (0, MAX_STABILIZATION_WINDOW_SECONDS),
        "must be between 0 and 3600 (seconds)",
    )? {
        out.stabilization_window = seconds_of(window);
    }
    if let Some(Str(select)) = doc.select_policy {
        out.select_policy = match select.as_str() {
            "Max" => SelectPolicy::Max,
            "Min" => SelectPolicy::Min,
            "Disabled" => SelectPolicy::Disabled,
            other => {
                return Err(at
                    .field("selectPolicy")
                    .error(format!("{other:?} is not Max, Min or Disabled")));
            }
        };
    }
    if let Some(List(policies)) = doc.policies {
        let at = at.field("policies");
        if policies.is_empty() {
            return Err(at.error("must hold at least one policy"));
        }
        out.policies = policies
            .into_iter()
            .enumerate()
            .map(|(i, Strict(policy))| policy.validate(&at.index(i)))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(Quantity(text)) = doc.tolerance {
        out.tolerance = Some(tolerance(&text).ok_or_else(|| {
            at.field("tolerance").error(format!(
                "{text:?} is not a tolerance of 0 or more (e.g. 0.05 or 50m)"
            ))
        })?);
    }
    Ok(out)
}

impl PolicyDoc {
    fn validate(self, at: &At<'_>) -> anyhow::Result<ScalingPolicy> {
        let kind_at = at.field("type");
        let kind = match kind_at.required(self.kind)?.0.as_str() {
            "Pods" => PolicyKind::Pods,
            "Percent" => PolicyKind::Percent,
            other => return Err(kind_at.error(format!("{other:?} is not Pods or Percent"))),
        };
        let value = required_within(
            self.value,
            &at.field("value"),
            (1, INT32_MAX),
            "must be greater than 0",
        )?;
        let period = required_within(
            self.period_seconds,
            &at.field("periodSeconds"),
            (1, MAX_PERIOD_SECONDS),
            "must be between 1 and 1800 (seconds)",
        )?;
        Ok(ScalingPolicy {
            kind,
            value: count(value),
            period: seconds_of(period),
        })
    }
}

/// A `tolerance` quantity: a plain number (`0.05`, `1`) or milli-units (`50m`). Kubernetes takes
/// any quantity, but other suffixes (`k`, `Mi`, exponents) make no sense for a ratio.
fn tolerance(text: &str) -> Option<f64> {
    let (digits, scale) = match text.strip_suffix('m') {
        Some(d) => (d, 1000.0),
        None => (text, 1.0),
    };
    let valid = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    match digits.parse::<f64>() {
        Ok(v) if valid && v.is_finite() => Some(v / scale),
        _ => None,
    }
}

impl Deployment {
    /// Its pods' grace period. A Deployment patch (an overlay's) may leave the pod template out:
    /// the field is absent then, as it is from a template that does not set it.
    fn grace_period(self, root: &At<'_>) -> anyhow::Result<Duration> {
        let at = root
            .field("spec")
            .field("template")
            .field("spec")
            .field("terminationGracePeriodSeconds");
        let seconds = self
            .spec
            .and_then(|Object(spec)| spec.template)
            .and_then(|Object(template)| template.spec)
            .and_then(|Object(pod)| pod.termination_grace_period_seconds);
        Ok(
            within(seconds, &at, (0, i64::MAX), "must be 0 or more (seconds)")?
                .map_or(DEFAULT_TERMINATION_GRACE_PERIOD, seconds_of),
        )
    }
}

// The manifests as written, field by field: what `validate` reads. A `Strict` mapping refuses
// keys that are not its fields (in the order the error lists them); fields read but not used
// are `IgnoredAny`.

/// A ScaledObject (keda.sh/v1alpha1); other top-level fields (kind, status) are not read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObject {
    api_version: Option<Str>,
    metadata: Option<Object<ObjectMeta>>,
    spec: Option<Strict<ScaledObjectSpec>>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    name: Option<Str>,
    annotations: Option<Object<BTreeMap<String, Value>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObjectSpec {
    scale_target_ref: Option<Strict<ScaleTargetRef>>,
    polling_interval: Option<Int32>,
    initial_cooldown_period: Option<Int32>,
    cooldown_period: Option<Int32>,
    idle_replica_count: Option<IgnoredAny>,
    min_replica_count: Option<Int32>,
    max_replica_count: Option<Int32>,
    advanced: Option<Strict<Advanced>>,
    triggers: Option<List<Strict<TriggerDoc>>>,
    #[serde(rename = "fallback")]
    _fallback: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaleTargetRef {
    name: Option<Str>,
    api_version: Option<Str>,
    kind: Option<Str>,
    #[serde(rename = "envSourceContainerName")]
    _env_source_container_name: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Advanced {
    horizontal_pod_autoscaler_config: Option<Strict<HpaConfig>>,
    #[serde(rename = "restoreToOriginalReplicaCount")]
    _restore_to_original_replica_count: Option<IgnoredAny>,
    scaling_modifiers: Option<Object<serde_yaml_ng::Mapping>>,
}

#[derive(Deserialize)]
struct HpaConfig {
    behavior: Option<Strict<BehaviorDoc>>,
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BehaviorDoc {
    scale_up: Option<Strict<RulesDoc>>,
    scale_down: Option<Strict<RulesDoc>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RulesDoc {
    stabilization_window_seconds: Option<Int32>,
    select_policy: Option<Str>,
    policies: Option<List<Strict<PolicyDoc>>>,
    tolerance: Option<Quantity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyDoc {
    #[serde(rename = "type")]
    kind: Option<Str>,
    value: Option<Int32>,
    period_seconds: Option<Int32>,
}

/// An apps/v1 Deployment, down to its pods' grace period.
#[derive(Deserialize)]
struct Deployment {
    spec: Option<Object<DeploymentSpec>>,
}

#[derive(Deserialize)]
struct DeploymentSpec {
    template: Option<Object<PodTemplate>>,
}

#[derive(Deserialize)]
struct PodTemplate {
    spec: Option<Object<PodSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    termination_grace_period_seconds: Option<Int32>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::scaling::{hpa::DOWNSCALE_STABILISATION_WINDOW, trigger::TriggerKind};

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

    /// Reads `text` as the ScaledObject file `so.yaml`, alone (no Deployment beside it).
    fn load(text: &str) -> anyhow::Result<ScalingSpec> {
        ScalingSpec::parse("so.yaml", text)
    }

    /// The error `text` gives, with the file's name taken off the front.
    fn error(text: &str) -> String {
        let message = load(text)
            .expect_err("the ScaledObject is refused")
            .to_string();
        message
            .strip_prefix("so.yaml: ")
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
        // The copy built into devstack reads the same, its Deployment's grace period included.
        assert_eq!(
            ScalingSpec::committed().expect("the built-in ScaledObject loads"),
            spec
        );
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
                    scale_up: ScalingRules {
                        stabilization_window: Duration::ZERO,
                        select_policy: SelectPolicy::Max,
                        policies: vec![ScalingPolicy {
                            kind: PolicyKind::Pods,
                            value: 10,
                            period: Duration::from_secs(15),
                        }],
                        tolerance: None,
                    },
                    scale_down: ScalingRules {
                        stabilization_window: DOWNSCALE_STABILISATION_WINDOW,
                        select_policy: SelectPolicy::Max,
                        policies: vec![ScalingPolicy {
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
        let dir = Dir::new();
        let spec = ScalingSpec::load(&dir.write("so.yaml", MINIMAL)).expect("loads");
        assert_eq!(spec, load(MINIMAL).expect("loads"));
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
                scale_up: ScalingRules {
                    stabilization_window: Duration::ZERO,
                    select_policy: SelectPolicy::Max,
                    policies: vec![
                        ScalingPolicy {
                            kind: PolicyKind::Pods,
                            value: 4,
                            period: fifteen
                        },
                        ScalingPolicy {
                            kind: PolicyKind::Percent,
                            value: 100,
                            period: fifteen
                        },
                    ],
                    tolerance: None,
                },
                scale_down: ScalingRules {
                    stabilization_window: Duration::from_secs(300),
                    select_policy: SelectPolicy::Max,
                    policies: vec![ScalingPolicy {
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
            vec![ScalingPolicy {
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

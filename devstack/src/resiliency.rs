//! The part of a Dapr `Resiliency` (dapr.io/v1alpha1) that applies to the sidecar: the inbound
//! retry policy of each input binding, with which daprd retries the app's OnBindingEvent before
//! it gives the message back to the queue (dapr/dapr `pkg/runtime/processor/binding/send.go`,
//! `pkg/resiliency`; the backoffs are dapr/kit `retry` over cenkalti/backoff v4).
//!
//! What the sidecar cannot do as daprd does (inbound timeouts and circuit breakers) stops it at
//! start, naming the field; the rest of the file (apps, actors, outbound policies: the sidecar's
//! output side never fails) is read and not used.
//!
//! `matching` is read and checked, as daprd does. Only `httpStatusCodes` ever applies: daprd's
//! OnBindingEvent call to a gRPC app returns the plain gRPC error, not the `CodeError` that
//! `matching` is tested against, so every failed call is retried, INVALID_ARGUMENT included; an
//! HTTP app's non-2xx answer is a `CodeError`, retried only if `httpStatusCodes` is empty or
//! lists it (a failed connection is retried regardless).

use std::{collections::BTreeMap, ops::RangeInclusive, path::Path, time::Duration};

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::time::Instant;

const API_VERSION: &str = "dapr.io/v1alpha1";
const KIND: &str = "Resiliency";

/// dapr/kit `retry.DefaultConfig()`: what a retry policy leaves out.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);
const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(60);
/// cenkalti/backoff's exponential defaults, which the Resiliency schema cannot change.
const INITIAL_INTERVAL: Duration = Duration::from_millis(500);
const RANDOMIZATION_FACTOR: f64 = 0.5;
const MULTIPLIER: f64 = 1.5;
const MAX_ELAPSED_TIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    #[serde(default)]
    scopes: Vec<String>,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    policies: Policies,
    #[serde(default)]
    targets: Targets,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Policies {
    #[serde(default)]
    timeouts: BTreeMap<String, String>,
    #[serde(default)]
    retries: BTreeMap<String, RetrySpec>,
    #[serde(default)]
    circuit_breakers: BTreeMap<String, serde_yaml_ng::Value>,
}

/// The CRD's retry policy; no other field exists.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetrySpec {
    policy: Option<String>,
    duration: Option<String>,
    max_interval: Option<String>,
    max_retries: Option<i64>,
    matching: Option<Matching>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Matching {
    #[serde(rename = "httpStatusCodes", default)]
    http_status_codes: String,
    #[serde(rename = "gRPCStatusCodes", default)]
    grpc_status_codes: String,
}

#[derive(Debug, Default, Deserialize)]
struct Targets {
    #[serde(default)]
    components: BTreeMap<String, ComponentTarget>,
}

#[derive(Debug, Default, Deserialize)]
struct ComponentTarget {
    #[serde(default)]
    inbound: PolicyNames,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyNames {
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    retry: String,
    #[serde(default)]
    circuit_breaker: String,
}

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryBackoff {
    Constant(Duration),
    /// 500 ms, times 1.5 per retry up to `max_interval`, each randomized by +-50%; no retry
    /// once 15 minutes have passed.
    Exponential {
        max_interval: Duration,
    },
}

/// One retry policy, as daprd runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRetryPolicy {
    /// Its name in the file, for the logs.
    pub name: String,
    pub backoff: RetryBackoff,
    /// Retries after the first call; `None`: no limit (`maxRetries: -1`, the default).
    pub max_retries: Option<u64>,
    /// `matching.httpStatusCodes`; `None` (empty or absent): every status is retried.
    pub http_status_codes: Option<Vec<RangeInclusive<i32>>>,
}

impl BindingRetryPolicy {
    /// Whether an HTTP app's answer with `status` is retried (dapr/dapr `pkg/resiliency/retry.go`
    /// `mustRetryStatusCode`).
    pub fn retries_http_status(&self, status: u16) -> bool {
        self.http_status_codes.as_ref().is_none_or(|ranges| {
            ranges
                .iter()
                .any(|range| range.contains(&i32::from(status)))
        })
    }

    /// The delays of one run of calls, from its first failure on.
    pub fn retries(&self) -> Retries<'_> {
        Retries {
            policy: self,
            done: 0,
            interval: INITIAL_INTERVAL,
            started: Instant::now(),
        }
    }
}

/// cenkalti/backoff's `WithMaxRetries` over a constant or exponential backoff.
#[derive(Debug)]
pub struct Retries<'a> {
    policy: &'a BindingRetryPolicy,
    done: u64,
    interval: Duration,
    started: Instant,
}

impl Retries<'_> {
    /// The wait before the next call, or `None` when the policy gives up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.policy.max_retries.is_some_and(|max| self.done >= max) {
            return None;
        }
        self.done += 1;
        match self.policy.backoff {
            RetryBackoff::Constant(delay) => Some(delay),
            RetryBackoff::Exponential { max_interval } => {
                let current = self.interval.as_secs_f64();
                let delta = RANDOMIZATION_FACTOR * current;
                let next =
                    Duration::from_secs_f64(current - delta + fastrand::f64() * (2.0 * delta));
                self.interval = if current >= max_interval.as_secs_f64() / MULTIPLIER {
                    max_interval
                } else {
                    Duration::from_secs_f64(current * MULTIPLIER)
                };
                (self.started.elapsed() + next <= MAX_ELAPSED_TIME).then_some(next)
            }
        }
    }
}

/// Reads a Resiliency file and returns the inbound retry policy of each of `bindings` that has
/// one, for an app `app_id` (a Resiliency with `scopes` applies only to the app ids it lists).
pub fn load(
    path: &Path,
    app_id: &str,
    bindings: &[String],
) -> anyhow::Result<BTreeMap<String, BindingRetryPolicy>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the Resiliency {}", path.display()))?;
    parse(&text, app_id, bindings).with_context(|| format!("in {}", path.display()))
}

/// Like [`load`], for a Resiliency already in memory (the one built into devstack), which errors
/// call `name`.
pub fn from_text(
    text: &str,
    name: &str,
    app_id: &str,
    bindings: &[String],
) -> anyhow::Result<BTreeMap<String, BindingRetryPolicy>> {
    parse(text, app_id, bindings).with_context(|| format!("in {name}"))
}

fn parse(
    text: &str,
    app_id: &str,
    bindings: &[String],
) -> anyhow::Result<BTreeMap<String, BindingRetryPolicy>> {
    let document: Document = serde_yaml_ng::from_str(text).context("not a Resiliency")?;
    if document.api_version != API_VERSION || document.kind != KIND {
        bail!(
            "apiVersion/kind are {}/{}, not {API_VERSION}/{KIND}",
            document.api_version,
            document.kind
        );
    }
    // Every retry policy is decoded, used or not, as daprd does: a bad one is an error.
    let mut retries = BTreeMap::new();
    for (name, spec) in &document.spec.policies.retries {
        let policy =
            retry_policy(name, spec).with_context(|| format!("spec.policies.retries.{name}"))?;
        retries.insert(name.clone(), policy);
    }
    let mut policies = BTreeMap::new();
    if !document.scopes.is_empty() && !document.scopes.iter().any(|s| s == app_id) {
        return Ok(policies);
    }
    let spec = &document.spec;
    for binding in bindings {
        let (names, at) = match spec.targets.components.get(binding) {
            Some(target) => (
                PolicyNames {
                    timeout: target.inbound.timeout.clone(),
                    retry: target.inbound.retry.clone(),
                    circuit_breaker: target.inbound.circuit_breaker.clone(),
                },
                format!("spec.targets.components.{binding}.inbound"),
            ),
            // No target: daprd falls back to the default policies, most specific first.
            None => (
                PolicyNames {
                    timeout: default_policy("Timeout", &spec.policies.timeouts),
                    retry: default_policy("Retry", &spec.policies.retries),
                    circuit_breaker: default_policy(
                        "CircuitBreaker",
                        &spec.policies.circuit_breakers,
                    ),
                },
                "spec.policies (default policy)".to_owned(),
            ),
        };
        if !names.timeout.is_empty() {
            bail!(
                "{at}.timeout ({}): the sidecar does not emulate inbound timeouts, only retries",
                names.timeout
            );
        }
        if !names.circuit_breaker.is_empty() {
            bail!(
                "{at}.circuitBreaker ({}): the sidecar does not emulate circuit breakers, only retries",
                names.circuit_breaker
            );
        }
        if names.retry.is_empty() {
            continue;
        }
        let policy = retries.get(&names.retry).with_context(|| {
            format!(
                "{at}.retry names {:?}, which spec.policies.retries does not define",
                names.retry
            )
        })?;
        policies.insert(binding.clone(), policy.clone());
    }
    Ok(policies)
}

/// daprd's default policy names for a binding's inbound side, most specific first
/// (`Default%sRetryPolicy` over `BindingComponentInbound`, `ComponentInbound`, `Component`, "").
fn default_policy<V>(kind: &str, defined: &BTreeMap<String, V>) -> String {
    [
        "BindingComponentInbound",
        "ComponentInbound",
        "Component",
        "",
    ]
    .iter()
    .map(|level| format!("Default{level}{kind}Policy"))
    .find(|name| defined.contains_key(name))
    .unwrap_or_default()
}

fn retry_policy(name: &str, spec: &RetrySpec) -> anyhow::Result<BindingRetryPolicy> {
    let duration = |field: &str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .with_context(|| format!("{field}: {v:?} is not a duration (e.g. 5s, 500ms)")),
    };
    let backoff = match spec
        .policy
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("constant") => {
            RetryBackoff::Constant(duration("duration", &spec.duration, DEFAULT_DURATION)?)
        }
        Some("exponential") => RetryBackoff::Exponential {
            max_interval: duration("maxInterval", &spec.max_interval, DEFAULT_MAX_INTERVAL)?,
        },
        Some(other) => bail!("policy: {other:?} is neither constant nor exponential"),
    };
    let max_retries = match spec.max_retries {
        None | Some(-1) => None,
        Some(n) => Some(
            u64::try_from(n).with_context(|| format!("maxRetries: {n} is neither -1 nor >= 0"))?,
        ),
    };
    let mut http_status_codes = None;
    if let Some(matching) = &spec.matching {
        http_status_codes =
            codes(&matching.http_status_codes, 100..=599).context("matching.httpStatusCodes")?;
        codes(&matching.grpc_status_codes, 0..=16).context("matching.gRPCStatusCodes")?;
    }
    Ok(BindingRetryPolicy {
        name: name.to_owned(),
        backoff,
        max_retries,
        http_status_codes,
    })
}

/// Parses a `matching` list as daprd does: comma-separated codes or `start-end` ranges; `None`
/// for an empty list (which matches every code).
fn codes(
    patterns: &str,
    valid: RangeInclusive<i32>,
) -> anyhow::Result<Option<Vec<RangeInclusive<i32>>>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut ranges = Vec::new();
    for pattern in patterns.split(',').filter(|p| !p.is_empty()) {
        let mut bounds = pattern.split('-');
        let (start, end) = match (bounds.next(), bounds.next(), bounds.next()) {
            (Some(start), None, None) => (start, start),
            (Some(start), Some(end), None) => (start, end),
            _ => bail!("{pattern:?}: more than one '-'"),
        };
        let parse = |code: &str| -> anyhow::Result<i32> {
            let code: i32 = code
                .parse()
                .with_context(|| format!("{pattern:?}: {code:?} is not a number"))?;
            if !valid.contains(&code) {
                bail!("{pattern:?}: {code} is not a valid code");
            }
            Ok(code)
        };
        let (start, end) = (parse(start)?, parse(end)?);
        if start > end {
            bail!("{pattern:?}: start above end");
        }
        ranges.push(start..=end);
    }
    Ok(Some(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYED: &str = include_str!("../../deploy/base/resiliency.yaml");

    fn bindings() -> Vec<String> {
        vec!["message-queue".to_owned()]
    }

    fn with(spec: &str) -> anyhow::Result<BTreeMap<String, BindingRetryPolicy>> {
        let text =
            format!("apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\n{spec}");
        parse(&text, "consumer", &bindings())
    }

    #[test]
    fn the_deployed_file_retries_the_consumers_binding_a_few_times_with_backoff() {
        let policies = parse(DEPLOYED, "consumer", &bindings()).unwrap();
        let policy = &policies["message-queue"];
        assert!(
            matches!(policy.backoff, RetryBackoff::Exponential { .. }),
            "{policy:?}"
        );
        assert!(matches!(policy.max_retries, Some(1..=5)), "{policy:?}");
        // Scoped to the consumer: the producer's sidecar reads no binding anyway.
        assert!(parse(DEPLOYED, "producer", &bindings()).unwrap().is_empty());
    }

    #[test]
    fn defaults_are_dapr_kits() {
        let policies = with(
            "spec:\n  policies:\n    retries:\n      r: {}\n  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: r\n",
        )
        .unwrap();
        assert_eq!(
            policies["message-queue"],
            BindingRetryPolicy {
                name: "r".into(),
                backoff: RetryBackoff::Constant(Duration::from_secs(5)),
                max_retries: None,
                http_status_codes: None,
            }
        );
    }

    #[test]
    fn a_binding_without_a_target_takes_the_most_specific_default() {
        let policies = with(
            "spec:\n  policies:\n    retries:\n      DefaultRetryPolicy: {maxRetries: 1}\n      DefaultComponentInboundRetryPolicy: {maxRetries: 2}\n",
        )
        .unwrap();
        assert_eq!(policies["message-queue"].max_retries, Some(2));
        // A target without an inbound retry has none: no fallback to the defaults.
        let policies = with(
            "spec:\n  policies:\n    retries:\n      DefaultRetryPolicy: {maxRetries: 1}\n  targets:\n    components:\n      message-queue:\n        outbound:\n          retry: DefaultRetryPolicy\n",
        )
        .unwrap();
        assert!(policies.is_empty());
    }

    #[test]
    fn http_status_matching_selects_what_an_http_app_answer_retries() {
        let policies = with(
            "spec:\n  policies:\n    retries:\n      r: {matching: {httpStatusCodes: \"429,502-504\"}}\n  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: r\n",
        )
        .unwrap();
        let policy = &policies["message-queue"];
        for (status, retried) in [
            (429, true),
            (503, true),
            (504, true),
            (500, false),
            (400, false),
        ] {
            assert_eq!(policy.retries_http_status(status), retried, "{status}");
        }
        // No matching, or an empty list: every status is retried, as in daprd.
        let policies = with(
            "spec:\n  policies:\n    retries:\n      r: {matching: {gRPCStatusCodes: \"14\"}}\n  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: r\n",
        )
        .unwrap();
        assert!(policies["message-queue"].retries_http_status(400));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (spec, named) in [
            (
                "spec:\n  policies:\n    timeouts:\n      t: 1s\n  targets:\n    components:\n      message-queue:\n        inbound:\n          timeout: t\n",
                "inbound.timeout",
            ),
            (
                "spec:\n  policies:\n    circuitBreakers:\n      DefaultCircuitBreakerPolicy: {maxRequests: 1}\n",
                "circuitBreaker",
            ),
            (
                "spec:\n  targets:\n    components:\n      message-queue:\n        inbound:\n          retry: missing\n",
                "does not define",
            ),
            (
                "spec:\n  policies:\n    retries:\n      r: {policy: linear}\n",
                "spec.policies.retries.r",
            ),
            (
                "spec:\n  policies:\n    retries:\n      r: {maxRetries: -2}\n",
                "maxRetries",
            ),
            (
                "spec:\n  policies:\n    retries:\n      r: {matching: {gRPCStatusCodes: \"14-17\"}}\n",
                "gRPCStatusCodes",
            ),
            (
                "spec:\n  policies:\n    retries:\n      r: {jitter: 1}\n",
                "jitter",
            ),
        ] {
            let err = format!("{:#}", with(spec).unwrap_err());
            assert!(err.contains(named), "{spec}: {err}");
        }
        let err = parse(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: {}\n",
            "a",
            &bindings(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not dapr.io/v1alpha1/Resiliency"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoffs_follow_dapr_kit() {
        let constant = BindingRetryPolicy {
            name: "c".into(),
            backoff: RetryBackoff::Constant(Duration::from_millis(200)),
            max_retries: Some(2),
            http_status_codes: None,
        };
        let mut retries = constant.retries();
        let delays: Vec<_> = std::iter::from_fn(|| retries.next_delay()).collect();
        assert_eq!(delays, [Duration::from_millis(200); 2]);

        let exponential = BindingRetryPolicy {
            name: "e".into(),
            backoff: RetryBackoff::Exponential {
                max_interval: Duration::from_secs(1),
            },
            max_retries: Some(5),
            http_status_codes: None,
        };
        let mut retries = exponential.retries();
        let delays: Vec<_> = std::iter::from_fn(|| retries.next_delay()).collect();
        // 500 ms, 750 ms, then capped at 1 s; each +-50%.
        let nominal = [500, 750, 1000, 1000, 1000];
        assert_eq!(delays.len(), nominal.len());
        for (delay, nominal) in delays.iter().zip(nominal) {
            let ms = delay.as_secs_f64() * 1000.0;
            assert!(
                (0.5 * nominal as f64..=1.5 * nominal as f64).contains(&ms),
                "{delays:?}"
            );
        }

        // maxRetries -1: no limit (a constant backoff never gives up by itself).
        let unlimited = BindingRetryPolicy {
            name: "u".into(),
            backoff: RetryBackoff::Constant(Duration::from_secs(60)),
            max_retries: None,
            http_status_codes: None,
        };
        let mut retries = unlimited.retries();
        assert_eq!(
            std::iter::from_fn(|| retries.next_delay())
                .take(1000)
                .count(),
            1000
        );
    }
}

//! The one trigger devstack honours, and what KEDA's scaler for it reads from the trigger's
//! `metadata`: azure-servicebus (pkg/scalers/azure_servicebus_scaler.go) or rabbitmq
//! (pkg/scalers/rabbitmq_scaler.go), each with its defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::IgnoredAny};

use super::yaml::{At, Object, Quoted, Str};

// pkg/scalers/azure_servicebus_scaler.go: defaultTargetMessageCount.
const DEFAULT_SERVICEBUS_MESSAGE_COUNT: i64 = 5;
// pkg/scalers/rabbitmq_scaler.go: defaultRabbitMQQueueLength.
const DEFAULT_RABBITMQ_QUEUE_LENGTH: f64 = 20.0;

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

impl TriggerDoc {
    /// The trigger at `at`, its scaler's rules applied.
    pub fn validate(self, at: &At<'_>) -> anyhow::Result<Trigger> {
        // pkg/scalers/scaler.go: GetMetricTargetType; "" is AverageValue.
        if let Some(Str(metric_type)) = &self.metric_type
            && metric_type != "AverageValue"
        {
            return Err(at.field("metricType").error(format!(
                "{metric_type:?} is not supported by devstack (only AverageValue, the default)"
            )));
        }
        let kind_at = at.field("type");
        let Str(kind) = kind_at.required(self.kind)?;
        let metadata_at = at.field("metadata");
        let Object(values) = metadata_at.required(self.metadata)?;
        let metadata = TriggerMetadata {
            at: metadata_at,
            values,
        };
        match kind.as_str() {
            "azure-servicebus" => metadata.servicebus(),
            "rabbitmq" => metadata.rabbitmq(),
            other => Err(kind_at.error(format!(
                "{other:?} is not supported by devstack (azure-servicebus or rabbitmq)"
            ))),
        }
    }
}

/// A trigger's `metadata`: strings, each parsed by the field that reads it, as KEDA's typed
/// config does (int64 fields as JSON numbers, booleans with Go's strconv.ParseBool).
struct TriggerMetadata<'a> {
    at: At<'a>,
    values: BTreeMap<String, Quoted>,
}

impl TriggerMetadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|Quoted(s)| s.as_str())
    }

    fn error(&self, key: &str, message: impl std::fmt::Display) -> anyhow::Error {
        self.at.field(key).error(message)
    }

    fn require(&self, key: &str) -> anyhow::Result<&str> {
        self.get(key).ok_or_else(|| self.error(key, "is required"))
    }

    fn whole(&self, key: &str) -> anyhow::Result<Option<i64>> {
        self.get(key)
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| self.error(key, format!("{s:?} is not a whole number")))
            })
            .transpose()
    }

    fn number(&self, key: &str, s: &str) -> anyhow::Result<f64> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| self.error(key, format!("{s:?} is not a number")))
    }

    /// Go's strconv.ParseBool.
    fn boolean(&self, key: &str) -> anyhow::Result<Option<bool>> {
        self.get(key)
            .map(|s| match s {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
                _ => Err(self.error(key, format!("{s:?} is not a boolean (true or false)"))),
            })
            .transpose()
    }

    /// pkg/scalers/azure_servicebus_scaler.go: azureServiceBusMetadata and its Validate.
    fn servicebus(&self) -> anyhow::Result<Trigger> {
        for key in ["topicName", "subscriptionName"] {
            if self.get(key).is_some() {
                return Err(self.error(
                    key,
                    "is not supported by devstack, whose stand-in serves a queue (use queueName)",
                ));
            }
        }
        self.refuse_regex()?;
        let queue_name = self.require("queueName")?.to_owned();
        let target = match self.whole("messageCount")? {
            // The HPA refuses a target that is not positive (autoscaling validation:
            // validateMetricTarget, "must be positive").
            Some(n) if n <= 0 => {
                return Err(self.error(
                    "messageCount",
                    format!("{n} must be greater than 0 (the HPA's averageValue)"),
                ));
            }
            Some(n) => n,
            None => DEFAULT_SERVICEBUS_MESSAGE_COUNT,
        };
        let activation = self.whole("activationMessageCount")?.unwrap_or(0);
        Ok(Trigger {
            kind: TriggerKind::AzureServicebus,
            queue_name,
            target: target as f64,
            activation: activation as f64,
        })
    }

    /// pkg/scalers/rabbitmq_scaler.go: rabbitMQMetadata, Validate and validateTrigger.
    fn rabbitmq(&self) -> anyhow::Result<Trigger> {
        self.refuse_regex()?;
        let queue_name = self.require("queueName")?.to_owned();
        let target = match (self.get("mode"), self.get("value"), self.get("queueLength")) {
            // "If nothing is specified for the trigger then return the default".
            (None, None, None) => DEFAULT_RABBITMQ_QUEUE_LENGTH,
            (None, None, Some(length)) => self.target("queueLength", length)?,
            (_, _, Some(_)) => {
                return Err(self.error(
                    "queueLength",
                    "is deprecated and cannot be combined with mode and value; use mode: QueueLength and value",
                ));
            }
            (None, Some(_), None) => {
                return Err(self.error("value", "needs mode: QueueLength beside it"));
            }
            (Some(mode), _, None) if mode != "QueueLength" => {
                return Err(self.error(
                    "mode",
                    format!("{mode:?} is not supported by devstack (QueueLength only)"),
                ));
            }
            (Some(_), None, None) => {
                return Err(self.error("value", "is required with mode: QueueLength"));
            }
            (Some(_), Some(value), None) => self.target("value", value)?,
        };
        let activation = match self.get("activationValue") {
            Some(s) => self.number("activationValue", s)?,
            None => 0.0,
        };
        let exclude_unacknowledged = self.boolean("excludeUnacknowledged")?.unwrap_or(false);
        if exclude_unacknowledged && self.rabbitmq_protocol()? == Some("amqp") {
            return Err(self.error(
                "excludeUnacknowledged",
                "true needs the http protocol (KEDA refuses it over amqp)",
            ));
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

    /// The HPA's AverageValue target in `key`, whose text is `s`.
    fn target(&self, key: &str, s: &str) -> anyhow::Result<f64> {
        let v = self.number(key, s)?;
        if v < 0.0 {
            return Err(self.error(
                key,
                format!("{v} must be greater than 0 (the HPA's averageValue)"),
            ));
        }
        // rabbitmq_scaler.go: a zero value counts as unset ("value must be specified"); the HPA
        // needs a positive target besides.
        if v == 0.0 {
            return Err(self.error(key, "0 must be greater than 0 (the HPA's averageValue)"));
        }
        // KEDA hands the HPA int64(value * 1000) milli-units (scaler.go: GetMetricTargetMili):
        // below 0.001 that is 0, which the HPA refuses.
        if ((v * 1000.0) as i64) < 1 {
            return Err(self.error(
                key,
                format!("{v} is below 0.001, which KEDA passes to the HPA as a target of 0"),
            ));
        }
        Ok(v)
    }

    /// The protocol KEDA would use, when the metadata says: `protocol`, else the scheme of `host`
    /// (rabbitmq_scaler.go: Validate). `None` when the host comes from a TriggerAuthentication.
    fn rabbitmq_protocol(&self) -> anyhow::Result<Option<&'static str>> {
        match self.get("protocol") {
            Some("amqp") => return Ok(Some("amqp")),
            Some("http") => return Ok(Some("http")),
            Some("auto") | None => {}
            Some(other) => {
                return Err(self.error("protocol", format!("{other:?} is not amqp, http or auto")));
            }
        }
        let scheme = self
            .get("host")
            .and_then(|host| host.split_once("://"))
            .map(|(scheme, _)| scheme);
        Ok(match scheme {
            Some("amqp" | "amqps") => Some("amqp"),
            Some("http" | "https") => Some("http"),
            _ => None,
        })
    }

    /// `useRegex: "true"` scales on a set of queues (their sum, max or average); devstack serves
    /// one.
    fn refuse_regex(&self) -> anyhow::Result<()> {
        if self.boolean("useRegex")? == Some(true) {
            return Err(self.error(
                "useRegex",
                "true is not supported by devstack (it serves one queue, named by queueName)",
            ));
        }
        Ok(())
    }
}

/// A trigger as written (the ScaledObject's `spec.triggers[0]`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerDoc {
    #[serde(rename = "type")]
    kind: Option<Str>,
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    metadata: Option<Object<BTreeMap<String, Quoted>>>,
    metric_type: Option<Str>,
    #[serde(rename = "authenticationRef")]
    _authentication_ref: Option<IgnoredAny>,
    #[serde(rename = "useCachedMetrics")]
    _use_cached_metrics: Option<IgnoredAny>,
}

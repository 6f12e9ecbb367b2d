//! What a control loop decides: a change of the Deployment's replica count, with its inputs and
//! its rule in words, as the log, the status and the dashboard show it.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_for_the_status_with_hpa_fields_only_when_set() {
        let keda = Decision {
            by: By::Keda,
            from: 0,
            to: 1,
            metric: 50,
            reason: "metric 50 > activation 0".into(),
            proposal: None,
            recommendation: None,
            limit: None,
        };
        assert_eq!(
            serde_json::to_value(&keda).expect("serialises"),
            serde_json::json!({
                "by": "keda", "from": 0, "to": 1, "metric": 50,
                "reason": "metric 50 > activation 0",
            })
        );
        let hpa = Decision {
            by: By::Hpa,
            proposal: Some(10),
            recommendation: Some(10),
            limit: Some(4),
            to: 4,
            from: 1,
            reason: "proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4".into(),
            ..keda
        };
        assert_eq!(
            serde_json::to_value(&hpa).expect("serialises"),
            serde_json::json!({
                "by": "hpa", "from": 1, "to": 4, "metric": 50,
                "reason": "proposal ceil(50/5)=10, stabilised 10, capped by max(2*1,4)=4",
                "proposal": 10, "recommendation": 10, "limit": 4,
            })
        );
    }
}

//! KEDA's own executor test cases for ScaledObjects, our transcription of their tables
//! (`../upstream/keda-executor.yaml`), run against this loop. Every case is ported and must pass,
//! or is listed in the data with the reason devstack does not honour it; the counts are checked.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::*;
use crate::scaling::spec::Manifest;

const EXECUTOR: &str = include_str!("../upstream/keda-executor.yaml");

/// When every case polls: long after the ScaledObject was created (the tests' zero
/// CreationTimestamp), so no initial cooldown is still running.
const NOW: Duration = Duration::from_secs(100_000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Executor {
    #[serde(rename = "source")]
    source: String,
    request_scale: Vec<Entry<RequestScale>>,
    conditions: Vec<Entry<RequestScale>>,
    #[serde(rename = "TestGetIdleOrMinimumReplicaCount")]
    idle_or_minimum: Vec<Entry<IdleOrMinimum>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry<T> {
    Listed {
        name: String,
        #[serde(rename = "notHonoured")]
        not_honoured: String,
    },
    Ported(T),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RequestScale {
    name: String,
    min_replica_count: u32,
    replicas: u32,
    active: bool,
    scaled_to: u32,
    active_condition: bool,
    last_active_time_set: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdleOrMinimum {
    name: String,
    min_replica_count: Option<u32>,
    replicas: u32,
}

/// A ScaledObject with these settings, read as `--autoscale` reads one: its minReplicaCount
/// written out or left to KEDA's default.
fn spec(min_replica_count: Option<u32>) -> ScalingSpec {
    let mut manifest = Manifest::committed().expect("the committed ScaledObject");
    let min = min_replica_count.map(Value::from);
    manifest
        .set("spec.minReplicaCount", min)
        .expect("a field of the committed ScaledObject");
    manifest.spec().expect("a ScaledObject devstack honours")
}

/// `(ported, listed)` of `entries`, each ported case checked by `check`.
fn run<T>(
    entries: &[Entry<T>],
    failures: &mut Vec<String>,
    check: impl Fn(&T) -> Result<(), String>,
) -> (usize, usize) {
    let (mut ported, mut listed) = (0, 0);
    for entry in entries {
        match entry {
            Entry::Listed { name, not_honoured } => {
                assert!(!not_honoured.trim().is_empty(), "{name}: no reason");
                listed += 1;
            }
            Entry::Ported(case) => {
                ported += 1;
                if let Err(diff) = check(case) {
                    failures.push(diff);
                }
            }
        }
    }
    (ported, listed)
}

/// RequestScale once, with the trigger's verdict: where the Deployment is scaled to, the Active
/// condition, and lastActiveTime where the test checks it. The other scale executor tests are
/// listed with their reasons; getIdleOrMinimumReplicaCount's cases without idleReplicaCount are
/// the count an inactive ScaledObject leaves the Deployment at, from 0.
#[test]
fn kedas_executor_cases_hold_or_are_listed_with_a_reason() {
    let executor: Executor = serde_yaml_ng::from_str(EXECUTOR).expect("the data reads");
    assert!(
        executor.source.starts_with("kedacore/keda@v2.20.2"),
        "{}",
        executor.source
    );
    let mut failures = Vec::new();
    let request_scale = run(&executor.request_scale, &mut failures, |c| {
        let mut keda = Keda::new(&spec(Some(c.min_replica_count)));
        // The trigger's verdict, as a metric on either side of activationMessageCount 0.
        let metric = u64::from(c.active);
        let scaled_to = keda
            .poll(NOW, metric, c.replicas)
            .map_or(c.replicas, |d| d.to);
        let last_active = c
            .last_active_time_set
            .filter(|want| keda.last_active_time().is_some() != *want);
        if (scaled_to, keda.active()) != (c.scaled_to, c.active_condition) || last_active.is_some()
        {
            return Err(format!(
                "{}: scaled to {scaled_to}, active {}, lastActiveTime {:?}; upstream expects {}, {}, {:?}",
                c.name,
                keda.active(),
                keda.last_active_time(),
                c.scaled_to,
                c.active_condition,
                c.last_active_time_set
            ));
        }
        Ok(())
    });
    let conditions = run(&executor.conditions, &mut failures, |c| {
        Err(format!("{}: ported in a table of listed cases", c.name))
    });
    let idle_or_minimum = run(&executor.idle_or_minimum, &mut failures, |c| {
        let mut keda = Keda::new(&spec(c.min_replica_count));
        let left_at = keda.poll(NOW, 0, 0).map_or(0, |d| d.to);
        match left_at == c.replicas {
            true => Ok(()),
            false => Err(format!(
                "{}: left at {left_at}; upstream expects {}",
                c.name, c.replicas
            )),
        }
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // (ported, listed with a reason), as docs/scaling.md gives them.
    assert_eq!(request_scale, (3, 9));
    assert_eq!(conditions, (0, 19));
    assert_eq!(idle_or_minimum, (2, 2));
}

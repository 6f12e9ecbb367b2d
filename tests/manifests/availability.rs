//! Availability on a real cluster: the producer survives a rollout, a drain and a lost node; no
//! request meets a closing pod; the consumer's budget never holds back a drain or KEDA; KEDA falls
//! back when it cannot read the queue; slow starters have a startup probe.

use std::time::Duration;

use serde_json::Value;

use crate::{
    exposure::selects,
    render::{array, renders, str_at, u64_at},
    wiring::pre_stop_sleep,
};

/// The PodDisruptionBudgets that select the pods of `deployment`.
fn budgets<'a>(objects: &'a [Value], deployment: &Value) -> Vec<&'a Value> {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    objects
        .iter()
        .filter(|o| o["kind"] == "PodDisruptionBudget" && selects(&o["spec"]["selector"], labels))
        .collect()
}

#[test]
fn the_producer_survives_a_drain_a_rollout_and_a_lost_node() {
    for render in renders() {
        let label = &render.label;
        let deployment = render.app("producer");
        let replicas = u64_at(deployment, "/spec/replicas", 1);
        assert!(replicas >= 2, "{label}: {replicas} producer replica(s)");

        let budgets = budgets(&render.objects, deployment);
        assert_eq!(budgets.len(), 1, "{label}: one budget for the producer");
        let spec = &budgets[0]["spec"];
        // One pod may go at a time, one always stays.
        let min_available = spec["minAvailable"].as_u64();
        let max_unavailable = spec["maxUnavailable"].as_u64();
        assert!(
            matches!((min_available, max_unavailable), (Some(m), None) if m >= 1 && m < replicas)
                || matches!((min_available, max_unavailable), (None, Some(m)) if m >= 1 && m < replicas),
            "{label}: the producer's budget neither keeps one up nor lets one go: {spec}"
        );
        assert_eq!(
            spec["unhealthyPodEvictionPolicy"], "AlwaysAllow",
            "{label}: a producer that is not Ready must not block a drain"
        );

        let pod = &deployment["spec"]["template"]["spec"];
        let spread: Vec<&str> = array(&pod["topologySpreadConstraints"])
            .iter()
            .map(|c| {
                assert!(
                    selects(
                        &c["labelSelector"],
                        &deployment["spec"]["template"]["metadata"]["labels"]
                    ),
                    "{label}: a spread constraint that counts other pods: {c}"
                );
                str_at(c, "/topologyKey")
            })
            .collect();
        for key in ["kubernetes.io/hostname", "topology.kubernetes.io/zone"] {
            assert!(
                spread.contains(&key),
                "{label}: the producers are not spread by {key}"
            );
        }
    }
}

#[test]
fn no_request_meets_a_producer_that_is_closing() {
    for render in renders() {
        let label = &render.label;
        let deployment = render.app("producer");
        let grace = Duration::from_secs(u64_at(
            deployment,
            "/spec/template/spec/terminationGracePeriodSeconds",
            30,
        ));
        // Every container that serves the network keeps serving while its endpoint is removed:
        // the producer, and haproxy in front of it where the producer is public.
        for container in array(&deployment["spec"]["template"]["spec"]["containers"]) {
            let name = str_at(container, "/name");
            if array(&container["ports"]).is_empty() {
                continue;
            }
            let sleep = pre_stop_sleep(container);
            assert!(
                sleep >= Duration::from_secs(3) && sleep < grace,
                "{label}: {name}'s preStop sleep {sleep:?} does not cover endpoint removal \
                 within the grace period {grace:?}"
            );
            // The kubelet's own sleep action: the images have no shell for an exec hook.
            assert!(
                container["lifecycle"]["preStop"]["exec"].is_null(),
                "{label}: {name}"
            );
        }
    }
}

#[test]
fn the_consumer_budget_never_holds_back_a_drain_or_keda() {
    for render in renders() {
        let label = &render.label;
        let deployment = render.app("consumer");
        let scaled = render.one("ScaledObject", "consumer");
        assert_eq!(u64_at(scaled, "/spec/minReplicaCount", 0), 0, "{label}");
        let budgets = budgets(&render.objects, deployment);
        assert_eq!(budgets.len(), 1, "{label}: one budget for the consumer");
        let spec = &budgets[0]["spec"];
        // minAvailable would keep a lone consumer from ever being evicted; maxUnavailable lets
        // one go at a time at any count, zero included.
        assert!(
            spec["minAvailable"].is_null()
                && spec["maxUnavailable"].as_u64().is_some_and(|m| m >= 1),
            "{label}: the consumer's budget: {spec}"
        );
        assert_eq!(spec["unhealthyPodEvictionPolicy"], "AlwaysAllow", "{label}");
    }
}

#[test]
fn keda_falls_back_to_working_consumers_when_it_cannot_read_the_queue() {
    for render in renders() {
        let label = &render.label;
        let scaled = render.one("ScaledObject", "consumer");
        let fallback = &scaled["spec"]["fallback"];
        let replicas = u64_at(fallback, "/replicas", 0);
        let max = u64_at(scaled, "/spec/maxReplicaCount", 100);
        assert!(
            replicas >= 1 && replicas <= max,
            "{label}: fallback replicas {replicas} (max {max})"
        );
        assert!(u64_at(fallback, "/failureThreshold", 0) >= 1, "{label}");
        // KEDA refuses a fallback whose triggers are all cpu or memory (CheckFallbackValid), and
        // feeds `replicas` through the metric's target, AverageValue or Value.
        let triggers = array(&scaled["spec"]["triggers"]);
        assert!(
            triggers
                .iter()
                .any(|t| !matches!(t["type"].as_str(), Some("cpu" | "memory"))),
            "{label}: a fallback needs a trigger that is not cpu or memory"
        );
        for trigger in triggers {
            assert!(
                matches!(
                    trigger["metricType"].as_str(),
                    None | Some("AverageValue" | "Value")
                ),
                "{label}: metricType {}",
                trigger["metricType"]
            );
        }
        // A behavior of KEDA 2.17 and later, the guide's minimum (step 1).
        assert!(
            matches!(
                fallback["behavior"].as_str(),
                Some(
                    "static"
                        | "currentReplicas"
                        | "currentReplicasIfHigher"
                        | "currentReplicasIfLower"
                )
            ),
            "{label}: fallback behavior {}",
            fallback["behavior"]
        );
    }
}

#[test]
fn slow_starters_have_a_startup_probe_instead_of_a_guessed_delay() {
    let mut rabbitmq = 0;
    for render in renders() {
        for deployment in render.all("Deployment") {
            for container in array(&deployment["spec"]["template"]["spec"]["containers"]) {
                // A liveness probe that waits out the start-up with a fixed delay kills a start
                // that runs late and slows down every restart that does not.
                assert!(
                    container["livenessProbe"]["initialDelaySeconds"].is_null(),
                    "{}: {} guesses its start-up with initialDelaySeconds",
                    render.label,
                    container["name"]
                );
            }
        }
        if let Some(broker) = render
            .all("Deployment")
            .find(|d| d["metadata"]["name"] == "rabbitmq")
        {
            rabbitmq += 1;
            let container = &broker["spec"]["template"]["spec"]["containers"][0];
            let startup = &container["startupProbe"];
            let allowed =
                u64_at(startup, "/periodSeconds", 10) * u64_at(startup, "/failureThreshold", 3);
            assert!(
                allowed >= 120,
                "{}: RabbitMQ gets {allowed} s to start",
                render.label
            );
        }
    }
    assert!(rabbitmq >= 1, "no render has the local broker");
}

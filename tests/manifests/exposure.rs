//! Who can reach the apps: only overlays/public exposes the producer, and only with its token;
//! the network policies let in only the ports each app serves to the network.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::{
    binaries::{Defaults, effective},
    render::*,
};

#[test]
pub(crate) fn the_producer_is_reachable_from_outside_only_with_its_token() {
    let mut public_renders = 0;
    for render in renders() {
        let label = &render.label;
        let exposed: Vec<&str> = render
            .all("Service")
            .filter(|s| {
                matches!(
                    s["spec"]["type"].as_str(),
                    Some("LoadBalancer" | "NodePort")
                )
            })
            .map(|s| str_at(s, "/metadata/name"))
            .chain(render.all("Ingress").map(|i| str_at(i, "/metadata/name")))
            .collect();
        let service = render.one("Service", "producer");
        if label == "deploy/overlays/public" {
            assert_eq!(service["spec"]["type"], "LoadBalancer", "{label}");
        } else {
            // Not public: ClusterIP (the default when unset), reached with kubectl port-forward.
            assert!(
                exposed.is_empty(),
                "{label}: only overlays/public may expose anything, not {exposed:?}"
            );
            assert!(
                service["spec"]["type"].is_null() || service["spec"]["type"] == "ClusterIP",
                "{label}: the producer's Service must be ClusterIP"
            );
        }
        if exposed.is_empty() {
            continue;
        }
        public_renders += 1;
        assert_eq!(
            secret_env(render.app_container("producer"), "PRODUCER_API_TOKEN"),
            Some(("producer-api-token", "token")),
            "{label}: exposes {exposed:?}, so the producer needs PRODUCER_API_TOKEN from the \
             Secret producer-api-token (key `token`)"
        );
    }
    assert_eq!(
        public_renders, 1,
        "overlays/public is the one public render"
    );
    // The variable the producer reads: a rename on either side fails here.
    assert!(
        Defaults::of("producer").reads("PRODUCER_API_TOKEN"),
        "producer --help"
    );
}

#[test]
pub(crate) fn network_policies_let_in_only_the_producers_port_and_the_consumers_scrape() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let label = &render.label;
        let pods: Vec<(&str, &Value)> = render
            .all("Deployment")
            .map(|d| {
                (
                    str_at(d, "/metadata/name"),
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        // app -> the ports its policies let in, resolved against its container's ports.
        let mut allowed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for policy in render.all("NetworkPolicy") {
            let name = str_at(policy, "/metadata/name");
            let selector = policy["spec"]["podSelector"]["matchLabels"]
                .as_object()
                .unwrap_or_else(|| panic!("{label}: NetworkPolicy {name} has no matchLabels"));
            let selected: Vec<&str> = pods
                .iter()
                .filter(|(_, labels)| selector.iter().all(|(k, v)| &labels[k] == v))
                .map(|(app, _)| *app)
                .collect();
            assert!(
                !selected.is_empty(),
                "{label}: NetworkPolicy {name} selects no Deployment's pods"
            );
            // Egress stays open: Service Bus, Entra ID and the Dapr control plane.
            assert_eq!(
                policy["spec"]["policyTypes"],
                serde_json::json!(["Ingress"]),
                "{label}: NetworkPolicy {name} must restrict ingress only"
            );
            for app in selected {
                let ports = container_ports(render.app_container(app));
                let entry = allowed.entry(app).or_default();
                for rule in array(&policy["spec"]["ingress"]) {
                    let rule_ports = array(&rule["ports"]);
                    assert!(
                        !rule_ports.is_empty(),
                        "{label}: NetworkPolicy {name} has a rule for every port"
                    );
                    for port in rule_ports {
                        assert_eq!(port["protocol"], "TCP", "{label}: {name}");
                        entry.insert(match &port["port"] {
                            Value::String(named) => *ports.get(named).unwrap_or_else(|| {
                                panic!("{label}: {name} names port {named}, which {app} lacks")
                            }),
                            number => {
                                let number = number.as_u64().expect("a port");
                                assert!(
                                    ports.values().any(|p| *p == number),
                                    "{label}: {name} lets in {number}, which {app} lacks"
                                );
                                number
                            }
                        });
                    }
                }
            }
        }
        let port_of = |app: &str, defaults: &Defaults, env: &str| -> u64 {
            effective(render.app_container(app), defaults, env)
                .parse()
                .unwrap()
        };
        let scrape: u64 = render
            .annotation("consumer", "prometheus.io/port")
            .parse()
            .unwrap();
        assert_eq!(scrape, port_of("consumer", &consumer, "METRICS_PORT"));
        assert_eq!(
            allowed.get("consumer"),
            Some(&BTreeSet::from([scrape])),
            "{label}: the consumer takes only the metrics scrape from the network, not its \
             gRPC port {} (daprd calls it over loopback)",
            port_of("consumer", &consumer, "APP_PORT")
        );
        assert_eq!(
            allowed.get("producer"),
            Some(&BTreeSet::from([port_of("producer", &producer, "PORT")])),
            "{label}: the producer takes its one port from the network"
        );
    }
}

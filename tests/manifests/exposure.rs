//! Who can reach the apps: only overlays/public exposes the producer, and only behind TLS, to the
//! source ranges the user names and with its token; the network policies let nothing in by
//! default, then only the ports each pod serves to the network.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::{
    admission::InjectorSettings,
    binaries::{Defaults, effective},
    render::*,
};

const PUBLIC: &str = "deploy/overlays/public";
const MONITORING: &str = "deploy/overlays/monitoring";

#[test]
fn the_producer_is_reachable_from_outside_only_behind_tls_a_source_range_and_its_token() {
    let producer = Defaults::of("producer");
    let mut public_renders = 0;
    for render in renders() {
        let label = &render.label;
        let service = render.one("Service", "producer");
        // Its own Service stays ClusterIP (the default when unset), reached with kubectl
        // port-forward, or by other pods.
        assert!(
            service["spec"]["type"].is_null() || service["spec"]["type"] == "ClusterIP",
            "{label}: the producer's Service must be ClusterIP"
        );
        match (render.has(PUBLIC), exposed(render).is_empty()) {
            (false, true) => continue,
            (false, false) => panic!(
                "{label}: only overlays/public may expose anything, not {:?}",
                exposed(render)
            ),
            (true, true) => panic!("{label}: overlays/public exposes nothing"),
            (true, false) => {}
        }
        public_renders += 1;
        if let Err(problem) = public_exposure_is_fenced(&render.objects, &producer) {
            panic!("{label}: {problem}");
        }
    }
    assert!(
        public_renders >= 3,
        "overlays/public on each overlay: only {public_renders} public renders"
    );
    // The variable the producer reads: a rename on either side fails here.
    assert!(producer.reads("PRODUCER_API_TOKEN"), "producer --help");
}

#[test]
fn the_fence_check_refuses_the_public_producer_without_tls_a_source_range_or_its_token() {
    let producer = Defaults::of("producer");
    let public = renders()
        .iter()
        .find(|r| r.label == format!("deploy/base + {PUBLIC}"))
        .expect("the base with overlays/public");
    assert_eq!(
        public_exposure_is_fenced(&public.objects, &producer),
        Ok(())
    );

    let service = |objects: &[Value]| -> usize {
        objects
            .iter()
            .position(|o| o["kind"] == "Service" && o["spec"]["type"] == "LoadBalancer")
            .unwrap()
    };
    let changes: [Breach; 6] = [
        ("no source range", |o, s| {
            o[s]["spec"]
                .as_object_mut()
                .unwrap()
                .remove("loadBalancerSourceRanges");
        }),
        ("the whole internet", |o, s| {
            o[s]["spec"]["loadBalancerSourceRanges"] = json!(["0.0.0.0/0"])
        }),
        ("the plain-text port", |o, s| {
            o[s]["spec"]["ports"][0]["targetPort"] = json!("http")
        }),
        ("haproxy without TLS", |o, _| {
            let config = o.iter_mut().find(|o| o["kind"] == "ConfigMap").unwrap();
            let text = config["data"]["haproxy.cfg"]
                .as_str()
                .unwrap()
                .replace(" ssl ", " ");
            config["data"]["haproxy.cfg"] = json!(text);
        }),
        ("no token", |o, _| {
            let deployment = o
                .iter_mut()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "producer")
                .unwrap();
            for container in deployment["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap()
            {
                if let Some(env) = container["env"].as_array_mut() {
                    env.retain(|e| e["name"] != "PRODUCER_API_TOKEN");
                }
            }
        }),
        ("a NodePort", |o, s| {
            o[s]["spec"]["type"] = json!("NodePort")
        }),
    ];
    for (what, change) in changes {
        let mut objects = public.objects.clone();
        let at = service(&objects);
        change(&mut objects, at);
        assert!(
            public_exposure_is_fenced(&objects, &producer).is_err(),
            "not refused: {what}"
        );
    }
}

/// A named change to a render's objects, and the LoadBalancer Service's index among them.
type Breach = (&'static str, fn(&mut [Value], usize));

/// What a render puts outside the cluster: LoadBalancer and NodePort Services, and Ingresses.
fn exposed(render: &Render) -> Vec<&str> {
    render
        .all("Service")
        .filter(|s| {
            matches!(
                s["spec"]["type"].as_str(),
                Some("LoadBalancer" | "NodePort")
            )
        })
        .map(|s| str_at(s, "/metadata/name"))
        .chain(render.all("Ingress").map(|i| str_at(i, "/metadata/name")))
        .collect()
}

/// That whatever `objects` expose reaches the producer only behind TLS, from named source ranges
/// (never everyone), and only while the producer requires its token.
fn public_exposure_is_fenced(objects: &[Value], producer: &Defaults) -> Result<(), String> {
    let of_kind = |kind: &'static str| objects.iter().filter(move |o| o["kind"] == kind);
    if of_kind("Ingress").next().is_some() {
        return Err("an Ingress: the producer is exposed by its LoadBalancer only".to_owned());
    }
    let deployment = of_kind("Deployment")
        .find(|d| d["metadata"]["name"] == "producer")
        .ok_or("no producer Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = array(&pod["containers"]);
    let app = containers
        .iter()
        .find(|c| c["name"] == "producer")
        .ok_or("no producer container")?;
    let plain_port: u64 = effective(app, producer, "PORT")
        .parse()
        .map_err(|e| format!("PORT: {e}"))?;
    let token = secret_env(app, "PRODUCER_API_TOKEN");
    if token != Some(("producer-api-token", "token")) {
        return Err(format!(
            "exposed, so the producer needs PRODUCER_API_TOKEN from the Secret \
             producer-api-token (key `token`), not {token:?}"
        ));
    }
    let mut exposures = 0;
    for service in of_kind("Service") {
        let name = str_at(service, "/metadata/name");
        match service["spec"]["type"].as_str() {
            Some("LoadBalancer") => {}
            Some("NodePort") => return Err(format!("{name}: a NodePort has no source range")),
            _ => continue,
        }
        exposures += 1;
        let ranges = array(&service["spec"]["loadBalancerSourceRanges"]);
        if ranges.is_empty() {
            return Err(format!(
                "{name}: no loadBalancerSourceRanges, so anyone can call"
            ));
        }
        for range in ranges {
            let range = range.as_str().unwrap_or_default();
            let bits = range.rsplit_once('/').map(|(_, bits)| bits);
            if bits.is_none() || matches!(bits, Some("0")) {
                return Err(format!("{name}: the source range {range} is everyone"));
            }
        }
        for port in array(&service["spec"]["ports"]) {
            let target = &port["targetPort"];
            let (container, number) = containers
                .iter()
                .find_map(|c| {
                    container_ports(c)
                        .into_iter()
                        .find(|(port_name, number)| {
                            target.as_str() == Some(port_name.as_str())
                                || target.as_u64() == Some(*number)
                        })
                        .map(|(_, number)| (c, number))
                })
                .ok_or_else(|| format!("{name}: port {target} reaches no container"))?;
            if number == plain_port {
                return Err(format!(
                    "{name}: reaches the producer's plain-text port {number}"
                ));
            }
            terminates_tls(objects, container, number, plain_port)
                .map_err(|problem| format!("{name}: {problem}"))?;
        }
    }
    if exposures == 0 {
        return Err("exposes nothing".to_owned());
    }
    Ok(())
}

/// That `container` (haproxy) serves `port` with TLS and hands the bytes to the producer's
/// `plain_port` over loopback, by the haproxy.cfg of the ConfigMap it mounts.
fn terminates_tls(
    objects: &[Value],
    container: &Value,
    port: u64,
    plain_port: u64,
) -> Result<(), String> {
    let name = str_at(container, "/name");
    let args: Vec<&str> = array(&container["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "-f")
        .and_then(|i| args.get(i + 1))
        .ok_or_else(|| format!("{name} is not haproxy with a config file: {args:?}"))?;
    let (dir, file) = config_path
        .rsplit_once('/')
        .ok_or("a config path without a directory")?;
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "producer")
        .ok_or("no producer")?;
    let volumes = array(&deployment["spec"]["template"]["spec"]["volumes"]);
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == dir)
        .ok_or_else(|| format!("{name} mounts nothing at {dir}"))?;
    let map = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .and_then(|v| v["configMap"]["name"].as_str())
        .ok_or_else(|| format!("{name}'s {dir} is not a ConfigMap"))?;
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == map)
        .and_then(|c| c["data"][file].as_str())
        .ok_or_else(|| format!("no {file} in ConfigMap {map}"))?;
    let lines: Vec<Vec<&str>> = config
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect()
        })
        .collect();
    let bind = lines
        .iter()
        .find(|words| words.first() == Some(&"bind") && words[1].ends_with(&format!(":{port}")))
        .ok_or_else(|| format!("haproxy binds nothing on {port}"))?;
    for needed in ["ssl", "crt", "alpn"] {
        if !bind.contains(&needed) {
            return Err(format!(
                "haproxy's bind on {port} has no `{needed}`: {bind:?}"
            ));
        }
    }
    let alpn = bind
        .iter()
        .skip_while(|w| **w != "alpn")
        .nth(1)
        .unwrap_or(&"");
    if !alpn.split(',').any(|p| p == "h2") {
        return Err("haproxy offers no h2 in ALPN, which gRPC clients require".to_owned());
    }
    let backend = format!("127.0.0.1:{plain_port}");
    if !lines
        .iter()
        .any(|words| words.first() == Some(&"server") && words.contains(&backend.as_str()))
    {
        return Err(format!(
            "haproxy does not forward to the producer on {backend}"
        ));
    }
    Ok(())
}

/// Whether a pod with `labels` is selected by a label `selector` (matchLabels and
/// matchExpressions, as Kubernetes reads them); an empty selector selects every pod.
pub(crate) fn selects(selector: &Value, labels: &Value) -> bool {
    let labelled = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| &labels[k] == v));
    let expressed = array(&selector["matchExpressions"]).iter().all(|e| {
        let value = &labels[str_at(e, "/key")];
        let values = array(&e["values"]);
        match str_at(e, "/operator") {
            "In" => values.contains(value),
            "NotIn" => !values.contains(value),
            "Exists" => !value.is_null(),
            "DoesNotExist" => value.is_null(),
            other => panic!("selector operator {other}"),
        }
    });
    labelled && expressed
}

#[test]
fn network_policies_let_in_nothing_by_default_then_only_the_ports_each_pod_serves() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    let settings = InjectorSettings::from_guide();
    for render in renders() {
        let label = &render.label;
        // Deployment name -> its admitted pod (daprd included), for labels and ports.
        let pods: BTreeMap<&str, Value> = render.admitted_pods(settings).into_iter().collect();
        let mut default_deny = false;
        // app -> the ports its policies let in, resolved against its pod's containers.
        let mut allowed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for policy in render.all("NetworkPolicy") {
            let name = str_at(policy, "/metadata/name");
            // Egress stays open: Service Bus, Entra ID and the Dapr control plane.
            assert_eq!(
                policy["spec"]["policyTypes"],
                json!(["Ingress"]),
                "{label}: NetworkPolicy {name} must restrict ingress only"
            );
            let selector = &policy["spec"]["podSelector"];
            let rules = array(&policy["spec"]["ingress"]);
            if selector.as_object().is_some_and(|s| s.is_empty()) {
                assert!(
                    rules.is_empty(),
                    "{label}: {name} selects every pod, so it may only deny"
                );
                default_deny = true;
                continue;
            }
            let selected: Vec<&str> = pods
                .iter()
                .filter(|(_, pod)| selects(selector, &pod["metadata"]["labels"]))
                .map(|(deployment, _)| *deployment)
                .collect();
            assert!(
                !selected.is_empty(),
                "{label}: NetworkPolicy {name} selects no Deployment's pods"
            );
            for deployment in selected {
                let ports: BTreeMap<String, u64> = array(&pods[deployment]["spec"]["containers"])
                    .iter()
                    .flat_map(container_ports)
                    .collect();
                let entry = allowed.entry(deployment).or_default();
                for rule in rules {
                    let rule_ports = array(&rule["ports"]);
                    assert!(
                        !rule_ports.is_empty(),
                        "{label}: NetworkPolicy {name} has a rule for every port"
                    );
                    for port in rule_ports {
                        assert_eq!(port["protocol"], "TCP", "{label}: {name}");
                        entry.insert(match &port["port"] {
                            Value::String(named) => *ports.get(named).unwrap_or_else(|| {
                                panic!(
                                    "{label}: {name} names port {named}, which {deployment} lacks"
                                )
                            }),
                            number => {
                                let number = number.as_u64().expect("a port");
                                assert!(
                                    ports.values().any(|p| *p == number),
                                    "{label}: {name} lets in {number}, which {deployment} lacks"
                                );
                                number
                            }
                        });
                    }
                }
            }
        }
        assert!(
            default_deny,
            "{label}: no default-deny ingress policy for the namespace"
        );
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
        // daprd's metrics port, only where the monitoring Component scrapes it.
        let daprd_metrics: BTreeSet<u64> = if render.has(MONITORING) {
            BTreeSet::from([9090])
        } else {
            BTreeSet::new()
        };
        let with_daprd = |ports: &[u64]| -> BTreeSet<u64> {
            ports.iter().copied().chain(daprd_metrics.clone()).collect()
        };
        assert_eq!(
            allowed.get("consumer"),
            Some(&with_daprd(&[scrape])),
            "{label}: the consumer takes only the metrics scrape from the network, not its \
             gRPC port {} (daprd calls it over loopback)",
            port_of("consumer", &consumer, "APP_PORT")
        );
        let mut producer_ports = vec![port_of("producer", &producer, "PORT")];
        if render.has(PUBLIC) {
            // haproxy's TLS port, which the public Service targets.
            producer_ports.push(8443);
        }
        assert_eq!(
            allowed.get("producer"),
            Some(&with_daprd(&producer_ports)),
            "{label}: the producer takes its one port from the network (and TLS when public)"
        );
    }
}

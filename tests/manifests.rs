//! Coherence of what deploys the code with the code itself: the kustomizations under `deploy/`,
//! the Multi-App Run file `dapr.yaml` and the `Dockerfile` must agree with the binaries' defaults
//! (read from their `--help`) and with each other, so a change on either side fails here.
//!
//! Every kustomization is rendered with `kubectl kustomize`, as `.ci/run` and
//! `../shared/tools/validate-manifests` do; kubectl must be on PATH. No cluster, no network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::Deserialize;
use serde_json::Value;

use test_support::process as harness;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Dapr's default for `dapr.io/graceful-shutdown-seconds`.
const DAPR_GRACEFUL_SHUTDOWN_DEFAULT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_kustomization_renders_the_whole_pair() {
    let roots: BTreeSet<&str> = renders().iter().map(|r| r.label.as_str()).collect();
    for expected in [
        "deploy/base",
        "deploy/overlays/workload-identity",
        "deploy/overlays/local-rabbitmq",
        "deploy/overlays/public",
    ] {
        assert!(
            roots.contains(expected),
            "{expected} not rendered: {roots:?}"
        );
    }
    for render in renders() {
        render.one("Deployment", "producer");
        render.one("Deployment", "consumer");
        render.component();
        render.one("ScaledObject", "consumer");
        assert!(
            render
                .all("Service")
                .all(|s| s["metadata"]["name"] != "consumer"),
            "{}: nobody but its sidecar calls the consumer, so it has no Service",
            render.label
        );
    }
}

#[test]
fn the_component_is_named_after_both_binaries_binding_name() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let component = render.component();
        let name = str_at(component, "/metadata/name");
        for (app, defaults) in [("producer", &producer), ("consumer", &consumer)] {
            let container = render.app_container(app);
            assert_eq!(
                name,
                effective(container, defaults, "BINDING_NAME"),
                "{}: the Component's name must be the {app}'s BINDING_NAME",
                render.label
            );
            let app_id = render.annotation(app, "dapr.io/app-id");
            assert!(
                component["scopes"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == app_id)),
                "{}: the Component is not scoped to {app_id}",
                render.label
            );
        }
    }
    let local = dapr_run_component();
    for defaults in [&producer, &consumer] {
        assert_eq!(
            str_at(&local, "/metadata/name"),
            defaults.get("BINDING_NAME")
        );
    }
}

#[test]
fn dapr_calls_the_consumer_on_its_port_and_never_the_producer() {
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let port = effective(render.app_container("consumer"), &consumer, "APP_PORT");
        assert_eq!(
            render.annotation("consumer", "dapr.io/app-port"),
            port,
            "{}: dapr.io/app-port must be the consumer's APP_PORT",
            render.label
        );
        assert_eq!(
            render.annotation("consumer", "dapr.io/app-protocol"),
            "grpc"
        );
        assert!(
            container_ports(render.app_container("consumer"))
                .values()
                .any(|p| p.to_string() == port),
            "{}: the consumer container does not declare port {port}",
            render.label
        );
        // With an app channel the producer's sidecar would read the queue too.
        assert!(
            render
                .annotations("producer")
                .get("dapr.io/app-port")
                .is_none(),
            "{}: the producer must have no dapr.io/app-port",
            render.label
        );
    }

    let run = dapr_run_file();
    let app = |id: &str| -> Value {
        run["apps"]
            .as_array()
            .and_then(|apps| apps.iter().find(|a| a["appID"] == id))
            .unwrap_or_else(|| panic!("dapr.yaml has no app {id}"))
            .clone()
    };
    assert_eq!(
        app("consumer")["appPort"].to_string(),
        consumer.get("APP_PORT")
    );
    assert_eq!(app("consumer")["appProtocol"], "grpc");
    assert!(app("producer").get("appPort").is_none());
    assert!(
        run["common"].get("resourcesPath").is_none(),
        "dapr.yaml: `resourcesPath` is deprecated, use the list `resourcesPaths`"
    );
    let resources = dapr_run_resources_dir(&run);
    assert!(
        resources.is_dir(),
        "dapr.yaml's resourcesPaths {resources:?}"
    );
}

#[test]
fn probes_and_the_service_point_at_the_ports_the_binaries_serve() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let label = &render.label;

        let container = render.app_container("consumer");
        let port = effective(container, &consumer, "APP_PORT");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container[probe]["grpc"]["port"].to_string(),
                port,
                "{label}: the consumer's {probe} must ask grpc.health.v1 on APP_PORT"
            );
        }
        // A draining consumer reports NOT_SERVING; its liveness probe must not kill it meanwhile.
        let liveness = &container["livenessProbe"];
        let failing_for = Duration::from_secs(
            u64_at(liveness, "/periodSeconds", 10) * u64_at(liveness, "/failureThreshold", 3),
        );
        let drain = duration(&effective(container, &consumer, "DRAIN_TIMEOUT"));
        assert!(
            failing_for > drain,
            "{label}: liveness gives up after {failing_for:?}, within DRAIN_TIMEOUT {drain:?}"
        );

        let container = render.app_container("producer");
        let port: u64 = effective(container, &producer, "PORT").parse().unwrap();
        let ports = container_ports(container);
        let resolve = |port: &Value| -> u64 {
            match port {
                Value::String(name) => *ports
                    .get(name)
                    .unwrap_or_else(|| panic!("{label}: no container port named {name}")),
                other => other.as_u64().expect("a port number"),
            }
        };
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(resolve(&get["port"]), port, "{label}: producer {probe}");
            assert_eq!(get["path"], path, "{label}: producer {probe}");
        }

        let service = render.one("Service", "producer");
        let pod_labels = &render.app("producer")["spec"]["template"]["metadata"]["labels"];
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                &pod_labels[key], value,
                "{label}: the Service selects {key}"
            );
        }
        let service_ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(
            service_ports.len(),
            1,
            "{label}: one port for REST and gRPC"
        );
        assert_eq!(service_ports[0]["port"], 80);
        assert_eq!(resolve(&service_ports[0]["targetPort"]), port);
    }
}

#[test]
fn the_producer_is_reachable_from_outside_only_with_its_token() {
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
fn both_sidecars_use_daprs_tokens_and_the_apps_get_the_same_values() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    // The variables the binaries read: a rename on either side fails here.
    assert!(producer.reads("DAPR_API_TOKEN"), "producer --help");
    assert!(consumer.reads("APP_API_TOKEN"), "consumer --help");
    for render in renders() {
        let label = &render.label;
        for app in ["producer", "consumer"] {
            assert_eq!(
                render.annotation(app, "dapr.io/api-token-secret"),
                "dapr-api-token",
                "{label}: {app}'s daprd must require Dapr's API token"
            );
        }
        // The injector gives daprd the Secret's `token` key; the app maps the same one itself.
        let api = render.annotation("producer", "dapr.io/api-token-secret");
        assert_eq!(
            secret_env(render.app_container("producer"), "DAPR_API_TOKEN"),
            Some((api, "token")),
            "{label}: the producer must present the token its daprd requires"
        );
        let app = render.annotation("consumer", "dapr.io/app-token-secret");
        assert_eq!(app, "dapr-app-token", "{label}");
        assert_eq!(
            secret_env(render.app_container("consumer"), "APP_API_TOKEN"),
            Some((app, "token")),
            "{label}: the consumer must check the token its daprd presents"
        );
        // daprd never calls the producer (no app channel), so no app token for it.
        assert!(
            render
                .annotations("producer")
                .get("dapr.io/app-token-secret")
                .is_none(),
            "{label}: the producer has no app channel for an app token"
        );
    }
}

#[test]
fn both_sidecars_and_both_apps_export_spans_to_one_collector() {
    for bin in ["producer", "consumer"] {
        assert!(
            Defaults::of(bin).reads("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{bin} --help"
        );
    }
    for render in renders() {
        let label = &render.label;
        for app in ["producer", "consumer"] {
            let name = render.annotation(app, "dapr.io/config");
            let config = render
                .all("Configuration")
                .find(|c| c["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{label}: {app}'s dapr.io/config {name} is not here"));
            let tracing = &config["spec"]["tracing"];
            let rate: f64 = str_at(tracing, "/samplingRate")
                .parse()
                .unwrap_or_else(|e| panic!("{label}: samplingRate: {e}"));
            assert!((0.0..=1.0).contains(&rate) && rate > 0.0, "{label}: {rate}");
            let otel = &tracing["otel"];
            assert_eq!(str_at(otel, "/protocol"), "grpc", "{label}");
            // daprd's gRPC exporter takes HOST:PORT; the apps' takes a URL, http:// as daprd's
            // is not secure.
            let address = str_at(otel, "/endpointAddress");
            assert!(!address.contains("://"), "{label}: {address}");
            assert_eq!(otel["isSecure"], false, "{label}");
            let container = render.app_container(app);
            let endpoint = array(&container["env"])
                .iter()
                .find(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .and_then(|e| e["value"].as_str())
                .unwrap_or_else(|| panic!("{label}: {app} sets no OTEL_EXPORTER_OTLP_ENDPOINT"));
            assert_eq!(
                endpoint,
                format!("http://{address}"),
                "{label}: {app} must export where its daprd does"
            );
        }
    }
}

#[test]
fn network_policies_let_in_only_the_producers_port_and_the_consumers_scrape() {
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

#[test]
fn prometheus_scrapes_the_port_each_binary_serves_metrics_on() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let label = &render.label;
        for (app, defaults, port_env) in [
            ("producer", &producer, "PORT"),
            ("consumer", &consumer, "METRICS_PORT"),
        ] {
            let annotations = &render.app(app)["spec"]["template"]["metadata"]["annotations"];
            let container = render.app_container(app);
            assert_eq!(
                annotations["prometheus.io/scrape"], "true",
                "{label}: {app}"
            );
            assert_eq!(
                annotations["prometheus.io/path"], "/metrics",
                "{label}: {app}"
            );
            assert_eq!(
                annotations["prometheus.io/port"].as_str(),
                Some(effective(container, defaults, port_env).as_str()),
                "{label}: {app}'s scrape port must be its {port_env}"
            );
        }
        // daprd serves its own metrics on 9090 in the same pod.
        assert_ne!(
            effective(render.app_container("consumer"), &consumer, "METRICS_PORT"),
            "9090",
            "{label}: the consumer's metrics port collides with daprd's"
        );
    }
}

#[test]
fn keda_scales_the_consumer_on_the_components_queue() {
    for render in renders() {
        let queue = component_value(render.component(), "queueName");
        let scaled = render.one("ScaledObject", "consumer");
        assert_eq!(
            scaled["spec"]["scaleTargetRef"]["name"],
            render.app("consumer")["metadata"]["name"]
        );
        let triggers = scaled["spec"]["triggers"].as_array().unwrap();
        assert!(!triggers.is_empty());
        for trigger in triggers {
            assert_eq!(
                str_at(trigger, "/metadata/queueName"),
                queue,
                "{}: KEDA watches another queue than the Component's",
                render.label
            );
            let auth = str_at(trigger, "/authenticationRef/name");
            render.one("TriggerAuthentication", auth);
        }
    }
    let base = renders().iter().find(|r| r.label == "deploy/base").unwrap();
    assert_eq!(
        component_value(&dapr_run_component(), "queueName"),
        component_value(base.component(), "queueName"),
        "dapr run uses another queue than Kubernetes"
    );
}

#[test]
fn every_secret_reference_resolves_to_a_key_the_manifests_define_or_the_guide_creates() {
    let created = guide_created_secrets();
    let mut checked = 0;
    let mut unresolved = Vec::new();
    for render in renders() {
        // What the guide creates with kubectl (tokens and keys never committed), then what the
        // render itself defines.
        let mut secrets: BTreeMap<&str, BTreeSet<&str>> = created
            .iter()
            .map(|(name, keys)| (name.as_str(), keys.iter().map(String::as_str).collect()))
            .collect();
        for secret in render.all("Secret") {
            let keys = secrets.entry(str_at(secret, "/metadata/name")).or_default();
            for field in ["data", "stringData"] {
                if let Some(map) = secret[field].as_object() {
                    keys.extend(map.keys().map(String::as_str));
                }
            }
        }
        let mut refs: Vec<(String, &str, &str)> = Vec::new();
        for item in array(&render.component()["spec"]["metadata"]) {
            if let Some(r) = item.get("secretKeyRef") {
                refs.push((
                    format!("Component metadata {}", item["name"]),
                    str_at(r, "/name"),
                    str_at(r, "/key"),
                ));
            }
        }
        for auth in render.all("TriggerAuthentication") {
            for r in array(&auth["spec"]["secretTargetRef"]) {
                refs.push((
                    format!("TriggerAuthentication parameter {}", r["parameter"]),
                    str_at(r, "/name"),
                    str_at(r, "/key"),
                ));
            }
        }
        for deployment in render.all("Deployment") {
            let pod = &deployment["spec"]["template"];
            let annotations = pod["metadata"]["annotations"].as_object();
            for annotation in ["dapr.io/api-token-secret", "dapr.io/app-token-secret"] {
                if let Some(name) = annotations.and_then(|a| a.get(annotation)) {
                    refs.push((annotation.to_owned(), name.as_str().unwrap(), "token"));
                }
            }
            for container in array(&pod["spec"]["containers"]) {
                for env in array(&container["env"]) {
                    if let Some(r) = env.pointer("/valueFrom/secretKeyRef") {
                        refs.push((
                            format!("env {}", env["name"]),
                            str_at(r, "/name"),
                            str_at(r, "/key"),
                        ));
                    }
                }
            }
        }
        for (what, name, key) in refs {
            checked += 1;
            if !secrets.get(name).is_some_and(|keys| keys.contains(key)) {
                unresolved.push(format!("{}: {what} -> {name}/{key}", render.label));
            }
        }
    }
    assert!(unresolved.is_empty(), "unresolved: {unresolved:#?}");
    // The base alone has two (the component's key and KEDA's): this test checks something.
    assert!(checked >= 2, "only {checked} secret references found");
}

#[test]
fn the_guide_creates_every_token_secret_from_a_generated_value() {
    let created = guide_created_secrets();
    for name in ["dapr-api-token", "dapr-app-token", "producer-api-token"] {
        assert!(
            created.get(name).is_some_and(|keys| keys.contains("token")),
            "deploy/README.md never creates the Secret {name} with the key `token`: {created:?}"
        );
    }
    // A token typed into the guide would be everyone's token: each value is generated, by
    // `openssl rand` in place or in a variable the guide fills from it.
    let guide = guide_commands();
    let mut tokens = 0;
    for command in guide
        .iter()
        .filter(|c| c.contains("-token --from-literal=token="))
    {
        tokens += 1;
        let value = command
            .split("--from-literal=token=")
            .nth(1)
            .unwrap_or_default()
            .trim_start_matches('"');
        let generated = value.starts_with("$(openssl rand ")
            || value.strip_prefix('$').is_some_and(|rest| {
                let variable: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                !variable.is_empty()
                    && guide
                        .iter()
                        .any(|c| c.starts_with(&format!("{variable}=$(openssl rand ")))
            });
        assert!(generated, "a token that is not generated: {command}");
    }
    assert!(
        tokens >= 3,
        "only {tokens} token Secrets created in the guide"
    );
}

#[test]
fn the_grace_period_covers_the_work_and_daprs_shutdown() {
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    for render in renders() {
        let label = &render.label;

        // The longest case: daprd lets the delivery in progress finish, blocks for all of
        // block-shutdown-duration, then uses all of graceful-shutdown-seconds.
        let (grace, block, graceful) = render.shutdown("consumer");
        let container = render.app_container("consumer");
        let work = duration(&effective(container, &consumer, "WORK_DURATION"));
        let drain = duration(&effective(container, &consumer, "DRAIN_TIMEOUT"));
        assert!(
            grace > work + block + graceful,
            "{label}: consumer grace {grace:?} <= work {work:?} + block {block:?} + graceful {graceful:?}"
        );
        // The consumer fails its health check from SIGTERM on; daprd must be able to see that
        // within the block, or the block always runs its full length.
        let sees_unhealthy_after = render.app_health_failing_for("consumer");
        assert!(
            sees_unhealthy_after < block,
            "{label}: daprd sees a draining consumer unhealthy after {sees_unhealthy_after:?}, \
             not within block-shutdown-duration {block:?}"
        );
        // The exit, the span flush included, stays within DRAIN_TIMEOUT.
        assert!(
            drain < grace,
            "{label}: DRAIN_TIMEOUT {drain:?} >= grace {grace:?}"
        );
        assert!(
            drain >= work,
            "{label}: DRAIN_TIMEOUT {drain:?} < one message's work {work:?}"
        );

        // No app channel, so no health check ends the producer's block early: it serves the
        // producer's outgoing calls for all of it, which must cover the producer's drain.
        let (grace, block, graceful) = render.shutdown("producer");
        let drain = duration(&effective(
            render.app_container("producer"),
            &producer,
            "DRAIN_TIMEOUT",
        ));
        assert!(
            grace > block + graceful,
            "{label}: producer grace {grace:?}"
        );
        assert!(
            drain <= block,
            "{label}: producer DRAIN_TIMEOUT {drain:?} outlasts its sidecar's block {block:?}"
        );
        assert!(
            drain < grace,
            "{label}: producer DRAIN_TIMEOUT {drain:?} >= grace {grace:?}"
        );
    }
}

#[test]
fn images_are_set_by_the_kustomization() {
    for render in renders() {
        for deployment in render.all("Deployment") {
            for container in array(&deployment["spec"]["template"]["spec"]["containers"]) {
                let image = str_at(container, "/image");
                let tag = image.rsplit_once(':').map(|(_, tag)| tag);
                assert!(
                    tag.is_some_and(|t| !t.contains('/') && t != "latest"),
                    "{}: image {image} has no pinned tag from `images:`",
                    render.label
                );
            }
        }
    }
}

#[test]
fn no_committed_file_holds_a_service_bus_key() {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(ROOT)
        .output()
        .expect("git is needed to list the committed files");
    assert!(output.status.success(), "git ls-files failed");
    let files: Vec<&[u8]> = output
        .stdout
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .collect();
    assert!(!files.is_empty());
    let offending: Vec<String> = files
        .into_iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .filter(|f| {
            fs::read(Path::new(ROOT).join(f))
                .is_ok_and(|bytes| leaks_a_key(f, &String::from_utf8_lossy(&bytes)))
        })
        .collect();
    assert!(
        offending.is_empty(),
        "committed files with what looks like a real Service Bus key: {offending:?}"
    );
}

#[test]
fn the_key_detector_sees_keys_in_clear_base64_encoded_and_bare() {
    // Built at run time, so this file holds no such string itself: 43 characters and one `=`,
    // the shape of a 256-bit key.
    let key = format!("{}Ab1=", "Ab1+".repeat(10));
    assert_eq!(key.len(), 44);
    let connection = format!(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=dapr;SharedAccessKey={key}"
    );

    // In clear, in any file.
    assert!(leaks_a_key("notes.md", &connection));
    assert!(!leaks_a_key("notes.md", "SharedAccessKey=<key>;"));

    // Base64-encoded in a Secret's data, on one line or wrapped as kustomize writes it.
    let encoded = BASE64.encode(connection.as_bytes());
    let secret = |value: &str| format!("apiVersion: v1\nkind: Secret\ndata:\n  dapr: {value}\n");
    assert!(leaks_a_key("deploy/secret.yaml", &secret(&encoded)));
    let (head, tail) = encoded.split_at(76);
    assert!(leaks_a_key(
        "deploy/secret.yml",
        &secret(&format!("{head}\n    {tail}"))
    ));
    // Encoded secrets that hold no Service Bus key, and base64 outside YAML, are not flagged.
    let harmless = BASE64.encode(b"amqp://dapr:local-only@rabbitmq:5672");
    assert!(!leaks_a_key("deploy/secret.yaml", &secret(&harmless)));
    assert!(!leaks_a_key("notes.md", &encoded));

    // Bare, in YAML and env files.
    assert!(leaks_a_key("deploy/x.yaml", &format!("key: {key}\n")));
    assert!(leaks_a_key("deploy/x.yaml", &format!("key: \"{key}\"\n")));
    assert!(leaks_a_key("servicebus.env", &format!("KEY={key}\n")));
    assert!(leaks_a_key(".env", &format!("KEY={key}")));
    assert!(!leaks_a_key("notes.md", &format!("key: {key}\n")));
    // Not a key's shape: a 43-character name before `=` and its value, no padding, two `=`,
    // one letter case only.
    for not_a_key in [
        format!("{}=value", &key[..43]),
        format!("v: {}", &key[..43]),
        format!("v: {}A==", &key[..42]),
        format!("v: {}=", "ab+/".repeat(11).split_at(43).0),
    ] {
        assert!(
            !leaks_a_key("deploy/x.yaml", &not_a_key),
            "flagged {not_a_key:?}"
        );
    }
}

#[test]
fn the_dockerfile_builds_binaries_cargo_declares() {
    let bins = cargo_bins();
    let dockerfile = read("Dockerfile");
    let named: BTreeSet<&str> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .chain(
            dockerfile
                .split("target/release/")
                .skip(1)
                .map(|rest| rest.split(|c: char| c.is_whitespace()).next().unwrap()),
        )
        .collect();
    assert!(!named.is_empty(), "the Dockerfile builds no binary");
    for bin in &named {
        assert!(
            bins.contains(*bin),
            "the Dockerfile names {bin}; the workspace's binaries are {bins:?}"
        );
    }

    let stages = dockerfile_stages(&dockerfile);
    for (bin, port_env) in [("producer", "PORT"), ("consumer", "APP_PORT")] {
        let stage = stages
            .get(bin)
            .unwrap_or_else(|| panic!("no Dockerfile stage `AS {bin}`"));
        assert!(
            stage.contains(&format!("target/release/{bin} ")),
            "stage {bin} does not copy its binary"
        );
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "stage {bin} does not run its binary"
        );
        let port = Defaults::of(bin).get(port_env).to_owned();
        assert!(
            stage.contains(&format!("EXPOSE {port}")),
            "stage {bin} should EXPOSE {port_env}'s default {port}"
        );
    }
}

#[test]
fn the_dockerfile_builds_with_the_declared_rust_version() {
    let declared = read("Cargo.toml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version"))
        .map(|v| {
            v.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_owned()
        })
        .expect("Cargo.toml declares a rust-version");
    let dockerfile = read("Dockerfile");
    let arg = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG RUST_VERSION="))
        .expect("the Dockerfile has ARG RUST_VERSION=");
    assert_eq!(
        arg, declared,
        "the Dockerfile's toolchain must be Cargo.toml's rust-version"
    );
    assert!(
        dockerfile.contains("cargo-chef:latest-rust-${RUST_VERSION}-slim-bookworm"),
        "the chef stage must use RUST_VERSION"
    );
}

#[test]
fn dockerignore_patterns_have_no_trailing_slash() {
    // `az acr build` ignores such a pattern (Azure/azure-cli#20413) and uploads target/.
    let ignore = read(".dockerignore");
    let slashed: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.ends_with('/'))
        .collect();
    assert!(slashed.is_empty(), ".dockerignore: {slashed:?}");
    for needed in ["target", ".git", "deploy", "**/*.env"] {
        assert!(
            ignore.lines().any(|l| l.trim() == needed),
            ".dockerignore must exclude {needed}"
        );
    }
}

#[test]
fn the_guide_deletes_only_the_resource_group_it_created() {
    let guide = read("deploy/README.md");
    if let Err(problem) = check_resource_groups(&guide) {
        panic!("deploy/README.md: {problem}");
    }
    assert!(
        guide.contains("az group delete"),
        "the guide cleans up with az group delete"
    );
}

#[test]
fn the_resource_group_check_catches_a_guide_that_deletes_what_it_did_not_create() {
    let safe = "```sh\nGUIDE_RG=mine\n\
        if [ \"$(az group exists --name \"$GUIDE_RG\")\" = true ]; then\n  echo taken\nelse\n\
        \x20 az group create --name \"$GUIDE_RG\" --location \"$LOCATION\"\nfi\n\
        az acr create --resource-group \"$GUIDE_RG\" --name \"$ACR\"\n```\n\
        ```sh\naz group delete --name \"$GUIDE_RG\" --yes\n```\n";
    assert_eq!(check_resource_groups(safe), Ok(()));
    for (unsafe_guide, why) in [
        // The original guide: one RG for the user's cluster and the guide's resources.
        (
            safe.replace("--name \"$GUIDE_RG\" --yes", "--name $RG --yes"),
            "deletes $RG",
        ),
        (
            safe.replace("GUIDE_RG=mine", "GUIDE_RG=$AKS_RG"),
            "GUIDE_RG set from another variable",
        ),
        (
            safe.replace("\n  echo taken\nelse\n", "\n  echo new\nfi\n"),
            "group created without checking that it is new",
        ),
        (
            safe.replace(
                "az group create --name \"$GUIDE_RG\" --location \"$LOCATION\"",
                "true",
            ),
            "group never created",
        ),
        (
            safe.replace(
                "az acr create --resource-group \"$GUIDE_RG\"",
                "az acr create --resource-group \"$AKS_RG\"",
            ),
            "creates into the cluster's group",
        ),
    ] {
        assert!(
            check_resource_groups(&unsafe_guide).is_err(),
            "not caught ({why}):\n{unsafe_guide}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The binaries' defaults
// ---------------------------------------------------------------------------------------------

/// A binary's defaults as its `--help` prints them, by environment variable.
struct Defaults {
    bin: &'static str,
    by_env: BTreeMap<String, String>,
    help: String,
}

impl Defaults {
    fn of(bin: &'static str) -> Self {
        let exe = harness::binary(bin);
        // The harness's clean environment: `--help` shows the code's defaults, not this shell's.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let help = runtime.block_on(harness::help(exe, &[], &[]));
        Self {
            bin,
            by_env: parse_help(&help),
            help,
        }
    }

    /// Whether the binary reads the variable `env` (with or without a default).
    fn reads(&self, env: &str) -> bool {
        self.help.contains(&format!("[env: {env}"))
    }

    fn get(&self, env: &str) -> &str {
        self.by_env
            .get(env)
            .unwrap_or_else(|| panic!("{} --help shows no default for {env}", self.bin))
    }
}

/// Pairs each option's `[env: NAME=...]` with its `[default: VALUE]` in clap's long help.
fn parse_help(help: &str) -> BTreeMap<String, String> {
    let mut defaults = BTreeMap::new();
    let mut env = None;
    for line in help.lines().map(str::trim) {
        if line.starts_with('-') {
            env = None;
        } else if let Some(rest) = line.strip_prefix("[env: ") {
            env = rest.split(['=', ']']).next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("[default: ")
            && let (Some(name), Some(value)) = (env.take(), rest.strip_suffix(']'))
        {
            defaults.insert(name, value.to_owned());
        }
    }
    defaults
}

/// The value a container runs with: its `env` entry, else the binary's default.
fn effective(container: &Value, defaults: &Defaults, name: &str) -> String {
    array(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| {
            e["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} must be a literal value in the manifest"))
                .to_owned()
        })
        .unwrap_or_else(|| defaults.get(name).to_owned())
}

// ---------------------------------------------------------------------------------------------
// Rendering and reading the manifests
// ---------------------------------------------------------------------------------------------

/// One kustomization, rendered.
struct Render {
    /// Its directory, relative to the repository, e.g. `deploy/base`.
    label: String,
    objects: Vec<Value>,
}

/// Every kustomization under `deploy/`, rendered once for all tests.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let mut dirs = Vec::new();
        kustomization_dirs(&Path::new(ROOT).join("deploy"), &mut dirs);
        dirs.sort();
        assert!(!dirs.is_empty(), "no kustomization under deploy/");
        dirs.iter().map(|dir| render(dir)).collect()
    })
}

fn kustomization_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    let mut is_root = false;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            kustomization_dirs(&path, found);
        } else if path
            .file_name()
            .is_some_and(|n| n == "kustomization.yaml" || n == "kustomization.yml")
        {
            is_root = true;
        }
    }
    if is_root {
        found.push(dir.to_owned());
    }
}

fn render(dir: &Path) -> Render {
    let label = dir
        .strip_prefix(ROOT)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("`kubectl kustomize {label}` could not run ({e}): kubectl must be on PATH")
        });
    assert!(
        output.status.success(),
        "`kubectl kustomize {label}` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = yaml_documents(&String::from_utf8_lossy(&output.stdout));
    assert!(!objects.is_empty(), "{label} renders nothing");
    Render { label, objects }
}

impl Render {
    fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let mut found = self.all(kind).filter(|o| o["metadata"]["name"] == name);
        let object = found
            .next()
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.label));
        assert!(found.next().is_none(), "{}: two {kind} {name}", self.label);
        object
    }

    /// The one Dapr Component: both apps use one binding.
    fn component(&self) -> &Value {
        let components: Vec<_> = self.all("Component").collect();
        assert_eq!(components.len(), 1, "{}: one Component", self.label);
        components[0]
    }

    /// The app's Deployment, by its `app` label.
    fn app(&self, app: &str) -> &Value {
        let mut found = self
            .all("Deployment")
            .filter(|d| d["spec"]["template"]["metadata"]["labels"]["app"] == app);
        let deployment = found
            .next()
            .unwrap_or_else(|| panic!("{}: no Deployment for app {app}", self.label));
        assert!(found.next().is_none(), "{}: two apps {app}", self.label);
        deployment
    }

    /// The container named after the app (`kubectl logs -c consumer` relies on it).
    fn app_container(&self, app: &str) -> &Value {
        array(&self.app(app)["spec"]["template"]["spec"]["containers"])
            .iter()
            .find(|c| c["name"] == app)
            .unwrap_or_else(|| panic!("{}: no container {app}", self.label))
    }

    fn annotations(&self, app: &str) -> &serde_json::Map<String, Value> {
        self.app(app)["spec"]["template"]["metadata"]["annotations"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: {app}'s pod has no annotations", self.label))
    }

    fn annotation(&self, app: &str, key: &str) -> &str {
        self.annotations(app)
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: {app} has no {key}", self.label))
    }

    /// terminationGracePeriodSeconds, block-shutdown-duration and graceful-shutdown-seconds.
    fn shutdown(&self, app: &str) -> (Duration, Duration, Duration) {
        let pod = &self.app(app)["spec"]["template"]["spec"];
        let grace = Duration::from_secs(u64_at(pod, "/terminationGracePeriodSeconds", 30));
        let annotations = self.annotations(app);
        let block = annotations
            .get("dapr.io/block-shutdown-duration")
            .map_or(Duration::ZERO, |d| duration(d.as_str().unwrap()));
        let graceful = annotations
            .get("dapr.io/graceful-shutdown-seconds")
            .map_or(DAPR_GRACEFUL_SHUTDOWN_DEFAULT, |s| {
                Duration::from_secs(s.as_str().unwrap().parse().expect("whole seconds"))
            });
        (grace, block, graceful)
    }

    /// How long after the app starts failing daprd's app health check daprd counts it unhealthy:
    /// probe interval × threshold (Dapr's defaults, 5 s and 3, when unset).
    fn app_health_failing_for(&self, app: &str) -> Duration {
        let annotations = self.annotations(app);
        assert_eq!(
            annotations
                .get("dapr.io/enable-app-health-check")
                .and_then(Value::as_str),
            Some("true"),
            "{}: {app} has no app health check",
            self.label
        );
        let number = |key: &str, default: u64| -> u64 {
            annotations.get(key).map_or(default, |v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{}: {key} is not a whole number", self.label))
            })
        };
        Duration::from_secs(
            number("dapr.io/app-health-probe-interval", 5)
                * number("dapr.io/app-health-threshold", 3),
        )
    }
}

/// Port numbers by name.
fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    array(&container["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The Secret and key a container's variable `name` is read from, if it is read from one.
fn secret_env<'a>(container: &'a Value, name: &str) -> Option<(&'a str, &'a str)> {
    array(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e.pointer("/valueFrom/secretKeyRef"))
        .map(|r| (str_at(r, "/name"), str_at(r, "/key")))
}

/// A component metadata item's literal value.
fn component_value<'a>(component: &'a Value, name: &str) -> &'a str {
    array(&component["spec"]["metadata"])
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["value"].as_str())
        .unwrap_or_else(|| panic!("the Component has no literal {name}"))
}

fn dapr_run_file() -> Value {
    let mut documents = yaml_documents(&read("dapr.yaml"));
    assert_eq!(documents.len(), 1, "dapr.yaml is one document");
    documents.remove(0)
}

/// The one directory in dapr.yaml's `common.resourcesPaths`.
fn dapr_run_resources_dir(run: &Value) -> PathBuf {
    let paths = array(&run["common"]["resourcesPaths"]);
    assert_eq!(paths.len(), 1, "dapr.yaml: one directory in resourcesPaths");
    Path::new(ROOT).join(paths[0].as_str().expect("a path"))
}

/// The component `dapr run -f .` loads: the one Component in dapr.yaml's resourcesPaths.
fn dapr_run_component() -> Value {
    let dir = dapr_run_resources_dir(&dapr_run_file());
    let mut components: Vec<Value> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir:?}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .flat_map(|p| yaml_documents(&fs::read_to_string(p).unwrap()))
        .filter(|d| d["kind"] == "Component")
        .collect();
    assert_eq!(components.len(), 1, "one Component in {dir:?}");
    components.remove(0)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn read(path: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

fn u64_at(value: &Value, pointer: &str, default: u64) -> u64 {
    value.pointer(pointer).map_or(default, |v| {
        v.as_u64()
            .unwrap_or_else(|| panic!("{pointer} is not a number"))
    })
}

/// `5s`, `250ms`, `1m`: the syntax of the binaries' durations and of Go's simple ones.
fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("duration {text:?}: {e}"))
}

/// Whether `text`, the content of the committed file `path`, gives a Service Bus key away: a
/// connection string in clear, in any file; in YAML, also one base64-encoded, as a Secret's
/// `data:` holds it; in YAML and env files, also a bare key.
fn leaks_a_key(path: &str, text: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    let env = name.ends_with(".env") || name.starts_with(".env");
    looks_like_a_key(text)
        || (yaml && yaml_strings(text).iter().any(|s| base64_hides_a_key(s)))
        || ((yaml || env) && holds_a_bare_key(text))
}

/// `SharedAccessKey=` followed by 40 or more base64 characters: a real key is 44.
fn looks_like_a_key(text: &str) -> bool {
    text.match_indices("SharedAccessKey=").any(|(at, marker)| {
        text[at + marker.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            .count()
            >= 40
    })
}

/// Every string value in a YAML file; every word, should a document not parse.
fn yaml_strings(text: &str) -> Vec<String> {
    fn collect(value: &Value, strings: &mut Vec<String>) {
        match value {
            Value::String(s) => strings.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| collect(v, strings)),
            Value::Object(map) => map.values().for_each(|v| collect(v, strings)),
            _ => {}
        }
    }
    let mut strings = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(value) => collect(&value, &mut strings),
            Err(_) => {
                return text
                    .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\''))
                    .map(str::to_owned)
                    .collect();
            }
        }
    }
    strings
}

/// A base64 value (line breaks and indentation ignored, as in a wrapped Secret value) whose
/// decoded text holds a connection string with its key. 76 characters encode the 56 that
/// [`looks_like_a_key`] needs at the least.
fn base64_hides_a_key(value: &str) -> bool {
    let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    value.len() >= 76
        && BASE64
            .decode(&value)
            .is_ok_and(|bytes| looks_like_a_key(&String::from_utf8_lossy(&bytes)))
}

/// A word of 43 base64 characters and one `=`, the encoding of a 256-bit key as Azure prints
/// it, standing alone (not a name before `=value`). Upper case, lower case and a digit are all
/// required, as in any real key but few names.
fn holds_a_bare_key(text: &str) -> bool {
    let body = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if !body(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && body(bytes[at]) {
            at += 1;
        }
        let word = &bytes[start..at];
        let padding = bytes[at..].iter().take_while(|&&b| b == b'=').count();
        at += padding;
        if word.len() == 43
            && padding == 1
            && !bytes.get(at).copied().is_some_and(body)
            && word.iter().any(u8::is_ascii_uppercase)
            && word.iter().any(u8::is_ascii_lowercase)
            && word.iter().any(u8::is_ascii_digit)
        {
            return true;
        }
    }
    false
}

/// The shell commands in deploy/README.md's `sh` blocks, continuation lines joined and comments
/// dropped.
fn guide_commands() -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in read("deploy/README.md").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = trimmed.split(" #").next().unwrap_or_default();
        if code.starts_with('#') {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(code);
                if !current.trim().is_empty() {
                    commands.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    commands
}

/// The guide's own resource group, as its commands write it.
const GUIDE_RG: [&str; 3] = ["\"$GUIDE_RG\"", "$GUIDE_RG", "\"${GUIDE_RG}\""];

/// That a guide (markdown with `sh` blocks) deletes no resource group but its own, and that its
/// own is one it created: `GUIDE_RG` is only ever set to a literal name, the one `az group create`
/// names it and runs only after `az group exists` said the group is new, every `az group delete`
/// names it, and every Azure resource the guide creates (but a cluster, whose group is the
/// guide's when the guide makes it) goes into it.
fn check_resource_groups(guide: &str) -> Result<(), String> {
    let names_guide_rg = |command: &str, option: &str| -> bool {
        command
            .split(option)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|value| GUIDE_RG.contains(&value))
    };
    let mut created = false;
    for block in sh_blocks(guide) {
        let commands = join_continuations(&block);
        for (at, command) in commands.iter().enumerate() {
            if let Some(value) = command.strip_prefix("GUIDE_RG=") {
                let value = value.split_whitespace().next().unwrap_or_default();
                if value.is_empty() || value.contains(['$', '`', '<', '(']) {
                    return Err(format!(
                        "GUIDE_RG must be a new group's literal name: {command}"
                    ));
                }
            }
            if command.contains("az group delete") && !names_guide_rg(command, "--name") {
                return Err(format!("deletes a group that is not GUIDE_RG: {command}"));
            }
            if command.contains("az group create") {
                if !names_guide_rg(command, "--name") {
                    return Err(format!("creates a group that is not GUIDE_RG: {command}"));
                }
                // if [ "$(az group exists --name "$GUIDE_RG")" = true ]; then ... else <here> fi
                let guarded = commands[..at].iter().rev().take_while(|c| *c != "fi");
                let (mut checked, mut in_else) = (false, false);
                for earlier in guarded {
                    in_else |= earlier == "else";
                    checked |= earlier.starts_with("if ")
                        && GUIDE_RG
                            .iter()
                            .any(|g| earlier.contains(&format!("az group exists --name {g})")));
                }
                if !(checked && in_else) {
                    return Err(format!(
                        "az group create without az group exists first: {command}"
                    ));
                }
                created = true;
            }
            let creates = command.starts_with("az ") && command.contains(" create ");
            if creates && command.contains("--resource-group") {
                let into_guide_rg = names_guide_rg(command, "--resource-group");
                let cluster_in_guide_rg = command.starts_with("az aks create")
                    && commands[..at].iter().any(|c| c == "AKS_RG=$GUIDE_RG");
                if !into_guide_rg && !cluster_in_guide_rg {
                    return Err(format!("creates outside GUIDE_RG: {command}"));
                }
            }
        }
    }
    if created {
        Ok(())
    } else {
        Err("never creates GUIDE_RG with az group create".to_owned())
    }
}

/// The lines of each ```sh block, in order.
fn sh_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let fence = line.trim();
        if fence.starts_with("```") {
            blocks.extend(current.take());
            if fence == "```sh" {
                current = Some(Vec::new());
            }
        } else if let Some(block) = &mut current {
            block.push(line);
        }
    }
    blocks
}

/// A block's commands: continuation lines joined, comments and blank lines dropped, trimmed.
fn join_continuations(lines: &[&str]) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in lines {
        let code = line.trim().split(" #").next().unwrap_or_default();
        if code.starts_with('#') {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(code.trim());
                let command = current.trim().to_owned();
                if !command.is_empty() {
                    commands.push(command);
                }
                current.clear();
            }
        }
    }
    commands
}

/// The Secrets deploy/README.md creates with `kubectl create secret generic NAME
/// --from-literal=KEY=...`, by name, with their keys.
fn guide_created_secrets() -> BTreeMap<String, BTreeSet<String>> {
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for command in guide_commands() {
        let Some(rest) = command.split("kubectl create secret generic ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = words.next().expect("a Secret name").to_owned();
        let keys = secrets.entry(name).or_default();
        for word in words {
            if let Some(literal) = word.strip_prefix("--from-literal=") {
                keys.insert(literal.split('=').next().unwrap().to_owned());
            }
        }
    }
    secrets
}

/// The workspace's binaries, each in the package of the same name, as `cargo metadata` lists them.
fn cargo_bins() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").expect("CARGO, which cargo sets for tests");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(ROOT)
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "cargo metadata: {output:?}");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let mut bins = BTreeSet::new();
    for package in metadata["packages"].as_array().expect("packages") {
        for target in package["targets"].as_array().expect("targets") {
            if target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                assert_eq!(
                    target["name"], package["name"],
                    "a binary named as its package"
                );
                bins.insert(target["name"].as_str().expect("a name").to_owned());
            }
        }
    }
    assert!(!bins.is_empty(), "no binary in the workspace");
    bins
}

/// Each named stage's text, from its `FROM ... AS name` line to the next `FROM`.
fn dockerfile_stages(dockerfile: &str) -> BTreeMap<String, String> {
    let mut stages = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            stages.extend(current.take());
            if let [.., r#as, name] = words.as_slice()
                && r#as.eq_ignore_ascii_case("AS")
            {
                current = Some(((*name).to_owned(), String::new()));
            }
        } else if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    stages.extend(current);
    stages
}

//! The manifests wire the apps as the code expects: the binding's name, ports, probes, Dapr's
//! tokens, tracing, scaling on the component's queue, secret references and shutdown timing.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::Value;

use crate::{
    binaries::{Defaults, effective},
    guide::{guide_commands, guide_created_secrets},
    render::*,
};

#[test]
fn every_kustomization_renders_the_whole_pair() {
    let roots: BTreeSet<&str> = renders().iter().map(|r| r.label.as_str()).collect();
    for expected in [
        "deploy/base",
        "deploy/overlays/workload-identity",
        "deploy/overlays/local-rabbitmq",
        "deploy/base + deploy/overlays/public",
        "deploy/overlays/workload-identity + deploy/overlays/public",
        "deploy/base + deploy/overlays/monitoring",
        "deploy/base + deploy/overlays/monitoring + deploy/overlays/public",
    ] {
        assert!(
            roots.contains(expected),
            "{expected} not rendered: {roots:?}"
        );
    }
    // The Components add to an overlay and change nothing it has; on their own they render only
    // their additions, as validate-manifests renders them.
    let components = component_renders();
    assert_eq!(
        components.len(),
        2,
        "overlays/public and overlays/monitoring"
    );
    for component in components {
        for object in &component.objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            assert!(
                !matches!(
                    kind,
                    "Deployment" | "Namespace" | "Component" | "ScaledObject"
                ),
                "{}: a Component adds no {kind}",
                component.label
            );
        }
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
            // NAME=secret:key pairs the injector maps into daprd's environment.
            let mapped = annotations
                .and_then(|a| a.get("dapr.io/env-from-secret"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            for pair in mapped.split(',').filter(|p| !p.trim().is_empty()) {
                let (variable, source) = pair.trim().split_once('=').expect("NAME=secret:key");
                let (name, key) = source.split_once(':').unwrap_or((source, source));
                refs.push((format!("daprd env {variable}"), name, key));
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
            for volume in array(&pod["spec"]["volumes"]) {
                if let Some(name) = volume["secret"]["secretName"].as_str() {
                    for item in array(&volume["secret"]["items"]) {
                        refs.push((
                            format!("volume {}", volume["name"]),
                            name,
                            str_at(item, "/key"),
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
    // The base alone has three (each sidecar's key and KEDA's): this test checks something.
    assert!(checked >= 3, "only {checked} secret references found");

    // The env file the guide writes for its secretGenerator holds exactly the keys of the base's
    // placeholder Secret, which it replaces.
    let base = renders().iter().find(|r| r.label == "deploy/base").unwrap();
    let placeholder: BTreeSet<&str> = base.one("Secret", "servicebus")["stringData"]
        .as_object()
        .expect("the placeholder's stringData")
        .keys()
        .map(String::as_str)
        .collect();
    let env_file = guide_commands()
        .into_iter()
        .find(|c| c.starts_with("printf ") && c.contains("servicebus.env"))
        .expect("the guide writes servicebus.env with printf");
    let format = env_file.split('\'').nth(1).expect("a quoted format");
    let written: BTreeSet<&str> = format
        .split("\\n")
        .filter_map(|line| line.strip_suffix("=%s"))
        .collect();
    assert_eq!(written, placeholder, "servicebus.env's keys: {env_file}");
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
        // The producer gets SIGTERM only after its preStop sleep, daprd at once: the sidecar
        // must still serve at the end of the sleep and the drain.
        let sleep = pre_stop_sleep(render.app_container("producer"));
        assert!(
            sleep + drain <= block,
            "{label}: the producer's preStop sleep {sleep:?} and DRAIN_TIMEOUT {drain:?} \
             outlast its sidecar's block {block:?}"
        );
        assert!(
            sleep + drain < grace,
            "{label}: preStop {sleep:?} + DRAIN_TIMEOUT {drain:?} >= grace {grace:?}"
        );
        assert!(
            drain < grace,
            "{label}: producer DRAIN_TIMEOUT {drain:?} >= grace {grace:?}"
        );
    }
}

/// A container's preStop `sleep`, zero without one.
pub(crate) fn pre_stop_sleep(container: &Value) -> Duration {
    Duration::from_secs(u64_at(container, "/lifecycle/preStop/sleep/seconds", 0))
}

//! Least privilege in what the manifests deploy: Pod Security `restricted` admits every pod, daprd
//! included; no pod mounts a service account token it does not need; daprd has no built-in secret
//! store and needs none; each sidecar gets a key of its own.

use serde_json::{Value, json};

use crate::{
    admission::{InjectorSettings, mounted_tokens},
    pod_security::restricted_violations,
    render::{array, renders, str_at},
};

/// The sidecar injector's volume with daprd's token for Dapr's sentry.
const SENTRY_TOKEN: &str = "dapr-identity-token";
/// The workload identity webhook's volume with the token Entra ID exchanges.
const AZURE_TOKEN: &str = "azure-identity-token";

#[test]
fn pod_security_restricted_admits_every_pod_daprd_included() {
    let settings = InjectorSettings::from_guide();
    let mut pods = 0;
    for render in renders() {
        let label = &render.label;
        let namespace = render.namespace();
        let labels = &namespace["metadata"]["labels"];
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}")],
                "restricted",
                "{label}: the namespace must {mode} Pod Security `restricted`"
            );
        }
        let name = str_at(namespace, "/metadata/name");
        for object in &render.objects {
            if object["kind"] != "Namespace" {
                assert_eq!(
                    object["metadata"]["namespace"], name,
                    "{label}: {} {} outside the restricted namespace",
                    object["kind"], object["metadata"]["name"]
                );
            }
        }
        for (deployment, pod) in render.admitted_pods(settings) {
            pods += 1;
            let violations = restricted_violations(&pod);
            assert!(
                violations.is_empty(),
                "{label}: Pod Security `restricted` rejects {deployment}'s pod: {violations:#?}"
            );
            if pod["metadata"]["annotations"]["dapr.io/enabled"] == "true" {
                assert!(
                    array(&pod["spec"]["containers"])
                        .iter()
                        .any(|c| c["name"] == "daprd"),
                    "{label}: the model injected no daprd into {deployment}"
                );
            }
        }
    }
    assert!(pods >= 8, "only {pods} pods checked");
}

#[test]
fn the_restricted_checks_reject_what_the_profile_forbids() {
    let base = renders().iter().find(|r| r.label == "deploy/base").unwrap();
    let admitted = base.admitted_pod("producer", InjectorSettings::from_guide());
    assert_eq!(restricted_violations(&admitted), Vec::<String>::new());

    // daprd as the chart injects it unless told otherwise keeps its capabilities.
    let chart_default = base.admitted_pod("producer", InjectorSettings::CHART_DEFAULTS);
    let violations = restricted_violations(&chart_default);
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("capabilities_restricted: daprd")),
        "{violations:?}"
    );

    let changes: [Breach; 15] = [
        ("privilege escalation", |p| {
            app(p)["securityContext"]["allowPrivilegeEscalation"] = json!(true)
        }),
        ("no capabilities dropped", |p| {
            app(p)["securityContext"]["capabilities"] = json!({})
        }),
        ("a capability added", |p| {
            app(p)["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"])
        }),
        ("root", |p| {
            app(p)["securityContext"]["runAsUser"] = json!(0)
        }),
        ("runAsNonRoot false", |p| {
            p["spec"]["securityContext"]["runAsNonRoot"] = json!(false)
        }),
        ("no seccomp profile", |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        }),
        ("a hostPath volume", |p| {
            p["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "h", "hostPath": {"path": "/"}}))
        }),
        ("the host's network", |p| {
            p["spec"]["hostNetwork"] = json!(true)
        }),
        ("a host port", |p| {
            app(p)["ports"][0]["hostPort"] = json!(8080)
        }),
        ("privileged", |p| {
            app(p)["securityContext"]["privileged"] = json!(true)
        }),
        ("a probe's host", |p| {
            app(p)["readinessProbe"]["httpGet"]["host"] = json!("10.0.0.1")
        }),
        ("an unsafe sysctl", |p| {
            p["spec"]["securityContext"]["sysctls"] =
                json!([{"name": "kernel.msgmax", "value": "1"}])
        }),
        ("an SELinux type", |p| {
            app(p)["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"})
        }),
        ("an unmasked /proc", |p| {
            app(p)["securityContext"]["procMount"] = json!("Unmasked")
        }),
        ("AppArmor unconfined", |p| {
            app(p)["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})
        }),
    ];
    for (what, change) in changes {
        let mut pod = admitted.clone();
        change(&mut pod);
        assert!(
            !restricted_violations(&pod).is_empty(),
            "not rejected: {what}"
        );
    }
}

/// A named change to an admitted pod.
type Breach = (&'static str, fn(&mut Value));

/// The first app container of a pod: the producer in the producer's pod.
fn app(pod: &mut Value) -> &mut Value {
    &mut pod["spec"]["containers"][0]
}

#[test]
fn no_pod_mounts_a_service_account_token_it_does_not_need() {
    let settings = InjectorSettings::from_guide();
    for render in renders() {
        let label = &render.label;
        // daprd signs in to Service Bus with a workload identity when the Component names the
        // namespace instead of a connection string.
        let identity = array(&render.component()["spec"]["metadata"])
            .iter()
            .any(|m| m["name"] == "namespaceName");
        for (deployment, pod) in render.admitted_pods(settings) {
            let spec = &pod["spec"];
            assert_eq!(
                spec["automountServiceAccountToken"], false,
                "{label}: {deployment} mounts a Kubernetes API token nothing in it uses"
            );
            let account = spec["serviceAccountName"].as_str().unwrap_or("default");
            assert_ne!(
                account, "default",
                "{label}: {deployment} runs as `default`"
            );
            let account = render.one("ServiceAccount", account);
            assert_eq!(
                account["automountServiceAccountToken"], false,
                "{label}: ServiceAccount {} hands out API tokens",
                account["metadata"]["name"]
            );
            for container in array(&spec["containers"]) {
                let name = str_at(container, "/name");
                let mut mounted: Vec<String> = mounted_tokens(&pod, container)
                    .into_iter()
                    .map(|(volume, _)| volume)
                    .collect();
                mounted.sort();
                let needed: Vec<&str> = match name {
                    "daprd" if identity => vec![AZURE_TOKEN, SENTRY_TOKEN],
                    "daprd" => vec![SENTRY_TOKEN],
                    _ => vec![],
                };
                assert_eq!(
                    mounted, needed,
                    "{label}: {deployment}'s container {name} mounts service account tokens"
                );
            }
        }
    }
}

#[test]
fn daprd_has_no_builtin_secret_store_and_needs_none() {
    for render in renders() {
        let label = &render.label;
        let component = render.component();
        // A secretKeyRef the operator resolves before daprd loads the Component needs no store in
        // daprd: the operator does it for the built-in store's name, or none (dapr/dapr v1.17.5
        // pkg/operator/api/components.go processComponentSecrets, pkg/runtime/processor/secret).
        let store = component["auth"]["secretStore"]
            .as_str()
            .unwrap_or("kubernetes");
        assert_eq!(
            store, "kubernetes",
            "{label}: a secret store daprd would need"
        );
        for deployment in render.all("Deployment") {
            let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
            if annotations["dapr.io/enabled"] != "true" {
                continue;
            }
            let app = annotations["dapr.io/app-id"].as_str().unwrap_or_default();
            assert_eq!(
                annotations["dapr.io/disable-builtin-k8s-secret-store"], "true",
                "{label}: {app}'s daprd has the built-in `kubernetes` secret store"
            );
            // Each envRef reads a variable the injector hands to daprd (and lists in
            // DAPR_ENV_KEYS, daprd's allow-list for envRef).
            let mapped: Vec<&str> = annotations["dapr.io/env-from-secret"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim()))
                .collect();
            for item in array(&component["spec"]["metadata"]) {
                if let Some(variable) = item["envRef"].as_str() {
                    assert!(
                        mapped.contains(&variable),
                        "{label}: {app}'s daprd has no {variable} for {}",
                        item["name"]
                    );
                }
            }
        }
        for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
            assert_eq!(
                render.all(kind).count(),
                0,
                "{label}: grants Kubernetes rights"
            );
        }
    }
}

#[test]
fn each_sidecar_gets_a_key_of_its_own_and_keda_another() {
    let mut checked = 0;
    for render in renders() {
        let label = &render.label;
        let component = render.component();
        let from_env = array(&component["spec"]["metadata"])
            .iter()
            .find(|m| m["name"] == "connectionString")
            .and_then(|m| m["envRef"].as_str());
        let Some(variable) = from_env else {
            // No key at all: a workload identity, or another broker.
            continue;
        };
        checked += 1;
        let key_of = |app: &str| -> String {
            let mapping = render.annotation(app, "dapr.io/env-from-secret");
            let source = mapping
                .split(',')
                .find_map(|pair| pair.trim().strip_prefix(&format!("{variable}=")))
                .unwrap_or_else(|| panic!("{label}: {app}'s daprd gets no {variable}"));
            source.to_owned()
        };
        assert_eq!(
            key_of("producer"),
            "servicebus:producer-connection-string",
            "{label}"
        );
        assert_eq!(
            key_of("consumer"),
            "servicebus:consumer-connection-string",
            "{label}"
        );
        let keda = render.one("TriggerAuthentication", "keda-queue-auth");
        let keda_key = array(&keda["spec"]["secretTargetRef"])
            .iter()
            .find(|r| r["parameter"] == "connection")
            .map(|r| format!("{}:{}", str_at(r, "/name"), str_at(r, "/key")));
        assert_eq!(
            keda_key.as_deref(),
            Some("servicebus:keda-connection-string"),
            "{label}"
        );
    }
    assert!(checked >= 2, "only {checked} renders with keys");
}

//! A pod as the API server admits it, which no cluster here can show: what Dapr's sidecar
//! injector, the Azure workload identity webhook and the ServiceAccount admission plugin add to a
//! Deployment's pod template, modelled from their source.
//!
//! - Dapr's injector, v1.17.5 (dapr/dapr `pkg/injector/patcher/sidecar_patcher.go`,
//!   `sidecar_container.go`, `sidecar_volumes.go`, `sidecar.go` for the annotations' defaults,
//!   `pkg/injector/consts`), with the chart's `dapr_sidecar_injector` values (`charts/dapr/charts/
//!   dapr_sidecar_injector/values.yaml`: `sidecarRunAsNonRoot` and `sidecarReadOnlyRootFilesystem`
//!   true, `sidecarDropALLCapabilities` false) as the guide's `helm install` overrides them. It adds
//!   the `daprd` container and the `dapr-identity-token` volume (a service account token for
//!   sentry's audience, mounted in daprd alone), and DAPR_HTTP_PORT, DAPR_GRPC_PORT and
//!   APP_PROTOCOL to the app's containers.
//! - The workload identity webhook (Azure/azure-workload-identity `pkg/webhook/webhook.go`): for a
//!   pod labelled `azure.workload.identity/use: "true"`, a projected token for
//!   `api://AzureADTokenExchange` and the AZURE_* variables in every container but those the
//!   `azure.workload.identity/skip-containers` annotation lists. Its MutatingWebhookConfiguration
//!   has `reinvocationPolicy: IfNeeded`, so it sees daprd too.
//! - The ServiceAccount admission plugin: unless the pod, or else its ServiceAccount, sets
//!   `automountServiceAccountToken: false`, a `kube-api-access-*` projected volume with an API
//!   token in every container. Modelled last, so that it also reaches the injected ones: the
//!   cautious reading.

use serde_json::{Value, json};

use crate::{guide::guide_commands, render::array};

/// Where the injector mounts daprd's sentry token (`TokenVolumeKubernetesMountPath`).
const SENTRY_TOKEN_PATH: &str = "/var/run/secrets/dapr.io/sentrytoken";
/// The port daprd serves its health endpoints on (`SidecarPublicPort`'s default).
const DAPRD_PUBLIC_PORT: u64 = 3501;

/// The Dapr chart's sidecar settings that decide daprd's securityContext.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InjectorSettings {
    pub(crate) drop_all_capabilities: bool,
    pub(crate) run_as_non_root: bool,
    pub(crate) read_only_root_filesystem: bool,
}

impl InjectorSettings {
    /// The chart's defaults.
    pub(crate) const CHART_DEFAULTS: Self = Self {
        drop_all_capabilities: false,
        run_as_non_root: true,
        read_only_root_filesystem: true,
    };

    /// The chart's defaults with what deploy/README.md's `helm install dapr` sets; panics when
    /// the guide installs Dapr in two different ways.
    pub(crate) fn from_guide() -> Self {
        let installs: Vec<String> = guide_commands()
            .into_iter()
            .filter(|c| c.starts_with("helm install dapr ") || c.starts_with("helm upgrade dapr "))
            .collect();
        assert!(!installs.is_empty(), "deploy/README.md never installs Dapr");
        let settings: Vec<Self> = installs.iter().map(|c| Self::from_helm(c)).collect();
        assert!(
            settings.windows(2).all(|w| w[0].same_as(&w[1])),
            "the guide installs Dapr with different sidecar settings: {installs:#?}"
        );
        settings[0]
    }

    fn from_helm(command: &str) -> Self {
        let set = |key: &str| -> Option<bool> {
            let needle = format!("dapr_sidecar_injector.{key}=");
            command
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&needle))
                .map(|value| value == "true")
        };
        let defaults = Self::CHART_DEFAULTS;
        Self {
            drop_all_capabilities: set("sidecarDropALLCapabilities")
                .unwrap_or(defaults.drop_all_capabilities),
            run_as_non_root: set("sidecarRunAsNonRoot").unwrap_or(defaults.run_as_non_root),
            read_only_root_filesystem: set("sidecarReadOnlyRootFilesystem")
                .unwrap_or(defaults.read_only_root_filesystem),
        }
    }

    fn same_as(&self, other: &Self) -> bool {
        (
            self.drop_all_capabilities,
            self.run_as_non_root,
            self.read_only_root_filesystem,
        ) == (
            other.drop_all_capabilities,
            other.run_as_non_root,
            other.read_only_root_filesystem,
        )
    }
}

/// The pod `template` (a Deployment's `spec.template`) as admitted, with `service_account` the
/// rendered ServiceAccount it runs as, if the render has it.
pub(crate) fn admitted(
    template: &Value,
    service_account: Option<&Value>,
    settings: InjectorSettings,
) -> Value {
    let mut pod = template.clone();
    let annotation = |key: &str| template["metadata"]["annotations"][key].as_str();
    if annotation("dapr.io/enabled") == Some("true") {
        inject_daprd(&mut pod, settings);
    }
    if template["metadata"]["labels"]["azure.workload.identity/use"] == "true" {
        inject_workload_identity(&mut pod);
    }
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| service_account.and_then(|sa| sa["automountServiceAccountToken"].as_bool()))
        .unwrap_or(true);
    if automount {
        add_token_volume(
            &mut pod,
            "kube-api-access",
            None,
            "/var/run/secrets/kubernetes.io/serviceaccount",
            &[],
        );
    }
    pod
}

/// The audiences of the service account tokens `container` has mounted, by volume name.
pub(crate) fn mounted_tokens(pod: &Value, container: &Value) -> Vec<(String, String)> {
    array(&container["volumeMounts"])
        .iter()
        .filter_map(|mount| {
            let volume = array(&pod["spec"]["volumes"])
                .iter()
                .find(|v| v["name"] == mount["name"])?;
            let token = array(&volume["projected"]["sources"])
                .iter()
                .find_map(|source| source.get("serviceAccountToken"))?;
            let audience = token["audience"].as_str().unwrap_or("the API server");
            Some((
                mount["name"].as_str().unwrap_or_default().to_owned(),
                audience.to_owned(),
            ))
        })
        .collect()
}

fn inject_daprd(pod: &mut Value, settings: InjectorSettings) {
    let annotations = pod["metadata"]["annotations"].clone();
    let annotation = |key: &str| annotations[key].as_str();
    let metrics_port: u64 = annotation("dapr.io/metrics-port").map_or(9090, |p| {
        p.parse()
            .unwrap_or_else(|_| panic!("dapr.io/metrics-port {p}"))
    });

    let mut security = json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": settings.run_as_non_root,
        "readOnlyRootFilesystem": settings.read_only_root_filesystem,
    });
    if let Some(profile) = annotation("dapr.io/sidecar-seccomp-profile-type") {
        security["seccompProfile"] = json!({"type": profile});
    }
    if settings.drop_all_capabilities {
        security["capabilities"] = json!({"drop": ["ALL"]});
    }

    let mut env = vec![json!({"name": "NAMESPACE"}), json!({"name": "POD_NAME"})];
    let mut env_keys = Vec::new();
    for pair in annotation("dapr.io/env-from-secret")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (name, source) = pair
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("dapr.io/env-from-secret entry {pair:?} is not NAME=..."));
        let (secret, key) = source.split_once(':').unwrap_or((source, source));
        env_keys.push(name.to_owned());
        env.push(json!({
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": secret.trim(), "key": key.trim()}},
        }));
    }
    if !env_keys.is_empty() {
        env.push(json!({"name": "DAPR_ENV_KEYS", "value": env_keys.join(" ")}));
    }
    for (key, variable) in [
        ("dapr.io/api-token-secret", "DAPR_API_TOKEN"),
        ("dapr.io/app-token-secret", "APP_API_TOKEN"),
    ] {
        if let Some(secret) = annotation(key) {
            env.push(json!({
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
            }));
        }
    }

    let daprd = json!({
        "name": "daprd",
        "image": "ghcr.io/dapr/daprd",
        "securityContext": security,
        "ports": [
            {"name": "dapr-http", "containerPort": 3500},
            {"name": "dapr-grpc", "containerPort": 50001},
            {"name": "dapr-internal", "containerPort": 50002},
            {"name": "dapr-metrics", "containerPort": metrics_port},
        ],
        "env": env,
        "readinessProbe": {"httpGet": {"path": "/v1.0/healthz", "port": DAPRD_PUBLIC_PORT}},
        "livenessProbe": {"tcpSocket": {"port": DAPRD_PUBLIC_PORT}},
    });
    let app_protocol = annotation("dapr.io/app-protocol")
        .unwrap_or("http")
        .to_owned();
    for container in containers_mut(pod) {
        push(
            &mut container["env"],
            [
                json!({"name": "DAPR_HTTP_PORT", "value": "3500"}),
                json!({"name": "DAPR_GRPC_PORT", "value": "50001"}),
                json!({"name": "APP_PROTOCOL", "value": app_protocol}),
            ],
        );
    }
    push(&mut pod["spec"]["containers"], [daprd]);
    add_token_volume(
        pod,
        "dapr-identity-token",
        Some("spiffe://cluster.local/ns/dapr-system/dapr-sentry"),
        SENTRY_TOKEN_PATH,
        &[],
    );
    // The token reaches daprd alone: undo its mount in the others.
    for container in containers_mut(pod) {
        if container["name"] != "daprd" {
            retain_mounts(container, "dapr-identity-token");
        }
    }
    for (key, value) in [
        ("dapr.io/sidecar-injected", "true"),
        (
            "dapr.io/app-id",
            annotation("dapr.io/app-id").unwrap_or_default(),
        ),
    ] {
        pod["metadata"]["labels"][key] = json!(value);
    }
}

fn inject_workload_identity(pod: &mut Value) {
    let skip: Vec<String> =
        pod["metadata"]["annotations"]["azure.workload.identity/skip-containers"]
            .as_str()
            .unwrap_or_default()
            .split(';')
            .map(|name| name.trim().to_owned())
            .collect();
    add_token_volume(
        pod,
        "azure-identity-token",
        Some("api://AzureADTokenExchange"),
        "/var/run/secrets/azure/tokens",
        &skip,
    );
    for container in containers_mut(pod) {
        if !skip.iter().any(|s| container["name"] == s.as_str()) {
            push(
                &mut container["env"],
                [
                    "AZURE_CLIENT_ID",
                    "AZURE_TENANT_ID",
                    "AZURE_FEDERATED_TOKEN_FILE",
                ]
                .map(|name| json!({"name": name})),
            );
        }
    }
}

/// A projected service account token volume, mounted in every container not in `skip`.
fn add_token_volume(
    pod: &mut Value,
    name: &str,
    audience: Option<&str>,
    path: &str,
    skip: &[String],
) {
    let mut token = json!({"path": "token", "expirationSeconds": 3600});
    if let Some(audience) = audience {
        token["audience"] = json!(audience);
    }
    push(
        &mut pod["spec"]["volumes"],
        [json!({"name": name, "projected": {"sources": [{"serviceAccountToken": token}]}})],
    );
    for container in containers_mut(pod) {
        if !skip.iter().any(|s| container["name"] == s.as_str()) {
            push(
                &mut container["volumeMounts"],
                [json!({"name": name, "mountPath": path, "readOnly": true})],
            );
        }
    }
}

fn retain_mounts(container: &mut Value, without: &str) {
    if let Some(mounts) = container["volumeMounts"].as_array_mut() {
        mounts.retain(|m| m["name"] != without);
    }
}

/// Every init and app container of the pod.
fn containers_mut(pod: &mut Value) -> impl Iterator<Item = &mut Value> {
    let spec = &mut pod["spec"];
    let (init, rest): (Vec<&mut Value>, Vec<&mut Value>) = match spec.as_object_mut() {
        Some(spec) => {
            let mut init = Vec::new();
            let mut rest = Vec::new();
            for (key, value) in spec.iter_mut() {
                if let Some(list) = value.as_array_mut() {
                    if key == "initContainers" {
                        init.extend(list.iter_mut());
                    } else if key == "containers" {
                        rest.extend(list.iter_mut());
                    }
                }
            }
            (init, rest)
        }
        None => (Vec::new(), Vec::new()),
    };
    init.into_iter().chain(rest)
}

fn push<const N: usize>(list: &mut Value, items: [Value; N]) {
    if !list.is_array() {
        *list = json!([]);
    }
    list.as_array_mut().expect("an array").extend(items);
}

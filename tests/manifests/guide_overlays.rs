//! The overlays the guide has the reader write (`deploy/overlays/mine`) render, and say what
//! the guide says they do. Each scenario runs the guide's own blocks under bash, in a scratch
//! copy of the layout (`deploy/` linked in, `mine` written there), with every cloud and cluster
//! command stubbed to succeed silently; then the real kubectl renders the result.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use test_support::process as harness;

use crate::{
    ROOT,
    guide::sh_blocks,
    render::{array, read, str_at, yaml_documents},
};

/// The commands the blocks call that reach a cluster, a cloud, a registry or git: stubbed.
const STUBBED: [&str; 9] = [
    "kubectl", "az", "helm", "docker", "kind", "git", "openssl", "curl", "minikube",
];

/// The guide's values for the variables earlier blocks set.
const ENVIRONMENT: [(&str, &str); 10] = [
    ("ACR", "myregistry"),
    ("SB", "my-bus"),
    ("TAG", "0123456789ab"),
    ("PRODUCER_CONNECTION_STRING", "producer-key"),
    ("CONSUMER_CONNECTION_STRING", "consumer-key"),
    ("KEDA_CONNECTION_STRING", "keda-key"),
    ("PRODUCER_CLIENT_ID", "11111111-1111-1111-1111-111111111111"),
    ("CONSUMER_CLIENT_ID", "22222222-2222-2222-2222-222222222222"),
    ("KEDA_CLIENT_ID", "33333333-3333-3333-3333-333333333333"),
    ("DAPR_VERSION", "1.17.5"),
];

/// The raw text of the guide's `sh` block holding `needle`.
fn block(needle: &str) -> String {
    let guide = read("deploy/README.md");
    sh_blocks(&guide)
        .into_iter()
        .map(|lines| lines.join("\n"))
        .find(|text| text.contains(needle))
        .unwrap_or_else(|| panic!("no block with {needle}"))
}

/// Runs the blocks holding `needles`, in order, in a fresh scratch layout; renders
/// `deploy/overlays/mine` with the real kubectl.
fn scenario(name: &str, needles: &[&str]) -> Vec<Value> {
    let scratch = harness::target_tmp().join("guide-overlays").join(name);
    let _ = fs::remove_dir_all(&scratch);
    let overlays = scratch.join("deploy/overlays");
    fs::create_dir_all(&overlays).unwrap();
    let deploy = Path::new(ROOT).join("deploy");
    symlink(deploy.join("base"), scratch.join("deploy/base")).unwrap();
    for entry in fs::read_dir(deploy.join("overlays")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "mine" {
            symlink(&path, overlays.join(name)).unwrap();
        }
    }
    let bin = scratch.join("stubs");
    fs::create_dir_all(&bin).unwrap();
    for stub in STUBBED {
        let path = bin.join(stub);
        // git names a commit; everything else answers nothing.
        let answer = if stub == "git" {
            "case \"$1\" in rev-parse) echo 0123456789ab ;; esac\n"
        } else {
            ""
        };
        fs::write(&path, format!("#!/bin/sh\n{answer}exit 0\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut script = String::from("set -e\npreflight() { return 0; }\n");
    for needle in needles {
        script.push_str(&block(needle));
        script.push('\n');
    }
    fs::write(scratch.join("script.sh"), &script).unwrap();
    let output = Command::new("bash")
        .arg("script.sh")
        .current_dir(&scratch)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .envs(ENVIRONMENT)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{name}: the guide's blocks fail:\n{}\n{script}",
        String::from_utf8_lossy(&output.stderr)
    );
    render(&scratch.join("deploy/overlays/mine"), name)
}

fn render(dir: &PathBuf, name: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        output.status.success(),
        "{name}: the overlay the guide writes does not render:\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fs::read_to_string(dir.join("kustomization.yaml")).unwrap_or_default()
    );
    yaml_documents(&String::from_utf8_lossy(&output.stdout))
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Both apps run the build's images, from the registry where there is one, in the pair's namespace.
fn assert_the_pair(objects: &[Value], registry: Option<&str>, scenario: &str) {
    for object in objects {
        if object["kind"] != "Namespace" {
            assert_eq!(
                object["metadata"]["namespace"], "dapr-bindings-keda",
                "{scenario}: {} {}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }
    for app in ["producer", "consumer"] {
        let deployment = one(objects, "Deployment", app).expect("the app");
        let image = array(&deployment["spec"]["template"]["spec"]["containers"])
            .iter()
            .find(|c| c["name"] == app)
            .map(|c| str_at(c, "/image"))
            .unwrap();
        let name = match registry {
            Some(registry) => format!("{registry}/dapr-bindings-keda/{app}"),
            None => format!("dapr-bindings-keda/{app}"),
        };
        assert_eq!(
            image.rsplit_once(':').map(|(name, _)| name),
            Some(name.as_str()),
            "{scenario}: {image}"
        );
    }
}

fn image_tag(objects: &[Value], app: &str) -> String {
    let deployment = one(objects, "Deployment", app).unwrap();
    let image = str_at(
        &deployment["spec"]["template"]["spec"]["containers"][0],
        "/image",
    );
    image.rsplit_once(':').unwrap().1.to_owned()
}

#[test]
fn the_overlays_the_guide_writes_render_as_it_says() {
    let registry = "myregistry.azurecr.io";

    // Step 5, keys from an env file: the placeholder replaced by the three real keys.
    let keys = scenario("keys", &["printf 'producer-connection-string"]);
    assert_the_pair(&keys, Some(registry), "keys");
    assert_eq!(image_tag(&keys, "producer"), "0123456789ab");
    let secret = one(&keys, "Secret", "servicebus").expect("the keys' Secret");
    for (key, value) in [
        ("producer-connection-string", "producer-key"),
        ("consumer-connection-string", "consumer-key"),
        ("keda-connection-string", "keda-key"),
    ] {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        assert_eq!(secret["data"][key], encoded.as_str(), "keys: {key}");
    }

    // Step 5, the Secret made with kubectl: the overlay carries none.
    let kubectl_keys = scenario(
        "kubectl-keys",
        &[
            "kubectl create secret generic servicebus",
            "\\$patch: delete",
        ],
    );
    assert_the_pair(&kubectl_keys, Some(registry), "kubectl-keys");
    assert!(one(&kubectl_keys, "Secret", "servicebus").is_none());

    // Step 7 and Operations on top of step 5: the public producer, the range in place of the
    // placeholder, and the monitoring.
    let public = scenario(
        "public",
        &[
            "printf 'producer-connection-string",
            "ALLOWED_RANGE=",
            "components: [../monitoring]",
        ],
    );
    assert_the_pair(&public, Some(registry), "public");
    let service = one(&public, "Service", "producer-public").expect("the public Service");
    let ranges = array(&service["spec"]["loadBalancerSourceRanges"]);
    assert_eq!(ranges.len(), 1);
    assert_ne!(ranges[0], "203.0.113.0/24", "the placeholder stayed");
    assert!(one(&public, "PodMonitor", "dapr-bindings-keda").is_some());
    assert!(one(&public, "Secret", "servicebus").is_some());

    // Step 9: Workload ID, with the AKS add-on's identity, then public too.
    // One block writes the overlay and, for the AKS add-on, its identity's patch.
    let identity = scenario("identity", &["path: /spec/podIdentity/identityId"]);
    assert_the_pair(&identity, Some(registry), "identity");
    for (app, id) in [
        ("producer", "11111111-1111-1111-1111-111111111111"),
        ("consumer", "22222222-2222-2222-2222-222222222222"),
    ] {
        let account = one(&identity, "ServiceAccount", app).unwrap();
        assert_eq!(
            account["metadata"]["annotations"]["azure.workload.identity/client-id"], id,
            "identity: {app}"
        );
    }
    let component = one(&identity, "Component", "message-queue").unwrap();
    assert_eq!(
        component["spec"]["metadata"][0],
        serde_json::json!({"name": "namespaceName", "value": "my-bus.servicebus.windows.net"})
    );
    let auth = one(&identity, "TriggerAuthentication", "keda-queue-auth").unwrap();
    assert_eq!(
        auth["spec"]["podIdentity"]["identityId"],
        "33333333-3333-3333-3333-333333333333"
    );
    assert!(
        one(&identity, "Secret", "servicebus").is_none(),
        "no keys left"
    );
    let identity_public = scenario(
        "identity-public",
        &["path: /spec/podIdentity/identityId", "ALLOWED_RANGE="],
    );
    assert!(one(&identity_public, "Service", "producer-public").is_some());
    let producer = one(&identity_public, "Deployment", "producer").unwrap();
    assert!(
        array(&producer["spec"]["template"]["spec"]["containers"])
            .iter()
            .any(|c| c["name"] == "tls-proxy"),
        "identity-public: no TLS in front of the producer"
    );

    // The local cluster: no registry, the local build's tag, RabbitMQ.
    let local = scenario("local", &["kind create cluster"]);
    assert_the_pair(&local, None, "local");
    assert!(one(&local, "Deployment", "rabbitmq").is_some());
    assert_eq!(image_tag(&local, "consumer"), image_tag(&local, "producer"));
}

//! The deploy guide's flow as code: the version check runs (against a fake kubectl) and stops
//! below what the manifests need; every apply waits on it; every build has its own tag, which the
//! manifests use; the cluster is sized and checked against the quota; the keys go only once the
//! identities work; the local flow waits for its rollouts; clean-up removes what the guide made.

use std::{collections::BTreeSet, fs, process::Command};

use test_support::process as harness;

use crate::{
    guide::{guide_commands, join_continuations, sh_blocks},
    render::{array, read, renders, str_at},
};

/// The guide's `sh` blocks, each as its commands.
fn blocks() -> Vec<Vec<String>> {
    let guide = read("deploy/README.md");
    sh_blocks(&guide)
        .iter()
        .map(|block| join_continuations(block))
        .collect()
}

/// The raw text of the one `sh` block holding `needle`.
fn block_text(needle: &str) -> String {
    let guide = read("deploy/README.md");
    let found: Vec<String> = sh_blocks(&guide)
        .into_iter()
        .map(|lines| lines.join("\n"))
        .filter(|text| text.contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "one block with {needle}");
    found.into_iter().next().unwrap()
}

/// The minimum `preflight` demands of `what` (`kube`, `daprd`, `keda`): its `at_least` call.
fn minimum(preflight: &str, what: &str) -> String {
    let call = format!("at_least \"${{{what}:-0}}\" ");
    preflight
        .lines()
        .find_map(|l| l.split(&call).nth(1))
        .and_then(|rest| rest.split(|c: char| c == ';' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("preflight does not check {what}"))
        .to_owned()
}

/// Runs the guide's version-check block under bash against a kubectl that reports these
/// versions; returns whether it passed and what it said on stderr.
fn run_preflight(kube: &str, daprd_image_tag: &str, keda: &str) -> (bool, String) {
    let dir = harness::target_tmp().join(format!("preflight-{kube}-{daprd_image_tag}-{keda}"));
    fs::create_dir_all(&dir).unwrap();
    let kubectl = dir.join("kubectl");
    fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             *--raw*/version*) printf '{{\\n  \"major\": \"1\",\\n  \"gitVersion\": \"v{kube}\",\\n  \"platform\": \"linux/amd64\"\\n}}\\n' ;;\n\
             *dapr-sidecar-injector*) printf 'ghcr.io/dapr/daprd:{daprd_image_tag}' ;;\n\
             *keda-operator*) printf 'ghcr.io/kedacore/keda:{keda}' ;;\n\
             *) echo \"unexpected kubectl $*\" >&2; exit 2 ;;\n\
             esac\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&kubectl, fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("preflight.sh");
    fs::write(&script, block_text("preflight() {")).unwrap();
    let output = Command::new("bash")
        .arg(&script)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
        .output()
        .expect("bash runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_version_check_runs_and_stops_below_what_the_manifests_need() {
    let preflight = block_text("preflight() {");
    // daprd: the first release that sends the app token to gRPC apps, as the consumer's hint
    // names it (consumer/src/token_hint.rs, dapr/dapr#9142).
    let hint = read("consumer/src/token_hint.rs");
    let first_sending = hint
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const DAPRD_SENDS_APP_TOKEN_FROM: &str = ")
        })
        .map(|v| v.trim_end_matches(';').trim_matches('"'))
        .expect("the consumer names the first daprd that sends the token");
    assert_eq!(minimum(&preflight, "daprd"), first_sending);
    // Kubernetes: the preStop sleep action is on by default from 1.30.
    let sleeps = renders().iter().any(|r| {
        r.all("Deployment").any(|d| {
            array(&d["spec"]["template"]["spec"]["containers"])
                .iter()
                .any(|c| !c["lifecycle"]["preStop"]["sleep"].is_null())
        })
    });
    assert!(sleeps);
    assert_eq!(minimum(&preflight, "kube"), "1.30");
    // KEDA: the fallback's `behavior` exists from 2.17.
    let behavior = renders()
        .iter()
        .any(|r| !r.one("ScaledObject", "consumer")["spec"]["fallback"]["behavior"].is_null());
    assert!(behavior);
    assert_eq!(minimum(&preflight, "keda"), "2.17");

    // It really runs, and stops.
    let (passed, said) = run_preflight("1.32.4", "1.17.5", "2.20.2");
    assert!(passed, "refused a good cluster: {said}");
    let (passed, _) = run_preflight("1.30.0", "1.16.2-mariner", "2.17.0");
    assert!(passed, "refused the minimums, a variant's tag included");
    for (kube, daprd, keda, named) in [
        ("1.32.4", "1.16.1", "2.20.2", "1.16.2"),
        ("1.32.4", "1.13.0", "2.20.2", "APP_API_TOKEN"),
        ("1.29.9", "1.17.5", "2.20.2", "1.30"),
        ("1.32.4", "1.17.5", "2.16.1", "2.17"),
    ] {
        let (passed, said) = run_preflight(kube, daprd, keda);
        assert!(
            !passed,
            "let Kubernetes {kube}, daprd {daprd}, KEDA {keda} through"
        );
        assert!(said.contains(named), "does not say why ({named}): {said}");
    }

    // Every apply of the pair waits on it.
    let applies: Vec<String> = guide_commands()
        .into_iter()
        .filter(|c| c.contains("kubectl apply -k deploy/overlays/mine"))
        .collect();
    assert!(applies.len() >= 4, "{applies:?}");
    for apply in applies {
        assert!(
            apply.starts_with("preflight && kubectl apply -k"),
            "applies without the version check: {apply}"
        );
    }
    // The guide installs Dapr as the manifests need it: daprd without capabilities, and no
    // Secret reader for ServiceAccount `default`.
    for install in guide_commands()
        .iter()
        .filter(|c| c.starts_with("helm install dapr "))
    {
        for setting in [
            "dapr_sidecar_injector.sidecarDropALLCapabilities=true",
            "dapr_rbac.secretReader.enabled=false",
        ] {
            assert!(install.contains(setting), "{install} lacks {setting}");
        }
    }
}

#[test]
fn every_build_has_a_tag_of_its_own_which_the_manifests_use() {
    let commands = guide_commands();
    let tags: Vec<&String> = commands.iter().filter(|c| c.starts_with("TAG=")).collect();
    assert!(!tags.is_empty());
    for tag in tags {
        assert!(
            tag.starts_with("TAG=$(git rev-parse") || tag.starts_with("TAG=$TAG-$(date"),
            "a tag that is not the commit: {tag}"
        );
    }
    for build in commands
        .iter()
        .filter(|c| c.starts_with("docker build") || c.starts_with("az acr build"))
    {
        assert!(
            build.contains(":$TAG"),
            "a build without the commit's tag: {build}"
        );
    }
    // Each overlay the guide writes points both images at that tag.
    let guide = read("deploy/README.md");
    let overlays: Vec<&str> = guide
        .split("cat > deploy/overlays/mine/kustomization.yaml <<EOF\n")
        .skip(1)
        .map(|rest| rest.split("\nEOF").next().unwrap_or_default())
        .collect();
    assert!(
        overlays.len() >= 4,
        "the guide writes {} overlays",
        overlays.len()
    );
    for overlay in overlays {
        assert_eq!(
            overlay.matches("newTag: \"$TAG\"").count(),
            2,
            "an overlay without the build's tag for both images:\n{overlay}"
        );
    }
}

#[test]
fn the_cluster_is_sized_and_checked_against_the_quota_first() {
    let block = blocks()
        .into_iter()
        .find(|b| b.iter().any(|c| c.starts_with("az aks create")))
        .expect("a block creating the cluster");
    let create = block
        .iter()
        .position(|c| c.starts_with("az aks create"))
        .unwrap();
    assert!(
        block[create].contains("--node-vm-size \"$NODE_SIZE\"")
            && block[create].contains("--node-count \"$NODE_COUNT\""),
        "{}",
        block[create]
    );
    let usage = block
        .iter()
        .position(|c| c.contains("az vm list-usage"))
        .expect("the quota is read");
    let guard = block[..create]
        .iter()
        .rposition(|c| c.starts_with("if [ -n \"$short\" ]"))
        .expect("the create runs only if no quota is short");
    assert!(usage < guard && block[guard + 1..create].iter().any(|c| c == "else"));
}

#[test]
fn the_keys_go_only_once_each_identity_has_worked() {
    let guide = read("deploy/README.md");
    let block = sh_blocks(&guide)
        .into_iter()
        .map(|lines| join_continuations(&lines))
        .find(|b| b.iter().any(|c| c.contains("authorization-rule delete")))
        .expect("the block that deletes the keys");
    let condition_start = block
        .iter()
        .position(|c| c.starts_with("if kubectl rollout status deployment/producer"))
        .expect("the deletion waits on the producer's rollout");
    let then = condition_start
        + block[condition_start..]
            .iter()
            .position(|c| c.ends_with("; then"))
            .expect("then");
    let condition = block[condition_start..=then].join(" ");
    let wi = renders()
        .iter()
        .find(|r| r.label == "deploy/overlays/workload-identity")
        .unwrap();
    let queue = str_at(
        &wi.one("ScaledObject", "consumer")["spec"]["triggers"][0],
        "/metadata/queueName",
    );
    // KEDA names the trigger's metric s<index>-azure-servicebus-<queue> (kedacore/keda v2.20.2
    // pkg/scalers/azure_servicebus_scaler.go, GenerateMetricNameWithIndex).
    for needed in [
        "kubectl wait scaledobject/consumer --for=condition=Ready".to_owned(),
        format!("{{.status.health.s0-azure-servicebus-{queue}.status}}'=Happy"),
        "message_goes_through".to_owned(),
    ] {
        assert!(
            condition.contains(&needed),
            "the deletion does not wait on {needed}: {condition}"
        );
    }
    let otherwise = then
        + block[then..]
            .iter()
            .position(|c| c == "else")
            .expect("an else that keeps the keys");
    let guarded = &block[then + 1..otherwise];
    for deletion in block
        .iter()
        .enumerate()
        .filter(|(_, c)| c.contains("delete") || c.starts_with("rm ") || c.starts_with("unset "))
    {
        assert!(
            guarded.contains(deletion.1),
            "deletes outside the guard: {}",
            deletion.1
        );
    }
    assert!(
        guarded
            .iter()
            .any(|c| c.starts_with("for rule in producer consumer keda;")),
        "not every rule is deleted: {guarded:#?}"
    );
    // The message check proves the producer sent, and the queue emptied again.
    let check = block_text("message_goes_through() {");
    assert!(check.contains("'{\"sent\":1}'") && check.contains("countDetails.activeMessageCount"));
}

#[test]
fn the_local_flow_waits_for_its_rollouts_before_calling() {
    let block = blocks()
        .into_iter()
        .find(|b| b.iter().any(|c| c == "kind create cluster"))
        .expect("the kind block");
    let first_call = block
        .iter()
        .position(|c| c.starts_with("kubectl port-forward") || c.starts_with("curl "))
        .expect("a call");
    for rollout in ["deployment/rabbitmq", "deployment/producer"] {
        let waited = block[..first_call]
            .iter()
            .any(|c| c.starts_with("kubectl rollout status") && c.contains(rollout));
        assert!(waited, "calls before {rollout} is rolled out");
    }
}

#[test]
fn clean_up_removes_the_namespaces_and_volumes_the_guide_made() {
    let commands = guide_commands();
    let mut created = BTreeSet::new();
    for command in &commands {
        if let Some(rest) = command.split("kubectl create namespace ").nth(1) {
            created.insert(rest.split_whitespace().next().unwrap().to_owned());
        }
        if command.contains("--create-namespace") {
            let namespace = command
                .split("--namespace ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("a namespace");
            created.insert(namespace.to_owned());
        }
    }
    assert!(
        created.contains("dapr-system") && created.contains("keda"),
        "{created:?}"
    );
    let deleted: BTreeSet<String> = commands
        .iter()
        .filter_map(|c| c.strip_prefix("kubectl delete namespace "))
        .flat_map(|rest| rest.split_whitespace().filter(|w| !w.starts_with("--")))
        .map(str::to_owned)
        .collect();
    let left: Vec<&String> = created.difference(&deleted).collect();
    assert!(
        left.is_empty(),
        "clean-up leaves namespaces behind: {left:?}"
    );
    // The pair's own namespace goes with the overlay, which holds it.
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("kubectl delete -k deploy/overlays/mine"))
    );
    assert!(renders().iter().all(|r| r.all("Namespace").count() == 1));
    // And what Helm never deletes: the scheduler's claims, checked for volumes left.
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("kubectl get persistentvolumes") && c.contains("dapr-system")),
        "clean-up does not look for the scheduler's volumes"
    );
}

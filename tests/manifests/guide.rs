//! The deploy guide's shell blocks: it creates every token from a generated value, deletes no
//! resource group but the one it created (and stops when that one exists already), and gives
//! each key and identity only the rights its user needs.

use std::collections::{BTreeMap, BTreeSet};

use crate::render::{read, renders};

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
        if [ \"$(az group exists --name \"$GUIDE_RG\")\" = true ]; then\n  echo taken\n\
        \x20 unset GUIDE_RG\nelse\n\
        \x20 az group create --name \"$GUIDE_RG\" --location \"$LOCATION\"\nfi\n\
        az acr create --resource-group \"${GUIDE_RG:?}\" --name \"$ACR\"\n```\n\
        ```sh\naz group delete --name \"${GUIDE_RG:?}\" --yes\n```\n";
    assert_eq!(check_resource_groups(safe), Ok(()));
    for (unsafe_guide, why) in [
        // The original guide: one RG for the user's cluster and the guide's resources.
        (
            safe.replace("--name \"${GUIDE_RG:?}\" --yes", "--name $RG --yes"),
            "deletes $RG",
        ),
        (
            safe.replace("GUIDE_RG=mine", "GUIDE_RG=$AKS_RG"),
            "GUIDE_RG set from another variable",
        ),
        (
            safe.replace(
                "\n  echo taken\n  unset GUIDE_RG\nelse\n",
                "\n  echo new\nfi\n",
            ),
            "group created without checking that it is new",
        ),
        (
            safe.replace("  unset GUIDE_RG\n", ""),
            "a guard that only prints: the next blocks go on in the existing group",
        ),
        (
            safe.replace(
                "az acr create --resource-group \"${GUIDE_RG:?}\"",
                "az acr create --resource-group \"$GUIDE_RG\"",
            ),
            "a later command that would run with GUIDE_RG unset",
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
                "az acr create --resource-group \"${GUIDE_RG:?}\"",
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

/// The shell commands in deploy/README.md's `sh` blocks, continuation lines joined and comments
/// dropped.
pub(crate) fn guide_commands() -> Vec<String> {
    sh_blocks(&read("deploy/README.md"))
        .iter()
        .flat_map(|block| join_continuations(block))
        .collect()
}

/// The guide's own resource group as its commands name it once the guard has run: a command
/// that meets it unset refuses to run.
const GUIDE_RG: &str = "\"${GUIDE_RG:?}\"";
/// As the guard itself names it, before it has decided.
const GUIDE_RG_IN_GUARD: &str = "\"$GUIDE_RG\"";

/// That a guide (markdown with `sh` blocks) deletes no resource group but its own, and that its
/// own is one it created: `GUIDE_RG` is only ever set to a literal name; a guard runs
/// `az group create` with it only after `az group exists` said the group is new, and otherwise
/// unsets it; every other command names it as `"${GUIDE_RG:?}"`, so that none runs once the
/// guard has unset it (the guard stops the blocks that follow); every `az group delete` names
/// it; and every Azure resource the guide creates (but a cluster, whose group is the guide's when
/// the guide makes it) goes into it.
pub(crate) fn check_resource_groups(guide: &str) -> Result<(), String> {
    let names = |command: &str, option: &str, form: &str| -> bool {
        command
            .split(option)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|value| value == form)
    };
    let guard_test = format!("az group exists --name {GUIDE_RG_IN_GUARD})");
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
                continue;
            }
            if command.contains("az group create") {
                if !names(command, "--name", GUIDE_RG_IN_GUARD) {
                    return Err(format!("creates a group that is not GUIDE_RG: {command}"));
                }
                // if [ "$(az group exists --name "$GUIDE_RG")" = true ]; then ... unset GUIDE_RG
                // else <here> fi
                let before: Vec<&String> = commands[..at]
                    .iter()
                    .rev()
                    .take_while(|c| *c != "fi")
                    .collect();
                let in_else = before.iter().any(|c| *c == "else");
                let checked = before
                    .iter()
                    .any(|c| c.starts_with("if ") && c.contains(&guard_test));
                let unset = before
                    .iter()
                    .skip_while(|c| **c != "else")
                    .any(|c| *c == "unset GUIDE_RG");
                if !(checked && in_else) {
                    return Err(format!(
                        "az group create without az group exists first: {command}"
                    ));
                }
                if !unset {
                    return Err("the guard for an existing GUIDE_RG must unset it, or the \
                                blocks after it go on in that group"
                        .to_owned());
                }
                created = true;
                continue;
            }
            let in_guard = (command.starts_with("if ") && command.contains(&guard_test))
                || command.starts_with("echo ");
            if !in_guard
                && command.replace("${GUIDE_RG:?}", "").contains("GUIDE_RG")
                && command != "unset GUIDE_RG"
            {
                return Err(format!(
                    "names GUIDE_RG without ${{GUIDE_RG:?}}, so it would run with the group \
                     unset by the guard: {command}"
                ));
            }
            if command.contains("az group delete") && !names(command, "--name", GUIDE_RG) {
                return Err(format!("deletes a group that is not GUIDE_RG: {command}"));
            }
            let creates = command.starts_with("az ") && command.contains(" create ");
            if creates && command.contains("--resource-group") {
                let into_guide_rg = names(command, "--resource-group", GUIDE_RG);
                let cluster_in_guide_rg = command.starts_with("az aks create")
                    && commands[..at].iter().any(|c| c == "AKS_RG=${GUIDE_RG:?}");
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
pub(crate) fn sh_blocks(markdown: &str) -> Vec<Vec<&str>> {
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
pub(crate) fn join_continuations(lines: &[&str]) -> Vec<String> {
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
/// --from-literal=KEY=...` and `kubectl create secret tls NAME`, by name, with their keys.
pub(crate) fn guide_created_secrets() -> BTreeMap<String, BTreeSet<String>> {
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for command in guide_commands() {
        // A TLS Secret always has these two keys.
        if let Some(rest) = command.split("kubectl create secret tls ").nth(1) {
            let name = rest.split_whitespace().next().expect("a Secret name");
            secrets
                .entry(name.to_owned())
                .or_default()
                .extend(["tls.crt".to_owned(), "tls.key".to_owned()]);
            continue;
        }
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

/// The value of `--option` in a command, quotes removed.
pub(crate) fn option<'a>(command: &'a str, name: &str) -> Option<&'a str> {
    command
        .split(&format!("{name} "))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| v.trim_matches('"'))
}

/// The variable a command assigns, and the rest: `NAME=$(...)` gives `("NAME", "...")`.
fn assignment(command: &str) -> Option<(&str, &str)> {
    let (name, value) = command.split_once('=')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .then_some((name, value))
}

#[test]
fn the_guide_gives_each_key_and_identity_only_its_rights() {
    let commands = guide_commands();

    // SAS: a queue-level rule per user, with its rights.
    let mut rules: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for command in commands
        .iter()
        .filter(|c| c.starts_with("az servicebus queue authorization-rule create"))
    {
        let name = option(command, "--name").expect("a rule's name");
        let rights = command
            .split("--rights ")
            .nth(1)
            .expect("its rights")
            .split_whitespace()
            .take_while(|w| !w.starts_with("--"))
            .collect();
        assert_eq!(
            option(command, "--queue-name"),
            Some("msgqueue"),
            "{command}"
        );
        rules.insert(name, rights);
    }
    assert_eq!(
        rules["producer"],
        BTreeSet::from(["Send"]),
        "the producer only sends"
    );
    assert_eq!(
        rules["consumer"],
        BTreeSet::from(["Listen"]),
        "the consumer only listens"
    );
    assert!(
        rules["keda"].contains("Manage"),
        "KEDA reads through the management API"
    );
    // Each rule's key lands in the Secret key of the same user (and the manifests hand that key
    // to that user's daprd alone: security.rs).
    let key_variable = |rule: &str| -> String {
        commands
            .iter()
            .filter_map(|c| assignment(c))
            .find(|(_, value)| {
                value.contains("authorization-rule keys list")
                    && option(value, "--name") == Some(rule)
            })
            .map(|(name, _)| name.to_owned())
            .unwrap_or_else(|| panic!("the guide never reads the {rule} rule's key"))
    };
    let env_file = commands
        .iter()
        .find(|c| c.starts_with("printf ") && c.contains("servicebus.env"))
        .expect("the env file");
    let format = env_file.split('\'').nth(1).unwrap();
    let keys: Vec<&str> = format
        .split("\\n")
        .filter_map(|l| l.strip_suffix("=%s"))
        .collect();
    let values: Vec<&str> = env_file
        .split('\'')
        .nth(2)
        .unwrap()
        .split_whitespace()
        .take_while(|w| *w != ">")
        .map(|w| w.trim_matches('"').trim_start_matches('$'))
        .collect();
    assert_eq!(keys.len(), values.len(), "{env_file}");
    for (key, value) in keys.iter().zip(&values) {
        let user = key
            .strip_suffix("-connection-string")
            .expect("<user>-connection-string");
        assert_eq!(*value, key_variable(user), "{key} holds another rule's key");
    }
    // The same keys when the Secret is made with kubectl.
    let literal = commands
        .iter()
        .find(|c| c.starts_with("kubectl create secret generic servicebus"))
        .expect("the kubectl way");
    for key in &guide_created_secrets()["servicebus"] {
        let user = key.strip_suffix("-connection-string").unwrap();
        let expected = format!("--from-literal={key}=\"${}\"", key_variable(user));
        assert!(literal.contains(&expected), "{literal} lacks {expected}");
    }

    // Workload ID: an identity per user with one built-in data role on the queue, federated with
    // the user's own ServiceAccount in the pair's namespace.
    let namespace = renders()
        .iter()
        .find(|r| r.label == "deploy/overlays/workload-identity")
        .map(|r| {
            r.namespace()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap();
    assert!(
        commands.iter().any(|c| *c == format!("NS={namespace}")),
        "the guide's NS is not the manifests' namespace {namespace}"
    );
    let identity_of = |variable: &str| -> String {
        commands
            .iter()
            .filter_map(|c| assignment(c))
            .find(|(name, _)| *name == variable)
            .and_then(|(_, value)| option(value, "--name"))
            .unwrap_or_else(|| panic!("{variable} is not read from an identity"))
            .to_owned()
    };
    let mut roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for command in commands
        .iter()
        .filter(|c| c.starts_with("az role assignment create"))
    {
        let principal = option(command, "--assignee-object-id").unwrap();
        let identity = identity_of(principal.trim_start_matches('$'));
        let role = command
            .split("--role \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a quoted role");
        assert_eq!(
            option(command, "--scope"),
            Some("$QUEUE_ID"),
            "on the queue only: {command}"
        );
        roles.entry(identity).or_default().push(role.to_owned());
    }
    let expected = [
        ("producer", "Azure Service Bus Data Sender"),
        ("consumer", "Azure Service Bus Data Receiver"),
        ("keda-operator", "Azure Service Bus Data Owner"),
    ];
    for (identity, role) in expected {
        assert_eq!(
            roles.get(identity),
            Some(&vec![role.to_owned()]),
            "{identity}'s roles"
        );
    }
    for app in ["producer", "consumer"] {
        let federated = commands
            .iter()
            .find(|c| {
                c.starts_with("az identity federated-credential create")
                    && option(c, "--identity-name") == Some(app)
            })
            .unwrap_or_else(|| panic!("no federated credential for {app}"));
        assert_eq!(
            option(federated, "--subject"),
            Some(format!("system:serviceaccount:$NS:{app}").as_str()),
            "{federated}"
        );
    }
    // The ServiceAccounts are annotated with their own identity's client id.
    let guide = read("deploy/README.md");
    for app in ["producer", "consumer"] {
        let patch = guide
            .split(&format!("- target: {{kind: ServiceAccount, name: {app}}}"))
            .nth(1)
            .and_then(|rest| rest.split("- target:").next())
            .unwrap_or_else(|| panic!("no client id patch for {app}"));
        let variable = patch
            .split("value: \"$")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .expect("a client id variable");
        assert_eq!(
            identity_of(variable),
            app,
            "{app}'s ServiceAccount names another identity"
        );
        assert!(
            commands
                .iter()
                .filter_map(|c| assignment(c))
                .any(|(name, value)| name == variable && value.contains("--query clientId")),
            "{variable} is not a client id"
        );
    }
}

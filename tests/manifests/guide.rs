//! The deploy guide's shell blocks: it creates every token from a generated value, and deletes
//! no resource group but the one it created.

use std::collections::{BTreeMap, BTreeSet};

use crate::render::read;

#[test]
pub(crate) fn the_guide_creates_every_token_secret_from_a_generated_value() {
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
pub(crate) fn the_guide_deletes_only_the_resource_group_it_created() {
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
pub(crate) fn the_resource_group_check_catches_a_guide_that_deletes_what_it_did_not_create() {
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

/// The shell commands in deploy/README.md's `sh` blocks, continuation lines joined and comments
/// dropped.
pub(crate) fn guide_commands() -> Vec<String> {
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
pub(crate) const GUIDE_RG: [&str; 3] = ["\"$GUIDE_RG\"", "$GUIDE_RG", "\"${GUIDE_RG}\""];

/// That a guide (markdown with `sh` blocks) deletes no resource group but its own, and that its
/// own is one it created: `GUIDE_RG` is only ever set to a literal name, the one `az group create`
/// names it and runs only after `az group exists` said the group is new, every `az group delete`
/// names it, and every Azure resource the guide creates (but a cluster, whose group is the
/// guide's when the guide makes it) goes into it.
pub(crate) fn check_resource_groups(guide: &str) -> Result<(), String> {
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
/// --from-literal=KEY=...`, by name, with their keys.
pub(crate) fn guide_created_secrets() -> BTreeMap<String, BTreeSet<String>> {
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

//! The images: the kustomizations pin every tag, and the Dockerfile builds the workspace's
//! binaries with the declared toolchain from a context that holds no build output or keys.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    binaries::{Defaults, cargo_bins},
    render::{array, read, renders, str_at},
};

#[test]
pub(crate) fn images_are_set_by_the_kustomization() {
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
pub(crate) fn the_dockerfile_builds_binaries_cargo_declares() {
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
pub(crate) fn the_dockerfile_builds_with_the_declared_rust_version() {
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
pub(crate) fn dockerignore_patterns_have_no_trailing_slash() {
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

/// Each named stage's text, from its `FROM ... AS name` line to the next `FROM`.
pub(crate) fn dockerfile_stages(dockerfile: &str) -> BTreeMap<String, String> {
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

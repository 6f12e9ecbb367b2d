//! The images: the kustomizations pin every tag, and the Dockerfile builds the workspace's
//! binaries with the declared toolchain from a context that holds no build output or keys.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    binaries::{Defaults, cargo_bins},
    render::{array, read, renders, str_at},
};

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

/// Base images written where no registry could be reached and no trustworthy record of their
/// digest was found: the Dockerfile marks each `# DIGEST:` and says how to pin it. An image here
/// that gets pinned fails the test below until it is removed from the list, so the list cannot
/// outlive the gap it records.
const AWAITING_A_DIGEST: [&str; 2] = ["lukemathwalker/cargo-chef", "gcr.io/distroless/cc-debian12"];

/// Whether `reference` (a FROM's image) is pinned: `name[:tag]@sha256:` and 64 hex digits.
fn pinned(reference: &str) -> bool {
    reference
        .split_once("@sha256:")
        .is_some_and(|(name, digest)| {
            !name.is_empty()
                && digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

/// The image of every `FROM` that names one, not an earlier stage.
fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages = BTreeSet::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let image = words
            .iter()
            .skip(1)
            .find(|w| !w.starts_with("--"))
            .expect("FROM names an image");
        if !stages.contains(*image) {
            images.push((*image).to_owned());
        }
        if let [.., r#as, name] = words.as_slice()
            && r#as.eq_ignore_ascii_case("AS")
        {
            stages.insert((*name).to_owned());
        }
    }
    images
}

#[test]
fn base_images_are_pinned_by_digest_or_marked_as_awaiting_one() {
    let digest = "0123456789abcdef".repeat(4);
    assert!(pinned(&format!(
        "gcr.io/distroless/cc-debian12:nonroot@sha256:{digest}"
    )));
    assert!(!pinned("gcr.io/distroless/cc-debian12:nonroot"));
    assert!(!pinned(&format!("x@sha256:{}", &digest[1..])));
    assert!(!pinned(&format!("x@sha256:{}", digest.to_uppercase())));
    assert_eq!(
        base_images("FROM a:1 AS one\nFROM one AS two\nFROM --platform=$P b@sha256:c\n"),
        ["a:1", "b@sha256:c"]
    );

    let dockerfile = read("Dockerfile");
    let images = base_images(&dockerfile);
    assert!(
        images.len() >= 2,
        "the Dockerfile's base images: {images:?}"
    );
    for image in &images {
        let name = image.split(['@', ':']).next().unwrap_or_default();
        let awaiting = AWAITING_A_DIGEST.contains(&name);
        if pinned(image) {
            assert!(
                !awaiting,
                "{image} is pinned now: remove {name} from AWAITING_A_DIGEST"
            );
        } else {
            assert!(
                awaiting,
                "the Dockerfile's FROM {image} is not pinned by digest (its comment says how)"
            );
        }
    }
    // Each image still awaiting its digest is marked where it goes.
    for name in AWAITING_A_DIGEST {
        let marked = dockerfile
            .lines()
            .zip(dockerfile.lines().skip(1))
            .filter(|(above, from)| from.contains(name) && above.starts_with("# DIGEST:"))
            .count();
        let uses = images.iter().filter(|i| i.starts_with(name)).count();
        assert!(
            marked >= 1 && uses >= 1,
            "{name}: no `# DIGEST:` mark above its FROM ({marked} marked, {uses} uses)"
        );
    }
}

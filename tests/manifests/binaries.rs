//! The binaries' own word on their settings: each default as `--help` prints it, and the
//! binaries the workspace declares.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::Value;
use test_support::process as harness;

use crate::{ROOT, render::array};

/// A binary's defaults as its `--help` prints them, by environment variable.
pub(crate) struct Defaults {
    pub(crate) bin: &'static str,
    pub(crate) by_env: BTreeMap<String, String>,
    pub(crate) help: String,
}

impl Defaults {
    pub(crate) fn of(bin: &'static str) -> Self {
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
    pub(crate) fn reads(&self, env: &str) -> bool {
        self.help.contains(&format!("[env: {env}"))
    }

    pub(crate) fn get(&self, env: &str) -> &str {
        self.by_env
            .get(env)
            .unwrap_or_else(|| panic!("{} --help shows no default for {env}", self.bin))
    }
}

/// Pairs each option's `[env: NAME=...]` with its `[default: VALUE]` in clap's long help.
pub(crate) fn parse_help(help: &str) -> BTreeMap<String, String> {
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
pub(crate) fn effective(container: &Value, defaults: &Defaults, name: &str) -> String {
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

/// The workspace's binaries, each in the package of the same name, as `cargo metadata` lists them.
pub(crate) fn cargo_bins() -> BTreeSet<String> {
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

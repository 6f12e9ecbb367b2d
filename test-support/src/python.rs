//! The official Dapr Python SDK (`dapr` and `dapr-ext-grpc` from PyPI, every package pinned by
//! `test-support/python/requirements.txt`) in a venv under the cargo target directory, made on
//! first use and kept while the pins stay; and the scripts in `test-support/python/` run with it.
//! A missing `python3 -m venv` or an unreachable PyPI fails the test that asked, saying which; no
//! test passes without the SDK.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::{process::Service, sdk};

/// Every package of the venv at its version; `dapr-ext-grpc` follows `dapr`'s releases, so both
/// move together.
pub const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// The version `package` is pinned at.
pub fn version(package: &str) -> Option<&'static str> {
    REQUIREMENTS
        .lines()
        .find_map(|line| line.strip_prefix(package)?.strip_prefix("=="))
        .map(str::trim)
}

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The venv's `python`, installing the SDK the first time; panics saying what failed.
pub async fn python() -> PathBuf {
    installed()
        .await
        .unwrap_or_else(|e| panic!("the Dapr Python SDK is needed for this test: {e}"))
}

/// The venv's `python`, installing the SDK the first time; or what is missing.
pub async fn installed() -> Result<PathBuf, String> {
    tokio::task::spawn_blocking(|| PYTHON.get_or_init(install).clone())
        .await
        .expect("the install task")
}

/// Runs `test-support/python/<script>` with `args`, the environment cleared but for `env`.
pub async fn spawn(script: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
    let python = python().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let path = path.to_str().expect("a UTF-8 path");
    let mut all = vec!["-u", path];
    all.extend_from_slice(args);
    Service::spawn_with_args(python, &all, env)
}

fn install() -> Result<PathBuf, String> {
    let python3 = sdk::on_path("python3", "Python 3 with its venv module is needed")?;
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt");
    let venv = sdk::install("python-sdk", "venv", REQUIREMENTS, |staging| {
        sdk::run(
            Command::new(&python3).arg("-m").arg("venv").arg(staging),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        )?;
        sdk::run(
            Command::new(staging.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--timeout", "30", "--requirement"])
                .arg(&requirements),
            &format!(
                "pip install --requirement {} from PyPI",
                requirements.display()
            ),
        )
    })?;
    Ok(venv.join("bin/python"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_requirement_is_pinned_and_both_sdk_packages_move_together() {
        let pins: Vec<&str> = REQUIREMENTS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(pins.iter().all(|p| p.contains("==")), "{pins:?}");
        assert_eq!(version("dapr"), Some("1.18.3"));
        assert_eq!(version("dapr-ext-grpc"), version("dapr"));
    }
}

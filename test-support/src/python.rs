//! The official Dapr Python SDK (`dapr` and `dapr-ext-grpc` from PyPI, pinned) in a venv under the
//! cargo target directory, made on first use and kept while the pins stay; and the scripts in
//! `test-support/python/` run with it. A missing `python3 -m venv` or an unreachable PyPI fails the
//! test that asked, saying which; no test passes without the SDK.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::process::Service;

/// The SDK's versions; `dapr-ext-grpc` follows `dapr`'s releases, so both move together.
pub const PINNED: [&str; 2] = ["dapr==1.18.3", "dapr-ext-grpc==1.18.3"];

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The venv's `python`, installing the SDK the first time; panics saying what failed.
pub async fn python() -> PathBuf {
    let python = tokio::task::spawn_blocking(|| PYTHON.get_or_init(install).clone())
        .await
        .expect("the install task");
    python.unwrap_or_else(|e| panic!("the Dapr Python SDK is needed for this test: {e}"))
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
    let dir = crate::process::target_tmp().join("python-sdk");
    let venv = dir.join("venv");
    let pins = PINNED.join("\n");
    let is_current =
        |venv: &Path| fs::read_to_string(venv.join("pins.txt")).is_ok_and(|p| p == pins);
    if is_current(&venv) {
        return Ok(venv.join("bin/python"));
    }
    // Installed aside and renamed into place once complete: an interrupted install, or one
    // from another test process, never leaves a half venv where the next run looks.
    let staging = dir.join(format!("venv.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&staging),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    )?;
    run(
        Command::new(staging.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--timeout", "30"])
            .args(PINNED),
        &format!("pip install {} from PyPI", PINNED.join(" ")),
    )?;
    fs::write(staging.join("pins.txt"), &pins).map_err(|e| format!("writing the pins: {e}"))?;
    let _ = fs::remove_dir_all(&venv);
    if let Err(e) = fs::rename(&staging, &venv) {
        let _ = fs::remove_dir_all(&staging);
        if !is_current(&venv) {
            return Err(format!("moving the venv into {}: {e}", venv.display()));
        }
    }
    Ok(venv.join("bin/python"))
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what} did not start: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

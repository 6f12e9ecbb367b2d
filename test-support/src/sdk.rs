//! What the official SDKs' installs share (the modules `python` and `js`): each
//! lives in a directory of its own under the cargo target directory, made on first use and kept
//! while its pins stay the same. A missing tool or an unreachable registry is an error that says
//! which; nothing is skipped quietly.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The file in an install that holds the pins it was made from.
const PINS: &str = "pins.txt";

/// `<target>/tmp/<dir>/<name>`, made by `make` (given an empty directory) unless it is there
/// already, made from the same `pins`. Made aside and renamed into place once complete: an
/// interrupted install, or one from another test process, never leaves half of one where the
/// next run looks.
pub(crate) fn install(
    dir: &str,
    name: &str,
    pins: &str,
    make: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let dir = crate::process::target_tmp().join(dir);
    let done = dir.join(name);
    let is_current = |d: &Path| fs::read_to_string(d.join(PINS)).is_ok_and(|p| p == pins);
    if is_current(&done) {
        return Ok(done);
    }
    let staging = dir.join(format!("{name}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    if let Err(e) = make(&staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    fs::write(staging.join(PINS), pins).map_err(|e| format!("writing the pins: {e}"))?;
    let _ = fs::remove_dir_all(&done);
    if let Err(e) = fs::rename(&staging, &done) {
        let _ = fs::remove_dir_all(&staging);
        if !is_current(&done) {
            return Err(format!("moving the install into {}: {e}", done.display()));
        }
    }
    Ok(done)
}

/// Runs `command` to its end; an error names `what` and holds its output.
pub(crate) fn run(command: &mut Command, what: &str) -> Result<(), String> {
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

/// `program`'s path on this process's `PATH`: the binaries run with a cleared environment, so a
/// tool they start is named by its full path. `hint` says how to get it when it is missing.
pub(crate) fn on_path(program: &str, hint: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{program} is not on PATH ({hint})"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `program --version` prints, trimmed.
pub(crate) fn version(program: &Path) -> Result<String, String> {
    let output = Command::new(program)
        .arg(OsStr::new("--version"))
        .output()
        .map_err(|e| format!("{} --version did not start: {e}", program.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

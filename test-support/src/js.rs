//! The official Dapr JavaScript SDK (`@dapr/dapr` from npm, every package pinned by
//! `test-support/js/package-lock.json`) installed under the cargo target directory on first use
//! with `npm ci`, kept while the lockfile stays; and `node` to run scripts with it. A missing
//! `node` or `npm`, a Node.js older than the SDK supports, or an unreachable registry is an error
//! that says which.

use std::{fs, path::PathBuf, process::Command, sync::OnceLock};

use super::sdk;

/// The oldest Node.js `@dapr/dapr` supports (its `engines`).
const NODE_MAJOR: u32 = 18;

const PACKAGE: &str = include_str!("../js/package.json");
const LOCKFILE: &str = include_str!("../js/package-lock.json");

/// `node`, and the installed packages a script finds its `require`s in.
#[derive(Debug, Clone)]
pub struct Node {
    /// The `node` executable, by its full path (the scripts run with a cleared environment).
    pub node: PathBuf,
    /// The `node_modules` directory, which a script is given as `NODE_PATH`.
    pub node_path: PathBuf,
}

impl Node {
    /// The environment a script needs besides its own: where its packages are.
    pub fn env(&self) -> (&'static str, String) {
        ("NODE_PATH", self.node_path.display().to_string())
    }
}

/// The version `@dapr/dapr` is pinned at.
pub fn version() -> Option<String> {
    let package: serde_json::Value = serde_json::from_str(PACKAGE).ok()?;
    package["dependencies"]["@dapr/dapr"]
        .as_str()
        .map(str::to_owned)
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

/// `node` and the SDK, installing it the first time; or what is missing.
pub async fn installed() -> Result<Node, String> {
    tokio::task::spawn_blocking(|| NODE.get_or_init(install).clone())
        .await
        .expect("the install task")
}

fn install() -> Result<Node, String> {
    let hint = format!("Node.js {NODE_MAJOR} or later with npm is needed");
    let node = sdk::on_path("node", &hint)?;
    let npm = sdk::on_path("npm", &hint)?;
    let version = sdk::version(&node)?;
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < NODE_MAJOR) {
        return Err(format!("node is {version:?}; {hint}"));
    }
    let pins = format!("{PACKAGE}{LOCKFILE}");
    let dir = sdk::install("js-sdk", "packages", &pins, |staging| {
        for (name, text) in [("package.json", PACKAGE), ("package-lock.json", LOCKFILE)] {
            fs::write(staging.join(name), text)
                .map_err(|e| format!("writing {name} into {}: {e}", staging.display()))?;
        }
        // No install scripts: the SDK's packages are plain JavaScript and need none to run.
        sdk::run(
            Command::new(&npm)
                .args([
                    "ci",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .current_dir(staging),
            "npm ci (test-support/js/package-lock.json) from the npm registry",
        )
    })?;
    Ok(Node {
        node,
        node_path: dir.join("node_modules"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lockfile_pins_the_version_package_json_asks_for() {
        let lock: serde_json::Value = serde_json::from_str(LOCKFILE).unwrap();
        let locked = &lock["packages"]["node_modules/@dapr/dapr"]["version"];
        assert_eq!(locked.as_str(), version().as_deref());
        assert_eq!(version().as_deref(), Some("3.18.0"));
    }
}

//! Rendering the kustomizations and reading what they render: objects by kind and name, the
//! apps' Deployments, containers and annotations, and the small YAML and JSON helpers.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;

use crate::ROOT;

/// Dapr's default for `dapr.io/graceful-shutdown-seconds`.
const DAPR_GRACEFUL_SHUTDOWN_DEFAULT: Duration = Duration::from_secs(5);

/// One kustomization, rendered.
pub(crate) struct Render {
    /// Its directory, relative to the repository, e.g. `deploy/base`.
    pub(crate) label: String,
    pub(crate) objects: Vec<Value>,
}

impl Render {
    pub(crate) fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    pub(crate) fn one(&self, kind: &str, name: &str) -> &Value {
        let mut found = self.all(kind).filter(|o| o["metadata"]["name"] == name);
        let object = found
            .next()
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.label));
        assert!(found.next().is_none(), "{}: two {kind} {name}", self.label);
        object
    }

    /// The one Dapr Component: both apps use one binding.
    pub(crate) fn component(&self) -> &Value {
        let components: Vec<_> = self.all("Component").collect();
        assert_eq!(components.len(), 1, "{}: one Component", self.label);
        components[0]
    }

    /// The app's Deployment, by its `app` label.
    pub(crate) fn app(&self, app: &str) -> &Value {
        let mut found = self
            .all("Deployment")
            .filter(|d| d["spec"]["template"]["metadata"]["labels"]["app"] == app);
        let deployment = found
            .next()
            .unwrap_or_else(|| panic!("{}: no Deployment for app {app}", self.label));
        assert!(found.next().is_none(), "{}: two apps {app}", self.label);
        deployment
    }

    /// The container named after the app (`kubectl logs -c consumer` relies on it).
    pub(crate) fn app_container(&self, app: &str) -> &Value {
        array(&self.app(app)["spec"]["template"]["spec"]["containers"])
            .iter()
            .find(|c| c["name"] == app)
            .unwrap_or_else(|| panic!("{}: no container {app}", self.label))
    }

    pub(crate) fn annotations(&self, app: &str) -> &serde_json::Map<String, Value> {
        self.app(app)["spec"]["template"]["metadata"]["annotations"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: {app}'s pod has no annotations", self.label))
    }

    pub(crate) fn annotation(&self, app: &str, key: &str) -> &str {
        self.annotations(app)
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: {app} has no {key}", self.label))
    }

    /// terminationGracePeriodSeconds, block-shutdown-duration and graceful-shutdown-seconds.
    pub(crate) fn shutdown(&self, app: &str) -> (Duration, Duration, Duration) {
        let pod = &self.app(app)["spec"]["template"]["spec"];
        let grace = Duration::from_secs(u64_at(pod, "/terminationGracePeriodSeconds", 30));
        let annotations = self.annotations(app);
        let block = annotations
            .get("dapr.io/block-shutdown-duration")
            .map_or(Duration::ZERO, |d| duration(d.as_str().unwrap()));
        let graceful = annotations
            .get("dapr.io/graceful-shutdown-seconds")
            .map_or(DAPR_GRACEFUL_SHUTDOWN_DEFAULT, |s| {
                Duration::from_secs(s.as_str().unwrap().parse().expect("whole seconds"))
            });
        (grace, block, graceful)
    }

    /// How long after the app starts failing daprd's app health check daprd counts it unhealthy:
    /// probe interval × threshold (Dapr's defaults, 5 s and 3, when unset).
    pub(crate) fn app_health_failing_for(&self, app: &str) -> Duration {
        let annotations = self.annotations(app);
        assert_eq!(
            annotations
                .get("dapr.io/enable-app-health-check")
                .and_then(Value::as_str),
            Some("true"),
            "{}: {app} has no app health check",
            self.label
        );
        let number = |key: &str, default: u64| -> u64 {
            annotations.get(key).map_or(default, |v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{}: {key} is not a whole number", self.label))
            })
        };
        Duration::from_secs(
            number("dapr.io/app-health-probe-interval", 5)
                * number("dapr.io/app-health-threshold", 3),
        )
    }
}

/// Every kustomization under `deploy/`, rendered once for all tests.
pub(crate) fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let mut dirs = Vec::new();
        kustomization_dirs(&Path::new(ROOT).join("deploy"), &mut dirs);
        dirs.sort();
        assert!(!dirs.is_empty(), "no kustomization under deploy/");
        dirs.iter().map(|dir| render(dir)).collect()
    })
}

pub(crate) fn kustomization_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    let mut is_root = false;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            kustomization_dirs(&path, found);
        } else if path
            .file_name()
            .is_some_and(|n| n == "kustomization.yaml" || n == "kustomization.yml")
        {
            is_root = true;
        }
    }
    if is_root {
        found.push(dir.to_owned());
    }
}

pub(crate) fn render(dir: &Path) -> Render {
    let label = dir
        .strip_prefix(ROOT)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("`kubectl kustomize {label}` could not run ({e}): kubectl must be on PATH")
        });
    assert!(
        output.status.success(),
        "`kubectl kustomize {label}` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = yaml_documents(&String::from_utf8_lossy(&output.stdout));
    assert!(!objects.is_empty(), "{label} renders nothing");
    Render { label, objects }
}

/// Port numbers by name.
pub(crate) fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    array(&container["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The Secret and key a container's variable `name` is read from, if it is read from one.
pub(crate) fn secret_env<'a>(container: &'a Value, name: &str) -> Option<(&'a str, &'a str)> {
    array(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e.pointer("/valueFrom/secretKeyRef"))
        .map(|r| (str_at(r, "/name"), str_at(r, "/key")))
}

/// A component metadata item's literal value.
pub(crate) fn component_value<'a>(component: &'a Value, name: &str) -> &'a str {
    array(&component["spec"]["metadata"])
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["value"].as_str())
        .unwrap_or_else(|| panic!("the Component has no literal {name}"))
}

pub(crate) fn dapr_run_file() -> Value {
    let mut documents = yaml_documents(&read("dapr.yaml"));
    assert_eq!(documents.len(), 1, "dapr.yaml is one document");
    documents.remove(0)
}

/// The one directory in dapr.yaml's `common.resourcesPaths`.
pub(crate) fn dapr_run_resources_dir(run: &Value) -> PathBuf {
    let paths = array(&run["common"]["resourcesPaths"]);
    assert_eq!(paths.len(), 1, "dapr.yaml: one directory in resourcesPaths");
    Path::new(ROOT).join(paths[0].as_str().expect("a path"))
}

/// The component `dapr run -f .` loads: the one Component in dapr.yaml's resourcesPaths.
pub(crate) fn dapr_run_component() -> Value {
    let dir = dapr_run_resources_dir(&dapr_run_file());
    let mut components: Vec<Value> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir:?}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .flat_map(|p| yaml_documents(&fs::read_to_string(p).unwrap()))
        .filter(|d| d["kind"] == "Component")
        .collect();
    assert_eq!(components.len(), 1, "one Component in {dir:?}");
    components.remove(0)
}

pub(crate) fn read(path: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub(crate) fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

pub(crate) fn u64_at(value: &Value, pointer: &str, default: u64) -> u64 {
    value.pointer(pointer).map_or(default, |v| {
        v.as_u64()
            .unwrap_or_else(|| panic!("{pointer} is not a number"))
    })
}

/// `5s`, `250ms`, `1m`: the syntax of the binaries' durations and of Go's simple ones.
pub(crate) fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("duration {text:?}: {e}"))
}

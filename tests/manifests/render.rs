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

use test_support::process as harness;

use crate::{
    ROOT,
    admission::{InjectorSettings, admitted},
};

/// Dapr's default for `dapr.io/graceful-shutdown-seconds`.
const DAPR_GRACEFUL_SHUTDOWN_DEFAULT: Duration = Duration::from_secs(5);

/// One kustomization, rendered.
pub(crate) struct Render {
    /// Its directory, relative to the repository, e.g. `deploy/base`, and any Components on top:
    /// `deploy/base + deploy/overlays/public`.
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

    /// Whether the kustomize Component in `dir` (e.g. `deploy/overlays/public`) is part of it.
    pub(crate) fn has(&self, dir: &str) -> bool {
        self.label.split(" + ").skip(1).any(|part| part == dir)
    }

    /// The render's one Namespace, which every namespaced object is in.
    pub(crate) fn namespace(&self) -> &Value {
        let namespaces: Vec<&Value> = self.all("Namespace").collect();
        assert_eq!(namespaces.len(), 1, "{}: one Namespace", self.label);
        namespaces[0]
    }

    /// Every Deployment's pod as the API server admits it (crate::admission), by Deployment.
    pub(crate) fn admitted_pods(&self, settings: InjectorSettings) -> Vec<(&str, Value)> {
        self.all("Deployment")
            .map(|deployment| {
                let template = &deployment["spec"]["template"];
                let account = template["spec"]["serviceAccountName"]
                    .as_str()
                    .and_then(|name| {
                        self.all("ServiceAccount")
                            .find(|sa| sa["metadata"]["name"] == name)
                    });
                (
                    str_at(deployment, "/metadata/name"),
                    admitted(template, account, settings),
                )
            })
            .collect()
    }

    /// The app's pod as admitted.
    pub(crate) fn admitted_pod(&self, app: &str, settings: InjectorSettings) -> Value {
        let name = str_at(self.app(app), "/metadata/name");
        self.admitted_pods(settings)
            .into_iter()
            .find(|(deployment, _)| *deployment == name)
            .map(|(_, pod)| pod)
            .expect("the app's Deployment")
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

/// Every overlay under `deploy/` rendered once for all tests: each kustomization on its own, with
/// each kustomize Component (an add-on such as overlays/public or overlays/monitoring) on top,
/// and with all of them at once.
pub(crate) fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let (kustomizations, components) = kustomization_roots();
        assert!(!kustomizations.is_empty(), "no kustomization under deploy/");
        let mut sets: Vec<Vec<&PathBuf>> = vec![vec![]];
        sets.extend(components.iter().map(|c| vec![c]));
        if components.len() > 1 {
            sets.push(components.iter().collect());
        }
        let mut renders = Vec::new();
        for set in &sets {
            for dir in &kustomizations {
                renders.push(if set.is_empty() {
                    render(dir)
                } else {
                    render_with(dir, set)
                });
            }
        }
        renders
    })
}

/// Each kustomize Component under `deploy/`, rendered on its own, as validate-manifests does.
pub(crate) fn component_renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        kustomization_roots()
            .1
            .iter()
            .map(|dir| render(dir))
            .collect()
    })
}

/// The directories holding a kustomization file: Kustomizations, then Components.
fn kustomization_roots() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut dirs = Vec::new();
    kustomization_dirs(&Path::new(ROOT).join("deploy"), &mut dirs);
    dirs.sort();
    let is_component = |dir: &PathBuf| {
        let file = ["kustomization.yaml", "kustomization.yml"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .expect("a kustomization file");
        yaml_documents(&fs::read_to_string(&file).expect("readable"))
            .first()
            .is_some_and(|k| k["kind"] == "Component")
    };
    dirs.into_iter().partition(|dir| !is_component(dir))
}

fn kustomization_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
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

/// The repository-relative name of a directory, e.g. `deploy/base`.
fn label_of(dir: &Path) -> String {
    dir.strip_prefix(ROOT)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn render(dir: &Path) -> Render {
    kustomize(dir, label_of(dir))
}

/// `dir` with `components` on top, as a user's overlay lists them: a kustomization of its own in
/// a scratch directory under the target directory, naming them by relative paths (kustomize takes
/// no absolute one).
fn render_with(dir: &Path, components: &[&PathBuf]) -> Render {
    let label = std::iter::once(label_of(dir))
        .chain(components.iter().map(|c| label_of(c)))
        .collect::<Vec<_>>()
        .join(" + ");
    let scratch = harness::target_tmp()
        .join("manifests")
        .join(label.replace(['/', ' ', '+'], "_"));
    fs::create_dir_all(&scratch).expect("a scratch directory");
    let listed: String = components
        .iter()
        .map(|c| format!("  - {}\n", relative(&scratch, c).display()))
        .collect();
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - {}\ncomponents:\n{listed}",
        relative(&scratch, dir).display(),
    );
    fs::write(scratch.join("kustomization.yaml"), kustomization).expect("writing a kustomization");
    kustomize(&scratch, label)
}

/// `to` as a path relative to the directory `from`; both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = std::iter::repeat_n("..", from.len() - common).collect();
    path.extend(&to[common..]);
    path
}

fn kustomize(dir: &Path, label: String) -> Render {
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

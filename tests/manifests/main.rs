//! Coherence of what deploys the code with the code itself: the kustomizations under `deploy/`,
//! the Multi-App Run file `dapr.yaml` and the `Dockerfile` must agree with the binaries' defaults
//! (read from their `--help`) and with each other, so a change on either side fails here.
//!
//! Every kustomization is rendered with `kubectl kustomize`, as `.ci/run` and
//! `../shared/tools/validate-manifests` do; kubectl must be on PATH. No cluster, no network.
//!
//! - [`render`]: rendering the kustomizations and reading the objects;
//! - [`admission`]: what the API server's admission adds to a pod (daprd, tokens), modelled;
//! - [`pod_security`]: Pod Security's `restricted` profile, as its library checks it;
//! - [`security`]: least privilege: tokens, secret stores, Pod Security, per-app keys;
//! - [`binaries`]: the binaries' defaults, from their `--help`;
//! - [`wiring`]: the apps wired as the code expects (names, ports, probes, tokens, shutdown);
//! - [`exposure`]: who can reach the apps;
//! - [`availability`]: replicas, budgets, preStop, spread, KEDA's fallback, startup probes;
//! - [`keys`]: no committed Service Bus key;
//! - [`monitoring`]: the alerting rules name real metrics, the PodMonitor real ports;
//! - [`images`]: image tags, the Dockerfile and its build context;
//! - [`guide`]: the deploy guide's shell blocks: tokens, resource groups, keys and identities;
//! - [`guide_flow`]: the guide's flow as code: version check, tags, quota, key clean-up;
//! - [`guide_overlays`]: the overlays the guide has the reader write render as it says;
//! - [`queue`]: the guide's queue is the one the Component expects and devstack emulates.

mod admission;
mod availability;
mod binaries;
mod exposure;
mod guide;
mod guide_flow;
mod guide_overlays;
mod images;
mod keys;
mod monitoring;
mod pod_security;
mod queue;
mod render;
mod security;
mod wiring;

/// The repository's top directory.
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

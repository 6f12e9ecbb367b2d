//! devstack: the whole pipeline on one machine. Its sidecar stands in for daprd and the queue and
//! speaks Dapr's gRPC protocol on both sides, with the unmodified `producer` and `consumer`
//! binaries.
//!
//! - `config`: the command line; `manifests`: the committed ones it defaults to, built in;
//! - `supervisor`: `devstack up`, the sidecar in this process and the parts beside it;
//! - `process`: starting a part, relaying its output, learning its port, signalling and stopping
//!   it;
//! - `scaling`: `--autoscale`, KEDA's and the HPA's rules, and the replicas they scale, restarted
//!   as the kubelet restarts a container (`crashloop`), and `devstack plan`, the same rules in
//!   simulated time;
//! - `chaos`: `--chaos`, a seeded schedule of faults;
//! - the sidecar, put together in `sidecar`: `queue` (Service Bus peek-lock queues: locks,
//!   renewals, dead letters) with `dedup` (duplicate detection) and `schedule` (scheduled
//!   messages, time-to-live), `journey` (each message's path through them), `faults` (what can be
//!   broken on demand), `registry` (the consumer apps and their state), `changes` (the change
//!   notice), `status` (the status and its metrics), `api` (daprd's gRPC and HTTP APIs behind one
//!   token layer, devstack's own routes, the Host and Origin guard), `runtime` (`InvokeBinding`),
//!   `metadata`, `delivery` with `app` and `http_app` (calls to the apps), `service_bus` (the
//!   binding's metadata), `resiliency`, `rate_limit`, `spans`, `ids`, and the `dashboard`.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod changes;
pub mod chaos;
pub mod config;
pub mod dashboard;
pub mod dedup;
pub mod delivery;
pub mod faults;
pub mod http_app;
pub mod ids;
pub mod journey;
pub mod manifests;
pub mod metadata;
pub mod process;
pub mod queue;
pub mod rate_limit;
pub mod registry;
pub mod resiliency;
pub mod runtime;
pub mod scaling;
pub mod schedule;
pub mod service_bus;
pub mod sidecar;
pub mod spans;
pub mod status;
pub mod supervisor;

/// The `service.name` of the sidecar's spans, beside the children's `producer` and `consumer`.
pub const SERVICE_NAME: &str = "devstack-sidecar";

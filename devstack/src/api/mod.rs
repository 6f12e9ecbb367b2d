//! The sidecar's API, as daprd serves it: the runtime gRPC API (`grpc`) and the HTTP API
//! (`http`), both behind one API token check (`token`); devstack's own routes on the HTTP port
//! (`devstack`), and what keeps that port safe on a developer's machine (`guard`). What the
//! calls do lives in `runtime`, `metadata`, `queue`, `faults` and `journey`.

pub mod devstack;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod token;

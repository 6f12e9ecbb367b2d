//! The sidecar's API, as daprd serves it: the runtime gRPC API (`grpc`) and the HTTP API with
//! devstack's own status routes (`http`), both behind one API token check (`token`). What the
//! calls do lives in `runtime` and `metadata`.

pub mod grpc;
pub mod http;
pub mod token;

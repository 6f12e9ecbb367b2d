//! A consumer app as the sidecar addresses it, whatever protocol it speaks: where it is and how
//! to talk to it (daprd's `--app-protocol`, `--app-port`, `--app-max-concurrency`), and why a call
//! to it failed.

use std::net::SocketAddr;

use tonic::Code;

/// How the sidecar talks to an app: daprd's `--app-protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppProtocol {
    /// The AppCallback gRPC service (`--app-protocol grpc`), as our consumer serves it.
    #[default]
    Grpc,
    /// Plain HTTP/1.1 (`--app-protocol http`, daprd's default): `POST /<binding-name>`.
    Http,
}

impl AppProtocol {
    /// The name daprd gives it, as the metadata API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// One consumer app to deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppTarget {
    pub protocol: AppProtocol,
    pub address: SocketAddr,
    /// Events in flight at once per binding; Service Bus's default is 1.
    pub max_concurrency: usize,
}

/// Why a call to the app failed.
#[derive(Debug)]
pub struct CallError {
    /// Whether the app itself answered (with an error), rather than not being there to take
    /// the call (refused, reset, timed out, draining): only the latter makes it unhealthy.
    pub answered: bool,
    /// An HTTP app's status code, which a Resiliency's `matching.httpStatusCodes` tests.
    pub http_status: Option<u16>,
    pub reason: String,
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        Self {
            answered: answered(&status),
            http_status: None,
            reason: format!("app answered {:?}: {}", status.code(), status.message()),
        }
    }
}

/// Whether a gRPC app itself answered with `status`, rather than the call failing on the way:
/// refused or reset connections, timeouts and draining apps (UNAVAILABLE) say nothing about the
/// request, only that the app is not there to take it.
pub fn answered(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

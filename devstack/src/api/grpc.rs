//! The runtime gRPC API on the sidecar's gRPC port: `dapr.proto.runtime.v1.Dapr`, whose
//! `InvokeBinding` and `GetMetadata` are served (every other method is UNIMPLEMENTED), behind
//! the API token layer.

use std::sync::Arc;

use anyhow::Context;
use pipeline::{
    api_token::ApiToken,
    dapr_runtime::{DaprRuntimeServer, MetadataHandler},
    http_server::HttpLimits,
    net,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;

use super::token::{ApiTokenLayer, GrpcRefusal};
use crate::{metadata::Metadata, runtime::Runtime};

/// Serves the API on `listener` until `shutdown`, with `limits`' HTTP/2 limits; callers must
/// present `token` when one is given.
pub async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    runtime: Runtime,
    metadata: Arc<Metadata>,
    token: Option<ApiToken>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dapr = DaprRuntimeServer::new(runtime).with_metadata(metadata as Arc<dyn MetadataHandler>);
    limits
        .tonic(tonic::transport::Server::builder())
        .add_service(ApiTokenLayer::new(token, GrpcRefusal).layer(dapr))
        .serve_with_incoming_shutdown(net::grpc_incoming(listener), shutdown.cancelled_owned())
        .await
        .context("serving the gRPC runtime API")
}

//! The gRPC server daprd and the kubelet talk to, and its graceful shutdown.

use std::sync::Arc;

use anyhow::Context;
use bindings::dapr_v1::{
    app_callback_health_check_server::AppCallbackHealthCheckServer,
    app_callback_server::AppCallbackServer,
};
use tokio::{net::TcpListener, time::Instant};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::Server};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::callback::Consumer;

/// Service name the kubelet's and daprd's gRPC health checks may ask about.
const APP_CALLBACK: &str = <AppCallbackServer<Consumer> as NamedService>::NAME;

/// Serves `AppCallback`, `AppCallbackHealthCheck` and `grpc.health.v1.Health` on `listener` until
/// `shutdown` is cancelled. Then drains: health turns NOT_SERVING, new events get UNAVAILABLE,
/// and in-flight events may finish within the consumer's drain timeout, while the server keeps
/// answering so their responses reach daprd. Only then does the server stop.
pub async fn serve(
    listener: TcpListener,
    consumer: Arc<Consumer>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", APP_CALLBACK] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    let stop_server = CancellationToken::new();
    let mut server = tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .add_service(AppCallbackServer::from_arc(Arc::clone(&consumer)))
            .add_service(AppCallbackHealthCheckServer::from_arc(Arc::clone(
                &consumer,
            )))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop_server.clone().cancelled_owned(),
            ),
    );
    info!(addr = %addr, "listening");

    tokio::select! {
        result = &mut server => {
            result.context("gRPC server task failed")?.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped before shutdown was requested");
        }
        () = shutdown.cancelled() => {}
    }

    // One deadline for the whole shutdown, so it stays within terminationGracePeriodSeconds.
    let deadline = Instant::now() + consumer.drain_timeout();
    for service in ["", APP_CALLBACK] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let drained = consumer.drain(deadline).await;

    stop_server.cancel();
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(result) => result
            .context("gRPC server task failed")?
            .context("gRPC server failed while stopping")?,
        Err(_) => {
            // Only reachable when the drain ran over: unfinished events lose their connection,
            // daprd abandons them, and the broker redelivers them.
            if drained {
                warn!("gRPC connections did not close before the drain timeout; closing them");
            }
            server.abort();
        }
    }
    info!(processed = consumer.processed(), drained, "stopped");
    Ok(())
}

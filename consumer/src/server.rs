//! The gRPC server daprd and the kubelet talk to, the metrics server beside it, and their graceful
//! shutdown.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use pipeline::{
    dapr_v1::{
        app_callback_health_check_server::AppCallbackHealthCheckServer,
        app_callback_server::AppCallbackServer,
    },
    net,
};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::Server};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{callback::Consumer, config::Config, metrics};

/// How long the metrics server may take to stop once the gRPC server has stopped.
const METRICS_STOP_LIMIT: Duration = Duration::from_secs(1);

/// Service name the kubelet's and daprd's gRPC health checks may ask about.
const APP_CALLBACK: &str = <AppCallbackServer<Consumer> as NamedService>::NAME;

/// The consumer's two ports, bound before anything is served.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port daprd and the kubelet call (APP_PORT).
    pub app: TcpListener,
    /// The Prometheus metrics port (METRICS_PORT).
    pub metrics: TcpListener,
}

impl Listeners {
    /// Binds both ports on the configured address.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let address = config.bind_address;
        let app = TcpListener::bind((address, config.app_port))
            .await
            .with_context(|| format!("binding {address}:{}", config.app_port))?;
        let metrics = TcpListener::bind((address, config.metrics_port))
            .await
            .with_context(|| {
                format!("binding the metrics port {address}:{}", config.metrics_port)
            })?;
        Ok(Self { app, metrics })
    }
}

/// Serves `AppCallback`, `AppCallbackHealthCheck` and `grpc.health.v1.Health` on the app port,
/// and the metrics on the metrics port, until `shutdown` is cancelled. Then drains: health turns
/// NOT_SERVING, new events get UNAVAILABLE, and in-flight events may finish within the
/// consumer's drain timeout, while the server keeps answering so their responses reach daprd.
/// Only then does the server stop, and the metrics server last, so the drain can be watched.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners {
        app: listener,
        metrics: metrics_listener,
    } = listeners;
    let consumer = Arc::new(Consumer::new(config.settings()));
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", APP_CALLBACK] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    let stop_metrics = CancellationToken::new();
    let mut metrics_server = tokio::spawn(metrics::serve(
        metrics_listener,
        consumer.metrics(),
        config.http.clone(),
        stop_metrics.clone(),
    ));

    let stop_server = CancellationToken::new();
    let mut server = tokio::spawn(
        config
            .http
            .tonic(Server::builder())
            .add_service(health_service)
            .add_service(AppCallbackServer::from_arc(Arc::clone(&consumer)))
            .add_service(AppCallbackHealthCheckServer::from_arc(Arc::clone(
                &consumer,
            )))
            .serve_with_incoming_shutdown(
                net::grpc_incoming(listener),
                stop_server.clone().cancelled_owned(),
            ),
    );
    info!(addr = %addr, "listening");

    tokio::select! {
        result = &mut server => {
            result.context("gRPC server task failed")?.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped before shutdown was requested");
        }
        result = &mut metrics_server => {
            result.context("metrics server task failed")??;
            anyhow::bail!("metrics server stopped before shutdown was requested");
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
            // Unfinished events lose their connection here: daprd abandons them, and the broker
            // redelivers them. After a complete drain, only a peer that holds its connection
            // open past the GOAWAY gets here.
            if drained {
                warn!("gRPC connections did not close before the drain timeout; closing them");
            }
            server.abort();
        }
    }
    // A scrape in progress may finish; an idle keep-alive connection must not hold up the exit.
    stop_metrics.cancel();
    if tokio::time::timeout(METRICS_STOP_LIMIT, &mut metrics_server)
        .await
        .is_err()
    {
        metrics_server.abort();
    }
    info!(processed = consumer.processed(), drained, "stopped");
    Ok(())
}

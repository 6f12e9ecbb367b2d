//! `producer`: REST and gRPC front that sends messages to a Dapr output binding over gRPC.

#![forbid(unsafe_code)]

mod batch;
mod config;
mod grpc;
mod metrics;
mod publisher;
mod rest;
mod server;

use std::sync::Arc;

use anyhow::Context;
use bindings::{api_token::ApiToken, shutdown, telemetry};
use clap::Parser;

use crate::{
    batch::Batches, config::Config, metrics::Metrics, publisher::Publisher, rest::AppState,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log)?;

    let sidecar = config.sidecar_uri();
    tracing::info!(%sidecar, binding = %config.binding_name, "sending through the Dapr sidecar");
    let metrics = Arc::new(Metrics::default());
    let publisher = Publisher::new(
        sidecar,
        config.binding_name.clone(),
        config.dapr_api_token.as_ref().map(ApiToken::metadata_value),
        config.sidecar_timeout,
        config.retry_policy(),
        Arc::clone(&metrics),
    );
    let batches = Batches::new(
        publisher,
        Arc::clone(&metrics),
        config.send_concurrency,
        config.max_batches,
    );
    let state = AppState {
        batches,
        metrics,
        max_count: config.max_count,
        shutdown: shutdown::on_signal(),
    };

    let listener = tokio::net::TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    server::run(listener, state, config.drain_timeout).await
}

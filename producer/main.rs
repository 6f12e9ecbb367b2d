//! `producer`: REST and gRPC front that sends messages to a Dapr output binding over gRPC.

mod batch;
mod config;
mod grpc;
mod publisher;
mod rest;
mod server;

use anyhow::Context;
use bindings::{api_token::ApiToken, shutdown, telemetry};
use clap::Parser;

use crate::{batch::Batches, config::Config, publisher::Publisher, rest::AppState};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log)?;

    let sidecar = config.sidecar_uri();
    tracing::info!(%sidecar, binding = %config.binding_name, "sending through the Dapr sidecar");
    let publisher = Publisher::new(
        sidecar,
        config.binding_name.clone(),
        config.dapr_api_token.as_ref().map(ApiToken::metadata_value),
        config.sidecar_timeout,
    );
    let state = AppState {
        batches: Batches::new(publisher, config.send_concurrency),
        max_count: config.max_count,
        shutdown: shutdown::on_signal(),
    };

    let listener = tokio::net::TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    server::run(listener, state, config.drain_timeout).await
}

//! `producer`: REST and gRPC front that sends messages to a Dapr output binding over gRPC.

#![forbid(unsafe_code)]

mod batch;
mod config;
mod grpc;
mod metrics;
mod publisher;
mod rest;
mod server;

use anyhow::Context;
use bindings::{shutdown, telemetry};
use clap::Parser;
use tokio::net::TcpListener;

use crate::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, "producer")?;
    let shutdown = shutdown::on_signal();
    let listener = TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    let flush_limit = telemetry::FLUSH_LIMIT.min(config.drain_timeout);
    let served = server::serve(listener, config, shutdown).await;
    telemetry.shutdown(flush_limit).await;
    served
}

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
    telemetry::init(&config.log)?;
    let shutdown = shutdown::on_signal();
    let listener = TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    server::serve(listener, config, shutdown).await
}

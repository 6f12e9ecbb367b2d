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
    let drain = shutdown::DrainDeadline::watch(&shutdown, config.drain_timeout);
    let listener = TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    let served = server::serve(listener, config, shutdown).await;
    // Spans still queued get what the drain left of its time, so the exit stays within it.
    telemetry
        .shutdown(drain.remaining(telemetry::FLUSH_LIMIT))
        .await;
    served
}

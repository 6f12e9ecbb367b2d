//! `producer`: REST and gRPC front that sends messages to a Dapr output binding over gRPC.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use pipeline::{shutdown, telemetry};
use producer::Config;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, "producer")?;
    let shutdown = shutdown::on_signal();
    let drain = shutdown::DrainDeadline::watch(&shutdown, config.drain_timeout);
    let listener = TcpListener::bind((config.bind_address, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.port))?;
    let served = producer::serve(listener, config, shutdown).await;
    // Spans still queued get what the drain left of its time, so the exit stays within it.
    telemetry
        .shutdown(drain.remaining(telemetry::FLUSH_LIMIT))
        .await;
    served
}

//! The consumer: a Dapr app that daprd calls over gRPC with each input binding event (a queue
//! message), works on it, and logs the original sample's line.

#![forbid(unsafe_code)]

mod callback;
mod config;
mod metrics;
mod server;
mod work;

use std::sync::Arc;

use anyhow::Context;
use bindings::{shutdown, telemetry};
use clap::Parser;
use tokio::net::TcpListener;

use crate::{callback::Consumer, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log)?;
    let shutdown = shutdown::on_signal();
    let listener = TcpListener::bind((config.bind_address, config.app_port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.app_port))?;
    let metrics_listener = TcpListener::bind((config.bind_address, config.metrics_port))
        .await
        .with_context(|| {
            let (address, port) = (config.bind_address, config.metrics_port);
            format!("binding the metrics port {address}:{port}")
        })?;
    let consumer = Arc::new(Consumer::new(config.settings()));
    server::serve(listener, metrics_listener, consumer, shutdown).await
}

//! The consumer: a Dapr app that daprd calls over gRPC with each input binding event (a queue
//! message), works on it, and logs the original sample's line.

#![forbid(unsafe_code)]

mod callback;
mod config;
mod metrics;
mod server;
mod work;

use bindings::{shutdown, telemetry};
use clap::Parser;

use crate::{config::Config, server::Listeners};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log)?;
    let shutdown = shutdown::on_signal();
    let listeners = Listeners::bind(&config).await?;
    server::serve(listeners, config, shutdown).await
}

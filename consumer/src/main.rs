//! `consumer`: a Dapr app that daprd calls over gRPC with each input binding event (a queue
//! message), works on it, and logs the original sample's line.

#![forbid(unsafe_code)]

use clap::Parser;
use consumer::{Config, Listeners};
use pipeline::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, "consumer")?;
    let shutdown = shutdown::on_signal();
    let drain = shutdown::DrainDeadline::watch(&shutdown, config.drain_timeout);
    let listeners = Listeners::bind(&config).await?;
    let served = consumer::serve(listeners, config, shutdown).await;
    // Spans still queued get what the drain left of its time, so the exit stays within it.
    telemetry
        .shutdown(drain.remaining(telemetry::FLUSH_LIMIT))
        .await;
    served
}

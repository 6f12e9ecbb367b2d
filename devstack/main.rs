//! `devstack`: the whole pipeline on one machine. devstack's sidecar, which stands in for daprd and
//! the queue, speaks Dapr's gRPC protocol on both sides, with the unmodified `producer` and
//! `consumer` binaries.

#![forbid(unsafe_code)]

mod broker;
mod config;
mod delivery;
mod http;
mod http_app;
mod ids;
mod metadata;
mod queue;
mod rate_limit;
mod resiliency;
mod runtime;
mod scaling;
mod service_bus;
mod sidecar;
mod supervisor;

use bindings::{shutdown, telemetry};
use clap::Parser;

use crate::{
    config::{Cli, Command},
    sidecar::Listeners,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, up } = Cli::parse();
    match command.unwrap_or(Command::Up(up)) {
        Command::Sidecar(args) => {
            telemetry::init(&args.sidecar.log)?;
            let listeners = Listeners::bind(&args.sidecar).await?;
            sidecar::serve(listeners, args, shutdown::on_signal()).await
        }
        Command::Up(args) => {
            telemetry::init_labelled(&args.sidecar.log, supervisor::OWN_LABEL)?;
            let listeners = Listeners::bind(&args.sidecar).await?;
            supervisor::serve(listeners, args, shutdown::on_signal()).await
        }
    }
}

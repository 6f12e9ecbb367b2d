//! `devstack`: the whole pipeline on one machine. A stand-in for "daprd + the queue" speaking
//! Dapr's gRPC protocol on both sides, with the unmodified `producer` and `consumer` binaries.

#![forbid(unsafe_code)]

mod broker;
mod config;
mod delivery;
mod http;
mod ids;
mod queue;
mod runtime;
mod sidecar;
mod supervisor;

use bindings::{shutdown, telemetry};
use clap::Parser;

use crate::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        command,
        up: up_args,
    } = Cli::parse();
    match command {
        Some(Command::Sidecar(args)) => {
            telemetry::init(&args.sidecar.log)?;
            let mut sidecar = sidecar::Sidecar::start(&args.sidecar, shutdown::on_signal()).await?;
            for target in args.targets() {
                sidecar.add_app(target);
            }
            sidecar.wait().await
        }
        Some(Command::Up(args)) => up(args).await,
        None => up(up_args).await,
    }
}

async fn up(args: config::UpArgs) -> anyhow::Result<()> {
    telemetry::init_labelled(&args.sidecar.log, supervisor::OWN_LABEL)?;
    supervisor::up(args, shutdown::on_signal()).await
}

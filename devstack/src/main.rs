//! `devstack`: the whole pipeline on one machine. devstack's sidecar, which stands in for daprd and
//! the queue, speaks Dapr's gRPC protocol on both sides, with the unmodified `producer` and
//! `consumer` binaries.

#![forbid(unsafe_code)]

use clap::Parser;
use devstack::{
    SERVICE_NAME,
    config::{Cli, Command},
    process::OWN_LABEL,
    scaling::plan::command as plan,
    sidecar::{self, Listeners},
    supervisor,
};
use pipeline::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, up } = Cli::parse();
    let (telemetry, served) = match command.unwrap_or(Command::Up(up)) {
        // Prints its plan and exits: no telemetry, no port.
        Command::Plan(args) => return plan::run(&args, &mut std::io::stdout().lock()),
        Command::Sidecar(args) => {
            let telemetry = telemetry::init(&args.sidecar.log, SERVICE_NAME)?;
            let listeners = Listeners::bind(&args.sidecar).await?;
            let served = sidecar::serve(listeners, args, shutdown::on_signal()).await;
            (telemetry, served)
        }
        Command::Up(args) => {
            let telemetry = telemetry::init_labelled(&args.sidecar.log, SERVICE_NAME, OWN_LABEL)?;
            let listeners = Listeners::bind(&args.sidecar).await?;
            let served = supervisor::serve(listeners, args, shutdown::on_signal()).await;
            (telemetry, served)
        }
    };
    telemetry.shutdown(telemetry::FLUSH_LIMIT).await;
    served
}

//! `dmore serial`: the serial console of a VM served by a dmore console.

use anyhow::Context as _;
use console::serial_attach::{attach, Target};
use std::time::Duration;

/// The serial console of a VM served by `dmore console --serial-socket`.
#[derive(clap::Args, Debug)]
pub struct SerialArgs {
    #[command(subcommand)]
    command: SerialCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SerialCommand {
    /// Attach this terminal (stdin, stdout) to the serial console: the console's
    /// --serial-attach socket on this host, or its --serial-listen HOST:PORT. The first line
    /// printed by the console (its position) is not shown.
    Attach {
        /// A unix socket path or a TCP address.
        target: Target,
        /// When the connection is lost (the console moved with its VM), connect again for up
        /// to this many seconds and resume: no output shown twice, no typed byte lost.
        #[arg(long, value_name = "SECS")]
        reconnect: Option<u64>,
    },
}

/// Runs the subcommand.
pub fn run(args: SerialArgs) -> anyhow::Result<()> {
    let SerialCommand::Attach { target, reconnect } = args.command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(attach(
        &target,
        tokio::io::stdin(),
        tokio::io::stdout(),
        reconnect.map(Duration::from_secs),
    ))?;
    tracing::info!(?report, "serial console detached");
    Ok(())
}

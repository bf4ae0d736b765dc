//! `dmore`: the command line. It parses arguments and calls library entry points, nothing more.

use clap::Parser;

mod baseline_cmd;
mod bench_cmd;
mod bench_suite_cmd;
mod console_cmd;
mod demo_cmd;
mod gateway_cmd;
mod gateway_serial;
mod libvirt_cmd;
mod migrate_cmd;
mod serial_cmd;
mod soak_cmd;

/// dmore keeps a VM's out-of-band console (VNC) alive across QEMU live migration.
///
/// A small console process per VM attaches to QEMU's own VNC server and QMP, serves viewers,
/// and moves with its VM: the viewer never reconnects and no key is lost.
#[derive(Parser, Debug)]
#[command(name = "dmore", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the console of one VM (viewers in front, QEMU's VNC and QMP behind).
    // Boxed: the largest arguments by far; parsed once.
    Console(Box<console_cmd::ConsoleArgs>),
    /// Measure what a plain QEMU console loses across live migrations (the "before" column).
    Baseline(baseline_cmd::BaselineArgs),
    /// Live-migrate a VM and its console together (QEMU's migration plus the console's).
    Migrate(migrate_cmd::MigrateArgs),
    /// Show a console surviving live migrations A -> B -> A, with figures, beside a plain one.
    Demo(demo_cmd::DemoArgs),
    /// Benchmarks against QEMU's own VNC and `migrate` (`dmore bench all`: the paper's
    /// evaluation, with `dmore bench report` for docs/results.md).
    Bench(bench_cmd::BenchArgs),
    /// libvirt domains with dmore consoles: patch a domain's XML, install and run the hook.
    Libvirt(libvirt_cmd::LibvirtArgs),
    /// Co-migrate one VM and its console many times under a viewer that never stops typing.
    Soak(soak_cmd::SoakArgs),
    /// Gateway mode: viewers relayed to consoles over resumable streams (docs/gateway.md).
    Gateway(gateway_cmd::GatewayArgs),
    /// The serial console of a VM served by a dmore console (`dmore serial attach`).
    Serial(serial_cmd::SerialArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a console's log is usually a file (libvirt's hook).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Console(args) => console_cmd::run(*args),
        Command::Baseline(args) => baseline_cmd::run(args),
        Command::Migrate(args) => migrate_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Libvirt(args) => libvirt_cmd::run(args),
        Command::Soak(args) => soak_cmd::run(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Serial(args) => serial_cmd::run(args),
    }
}

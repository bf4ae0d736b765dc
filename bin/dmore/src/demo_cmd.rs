//! `dmore demo`: a console that survives live migrations, with figures, beside a plain one.

use std::time::Duration;

use anyhow::Context as _;
use scenarios::demo::{self, DemoEvent, DemoOptions, MigrationRow, ViewerMode};

/// Show a VM console surviving live migrations: no reconnect, no key lost.
///
/// Creates three test hosts in network namespaces (A, B and a client; needs root), boots a
/// small test guest on A under a `dmore console` that serves a service address, and connects a
/// scripted viewer from the client: it types a key every 10 ms and clicks every 100 ms. The VM
/// and its console then live-migrate A → B → A … together; after each migration a row shows
/// the VM's downtime, the console's freeze → takeover time, the longest time the viewer's
/// screen stood still, and the keys and clicks the guest received (counted from its serial
/// port). Then, in the same run, the same number of migrations with a viewer straight on
/// QEMU's own VNC server, which drops and loses keys. A packet capture on the client shows the
/// viewer's connection was never re-opened (no second SYN, no FIN, no RST).
///
/// Examples:
///   dmore demo                          5 migrations, then the baseline (about a minute)
///   dmore demo --migrations 2 --no-baseline
///   dmore demo --hold-switchover        the console moves inside QEMU's switchover
///   dmore demo --viewer external        bring your own viewer; Ctrl-C ends it
///
/// Ctrl-C at any time removes the hosts, VMs and consoles. RUST_LOG=info shows the consoles'
/// logs (they are also kept in /tmp/dmore-testbed/<run>/<host>/vmN/ while the run lasts).
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Co-migrations to run (and baseline migrations to compare with).
    #[arg(long, default_value_t = 5)]
    migrations: usize,
    /// Hold QEMU at pre-switchover until the destination console is ready (the console's
    /// move then counts in the VM's downtime).
    #[arg(long)]
    hold_switchover: bool,
    /// `scripted`: the demo's own viewer types and measures; `external`: print the command
    /// for a real viewer (vncviewer) and migrate every few seconds until Ctrl-C.
    #[arg(long, value_enum, default_value_t = Viewer::Scripted)]
    viewer: Viewer,
    /// Seconds between migrations with `--viewer external`.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Have the guest rewrite this many MiB of its memory while it migrates (0: idle).
    #[arg(long, default_value_t = 0)]
    dirty_mib: u32,
    /// ... at this rate, MiB/s (64 converges under QEMU's defaults).
    #[arg(long, default_value_t = 64)]
    dirty_rate: u32,
    /// Skip the baseline (a viewer straight on QEMU's VNC).
    #[arg(long)]
    no_baseline: bool,
}

/// Who watches the console.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Viewer {
    /// The demo's scripted viewer.
    Scripted,
    /// A real viewer you start yourself.
    External,
}

/// Runs the demo and prints its table.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dmore = std::env::current_exe().context("finding the dmore executable")?;
    let mut options = DemoOptions::new(dmore);
    options.migrations = args.migrations;
    options.hold_switchover = args.hold_switchover;
    options.viewer = match args.viewer {
        Viewer::Scripted => ViewerMode::Scripted,
        Viewer::External => ViewerMode::External,
    };
    options.external_interval =
        Duration::try_from_secs_f64(args.interval).context("--interval takes seconds, e.g. 5")?;
    options.memory_mib = args.memory_mib;
    options.guest.dirty_mib = args.dirty_mib;
    options.guest.dirty_rate_mib_s = args.dirty_rate;
    options.baseline = !args.no_baseline;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(demo::run(&options, |e| print_event(e, options.viewer)))
        .context("running the demo (as root, with QEMU installed: see .ci/setup)")?;
    if options.viewer == ViewerMode::Scripted {
        println!("\n{report}");
    }
    Ok(())
}

fn print_event(event: DemoEvent<'_>, viewer: ViewerMode) {
    match event {
        DemoEvent::Ready {
            service,
            client_netns,
            mode,
        } => {
            println!("hosts ready ({mode}); the VM's console serves {service}");
            if let Some(ns) = client_netns {
                println!(
                    "a real viewer from the client host: ip netns exec {ns} vncviewer {}::{}",
                    service.ip(),
                    service.port()
                );
            }
            if viewer == ViewerMode::Scripted {
                println!("\n{}", MigrationRow::header());
            }
        }
        DemoEvent::Row(row) => println!("{row}"),
        DemoEvent::External {
            n,
            from,
            to,
            timeline,
            typed,
            clicks,
        } => println!(
            "migration {n} {}->{}: VM downtime {} ms, console freeze->takeover {}; \
             the guest received: {typed:?}, {clicks} click(s)",
            from.name(),
            to.name(),
            timeline
                .vm_downtime_ms
                .map_or("?".into(), |d| d.to_string()),
            timeline.freeze_to_takeover.map_or("?".into(), |d| format!(
                "{:.1} ms",
                d.as_secs_f64() * 1000.0
            )),
        ),
        DemoEvent::BaselineStarting => println!(
            "\nBaseline: a viewer straight on QEMU's VNC over TCP (a key every 50 ms), the \
             source QEMU quits after the migration, the viewer reconnects after 1 s"
        ),
        DemoEvent::BaselineRun(r) => println!(
            "  migration: typed {:>3}, reached the guest {:>3}, lost {:>3}, connection {}, \
             VM downtime {} ms",
            r.typed,
            r.received,
            r.lost(),
            if r.dropped { "dropped" } else { "kept" },
            r.downtime_ms.map_or("?".into(), |d| d.to_string()),
        ),
    }
}

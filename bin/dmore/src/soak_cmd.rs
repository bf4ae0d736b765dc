//! `dmore soak`: many co-migrations under one viewer that never stops typing.

use anyhow::{bail, Context as _};
use scenarios::soak::{self, SoakEvent, SoakOptions};

/// Co-migrate one VM and its console N times while one viewer types and clicks without pause.
///
/// Creates three test hosts in network namespaces (A, B and a client), boots the small test
/// guest on A under a `dmore console` serving a service address, and connects one scripted
/// viewer from the client host: a key every 10 ms, a click every 100 ms at a new place. The VM
/// and its console then co-migrate A -> B -> A ... N times, 200 ms of typing between moves;
/// the viewer never reconnects. A progress line every 10 moves: moves done, keys sent so far
/// (and reported by the guest so far), elapsed. At the end, once the guest is quiet:
///
///   keys sent / received / lost / duplicated / reordered, clicks sent / received (the guest
///     reports every key and button on its serial port);
///   the viewer's connections as the client host's packet capture saw them (SYN/FIN/RST);
///   the serving console's RSS (VmRSS) and open file descriptors: the console moves to a new
///     process with every move, so "start" is the first console once the viewer is connected,
///     "end" the last one after the last move;
///   VM downtime (QEMU's figure) and console freeze->takeover, p50 / p95 / max.
///
/// Exits non-zero when a key or click was lost, duplicated or reordered, or the viewer's
/// connection dropped or was re-opened.
///
/// Time: about 0.5 s per move (a new QEMU and console on the destination each time, then
/// 200 ms of typing), plus the time the guest needs to report the keys it is behind on (it
/// can fall far behind the viewer on a loaded machine) and to read the capture. Measured on a
/// busy 2-core machine: 20 moves in 19 s then 28 s to count (debug build); 430 moves in 215 s
/// then 71 s to count (release); so 1000 moves take about 10 minutes.
///
/// Needs root: the hosts are network namespaces, and the service address moves between them.
/// The consoles themselves run as `nobody`, with only CAP_NET_ADMIN and CAP_NET_RAW (to move
/// the viewer's TCP connection), as an operator would run them. Ctrl-C removes the hosts,
/// VMs and consoles.
///
/// Examples:
///   dmore soak                  100 moves
///   dmore soak --moves 1000     about ten minutes
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SoakArgs {
    /// Co-migrations to run.
    #[arg(long, default_value_t = 100)]
    moves: usize,
    /// A progress line after every this many moves.
    #[arg(long, default_value_t = 10)]
    progress_every: usize,
}

/// Runs the soak, prints its report, and fails unless it was clean.
pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let dmore = std::env::current_exe().context("finding the dmore executable")?;
    let mut options = SoakOptions::new(dmore);
    options.moves = args.moves;
    options.progress_every = args.progress_every;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(soak::run(&options, print_event))
        .context("running the soak (as root, with QEMU installed: see .ci/setup)")?;
    println!("\n{report}");
    if !report.clean() {
        bail!("the soak was not clean: see the report above");
    }
    Ok(())
}

fn print_event(event: SoakEvent) {
    match event {
        SoakEvent::Ready { service, mode } => {
            println!("hosts ready ({mode}); the VM's console serves {service}; a viewer types")
        }
        SoakEvent::Progress {
            moves,
            keys,
            received,
            elapsed,
        } => println!(
            "moves {moves}, keys sent {keys} (the guest reported {received}), elapsed {:.1} s",
            elapsed.as_secs_f64()
        ),
    }
}

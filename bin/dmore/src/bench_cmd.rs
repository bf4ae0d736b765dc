//! `dmore bench`: benchmarks; `dmore bench console` measures the console against QEMU's own
//! VNC server (scenarios::bench).

use std::time::Duration;

use anyhow::Context as _;
use scenarios::bench::{self, BenchOptions, ConsoleSockets};

/// Measure dmore against QEMU's own VNC server.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

/// What to measure.
#[derive(clap::Subcommand, Debug)]
enum BenchWhat {
    /// The console's overhead: key response, screen path, RSS and CPU, side by side with
    /// QEMU's own VNC on one guest.
    Console(ConsoleBenchArgs),
}

/// Key response (KeyEvent to the guest's serial report, direct vs through a `dmore console`
/// process on the same QEMU), screen path (the same update's arrival through dmore minus
/// direct, small and full-screen Raw updates), and the console process's RSS and CPU with
/// 1, 4 and 16 viewers at 720x400 and 1024x768; then the targets, met or missed.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Build in release mode: a debug build measures the wrong thing.
  cargo run --release -p dmore -- bench console
Takes about a minute with the defaults. Needs qemu-system-x86_64 (KVM if /dev/kvm opens).")]
struct ConsoleBenchArgs {
    /// Keys to send in total (alternating direct and through dmore).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Matched updates per screen-path measurement (small, and full screen).
    #[arg(long, default_value_t = 200)]
    frames: usize,
    /// CPU measurement window per viewer count, seconds.
    #[arg(long, default_value_t = 5.0)]
    window_secs: f64,
}

/// Runs the benchmark and prints the table.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchWhat::Console(args) = args.what;
    let window = Duration::try_from_secs_f64(args.window_secs)
        .context("--window-secs takes seconds, e.g. 5")?;
    let options = BenchOptions {
        keys: args.keys,
        frames: args.frames,
        window,
        ..BenchOptions::default()
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with `cargo run --release -p dmore -- bench console`"
        );
    }
    let exe = std::env::current_exe().context("finding the dmore binary to run `dmore console`")?;
    let launch = |s: &ConsoleSockets<'_>| {
        let mut c = std::process::Command::new(&exe);
        c.arg("console")
            .arg("--vnc-socket")
            .arg(s.vnc)
            .arg("--qmp-socket")
            .arg(s.qmp)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--insecure-no-auth");
        c
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(bench::run(&options, launch, |what| {
            eprintln!("bench: {what}")
        }))
        .context("running the console benchmark (needs qemu-system-x86_64; see .ci/setup)")?;
    println!(
        "dmore bench console: {} keys, {} frames, {:.1} s windows\n\n{report}",
        args.keys, args.frames, args.window_secs
    );
    Ok(())
}

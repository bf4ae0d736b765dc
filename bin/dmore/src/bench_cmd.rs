//! `dmore bench`: benchmarks; `dmore bench console` measures the console against QEMU's own
//! VNC server (scenarios::bench).

use std::time::Duration;

use anyhow::Context as _;
use scenarios::bench::input::moving::{self, MovingOptions};
use scenarios::bench::input::{AccelChoice, InputOptions, InputReport, LinuxGuest, TinyGuest};
use scenarios::bench::{self, BenchOptions, ConsoleSockets};

use crate::bench_suite_cmd::{
    run_all, run_one, run_report, MigrationArgs, ReportArgs, SuiteArgs, Which,
};

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
    /// Input at the viewer's pace: steady streams of keys (with Shift) and clicks at set
    /// rates into the tiny test guest and the Linux guest, straight into QEMU's own VNC and
    /// through a `dmore console`, side by side.
    Input(InputBenchArgs),
    /// Key → guest and key → echo in the viewer's framebuffer, QEMU's own VNC vs dmore
    /// (≥ 1000 keys each), and the screen update's extra time; CDF plots.
    Response(SuiteArgs),
    /// Per co-migration: VM downtime, console freeze → takeover, the viewer's gap, keys lost;
    /// plain QEMU's migrations beside it.
    Downtime(SuiteArgs),
    /// Migration time and VM downtime against guest memory, plain `migrate` vs co-migration
    /// (default and --hold-switchover), idle / typing / dirtying.
    Migration(MigrationArgs),
    /// Bytes on the wire, CPU per frame and fps per encoding, QEMU's own VNC vs dmore, one
    /// session.
    Screen(SuiteArgs),
    /// response, downtime, migration and screen in turn, then the page (`OUT/results.md`);
    /// about 13 min on two cores, --quick about 1 min.
    All(SuiteArgs),
    /// Turns a results folder's summaries into a markdown page with the plots beside it.
    Report(ReportArgs),
    /// The gateway hop's added latency (gateway mode): key response (KeyEvent to the guest's
    /// serial report) straight to a `dmore console` and through a `dmore gateway serve` in
    /// front of it, alternating, on one guest.
    Gateway(GatewayBenchArgs),
    /// The serial lane: output throughput and keystroke echo through a `dmore console`
    /// against a client on QEMU's chardev directly, side by side.
    Serial(SerialBenchArgs),
}

/// Key response through the gateway hop against the console directly.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Build in release mode: a debug build measures the wrong thing.
  cargo run --release -p dmore -- bench gateway
Takes about 20 s with the defaults. Everything runs on 127.0.0.1.")]
struct GatewayBenchArgs {
    /// Keys to send in total (alternating direct and through the gateway).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

/// Output throughput (the tiny guest writing COM2 as fast as QEMU takes it; bytes/s a client
/// receives) and keystroke echo (a byte typed until its echo: p50, p99), on QEMU's chardev
/// socket and through `dmore console --serial-socket`, then the targets; then the
/// output gap per co-migration (a line every 20 ms) for a client of the console's serial lane
/// and for OpenSSH's `ssh` through the gateway's SSH front, each in its own two-host bed.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Build in release mode: a debug console measures the wrong thing.
  cargo run --release -p dmore -- bench serial
Takes about 1.5 minutes with the defaults; --quick about 30 s. The moves run between
network-namespace hosts as root; the SSH side needs OpenSSH's ssh and ssh-keygen.")]
struct SerialBenchArgs {
    /// Throughput window per path, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Echo samples per path.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Throughput rounds, each one window per path, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Co-migrations for the output gap per move, through the lane and through SSH each
    /// (between network-namespace hosts, as root; 0: none).
    #[arg(long, default_value_t = 3)]
    moves: usize,
    /// A short run: one round of 1 s windows, 100 echoes per path, one move (overrides
    /// --seconds, --samples, --rounds and --moves).
    #[arg(long)]
    quick: bool,
}

/// Per guest, rate and path: events lost, and the lag (the guest's report of an event minus
/// its sending by the viewer: p50, p99, max, the last event's); then QEMU's PS/2 keyboard
/// queue replayed from a QEMU trace (bytes dropped at the device); then one 445 events/s
/// stream into the tiny guest through co-migrations (per move: VM downtime, peak lag, how
/// long after the takeover the lag stayed over 50 ms).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Build in release mode: a debug console measures the wrong thing.
  cargo run --release -p dmore -- bench input
Takes about 5 minutes with the defaults (2 guests x 6 rates x 2 paths x 10 s, and the Linux
guest's boot under TCG, about 2 per guest; then 10 moves a second apart); --quick about 40 s.
The moves run between network-namespace hosts as root (loopback otherwise).")]
struct InputBenchArgs {
    /// The guest(s) to type into.
    #[arg(long, value_enum, default_value_t = GuestChoice::Both)]
    guest: GuestChoice,
    /// Events per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [50, 100, 200, 445, 700, 1000])]
    rates: Vec<u32>,
    /// Length of each stream, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// A short run: 445 and 1000 events/s, 2 s each, per guest (overrides --rates and
    /// --seconds).
    #[arg(long)]
    quick: bool,
    /// The tiny guest's memory, MiB (the Linux guest has 256).
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Run the tiny guest under TCG even where KVM works (the Linux guest always runs
    /// under TCG).
    #[arg(long)]
    tcg: bool,
    /// Co-migrations under the 445 events/s stream that follows the sweep (0: none; --quick
    /// makes it 3).
    #[arg(long, default_value_t = 10)]
    moves: usize,
}

/// Which guests `dmore bench input` types into.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GuestChoice {
    /// The tiny test guest (KVM where it works).
    Tiny,
    /// The Linux guest (Debian's kernel, TCG).
    Linux,
    /// The tiny guest, then the Linux guest.
    Both,
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
    let args = match args.what {
        BenchWhat::Console(args) => args,
        BenchWhat::Input(args) => return run_input(args),
        BenchWhat::Response(a) => return run_one(Which::Response, &a, None).map(drop),
        BenchWhat::Downtime(a) => return run_one(Which::Downtime, &a, None).map(drop),
        BenchWhat::Migration(m) => return run_one(Which::Migration, &m.suite, Some(&m)).map(drop),
        BenchWhat::Screen(a) => return run_one(Which::Screen, &a, None).map(drop),
        BenchWhat::All(a) => return run_all(&a),
        BenchWhat::Report(r) => return run_report(&r),
        BenchWhat::Gateway(args) => return run_gateway(args),
        BenchWhat::Serial(args) => return run_serial(args),
    };
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
    let launch = |s: &ConsoleSockets<'_>| bench::console_command(&exe, s);
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

fn run_gateway(args: GatewayBenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with `cargo run --release -p dmore -- bench gateway`"
        );
    }
    let exe = std::env::current_exe().context("finding the dmore binary to run `dmore console`")?;
    let scratch = bench::Scratch::create()?;
    let key_file = scratch.path().join("gateway.key");
    let mut key = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)
        .context("drawing the gateway key")?;
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, format!("{key}\n")).context("writing the gateway key")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the console's gateway listener")?
        .port();
    let console_gateway = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let launch = |s: &ConsoleSockets<'_>| {
        let mut c = bench::console_command(&exe, s);
        c.arg("--gateway-listen")
            .arg(console_gateway.to_string())
            .arg("--gateway-psk-file")
            .arg(&key_file);
        c
    };
    let mut gateway = std::process::Command::new(&exe);
    gateway
        .args(["gateway", "serve", "--listen", "127.0.0.1:0", "--console"])
        .arg(console_gateway.to_string())
        .arg("--key-file")
        .arg(&key_file);
    let options = BenchOptions {
        keys: args.keys,
        ..BenchOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (keys, machine) = runtime
        .block_on(bench::gateway_hop(&options, launch, gateway, |what| {
            eprintln!("bench: {what}")
        }))
        .context("running the gateway benchmark (needs qemu-system-x86_64; see .ci/setup)")?;
    let row = |name: &str, d: &[Duration]| match bench::duration_p50_p99(d) {
        Some((p50, p99)) => println!(
            "{name:<32} {:>5} keys  p50 {p50:>7.0} µs  p99 {p99:>7.0} µs",
            d.len()
        ),
        None => println!("{name:<32} no keys"),
    };
    println!("dmore bench gateway: key → guest's serial report, {machine}");
    row("dmore console, directly", &keys.direct);
    row("dmore gateway → dmore console", &keys.console);
    if let (Some((d50, d99)), Some((g50, g99))) = (
        bench::duration_p50_p99(&keys.direct),
        bench::duration_p50_p99(&keys.console),
    ) {
        println!(
            "the gateway hop adds p50 {:+.0} µs, p99 {:+.0} µs",
            g50 - d50,
            g99 - d99
        );
    }
    Ok(())
}

fn run_input(args: InputBenchArgs) -> anyhow::Result<()> {
    let options = if args.quick {
        InputOptions {
            rates: vec![445, 1000],
            duration: Duration::from_secs(2),
        }
    } else {
        InputOptions {
            rates: args.rates,
            duration: Duration::try_from_secs_f64(args.seconds)
                .context("--seconds takes seconds, e.g. 10")?,
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with `cargo run --release -p dmore -- bench input`"
        );
    }
    let exe = std::env::current_exe().context("finding the dmore binary to run `dmore console`")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let scratch = bench::Scratch::create()?;
    println!(
        "dmore bench input: {:?} events/s, {:.1} s each",
        options.rates,
        options.duration.as_secs_f64()
    );
    let launch = |s: &ConsoleSockets<'_>| bench::console_command(&exe, s);
    let progress = |what: &str| eprintln!("bench: {what}");
    if args.guest != GuestChoice::Linux {
        let accel = if args.tcg {
            AccelChoice::Tcg
        } else {
            AccelChoice::Auto
        };
        let report: InputReport = runtime
            .block_on(async {
                progress("booting the tiny guest");
                let guest = TinyGuest::launch(scratch.path(), args.memory_mib, accel).await?;
                scenarios::bench::input::run(guest, &options, launch, progress).await
            })
            .context(
                "the tiny guest's input benchmark (needs qemu-system-x86_64; see .ci/setup)",
            )?;
        println!("\n{report}");
    }
    if args.guest != GuestChoice::Tiny {
        let report: InputReport = runtime
            .block_on(async {
                progress("booting the Linux guest (TCG)");
                let guest = LinuxGuest::launch(scratch.path()).await?;
                scenarios::bench::input::run(guest, &options, launch, progress).await
            })
            .context("the Linux guest's input benchmark (needs Debian's kernel; see .ci/setup)")?;
        println!("\n{report}");
    }
    let moves = if args.quick { 3 } else { args.moves };
    if moves > 0 {
        let moving = MovingOptions {
            moves,
            ..MovingOptions::new(&exe)
        };
        let report = runtime
            .block_on(moving::run(&moving, progress))
            .context("running the stream through co-migrations")?;
        println!("\n{report}");
    }
    Ok(())
}

fn run_serial(args: SerialBenchArgs) -> anyhow::Result<()> {
    use scenarios::bench::serial::{self, SerialBenchOptions};
    let exe = std::env::current_exe().context("finding the dmore binary to run `dmore console`")?;
    let mut options = SerialBenchOptions::new(exe);
    if args.quick {
        options.window = Duration::from_secs(1);
        options.samples = 100;
        options.rounds = 1;
        options.moves = 1;
    } else {
        options.window = Duration::try_from_secs_f64(args.seconds)
            .context("--seconds takes seconds, e.g. 10")?;
        options.samples = args.samples;
        options.rounds = args.rounds;
        options.moves = args.moves;
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; measure with `cargo run --release -p dmore -- bench serial`"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(serial::run(&options, |what| eprintln!("bench: {what}")))
        .context("running the serial benchmark (needs qemu-system-x86_64; see .ci/setup)")?;
    println!("dmore bench serial\n\n{report}");
    Ok(())
}

//! `dmore bench console`: the console's overhead against QEMU's own VNC server, measured side
//! by side on one guest, in one run (issue 5, "Benchmark"). Not a timed test: it prints figures.
//!
//! ```text
//!                      ┌── TCP display (key-delay-ms=0) ──────────── direct typist / screen client
//!  QEMU (test guest) ──┤
//!   serial: K n D|U    └── unix VNC (key-delay-ms=0) + QMP ── dmore console ── typist / screen
//!                                                              process       client / N viewers
//! ```
//!
//! 1. **Key response**: a KeyEvent until the guest's serial report of that key; keys alternate
//!    between the direct and the console path, one at a time, each after the previous key's
//!    release was reported and a short gap (so a key measures the path, as for a typist,
//!    not the journal's pacing of bursts). The console runs with its
//!    default journal `Config`, as an operator runs it.
//! 2. **Screen path**: a Raw client on each path keeps an incremental request outstanding;
//!    the same update is recognised on both by content (the animated corner's pixels; the
//!    fill colour of an F1 full-screen repaint) and its console arrival minus its direct
//!    arrival recorded. QEMU refreshes both VNC displays in the same timer callback, so the
//!    difference is the console's own delay (plus QEMU's order between its two displays).
//! 3. **Footprint**: the console process's `VmRSS` and CPU (utime + stime over a window) with
//!    1, 4 and 16 subscribed viewers (ZRLE, as TigerVNC asks), on an animated screen, in VGA
//!    text mode (720x400) and in the guest's `vbe=1024x768` graphics mode.
//!
//! The guest runs on KVM+qboot where KVM works (it sets its text or graphics mode itself),
//! TCG+SeaBIOS otherwise. Build with `--release`: a debug console measures the wrong thing.
//!
//! # Where the time goes
//! Measured on the 2-core bench machine (KVM + qboot, QEMU 7.2), release build, with throwaway
//! wall-clock stamps (`SystemTime`, one clock for bench and console) at each stage, kept in
//! memory and dumped by the console; keys matched by order (one key in flight), screen
//! updates by a sequence carried through the link's event queue, "small" = the animated
//! corner (1280 px), one viewer. Medians in µs over 300-600 keys / ~250 updates per run; the
//! two columns are the old multi-thread runtime and the current-thread one now used.
//!
//! ```text
//!  key (press)                                           multi-thread  current-thread
//!  bench write → console reader's read() returns             84-97         67-97
//!  read → decoded, queued to the hub                          3.3-3.5       3.1-3.7
//!  reader task → hub task has it                             31-37         14-20
//!  session handle_message                                     2.3-2.7       2.4-3.2
//!  hub → link task has the Push (request channel)            24-34          9-12
//!  Push → journal poll_action gives the Vnc action            9             6-8
//!  → bytes written into QEMU's VNC socket                    13-16         17-22
//!  console total, read → written                             95-115        56-75
//!  then: fence written with the key; answered after 155-196; query-status answered 335-374
//!  later; the next key comes ≥4.2 ms (median 7.5 ms) after it: never delayed by it.
//!
//!  small screen update                                   multi-thread  current-thread
//!  link: read+decoded → Raw areas converted                   5.8           5.7
//!  → event in the link's channel                              5.1           5.4
//!  → hub task has it                                         56            24
//!  Screen::apply                                              9.3           7.7
//!  session poll_update + encode, handed to the writer        41            27
//!  → writer task has it                                      40             6.6
//!  writer: serialise + write_all to the viewer               20            38
//!  console total, read from QEMU → written to the viewer    220           132
//! ```
//!
//! **The fence cost more than the console.** The fence (SetEncodings) went out in the same
//! write as the key, and its answer is followed by `query-status`, which QEMU's monitor reads
//! a byte per main-loop iteration: both keep QEMU's main loop (and the big lock the guest's
//! port I/O needs) busy exactly while the guest takes the key and writes its report. In one
//! run, alternating per key, "written → guest report" was 970 µs with the fence in the key's
//! write and 864 µs with it 1.5 ms later (-106); with no confirmation traffic at all
//! (throwaway, unsafe) 684 µs against 775 µs for the whole direct path. So the link now writes
//! a fence 1 ms after the journal asks for it (`FENCE_DELAY` in `console::back`): same
//! order, same answers, same exactly-once rules, confirmation ~1 ms later. And `dmore
//! console` runs a current-thread runtime: each task hop woke a parked worker thread.
//!
//! Before (HEAD, two runs) and after (both changes, two runs), `dmore bench console`:
//!
//! ```text
//! before, run 1
//!   key-response overhead p50                         83.1 µs >  50 µs: MISSED by 33.1 µs (1.7x)
//!   screen-path overhead p50, small raw update       267.8 µs >  20 µs: MISSED by 247.8 µs (13.4x)
//! before, run 2
//!   key-response overhead p50                         53.5 µs >  50 µs: MISSED by 3.5 µs (1.1x)
//!   screen-path overhead p50, small raw update        99.8 µs >  20 µs: MISSED by 79.8 µs (5.0x)
//! after, run 1
//!   key-response overhead p50                         -7.5 µs <= 50 µs: met (by 57.5 µs)
//!   screen-path overhead p50, small raw update       -51.2 µs <= 20 µs: met (by 71.2 µs)
//! after, run 2
//!   key-response overhead p50                        -14.4 µs <= 50 µs: met (by 64.4 µs)
//!   screen-path overhead p50, small raw update       -65.4 µs <= 20 µs: met (by 85.4 µs)
//! ```
//!
//! **Read the screen figure with care.** It swings by ±150 µs between runs of the same binary
//! (another run of the new one gave +200.7 µs with the console's own part at 132 µs): it is
//! dominated by when QEMU serves each of its two displays and when each client's next request
//! reaches it, not by the console. The console's own 132 µs per small update is the honest
//! figure, and it misses 20 µs. What would close it: no writer task (the hub `try_write`s into
//! the viewer's socket and hands the rest to a task only when it would block: -6..40 µs and the
//! serialise copy), encoding straight into a reused byte buffer instead of
//! `Vec<ServerMessage>` then bytes (most of the writer's 38 µs is that copy), and the link
//! updating the hub's screen directly (one task, or a shared framebuffer) instead of a Raw copy
//! through a channel (-24 µs hop, -11 µs copy). For keys the console's own 56-75 µs would shrink
//! the same way (reader decoding inside the hub, the journal pushed without a request/reply
//! round trip); the bench write → console read (67-97 µs) is the idle thread's wake-up, which
//! QEMU's direct path pays too.

pub mod input;
mod keys;
mod process;
mod report;
mod screen;
pub mod serial;
pub mod suite;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::qemu::{AccelChoice, Qemu, QemuConfig};

pub use keys::KeyResults;
pub use process::{cpu_time, open_fds, rss_kib, ConsoleProcess, ConsoleSockets, ProcessError};
pub use report::{
    duration_p50_p99, percentile, BenchReport, LoadRow, TARGET_KEY_P50_US, TARGET_RSS_KIB,
    TARGET_SMALL_P50_US,
};
pub use screen::FrameResults;

/// Longest wait for QEMU's guest or the console to come up (a hang guard).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Keys in total, half on each path.
    pub keys: usize,
    /// Matched updates per screen-path measurement (small, and full screen).
    pub frames: usize,
    /// CPU measurement window per viewer count.
    pub window: Duration,
    /// Viewer counts of the footprint phase, ascending.
    pub viewer_counts: Vec<usize>,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

impl Default for BenchOptions {
    /// 1000 keys, 200 frames, 5 s windows, 1/4/16 viewers, a 128 MiB guest.
    fn default() -> Self {
        BenchOptions {
            keys: 1000,
            frames: 200,
            window: Duration::from_secs(5),
            viewer_counts: vec![1, 4, 16],
            memory_mib: 128,
        }
    }
}

/// Why the benchmark could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The scratch directory could not be made.
    #[error("cannot create the scratch directory {0}")]
    Scratch(PathBuf, #[source] std::io::Error),
    /// No port for QEMU's TCP VNC display.
    #[error("no free VNC port (5900-5999) on 127.0.0.1")]
    NoVncPort,
    /// QEMU did not start.
    #[error("starting QEMU")]
    Launch(#[from] testbed::qemu::LaunchError),
    /// The guest did not come up or stopped reporting.
    #[error("the guest's serial port")]
    Guest(#[from] testbed::qemu::SerialError),
    /// The console process failed.
    #[error("the console process")]
    Console(#[from] ProcessError),
    /// A TCP connection failed.
    #[error("connecting to {addr}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An RFB connection failed.
    #[error("RFB connection")]
    Vnc(#[from] vnc::Error),
    /// The typed character has no scancode in the guest's keymap.
    #[error("keysym {0:#x} has no scancode in the guest's keymap")]
    NoScancode(u32),
    /// The guest reported another key than the one sent.
    #[error("the guest reported key {got:?} while waiting for {expected:?} (down, code)")]
    UnexpectedKey {
        /// What was sent.
        expected: (bool, u16),
        /// What came.
        got: (bool, u16),
    },
    /// Something expected never came (a hang guard, not a timed assertion).
    #[error("gave up waiting for {0}")]
    Timeout(&'static str),
    /// The co-migration bed failed (starting, or a move).
    #[error("the co-migration bed")]
    Bed(#[from] crate::cobed::CoBedError),
    /// A test host could not run the viewer.
    #[error("a test host")]
    Host(#[from] testbed::hosts::HostsError),
    /// A client task panicked or was cancelled.
    #[error("a client task failed")]
    Task(#[from] tokio::task::JoinError),
    /// OpenSSH's `ssh` did not start (Debian's openssh-client; see .ci/setup).
    #[error("starting OpenSSH's ssh on the client host")]
    Ssh(#[source] std::io::Error),
}

/// A directory removed with everything in it on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory under the temporary directory, named after this process.
    pub fn create() -> Result<Scratch, BenchError> {
        let dir = std::env::temp_dir().join(format!("dmore-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Scratch(dir.clone(), e))?;
        Ok(Scratch(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// `dmore console` (the binary `exe`) attached to `sockets`, listening on `127.0.0.1:0`: what
/// the benches' `launch` builds.
pub fn console_command(exe: &Path, sockets: &ConsoleSockets<'_>) -> Command {
    let mut c = Command::new(exe);
    c.arg("console")
        .arg("--vnc-socket")
        .arg(sockets.vnc)
        .arg("--qmp-socket")
        .arg(sockets.qmp)
        .arg("--listen")
        .arg("127.0.0.1:0")
        // A loopback listener only the bench's own viewers reach.
        .arg("--insecure-no-auth");
    c
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port for a QEMU VNC display on 127.0.0.1.
fn free_vnc_port() -> Result<u16, BenchError> {
    (5900..6000)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .ok_or(BenchError::NoVncPort)
}

/// One guest with its console.
struct Rig {
    // Field order is drop order: the console goes before its QEMU.
    console: ConsoleProcess,
    vm: Qemu,
    direct: SocketAddr,
}

async fn rig<L>(
    dir: &Path,
    name: &str,
    vbe: Option<(u16, u16)>,
    options: &BenchOptions,
    launch: &L,
) -> Result<(Rig, String), BenchError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let direct = SocketAddr::from(([127, 0, 0, 1], free_vnc_port()?));
    let mut cfg = QemuConfig::new(dir.join(name));
    cfg.memory_mib = options.memory_mib;
    cfg.guest.animate = true;
    cfg.key_delay_ms = Some(0);
    cfg.extra_qmp = true;
    cfg.vnc_tcp = Some(direct);
    let kvm = testbed::qemu::kvm_usable();
    cfg.accel = if kvm {
        AccelChoice::Kvm
    } else {
        AccelChoice::Tcg
    };
    cfg.guest.vbe = vbe;
    let firmware = if kvm { "qboot" } else { "SeaBIOS" };
    let mut vm = Qemu::launch(cfg).await?;
    vm.wait_ready(START_DEADLINE).await?;
    let qmp2 = vm
        .qmp2_path()
        .ok_or(BenchError::Timeout("QEMU's second QMP monitor"))?;
    let sockets = ConsoleSockets {
        vnc: vm.vnc_path(),
        qmp: qmp2,
    };
    let console = ConsoleProcess::spawn(launch(&sockets), START_DEADLINE).await?;
    let machine = format!(
        "{} + {firmware}, {} MiB guest, QEMU 7.2 VNC key-delay-ms=0 on both displays, \
         console with its default journal config",
        vm.accel(),
        options.memory_mib
    );
    Ok((
        Rig {
            console,
            vm,
            direct,
        },
        machine,
    ))
}

/// Key response through the gateway hop (gateway mode): the same keys, alternating, to a
/// `dmore console` directly and through a `dmore gateway serve` (`gateway`, which relays to
/// that console's `--gateway-listen`), on one guest. `launch` builds the console's command
/// (with its `--gateway-listen`). Answers the latencies (`direct`: the console, `console`:
/// through the gateway) and the machine.
pub async fn gateway_hop<L>(
    options: &BenchOptions,
    launch: L,
    gateway: Command,
    mut progress: impl FnMut(&str),
) -> Result<(KeyResults, String), BenchError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let scratch = Scratch::create()?;
    progress("booting the 720x400 (text mode) guest and its console");
    let (mut rig0, machine) = rig(&scratch.0, "t", None, options, &launch).await?;
    let gateway = ConsoleProcess::spawn_marked(gateway, "listening on ", START_DEADLINE).await?;
    progress(&format!(
        "key response: {} keys, alternating the console and the gateway",
        options.keys
    ));
    let results = keys::measure(
        &mut rig0.vm,
        rig0.console.addr(),
        gateway.addr(),
        options.keys,
    )
    .await?;
    Ok((results, machine))
}

/// Runs the whole benchmark. `launch` builds the command that runs one console attached to
/// the given sockets and listening on `127.0.0.1:0` (e.g. `dmore console --vnc-socket V
/// --qmp-socket Q --listen 127.0.0.1:0`); `progress` hears what is being measured.
pub async fn run<L>(
    options: &BenchOptions,
    launch: L,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let scratch = Scratch::create()?;
    let mut report = BenchReport::default();

    progress("booting the 720x400 (text mode) guest and its console");
    let (mut rig0, machine) = rig(&scratch.0, "t", None, options, &launch).await?;
    report.machine = machine;
    let console_addr = rig0.console.addr();

    progress(&format!("key response: {} keys, alternating", options.keys));
    report.keys = keys::measure(&mut rig0.vm, rig0.direct, console_addr, options.keys).await?;

    progress(&format!(
        "screen path: {} small and {} full-screen updates",
        options.frames, options.frames
    ));
    {
        let guard = Duration::from_secs(60)
            + Duration::from_secs(1) * u32::try_from(options.frames).unwrap_or(u32::MAX);
        let mut watchers = screen::Watchers::start(rig0.direct, console_addr).await?;
        report.small = watchers
            .small(options.frames, Instant::now() + guard)
            .await?;
        let (_, mut key_reader, mut key_writer) =
            screen::connect(rig0.direct, &screen::raw_setup()).await?;
        let drain = tokio::spawn(async move { while key_reader.read_message().await.is_ok() {} });
        let full = watchers
            .full(&mut key_writer, options.frames, Instant::now() + guard)
            .await;
        drain.abort();
        report.full = full?;
    }
    report.screen = (720, 400);

    load(&rig0, options, &mut report, (720, 400), &mut progress).await?;
    drop(rig0);

    progress("booting the 1024x768 (vbe) guest and its console");
    let (rig1, _) = rig(&scratch.0, "g", Some((1024, 768)), options, &launch).await?;
    load(&rig1, options, &mut report, (1024, 768), &mut progress).await?;
    drop(rig1);
    Ok(report)
}

async fn load(
    rig: &Rig,
    options: &BenchOptions,
    report: &mut BenchReport,
    (width, height): (u16, u16),
    progress: &mut impl FnMut(&str),
) -> Result<(), BenchError> {
    let mut viewers = screen::Viewers::default();
    for &n in &options.viewer_counts {
        progress(&format!(
            "footprint at {width}x{height} with {n} viewers, {:?} window",
            options.window
        ));
        viewers.grow_to(rig.console.addr(), n).await?;
        tokio::time::sleep(screen::SETTLE).await;
        let (cpu0, updates0, t0) = (rig.console.cpu_time()?, viewers.updates(), Instant::now());
        tokio::time::sleep(options.window).await;
        let (cpu1, updates1, t1) = (rig.console.cpu_time()?, viewers.updates(), Instant::now());
        if viewers.ended() > 0 {
            return Err(BenchError::Timeout("viewers that stay connected"));
        }
        let secs = t1.duration_since(t0).as_secs_f64();
        report.load.push(LoadRow {
            width,
            height,
            viewers: n,
            rss_kib: rig.console.rss_kib()?,
            cpu_percent: cpu1.saturating_sub(cpu0).as_secs_f64() / secs * 100.0,
            updates_per_viewer_s: updates1.saturating_sub(updates0) as f64 / secs / n.max(1) as f64,
        });
    }
    Ok(())
}

//! `dmore bench serial`: the console's serial lane against a client on QEMU's own chardev
//! socket, side by side in one run (issue 19). Not a timed test: it prints figures.
//!
//! ```text
//!  QEMU COM2 chardev ──(1) direct client: raw bytes
//!      (serial-console.sock)
//!                    └─(2) dmore console --serial-socket ── --serial-attach ── client
//! ```
//!
//! QEMU's chardev socket serves one client at a time, so on each guest the direct client
//! measures first, then disconnects and a `dmore console` attaches; its client skips the
//! console's header line. Both clients are the same code on a unix socket.
//!
//! 1. **Keystroke echo**: on a guest with a quiet console (`uart=1000`: one numbered line a
//!    second), a byte `x` is written and the time until its echo comes back is recorded, one
//!    byte in flight, a few ms apart. The guest services COM2 on its 1 kHz timer tick, so up
//!    to 1 ms of every sample is the guest's own polling, on both paths alike.
//! 2. **Output throughput**: on a guest that writes COM2 as fast as QEMU's UART takes it
//!    (`fill=64`: no halt between passes), the bytes a client receives per second over a
//!    window, after a warm-up (which also takes the console's scrollback replay); in
//!    alternating rounds (direct, dmore, direct, ...; the console stopped between), so a
//!    machine whose load drifts weighs on both paths alike. The console's CPU over its
//!    windows is printed beside it.
//!
//! 3. **Output gap per move**: the tiny guest writing a numbered line every 20 ms
//!    ([`crate::serial::LINE_MS`]) co-migrates between two network-namespace hosts
//!    ([`crate::cobed`]) while a client timestamps every read: per move, the longest silence
//!    that overlaps the move, beside QEMU's VM downtime. Twice, in two beds: a client attached
//!    to the console's serial lane on the service address (resuming across the move), then
//!    OpenSSH's `ssh` on the client host logged in to the stationary gateway's SSH front
//!    (gateway mode: the gateway's resumable sessions to the consoles'
//!    `--serial-gateway-listen`), what SSH users see.
//!
//! What limits the guest's rate: QEMU 7.2's 16550 has no baud-rate pacing on output; each byte
//! is one port write (a VM exit under KVM) and one `write()` on the chardev socket by QEMU.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::serial_attach::attach_with;

use testbed::qemu::{AccelChoice, Qemu, QemuConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::process::{ConsoleProcess, ConsoleSockets};
use super::report::duration_p50_p99;
use super::{console_command, BenchError, Scratch, START_DEADLINE};

/// The byte typed for the echo measurement: not in the guest's line alphabet (hex, `#`, ` `,
/// `\n`) nor its filler (`.`).
const ECHO_BYTE: u8 = b'x';
/// Filler bytes per pass of the flooding guest.
const FILL: u32 = 64;
/// Reading before the throughput window (and before the first echo), to settle.
const WARM_UP: Duration = Duration::from_millis(500);
/// Longest wait for one echo (a hang guard, not a timed assertion).
const ECHO_GUARD: Duration = Duration::from_secs(10);
/// Target: throughput through dmore at least this share of the direct one.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.9;
/// Target: echo p50 through dmore at most this much above the direct one, µs.
pub const TARGET_ECHO_P50_US: f64 = 1000.0;

/// What to measure.
#[derive(Debug, Clone)]
pub struct SerialBenchOptions {
    /// The `dmore` binary that runs the console.
    pub dmore: PathBuf,
    /// Throughput window per path.
    pub window: Duration,
    /// Echo samples per path.
    pub samples: usize,
    /// Throughput rounds (one window per path each).
    pub rounds: usize,
    /// Co-migrations for the output gap (0: none).
    pub moves: usize,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

impl SerialBenchOptions {
    /// 2 rounds of 10 s windows, 1000 echoes per path, 3 moves, a 128 MiB guest.
    pub fn new(dmore: impl Into<PathBuf>) -> SerialBenchOptions {
        SerialBenchOptions {
            dmore: dmore.into(),
            window: Duration::from_secs(10),
            samples: 1000,
            rounds: 2,
            moves: 3,
            memory_mib: 128,
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
pub struct SerialBenchReport {
    /// Accelerator and guest.
    pub machine: String,
    /// The throughput window.
    pub window: Duration,
    /// Bytes/s a client on QEMU's chardev received.
    pub direct_bytes_s: f64,
    /// Bytes/s a client of the console's serial lane received.
    pub dmore_bytes_s: f64,
    /// Per round: (direct, dmore) bytes/s.
    pub rounds: Vec<(f64, f64)>,
    /// The console's CPU (user + system) over its throughput windows, % of one core.
    pub console_cpu_percent: f64,
    /// Per move: the longest output silence overlapping it, and QEMU's VM downtime (ms), for
    /// a client of the console's serial lane.
    pub moves: Vec<(Duration, Option<u64>)>,
    /// The same for `ssh` through the gateway's SSH front (its own bed and moves).
    pub ssh_moves: Vec<(Duration, Option<u64>)>,
    /// Echo round trips on QEMU's chardev.
    pub direct_echo: Vec<Duration>,
    /// Echo round trips through the console.
    pub dmore_echo: Vec<Duration>,
}

impl SerialBenchReport {
    /// Throughput through dmore over direct.
    pub fn throughput_ratio(&self) -> f64 {
        if self.direct_bytes_s > 0.0 {
            self.dmore_bytes_s / self.direct_bytes_s
        } else {
            0.0
        }
    }
}

impl fmt::Display for SerialBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "output throughput ({:.1} s window)   direct {:>10.0} B/s   dmore {:>10.0} B/s   ratio {:.3}",
            self.window.as_secs_f64(),
            self.direct_bytes_s,
            self.dmore_bytes_s,
            self.throughput_ratio()
        )?;
        for (i, (d, m)) in self.rounds.iter().enumerate() {
            writeln!(f, "  round {}: direct {d:.0} B/s, dmore {m:.0} B/s", i + 1)?;
        }
        writeln!(
            f,
            "  console CPU over its windows: {:.1} % of a core",
            self.console_cpu_percent
        )?;
        let (d50, d99) = duration_p50_p99(&self.direct_echo).unwrap_or_default();
        let (m50, m99) = duration_p50_p99(&self.dmore_echo).unwrap_or_default();
        writeln!(
            f,
            "keystroke echo ({} + {} samples)      direct p50 {d50:.0} µs p99 {d99:.0} µs   \
             dmore p50 {m50:.0} µs p99 {m99:.0} µs   p50 difference {:+.0} µs",
            self.direct_echo.len(),
            self.dmore_echo.len(),
            m50 - d50
        )?;
        let ms = |gap: &Duration| format!("{:.1} ms", gap.as_secs_f64() * 1e3);
        let downtime = |d: &Option<u64>| d.map_or("?".to_owned(), |d| d.to_string());
        for i in 0..self.moves.len().max(self.ssh_moves.len()) {
            let side = |moves: &[(Duration, Option<u64>)]| {
                moves.get(i).map_or("-".to_owned(), |(gap, d)| {
                    format!("{} (VM downtime {} ms)", ms(gap), downtime(d))
                })
            };
            writeln!(
                f,
                "move {}: output gap (a line every {} ms)   serial lane {}   ssh via the gateway {}",
                i + 1,
                crate::serial::LINE_MS,
                side(&self.moves),
                side(&self.ssh_moves)
            )?;
        }
        let ratio = self.throughput_ratio();
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        writeln!(
            f,
            "target throughput >= {:.0} % of direct: {} ({:.1} %)",
            TARGET_THROUGHPUT_RATIO * 100.0,
            met(ratio >= TARGET_THROUGHPUT_RATIO),
            ratio * 100.0
        )?;
        write!(
            f,
            "target echo p50 within {TARGET_ECHO_P50_US:.0} µs of direct: {} ({:+.0} µs)",
            met(m50 - d50 <= TARGET_ECHO_P50_US),
            m50 - d50
        )
    }
}

/// Runs both measurements; `progress` hears what is being measured.
pub async fn run(
    options: &SerialBenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<SerialBenchReport, BenchError> {
    let scratch = Scratch::create()?;
    let mut report = SerialBenchReport {
        window: options.window,
        ..SerialBenchReport::default()
    };

    progress("booting the quiet guest (uart=1000) for the echo");
    let mut rig = SerialRig::boot(scratch.path(), "echo", 0, options).await?;
    report.machine = format!(
        "{} + the tiny guest, {} MiB",
        rig.vm.accel(),
        options.memory_mib
    );
    progress(&format!(
        "echo: {} samples on QEMU's chardev",
        options.samples
    ));
    report.direct_echo = echoes(&mut rig.direct().await?, options.samples).await?;
    progress(&format!("echo: {} samples through dmore", options.samples));
    report.dmore_echo = echoes(&mut rig.through_dmore(options).await?, options.samples).await?;
    drop(rig);

    progress(&format!("booting the flooding guest (fill={FILL})"));
    let mut rig = SerialRig::boot(scratch.path(), "fill", FILL, options).await?;
    let (mut cpu, mut dmore_time) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=options.rounds {
        progress(&format!("throughput round {round}: QEMU's chardev"));
        let direct = throughput(&mut rig.direct().await?, options.window).await?;
        progress(&format!("throughput round {round}: through dmore"));
        let mut client = rig.through_dmore(options).await?;
        drain(&mut client, WARM_UP).await?;
        let console = rig
            .console
            .as_ref()
            .ok_or(BenchError::Timeout("the console"))?;
        let (cpu0, t0) = (console.cpu_time()?, Instant::now());
        let dmore = throughput(&mut client, options.window).await?;
        cpu += console.cpu_time()?.saturating_sub(cpu0);
        dmore_time += t0.elapsed();
        report.rounds.push((direct, dmore));
        drop(client);
        rig.console = None; // QEMU's chardev is free for the next direct client
    }
    let mean = |f: fn(&(f64, f64)) -> f64| {
        report.rounds.iter().map(f).sum::<f64>() / report.rounds.len().max(1) as f64
    };
    report.direct_bytes_s = mean(|r| r.0);
    report.dmore_bytes_s = mean(|r| r.1);
    report.console_cpu_percent = cpu.as_secs_f64() / dmore_time.as_secs_f64().max(1e-9) * 100.0;
    drop(rig);
    if options.moves > 0 {
        (report.moves, report.ssh_moves) = move_gaps(options, &mut progress).await?;
    }
    Ok(report)
}

/// The output gap per co-migration (see the module doc, 3): through the console's serial lane,
/// then through SSH at the gateway.
async fn move_gaps(
    options: &SerialBenchOptions,
    progress: &mut impl FnMut(&str),
) -> Result<(Vec<Gap>, Vec<Gap>), BenchError> {
    progress(&format!(
        "output gap: {} co-migrations between two hosts, a client on the serial lane",
        options.moves
    ));
    let mut bed = crate::cobed::CoBed::start(bed_options(options, false)).await?;
    let host = bed.testbed().client().clone();
    let addr = bed
        .serial_service()
        .ok_or(BenchError::Timeout("the bed's serial service"))?;
    let (output, collected) = tokio::io::duplex(1 << 16);
    let link = tokio::spawn(attach_with(
        move || {
            let host = host.clone();
            async move {
                let s = crate::typist::connect_from(&host, addr).await?;
                s.set_nodelay(true)?;
                Ok(s)
            }
        },
        tokio::io::empty(),
        output,
        Some(START_DEADLINE),
    ));
    let lane = gaps_over_moves(&mut bed, collected, options.moves, progress).await;
    link.abort();
    drop(bed);
    let lane = lane?;

    progress(&format!(
        "output gap: {} co-migrations between two hosts, ssh through the gateway",
        options.moves
    ));
    let mut bed = crate::cobed::CoBed::start(bed_options(options, true)).await?;
    let (key, _) = bed
        .ssh_keys()
        .ok_or(BenchError::Timeout("the bed's SSH keys"))?;
    let mut ssh = tokio::process::Command::from(bed.ssh_client(crate::cobed::CONSOLE_NAME, &key));
    // stdin stays open (and silent) for the whole run: its end would end the session.
    ssh.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = ssh.spawn().map_err(BenchError::Ssh)?;
    let stdout = child
        .stdout
        .take()
        .ok_or(BenchError::Timeout("ssh's stdout"))?;
    let ssh = gaps_over_moves(&mut bed, stdout, options.moves, progress).await;
    drop(child);
    Ok((lane, ssh?))
}

/// Per move: the longest output silence overlapping it, and QEMU's VM downtime (ms).
type Gap = (Duration, Option<u64>);

/// A bed whose guest writes a numbered line every [`crate::serial::LINE_MS`]; with `ssh`, in
/// gateway mode with the gateway's SSH front.
fn bed_options(options: &SerialBenchOptions, ssh: bool) -> crate::cobed::CoBedOptions {
    let mut bed = crate::cobed::CoBedOptions::new(&options.dmore);
    bed.guest.uart_ms = crate::serial::LINE_MS;
    bed.serial_port = Some(5901);
    bed.memory_mib = options.memory_mib;
    bed.gateway = ssh;
    bed.ssh = ssh;
    bed
}

/// Timestamps every read of `output` while `bed` co-migrates `moves` times, a second apart.
async fn gaps_over_moves(
    bed: &mut crate::cobed::CoBed,
    mut output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    moves: usize,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Gap>, BenchError> {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = Arc::clone(&arrivals);
    let collector = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = output.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now());
        }
    });
    let settle = Duration::from_secs(1);
    tokio::time::sleep(settle).await;
    let mut windows = Vec::new();
    for n in 1..=moves {
        progress(&format!("move {n}"));
        let start = Instant::now();
        // On an error the collector ends with `output`, which the caller closes.
        let timeline = bed.migrate(false).await?;
        windows.push((start, Instant::now(), timeline.vm_downtime_ms));
        tokio::time::sleep(settle).await;
    }
    collector.abort();
    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(windows
        .into_iter()
        .map(|(start, end, downtime)| (longest_silence(&arrivals, start, end), downtime))
        .collect())
}

/// The longest interval between consecutive `arrivals` that overlaps `start..end`.
fn longest_silence(arrivals: &[Instant], start: Instant, end: Instant) -> Duration {
    arrivals
        .windows(2)
        .filter(|w| w[1] > start && w[0] < end)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// One guest with its serial console, and a console once asked for.
struct SerialRig {
    // Field order is drop order: the console goes before its QEMU.
    console: Option<ConsoleProcess>,
    vm: Qemu,
    dir: PathBuf,
}

impl SerialRig {
    async fn boot(
        scratch: &Path,
        name: &str,
        fill: u32,
        options: &SerialBenchOptions,
    ) -> Result<SerialRig, BenchError> {
        let dir = scratch.join(name);
        let mut cfg = QemuConfig::new(&dir);
        cfg.memory_mib = options.memory_mib;
        cfg.extra_qmp = true;
        cfg.serial_console = true;
        cfg.guest.uart_ms = 1000;
        cfg.guest.uart_fill = fill;
        cfg.accel = if testbed::qemu::kvm_usable() {
            AccelChoice::Kvm
        } else {
            AccelChoice::Tcg
        };
        let mut vm = Qemu::launch(cfg).await?;
        vm.wait_ready(START_DEADLINE).await?;
        Ok(SerialRig {
            console: None,
            vm,
            dir,
        })
    }

    fn chardev(&self) -> Result<&Path, BenchError> {
        self.vm
            .serial_console_path()
            .ok_or(BenchError::Timeout("QEMU's serial console chardev"))
    }

    /// A client on QEMU's chardev.
    async fn direct(&self) -> Result<UnixStream, BenchError> {
        connect(self.chardev()?).await
    }

    /// Starts the console on the chardev (the direct client must have closed) and attaches
    /// to its `--serial-attach` socket, past the header line.
    async fn through_dmore(
        &mut self,
        options: &SerialBenchOptions,
    ) -> Result<UnixStream, BenchError> {
        let attach = self.dir.join("serial-attach.sock");
        let qmp = self
            .vm
            .qmp2_path()
            .ok_or(BenchError::Timeout("QEMU's second QMP monitor"))?;
        let sockets = ConsoleSockets {
            vnc: self.vm.vnc_path(),
            qmp,
        };
        let mut command = console_command(&options.dmore, &sockets);
        command
            .arg("--serial-socket")
            .arg(self.chardev()?)
            .arg("--serial-attach")
            .arg(&attach);
        self.console = Some(ConsoleProcess::spawn(command, START_DEADLINE).await?);
        let deadline = Instant::now() + START_DEADLINE;
        let mut stream = loop {
            match UnixStream::connect(&attach).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(_) => return Err(BenchError::Timeout("the console's --serial-attach socket")),
            }
        };
        skip_line(&mut stream).await?;
        Ok(stream)
    }
}

async fn connect(path: &Path) -> Result<UnixStream, BenchError> {
    UnixStream::connect(path)
        .await
        .map_err(|_| BenchError::Timeout("a connection to QEMU's serial chardev"))
}

/// Reads up to and including the first `\n` (the console's header), a byte at a time.
async fn skip_line(stream: &mut UnixStream) -> Result<(), BenchError> {
    let mut b = [0u8; 1];
    loop {
        match tokio::time::timeout(START_DEADLINE, stream.read(&mut b)).await {
            Ok(Ok(1)) if b[0] == b'\n' => return Ok(()),
            Ok(Ok(1)) => {}
            _ => return Err(BenchError::Timeout("the console's serial header")),
        }
    }
}

/// Reads and drops whatever arrives for `time`; the bytes read.
async fn drain(stream: &mut UnixStream, time: Duration) -> Result<u64, BenchError> {
    let end = Instant::now() + time;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return Ok(total),
            Ok(Ok(n)) if n > 0 => total += n as u64,
            Ok(_) => return Err(BenchError::Timeout("serial output (the stream closed)")),
        }
    }
}

/// Bytes per second received over `window`, after a warm-up.
async fn throughput(stream: &mut UnixStream, window: Duration) -> Result<f64, BenchError> {
    drain(stream, WARM_UP).await?;
    let start = Instant::now();
    let bytes = drain(stream, window).await?;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// `samples` echo round trips of [`ECHO_BYTE`], one in flight, 2-5 ms apart (so samples do
/// not lock to the guest's 1 ms tick).
async fn echoes(stream: &mut UnixStream, samples: usize) -> Result<Vec<Duration>, BenchError> {
    drain(stream, WARM_UP).await?;
    let mut out = Vec::with_capacity(samples);
    let mut buf = vec![0u8; 4096];
    for i in 0..samples {
        let sent = Instant::now();
        stream
            .write_all(&[ECHO_BYTE])
            .await
            .map_err(|_| BenchError::Timeout("writing a typed byte"))?;
        let guard = sent + ECHO_GUARD;
        loop {
            match tokio::time::timeout_at(guard, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if buf[..n].contains(&ECHO_BYTE) {
                        out.push(sent.elapsed());
                        break;
                    }
                }
                _ => return Err(BenchError::Timeout("the echo of a typed byte")),
            }
        }
        let gap = 2 + (i * 7) % 4; // ms: 2, 5, 4, 3, ...
        drain(stream, Duration::from_millis(gap as u64)).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_is_the_longest_interval_overlapping_the_move() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let arrivals = [ms(0), ms(20), ms(40), ms(140), ms(160), ms(400), ms(420)];
        assert_eq!(
            longest_silence(&arrivals, ms(50), ms(150)),
            Duration::from_millis(100)
        );
        // The 240 ms silence after the move is not the move's.
        assert_eq!(
            longest_silence(&arrivals, ms(10), ms(30)),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn the_report_prints_the_ratio_and_both_targets() {
        let report = SerialBenchReport {
            machine: "kvm".into(),
            window: Duration::from_secs(2),
            direct_bytes_s: 200_000.0,
            dmore_bytes_s: 190_000.0,
            direct_echo: vec![Duration::from_micros(600); 10],
            dmore_echo: vec![Duration::from_micros(2000); 10],
            rounds: vec![(200_000.0, 190_000.0)],
            console_cpu_percent: 12.0,
            moves: vec![(Duration::from_micros(81_500), Some(40))],
            ssh_moves: vec![(Duration::from_micros(95_000), Some(42))],
        };
        assert!((report.throughput_ratio() - 0.95).abs() < 1e-9);
        let text = report.to_string();
        assert!(text.contains("ratio 0.950"), "{text}");
        assert!(
            text.contains("round 1: direct 200000 B/s, dmore 190000 B/s"),
            "{text}"
        );
        assert!(text.contains("throughput >= 90 % of direct: met"), "{text}");
        assert!(
            text.contains(
                "move 1: output gap (a line every 20 ms)   serial lane 81.5 ms (VM downtime 40 \
                 ms)   ssh via the gateway 95.0 ms (VM downtime 42 ms)"
            ),
            "{text}"
        );
        assert!(text.contains("of direct: MISSED (+1400 µs)"), "{text}");
    }
}

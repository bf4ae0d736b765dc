//! `dmore bench input`: steady streams of viewer input at set rates into a guest, straight
//! into QEMU's own VNC server (`key-delay-ms=0`) and through a `dmore console` on the same
//! QEMU, one after the other in one run; per rate and path the events lost and the lag (the
//! guest's report of an event minus its sending by the viewer). Counts, not a timed test:
//! it prints figures, and its test asserts only what was lost and what QEMU's PS/2 keyboard
//! queue dropped (replayed from a QEMU trace, [`ps2trace`]).
//!
//! The guest is a plug: anything that implements [`InputGuest`]: the tiny test guest
//! ([`TinyGuest`]) and the real Linux guest reporting its kernel's input events
//! ([`LinuxGuest`]), both on PS/2 keyboard and mouse in a QEMU that traces the keyboard queue
//! the same way.

mod linux;
pub mod moving;
pub use testbed::ps2trace;
pub mod stream;
mod tiny;
mod traced;

use std::fmt;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

pub use linux::LinuxGuest;
pub use testbed::qemu::AccelChoice;
pub use tiny::TinyGuest;

use super::{percentile, BenchError, ConsoleProcess, ConsoleSockets, START_DEADLINE};
use ps2trace::Ps2Trace;
use stream::Stroke;

/// Quiet time after the last send with nothing more from the guest: the rest is lost (a
/// guard against hanging, not a measurement).
const QUIET: Duration = Duration::from_secs(3);

/// An input event as the guest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A key, by the guest's own code for it (see [`InputGuest::key_code`]).
    Key {
        /// Press or release.
        down: bool,
        /// The guest's code.
        code: u16,
    },
    /// The left mouse button.
    Left {
        /// Press or release.
        down: bool,
    },
}

/// A guest under test: a QEMU with its own VNC server on TCP (`key-delay-ms=0`) and the
/// sockets a console attaches to, reporting each input event its kernel receives.
pub trait InputGuest {
    /// One line on the guest, machine and firmware, for the report.
    fn describe(&self) -> String;
    /// QEMU's own VNC server (TCP).
    fn direct(&self) -> SocketAddr;
    /// The VNC and QMP sockets for the console.
    fn console_sockets(&self) -> ConsoleSockets<'_>;
    /// The guest's code for the key a viewer sends as `keysym` (`None`: not typeable).
    fn key_code(&self, keysym: u32) -> Option<u16>;
    /// The next event the guest reported and when it arrived, or `None` once `deadline`
    /// passed.
    fn next_seen(
        &mut self,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Option<(Instant, Seen)>, BenchError>> + Send;
    /// Stops the guest's QEMU and replays its PS/2 keyboard queue from the trace.
    fn finish(self) -> impl std::future::Future<Output = Result<Ps2Trace, BenchError>> + Send
    where
        Self: Sized;
}

/// The PC scancode set 1 make code of the key a viewer sends as `keysym`: left Shift, or the
/// key that types the character (Shift not included).
fn set1_code(keysym: u32) -> Option<u16> {
    if keysym == stream::SHIFT {
        return Some(0x2a);
    }
    char::from_u32(keysym)
        .and_then(guest::keymap::scancode)
        .map(u16::from)
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// Events per second, one stream each per path.
    pub rates: Vec<u32>,
    /// Length of each stream.
    pub duration: Duration,
}

impl Default for InputOptions {
    /// 50 to 1000 events/s, 10 s each.
    fn default() -> Self {
        InputOptions {
            rates: vec![50, 100, 200, 445, 700, 1000],
            duration: Duration::from_secs(10),
        }
    }
}

/// Which way the viewer's input went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight into QEMU's own VNC server.
    Qemu,
    /// Through the console.
    Dmore,
}

/// One stream's outcome.
#[derive(Debug, Clone)]
pub struct StreamRow {
    /// Events per second.
    pub rate: u32,
    /// The path.
    pub path: Path,
    /// Events sent.
    pub sent: usize,
    /// Sent events the guest never reported.
    pub lost: usize,
    /// Reports that matched no sent event (duplicates, strays).
    pub extra: usize,
    /// Lag of each reported event, in sending order.
    pub lags: Vec<Duration>,
    /// When each event of `lags` was sent.
    pub lag_sent: Vec<Instant>,
    /// Lag of the last event sent, if it arrived.
    pub last: Option<Duration>,
    /// Wall-clock span of the stream (seconds since the Unix epoch), from its first send to
    /// the end of waiting for the guest: where to count its PS/2 drops.
    pub span: (f64, f64),
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct InputReport {
    /// The guest and machine.
    pub guest: String,
    /// Streams, each rate's QEMU row then its dmore row.
    pub rows: Vec<StreamRow>,
    /// The PS/2 keyboard queue over the whole run, replayed from QEMU's trace.
    pub ps2: Ps2Trace,
}

/// Runs every stream into `guest`: per rate, straight to QEMU's VNC, then through one console
/// (started by `launch`, kept for the whole run); then stops the guest and adds its PS/2
/// keyboard queue to the report.
pub async fn run<G, L>(
    mut guest: G,
    options: &InputOptions,
    launch: L,
    mut progress: impl FnMut(&str),
) -> Result<InputReport, BenchError>
where
    G: InputGuest,
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let console = ConsoleProcess::spawn(launch(&guest.console_sockets()), START_DEADLINE).await?;
    let mut report = InputReport {
        guest: guest.describe(),
        ..InputReport::default()
    };
    for &rate in &options.rates {
        for (path, addr) in [(Path::Qemu, guest.direct()), (Path::Dmore, console.addr())] {
            progress(&format!(
                "{rate} events/s for {:?} {}",
                options.duration,
                match path {
                    Path::Qemu => "straight into QEMU's VNC",
                    Path::Dmore => "through dmore console",
                }
            ));
            report
                .rows
                .push(one_stream(&mut guest, addr, rate, options.duration, path).await?);
        }
    }
    drop(console);
    report.ps2 = guest.finish().await?;
    Ok(report)
}

async fn one_stream<G: InputGuest>(
    guest: &mut G,
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    path: Path,
) -> Result<StreamRow, BenchError> {
    let n = usize::try_from(u128::from(rate) * duration.as_millis() / 1000).unwrap_or(0);
    let strokes = stream::stream(n);
    let expected: Vec<Seen> = strokes
        .iter()
        .map(|s| match *s {
            Stroke::Key { down, keysym } => guest
                .key_code(keysym)
                .map(|code| Seen::Key { down, code })
                .ok_or(BenchError::NoScancode(keysym)),
            Stroke::Click { down } => Ok(Seen::Left { down }),
        })
        .collect::<Result<_, _>>()?;
    let period = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now() + Duration::from_millis(200);
    let sender = {
        let strokes = strokes.clone();
        tokio::task::spawn_blocking(move || stream::send(addr, &strokes, start, period))
    };
    let began = unix_now()
        + start
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
    let mut seen = Vec::with_capacity(expected.len());
    let mut deadline = start + period * u32::try_from(n).unwrap_or(u32::MAX) + QUIET;
    while seen.len() < expected.len() {
        match guest.next_seen(deadline).await? {
            Some(s) => {
                seen.push(s);
                deadline = deadline.max(Instant::now() + QUIET);
            }
            None => break,
        }
    }
    let sent = sender
        .await?
        .map_err(|source| BenchError::Connect { addr, source })?;
    let mut row = tally(rate, path, &expected, &sent, &seen);
    row.span = (began, unix_now());
    Ok(row)
}

/// Seconds since the Unix epoch (the clock QEMU's trace timestamps use).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Matches reports to sent events in order (per event kind: keys and buttons are reported
/// by different devices); a sent event with no matching report next is lost.
fn tally(
    rate: u32,
    path: Path,
    expected: &[Seen],
    sent: &[Instant],
    seen: &[(Instant, Seen)],
) -> StreamRow {
    let is_key = |s: &Seen| matches!(s, Seen::Key { .. });
    let mut lags = Vec::with_capacity(sent.len());
    let mut lost = 0;
    let mut last = None;
    let mut matched = 0;
    for kind_is_key in [true, false] {
        let mut reports = seen
            .iter()
            .filter(|(_, s)| is_key(s) == kind_is_key)
            .peekable();
        for (i, (want, &at)) in expected.iter().zip(sent).enumerate() {
            if is_key(want) != kind_is_key {
                continue;
            }
            match reports.peek() {
                Some(&&(arrived, got)) if got == *want => {
                    reports.next();
                    matched += 1;
                    let lag = arrived.saturating_duration_since(at);
                    lags.push((i, at, lag));
                    if i + 1 == sent.len() {
                        last = Some(lag);
                    }
                }
                _ => lost += 1,
            }
        }
    }
    lags.sort_by_key(|&(i, ..)| i);
    StreamRow {
        rate,
        path,
        sent: sent.len(),
        lost: lost + expected.len().saturating_sub(sent.len()),
        extra: seen.len() - matched,
        lag_sent: lags.iter().map(|&(_, at, _)| at).collect(),
        lags: lags.into_iter().map(|(.., l)| l).collect(),
        last,
        span: (0.0, 0.0),
    }
}

impl InputReport {
    /// Bytes QEMU's PS/2 keyboard queue dropped during `row`'s stream.
    pub fn ps2_dropped(&self, row: &StreamRow) -> u64 {
        self.ps2.dropped_between(row.span.0, row.span.1)
    }
}

impl StreamRow {
    fn ms(d: Option<Duration>) -> String {
        d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
    }

    /// The largest lag.
    pub fn max(&self) -> Option<Duration> {
        self.lags.iter().max().copied()
    }

    /// The `p`-th percentile lag.
    pub fn pct(&self, p: usize) -> Option<Duration> {
        let mut l = self.lags.clone();
        l.sort();
        percentile(&l, p)
    }
}

impl fmt::Display for InputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "guest: {}", self.guest)?;
        writeln!(
            f,
            "lag = the guest's report of an event minus its sending by the viewer, ms\n"
        )?;
        writeln!(
            f,
            "{:>6}  {:<6} {:>6} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>9}",
            "rate/s", "path", "sent", "lost", "extra", "p50", "p99", "max", "last", "ps2 drop"
        )?;
        for r in &self.rows {
            let dropped = self.ps2_dropped(r);
            writeln!(
                f,
                "{:>6}  {:<6} {:>6} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>9}",
                r.rate,
                match r.path {
                    Path::Qemu => "qemu",
                    Path::Dmore => "dmore",
                },
                r.sent,
                r.lost,
                r.extra,
                StreamRow::ms(r.pct(50)),
                StreamRow::ms(r.pct(99)),
                StreamRow::ms(r.max()),
                StreamRow::ms(r.last),
                dropped,
            )?;
        }
        writeln!(
            f,
            "\ndmore vs QEMU, per rate: max lag difference, p50 ratio"
        )?;
        for pair in self.rows.chunks(2) {
            if let [q, d] = pair {
                let diff = match (d.max(), q.max()) {
                    (Some(d), Some(q)) => {
                        format!("{:+.1} ms", (d.as_secs_f64() - q.as_secs_f64()) * 1e3)
                    }
                    _ => "-".into(),
                };
                let ratio = match (d.pct(50), q.pct(50)) {
                    (Some(d), Some(q)) if !q.is_zero() => {
                        format!("{:.2}x", d.as_secs_f64() / q.as_secs_f64())
                    }
                    _ => "-".into(),
                };
                writeln!(f, "{:>6}  max {diff:>10}  p50 {ratio:>7}", q.rate)?;
            }
        }
        let p = self.ps2.tally;
        writeln!(
            f,
            "\nQEMU's PS/2 keyboard queue (replayed from its trace): {} key events, {} bytes \
             queued, {} dropped, at most {} of {} bytes held",
            p.key_events,
            p.queued,
            p.dropped,
            p.max_depth,
            ps2trace::PS2_QUEUE_SIZE
        )
    }
}

//! `dmore soak`: one VM and its console co-migrated A → B → A … many times while one viewer
//! types and clicks without pause and never reconnects; at the end, what reached the guest,
//! what the client's capture saw of the viewer's connection, the serving console's footprint
//! at the start and at the end, and the migrations' figures.
//!
//! ```text
//!   client ── steady viewer (a key every 10 ms, a click every 100 ms) ── SERVICE:5900
//!            (tcpdump on the client: SYN/FIN/RST per connection)
//!   the bed (cobed): the VM and its console move A → B → A … `moves` times
//!   start: the first console's VmRSS and fds   end: the last console's (it moves between
//!          processes: each move starts a new one on the destination)
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use testbed::capture::CaptureReport;

use crate::bench::{open_fds, percentile, rss_kib, ProcessError};
use crate::cobed::{CoBed, CoBedError, CoBedOptions};
use crate::steady::tally::{first_mismatch, key_presses};
use crate::steady::{SteadyConfig, SteadyError, SteadyViewer, Tally};

/// What the soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The `dmore` executable that runs the consoles.
    pub dmore: PathBuf,
    /// Co-migrations to run.
    pub moves: usize,
    /// A progress event after every this many moves.
    pub progress_every: usize,
    /// How long the viewer types between two moves.
    pub settle: Duration,
    /// The steady viewer's pace.
    pub steady: SteadyConfig,
}

impl SoakOptions {
    /// 100 moves, progress every 10, 200 ms between moves, a key every 10 ms and a click
    /// every 100 ms.
    pub fn new(dmore: impl Into<PathBuf>) -> SoakOptions {
        SoakOptions {
            dmore: dmore.into(),
            moves: 100,
            progress_every: 10,
            settle: Duration::from_millis(200),
            steady: SteadyConfig::default(),
        }
    }
}

/// Why the soak stopped before its report.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// The co-migration bed failed (a move included).
    #[error(transparent)]
    Bed(#[from] CoBedError),
    /// The steady viewer could not connect.
    #[error("the steady viewer")]
    Viewer(#[from] SteadyError),
    /// A console's figures could not be read from `/proc`.
    #[error("reading the serving console's figures")]
    Proc(#[from] ProcessError),
}

/// What the soak reports as it goes.
#[derive(Debug)]
pub enum SoakEvent {
    /// The bed is up and the viewer connected.
    Ready {
        /// The service address and port.
        service: std::net::SocketAddr,
        /// How the hosts are isolated.
        mode: String,
    },
    /// Every [`SoakOptions::progress_every`] moves.
    Progress {
        /// Moves done.
        moves: usize,
        /// Keys the viewer sent so far.
        keys: usize,
        /// Key presses the guest reported so far (behind `keys` by what is in flight).
        received: usize,
        /// Since the viewer connected.
        elapsed: Duration,
    },
}

/// A console process's footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessFigures {
    /// Its process id.
    pub pid: u32,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
}

impl ProcessFigures {
    /// Reads process `pid`'s figures from `/proc`.
    pub fn of(pid: u32) -> Result<ProcessFigures, ProcessError> {
        Ok(ProcessFigures {
            pid,
            rss_kib: rss_kib(pid)?,
            fds: open_fds(pid)?,
        })
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Co-migrations asked for.
    pub moves: usize,
    /// Co-migrations done (fewer than asked when one failed).
    pub done: usize,
    /// Why the soak stopped early: the failed move, and what its destination console said.
    pub failure: Option<String>,
    /// From the viewer's connection to the end of the last move.
    pub elapsed: Duration,
    /// How long counting took once the viewer stopped (the guest's last reports, the capture).
    pub counting: Duration,
    /// Keys over the whole run, counted once the guest was quiet.
    pub keys: Tally,
    /// Clicks sent and received.
    pub clicks: (usize, usize),
    /// Why the viewer's connection failed, if it did.
    pub dropped: Option<String>,
    /// The client host's capture of the connections to the service address.
    pub capture: CaptureReport,
    /// The first console, once the viewer is connected.
    pub console_start: ProcessFigures,
    /// The last console, after the last move (before the count).
    pub console_end: ProcessFigures,
    /// The first key the guest did not report in its place: its number, when it was typed
    /// (since the viewer connected), and how many moves had started by then.
    pub first_miss: Option<(usize, Duration, usize)>,
    /// Each move's VM downtime (QEMU's figure), ms.
    pub downtime_ms: Vec<u64>,
    /// Each move's console freeze → takeover.
    pub takeover: Vec<Duration>,
}

impl SoakReport {
    /// Every key and click once, in order, over one connection that stayed up (one SYN, no
    /// FIN, no RST).
    pub fn clean(&self) -> bool {
        let flags = self.capture.total();
        self.failure.is_none()
            && self.keys.lost_with_pending() == 0
            && self.keys.duplicated == 0
            && self.keys.reordered == 0
            && self.keys.unexpected == 0
            && self.clicks.0 == self.clicks.1
            && self.dropped.is_none()
            && self.capture.connections.len() == 1
            && (flags.syn, flags.fin, flags.rst) == (1, 0, 0)
    }
}

/// p50 / p95 / max of `values`, formatted by `show`; `-` when there are none.
fn spread<T: Copy + Ord>(values: &[T], show: impl Fn(T) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match (
        percentile(&sorted, 50),
        percentile(&sorted, 95),
        sorted.last(),
    ) {
        (Some(p50), Some(p95), Some(&max)) => {
            format!("{} / {} / {}", show(p50), show(p95), show(max))
        }
        _ => "-".to_owned(),
    }
}

impl fmt::Display for SoakReport {
    /// The report, one figure a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.keys;
        let flags = self.capture.total();
        let mib = |kib: u64| kib as f64 / 1024.0;
        writeln!(
            f,
            "moves: {} of {} in {:.1} s (then {:.1} s to count)",
            self.done,
            self.moves,
            self.elapsed.as_secs_f64(),
            self.counting.as_secs_f64()
        )?;
        if let Some(why) = &self.failure {
            writeln!(f, "STOPPED at move {}: {why}", self.done + 1)?;
        }
        writeln!(
            f,
            "keys: sent {} received {} lost {} dup {} reordered {} unexpected {}",
            k.sent,
            k.received,
            k.lost_with_pending(),
            k.duplicated,
            k.reordered,
            k.unexpected
        )?;
        if let Some((key, at, moves)) = self.first_miss {
            writeln!(
                f,
                "first key missing or out of place: #{key}, typed {:.3} s in, after move {moves} began",
                at.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "clicks: sent {} received {}",
            self.clicks.0, self.clicks.1
        )?;
        writeln!(
            f,
            "viewer: {} connection(s) in the client's capture (SYN {}, FIN {}, RST {}); {}",
            self.capture.connections.len(),
            flags.syn,
            flags.fin,
            flags.rst,
            self.dropped
                .as_deref()
                .map_or("never dropped".to_owned(), |why| format!("dropped: {why}"))
        )?;
        writeln!(
            f,
            "serving console at start (first console, pid {}): RSS {:.1} MiB, {} fds",
            self.console_start.pid,
            mib(self.console_start.rss_kib),
            self.console_start.fds
        )?;
        writeln!(
            f,
            "serving console at end (last console, pid {}): RSS {:.1} MiB, {} fds",
            self.console_end.pid,
            mib(self.console_end.rss_kib),
            self.console_end.fds
        )?;
        writeln!(
            f,
            "VM downtime p50 / p95 / max: {} ({} moves reported it)",
            spread(&self.downtime_ms, |ms| format!("{ms} ms")),
            self.downtime_ms.len()
        )?;
        writeln!(
            f,
            "console freeze->takeover p50 / p95 / max: {}",
            spread(&self.takeover, |d| format!(
                "{:.1} ms",
                d.as_secs_f64() * 1000.0
            ))
        )?;
        write!(
            f,
            "verdict: {}",
            if self.clean() {
                "clean (nothing lost, duplicated or reordered; one connection)"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// Runs the soak; `on_event` hears its progress (the CLI prints it).
pub async fn run(
    options: &SoakOptions,
    mut on_event: impl FnMut(SoakEvent),
) -> Result<SoakReport, SoakError> {
    let mut bed = CoBed::start(CoBedOptions::new(&options.dmore)).await?;
    let capture = bed.capture("soak").await?;
    let viewer =
        SteadyViewer::connect_from(bed.testbed().client(), bed.service(), options.steady).await?;
    let connected = Instant::now();
    on_event(SoakEvent::Ready {
        service: bed.service(),
        mode: bed.testbed().mode().to_string(),
    });
    let console_start = ProcessFigures::of(home_console(&bed)?)?;
    tokio::time::sleep(options.settle).await;
    let mut downtime_ms = Vec::with_capacity(options.moves);
    let mut takeover = Vec::with_capacity(options.moves);
    let (mut done, mut failure) = (0, None);
    let mut starts = Vec::with_capacity(options.moves);
    for n in 1..=options.moves {
        starts.push(Instant::now());
        let timeline = match bed.migrate(false).await {
            Ok(timeline) => timeline,
            Err(e) => {
                failure = Some(chain(&e));
                break;
            }
        };
        done = n;
        downtime_ms.extend(timeline.vm_downtime_ms);
        takeover.extend(timeline.freeze_to_takeover);
        tokio::time::sleep(options.settle).await;
        if n % options.progress_every.max(1) == 0 || n == options.moves {
            let keys = viewer.snapshot().keys.len();
            let reports = bed
                .collect_reports(Duration::from_millis(1), Duration::from_millis(50))
                .await;
            on_event(SoakEvent::Progress {
                moves: n,
                keys,
                received: key_presses(reports).len(),
                elapsed: connected.elapsed(),
            });
        }
    }
    let console_end = ProcessFigures::of(home_console(&bed)?)?;
    let elapsed = connected.elapsed();
    let count = bed.count_session(viewer, Some(capture)).await?;
    let first_miss = first_mismatch(&count.log.key_codes(), &key_presses(&count.reports))
        .and_then(|i| count.log.keys.get(i).map(|k| (i, k.at)))
        .map(|(i, at)| {
            let moves = starts.iter().filter(|s| **s <= at).count();
            (i, at.saturating_duration_since(connected), moves)
        });
    Ok(SoakReport {
        first_miss,
        moves: options.moves,
        done,
        failure,
        elapsed,
        counting: connected.elapsed().saturating_sub(elapsed),
        keys: count.keys,
        clicks: count.clicks,
        dropped: count.log.dropped.map(|(_, why)| why),
        capture: count.capture.unwrap_or_default(),
        console_start,
        console_end,
        downtime_ms,
        takeover,
    })
}

/// An error with its causes, one after another.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The serving console's process id.
fn home_console(bed: &CoBed) -> Result<u32, CoBedError> {
    bed.home_pids()
        .map(|(_, console)| console)
        .ok_or(CoBedError::Order("the VM has no home"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> SoakReport {
        let text = "10:00:00.000000 IP 10.0.0.2.40000 > 10.0.0.100.5900: Flags [S], seq 1, win 1, length 0\n";
        let service = std::net::Ipv4Addr::new(10, 0, 0, 100);
        SoakReport {
            moves: 3,
            done: 3,
            failure: None,
            elapsed: Duration::from_secs(5),
            counting: Duration::from_secs(1),
            keys: Tally {
                sent: 400,
                received: 400,
                ..Tally::default()
            },
            clicks: (40, 40),
            dropped: None,
            capture: testbed::capture::parse_text(text, service),
            console_start: ProcessFigures {
                pid: 10,
                rss_kib: 4096,
                fds: 12,
            },
            console_end: ProcessFigures {
                pid: 20,
                rss_kib: 5120,
                fds: 12,
            },
            first_miss: None,
            downtime_ms: vec![30, 10, 20],
            takeover: vec![Duration::from_millis(50)],
        }
    }

    #[test]
    fn a_clean_run_says_so_with_its_figures() {
        let r = report();
        assert!(r.clean(), "{r:?}");
        let text = r.to_string();
        assert!(text.contains("lost 0 dup 0 reordered 0"), "{text}");
        assert!(text.contains("1 connection(s)"), "{text}");
        assert!(
            text.contains("20 ms / 30 ms / 30 ms (3 moves reported it)"),
            "{text}"
        );
        assert!(
            text.contains("first console, pid 10): RSS 4.0 MiB, 12 fds"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "verdict: clean (nothing lost, duplicated or reordered; one connection)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_lost_key_a_missing_click_or_a_second_connection_is_not_clean() {
        let mut lost = report();
        lost.keys.lost = 1;
        lost.first_miss = Some((7, Duration::from_millis(1500), 2));
        let text = lost.to_string();
        assert!(
            text.contains("#7, typed 1.500 s in, after move 2 began"),
            "{text}"
        );
        let mut click = report();
        click.clicks.1 = 39;
        let mut reconnect = report();
        let text = "10:00:00.000000 IP 10.0.0.2.40000 > 10.0.0.100.5900: Flags [S], seq 1, win 1, length 0\n\
                    10:00:01.000000 IP 10.0.0.2.40002 > 10.0.0.100.5900: Flags [S], seq 1, win 1, length 0\n";
        reconnect.capture =
            testbed::capture::parse_text(text, std::net::Ipv4Addr::new(10, 0, 0, 100));
        let mut stopped = report();
        stopped.done = 1;
        stopped.failure = Some("the destination console did not answer".to_owned());
        assert!(stopped
            .to_string()
            .contains("STOPPED at move 2: the destination console"));
        for r in [lost, click, reconnect, stopped] {
            assert!(!r.clean(), "{r:?}");
            assert!(r.to_string().ends_with("NOT CLEAN"));
        }
    }
}

//! `dmore demo`: a VM's console that survives live migration, shown with figures, beside what
//! a plain QEMU console does in the same run.
//!
//! ```text
//!  1. dmore: client ── steady viewer ── SERVICE:5900 ── console ─┬─ QEMU on A
//!            (tcpdump on the client)                              │  co-migrate A→B→A… N times
//!            a row per migration: VM downtime, console freeze→takeover, viewer's gap,
//!            keys/clicks sent and received, connection kept
//!  2. baseline: a typist straight on QEMU's VNC over TCP, migrated N times
//!            (scenarios::baseline: the connection drops, keys are lost)
//! ```
//!
//! With [`ViewerMode::External`] there is no scripted viewer: the demo prints the command that
//! runs a real viewer on the client host, migrates every few seconds until Ctrl-C, and prints
//! what the guest received after each migration. Ctrl-C (SIGINT) ends the run; the testbed's
//! signal handler removes the hosts and everything running in them.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest::report::Report;
use guest::GuestOptions;
use orchestrate::Timeline;
use testbed::capture::CaptureReport;
use testbed::hosts::Role;

use crate::baseline::{self, BaselineError, BaselineOptions, BaselineReport, RunResult, Workload};
use crate::cobed::{CoBed, CoBedError, CoBedOptions};
use crate::delivery::QemuLosses;
use crate::steady::tally::{key_presses, left_clicks};
use crate::steady::{tally, SteadyConfig, SteadyError, SteadyViewer, Tally};

/// Who watches the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerMode {
    /// The steady viewer types, clicks and measures.
    Scripted,
    /// A person with a real viewer; the demo migrates until Ctrl-C.
    External,
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `dmore` executable that runs the consoles.
    pub dmore: PathBuf,
    /// Co-migrations (and baseline migrations) to run.
    pub migrations: usize,
    /// Hold each switchover until the destination console is ready.
    pub hold_switchover: bool,
    /// Who watches.
    pub viewer: ViewerMode,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// The guest's options (a dirtying workload).
    pub guest: GuestOptions,
    /// How long the viewer carries on between two migrations.
    pub settle: Duration,
    /// Time between migrations with an external viewer.
    pub external_interval: Duration,
    /// Also run the baseline (a plain QEMU console) for comparison.
    pub baseline: bool,
    /// The steady viewer's pace.
    pub steady: SteadyConfig,
    /// Have the QEMUs trace their PS/2 queues, so that keys a stalled guest's queue dropped
    /// are told apart from keys dmore lost ([`DemoReport::qemu_dropped`]).
    pub ps2_trace: bool,
}

impl DemoOptions {
    /// 5 migrations, not held, scripted viewer, an idle 128 MiB guest, 1 s between
    /// migrations (5 s with an external viewer), with the baseline.
    pub fn new(dmore: impl Into<PathBuf>) -> DemoOptions {
        DemoOptions {
            dmore: dmore.into(),
            migrations: 5,
            hold_switchover: false,
            viewer: ViewerMode::Scripted,
            memory_mib: 128,
            guest: GuestOptions::default(),
            settle: Duration::from_secs(1),
            external_interval: Duration::from_secs(5),
            baseline: true,
            steady: SteadyConfig::default(),
            ps2_trace: true,
        }
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The co-migration bed failed.
    #[error(transparent)]
    Bed(#[from] CoBedError),
    /// The steady viewer could not connect.
    #[error("the steady viewer")]
    Viewer(#[from] SteadyError),
    /// The baseline failed.
    #[error("the baseline (a plain QEMU console)")]
    Baseline(#[from] BaselineError),
}

/// One co-migration as the viewer and the guest saw it.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    /// 1, 2, ...
    pub n: usize,
    /// Source host.
    pub from: Role,
    /// Destination host.
    pub to: Role,
    /// The orchestrator's figures.
    pub timeline: Timeline,
    /// The longest time without a screen change the viewer saw around the migration.
    pub gap: Duration,
    /// Keys (this row's share): sent since the previous row, received, lost, ...
    pub keys: Tally,
    /// Clicks sent since the previous row.
    pub clicks_sent: usize,
    /// Clicks the guest reported since the previous row.
    pub clicks_received: usize,
    /// Whether the viewer's one connection is still up.
    pub connection_kept: bool,
}

impl MigrationRow {
    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:>3} {:<6} {:>11} {:>14} {:>10} {:>18} {:>6} {:>13} {:>10}",
            "#",
            "move",
            "VM down ms",
            "freeze->take",
            "viewer gap",
            "keys sent/rcv/lost",
            "dup",
            "clicks s/rcv",
            "conn kept"
        )
    }
}

impl fmt::Display for MigrationRow {
    /// One line under [`MigrationRow::header`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let down = self
            .timeline
            .vm_downtime_ms
            .map_or("?".to_string(), |d| d.to_string());
        let takeover = self
            .timeline
            .freeze_to_takeover
            .map_or("?".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1000.0)
            });
        write!(
            f,
            "{:>3} {:<6} {:>11} {:>14} {:>7.1} ms {:>18} {:>6} {:>13} {:>10}",
            self.n,
            format!("{}->{}", self.from.name(), self.to.name()),
            down,
            takeover,
            self.gap.as_secs_f64() * 1000.0,
            format!(
                "{}/{}/{}",
                self.keys.sent, self.keys.received, self.keys.lost
            ),
            self.keys.duplicated + self.keys.reordered,
            format!("{}/{}", self.clicks_sent, self.clicks_received),
            if self.connection_kept { "yes" } else { "NO" },
        )
    }
}

/// What the demo prints as it goes.
#[derive(Debug)]
pub enum DemoEvent<'a> {
    /// The bed is up: where viewers connect.
    Ready {
        /// The service address and port.
        service: std::net::SocketAddr,
        /// The client host's network namespace.
        client_netns: Option<&'a str>,
        /// How the hosts are isolated.
        mode: String,
    },
    /// A co-migration done (scripted viewer).
    Row(&'a MigrationRow),
    /// A co-migration done (external viewer): what the guest received since the last one.
    External {
        /// 1, 2, ...
        n: usize,
        /// Source host.
        from: Role,
        /// Destination host.
        to: Role,
        /// The orchestrator's figures.
        timeline: &'a Timeline,
        /// The keys the guest received, as text.
        typed: String,
        /// Left clicks the guest received.
        clicks: usize,
    },
    /// The dmore part is done; the baseline starts.
    BaselineStarting,
    /// One baseline migration done.
    BaselineRun(&'a RunResult),
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// One row per co-migration.
    pub rows: Vec<MigrationRow>,
    /// Keys over the whole run, counted once the guest was quiet.
    pub keys: Tally,
    /// Clicks sent and received over the whole run.
    pub clicks: (usize, usize),
    /// Whether the viewer's one connection survived every migration.
    pub connection_kept: bool,
    /// The viewer's end of the connection.
    pub local: Option<std::net::SocketAddr>,
    /// The client host's capture of the connections to the service address.
    pub capture: Option<CaptureReport>,
    /// The baseline, if it ran.
    pub baseline: Option<BaselineReport>,
    /// What the QEMUs' PS/2 devices dropped on their own, after dmore handed it over, as their
    /// traces show ([`DemoOptions::ps2_trace`]; nothing without traces): PS/2 has no flow
    /// control, and a guest whose vCPU does not run for longer than its 16-byte queue lasts
    /// loses input from any sender, QEMU's own VNC server included.
    pub qemu_dropped: QemuLosses,
}

impl DemoReport {
    /// Keys lost (or never arrived) that QEMU's PS/2 traces do not show QEMU dropping itself.
    pub fn keys_lost_by_dmore(&self) -> usize {
        self.keys
            .lost_with_pending()
            .saturating_sub(self.qemu_dropped.key_presses.len())
    }
}

impl fmt::Display for DemoReport {
    /// The summary: dmore beside the plain console.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "", "dmore console", "plain QEMU VNC"
        )?;
        let base = self.baseline.as_ref();
        let runs = base.map(|b| b.runs.as_slice()).unwrap_or_default();
        let sum = |g: fn(&RunResult) -> usize| -> String {
            base.map_or("-".into(), |_| {
                runs.iter().map(g).sum::<usize>().to_string()
            })
        };
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "migrations",
            self.rows.len(),
            base.map_or("-".into(), |_| runs.len().to_string())
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "keys typed",
            self.keys.sent,
            sum(|r| r.typed)
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "keys lost",
            self.keys.lost_with_pending(),
            sum(|r| r.lost())
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "  of them dropped by QEMU's PS/2",
            self.qemu_dropped.key_presses.len(),
            "-"
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "keys duplicated / reordered",
            format!("{} / {}", self.keys.duplicated, self.keys.reordered),
            "-"
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "clicks sent / received",
            format!("{} / {}", self.clicks.0, self.clicks.1),
            "-"
        )?;
        writeln!(
            f,
            "{:<32} {:>14} {:>14}",
            "connections dropped",
            usize::from(!self.connection_kept),
            base.map_or("-".into(), |_| runs
                .iter()
                .filter(|r| r.dropped)
                .count()
                .to_string())
        )?;
        if let Some(capture) = &self.capture {
            write!(f, "client capture (dmore part): {capture}")?;
        }
        Ok(())
    }
}

/// Runs the demo; `on_event` hears each step (the CLI prints them).
pub async fn run(
    options: &DemoOptions,
    mut on_event: impl FnMut(DemoEvent<'_>),
) -> Result<DemoReport, DemoError> {
    let mut bed_options = CoBedOptions::new(&options.dmore);
    bed_options.memory_mib = options.memory_mib;
    bed_options.guest = options.guest;
    bed_options.ps2_trace = options.ps2_trace;
    let mut bed = CoBed::start(bed_options).await?;
    on_event(DemoEvent::Ready {
        service: bed.service(),
        client_netns: bed.testbed().client().netns(),
        mode: bed.testbed().mode().to_string(),
    });
    if options.viewer == ViewerMode::External {
        external(&mut bed, options, &mut on_event).await?;
        return Ok(DemoReport::default());
    }
    let mut report = scripted(&mut bed, options, &mut on_event).await?;
    drop(bed);
    if options.baseline && options.migrations > 0 {
        on_event(DemoEvent::BaselineStarting);
        let workload = match options.guest.dirty_mib {
            0 => Workload::Idle,
            mib => Workload::Dirty {
                mib,
                rate_mib_s: options.guest.dirty_rate_mib_s,
            },
        };
        let base = BaselineOptions {
            runs: options.migrations,
            workloads: vec![workload],
            reconnect_delays: vec![Duration::from_secs(1)],
            memory_mib: options.memory_mib,
            ..BaselineOptions::default()
        };
        let result = baseline::run(&base, |r| on_event(DemoEvent::BaselineRun(r))).await?;
        report.baseline = Some(result);
    }
    Ok(report)
}

/// The scripted part: the steady viewer through `migrations` co-migrations.
async fn scripted(
    bed: &mut CoBed,
    options: &DemoOptions,
    on_event: &mut impl FnMut(DemoEvent<'_>),
) -> Result<DemoReport, DemoError> {
    let capture = bed.capture("demo").await?;
    let viewer =
        SteadyViewer::connect_from(bed.testbed().client(), bed.service(), options.steady).await?;
    // The first row counts from the first key.
    let mut row_start = Instant::now();
    tokio::time::sleep(options.settle).await;
    let mut report = DemoReport::default();
    let mut previous = Tally::default();
    let mut previous_clicks = 0usize;
    for n in 1..=options.migrations {
        let (from, to) = (bed.home(), bed.other());
        let started = Instant::now();
        let timeline = bed.migrate(options.hold_switchover).await?;
        let ended = Instant::now();
        tokio::time::sleep(options.settle).await;
        // This row covers what was typed until now; the guest's reports of it are awaited
        // (the viewer types on meanwhile, so "quiet" never comes): a key counts as lost only
        // once a later one arrived.
        let now = Instant::now();
        let log = viewer.snapshot();
        let typed = log.keys.iter().filter(|k| k.at < now).count();
        let sent_codes: Vec<u16> = log.keys.iter().take(typed).map(|k| k.code).collect();
        let clicked = log.clicks.iter().filter(|at| **at < now).count();
        let deadline = Instant::now() + ROW_WAIT;
        let reports = loop {
            let reports = bed
                .collect_reports(Duration::from_millis(50), Duration::from_millis(100))
                .await;
            if key_presses(reports).len() >= typed || Instant::now() >= deadline {
                break reports;
            }
        };
        let presses = key_presses(reports);
        let keys = tally(&sent_codes, presses.get(..typed).unwrap_or(&presses));
        let clicks = left_clicks(reports).min(clicked);
        let row = MigrationRow {
            n,
            from,
            to,
            timeline,
            gap: log.gap(started, ended + options.settle),
            keys: Tally {
                sent: log.keys_between(row_start, now),
                ..keys.since(&previous)
            },
            clicks_sent: log.clicks_between(row_start, now),
            clicks_received: clicks.saturating_sub(previous_clicks),
            connection_kept: log.connection_kept(),
        };
        on_event(DemoEvent::Row(&row));
        report.rows.push(row);
        previous = keys;
        previous_clicks = clicks;
        row_start = now;
    }
    let count = bed.count_session(viewer, Some(capture)).await?;
    report.qemu_dropped = QemuLosses::from_traces(&bed.ps2_traces());
    report.keys = count.keys;
    report.clicks = count.clicks;
    report.connection_kept = count.log.connection_kept();
    report.local = count.log.local;
    report.capture = count.capture;
    Ok(report)
}

/// Longest a row waits for the guest to report what was typed before it.
const ROW_WAIT: Duration = Duration::from_secs(3);

/// The external-viewer part: migrate every few seconds until Ctrl-C, printing what the guest
/// received in between.
async fn external(
    bed: &mut CoBed,
    options: &DemoOptions,
    on_event: &mut impl FnMut(DemoEvent<'_>),
) -> Result<(), DemoError> {
    let mut seen = 0usize;
    for n in 1.. {
        tokio::time::sleep(options.external_interval).await;
        let (from, to) = (bed.home(), bed.other());
        let timeline = bed.migrate(options.hold_switchover).await?;
        let reports = bed
            .collect_reports(Duration::from_millis(100), Duration::from_millis(500))
            .await;
        let new = reports.get(seen..).unwrap_or_default();
        seen = reports.len();
        on_event(DemoEvent::External {
            n,
            from,
            to,
            timeline: &timeline,
            typed: typed_text(new),
            clicks: left_clicks(new),
        });
    }
    Ok(())
}

/// The key presses among `reports` as the text they type (US layout, Shift followed);
/// keys that type nothing show as `<xx>` (their make code).
pub fn typed_text(reports: &[Report]) -> String {
    let mut shift = false;
    let mut text = String::new();
    for report in reports {
        let Report::Key { down, code, .. } = *report else {
            continue;
        };
        let small = u8::try_from(code).ok();
        if matches!(small, Some(0x2a | 0x36)) {
            shift = down;
            continue;
        }
        if !down {
            continue;
        }
        match small.and_then(|c| guest::keymap::char_for(c, shift)) {
            Some('\n') => text.push_str("<enter>"),
            Some(c) => text.push(c),
            None => text.push_str(&format!("<{code:02x}>")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16, down: bool) -> Report {
        Report::Key {
            count: 0,
            down,
            code,
        }
    }

    #[test]
    fn typed_text_follows_shift_and_names_other_keys() {
        let reports = [
            key(0x23, true),
            key(0x23, false),
            key(0x2a, true),
            key(0x17, true),
            key(0x17, false),
            key(0x2a, false),
            key(0x3b, true),
            key(0x1c, true),
        ];
        assert_eq!(typed_text(&reports), "hI<3b><enter>");
    }

    #[test]
    fn rows_line_up_under_the_header() {
        let row = MigrationRow {
            n: 1,
            from: Role::A,
            to: Role::B,
            timeline: Timeline {
                vm_downtime_ms: Some(7),
                freeze_to_takeover: Some(Duration::from_micros(59_500)),
                ..Timeline::default()
            },
            gap: Duration::from_millis(120),
            keys: Tally {
                sent: 150,
                received: 150,
                ..Tally::default()
            },
            clicks_sent: 15,
            clicks_received: 15,
            connection_kept: true,
        };
        let line = row.to_string();
        assert_eq!(line.len(), MigrationRow::header().len(), "{line}");
        assert!(line.contains("a->b") && line.contains("59.5 ms") && line.contains("150/150/0"));
        assert!(line.ends_with("yes"), "{line}");
    }

    #[test]
    fn summary_puts_dmore_beside_the_baseline() {
        let report = DemoReport {
            keys: Tally {
                sent: 500,
                received: 500,
                ..Tally::default()
            },
            clicks: (50, 50),
            connection_kept: true,
            ..DemoReport::default()
        };
        let text = report.to_string();
        assert!(text.contains("keys typed"), "{text}");
        let lost = text
            .lines()
            .find(|l| l.starts_with("keys lost"))
            .unwrap_or("");
        assert!(
            lost.contains(" 0 ") && lost.trim_end().ends_with('-'),
            "{lost}"
        );
    }
}

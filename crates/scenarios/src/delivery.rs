//! What a steady viewer delivered through a co-migration bed, checked the way every end-to-end
//! co-migration test checks it: every key and click reached the guest once, in order, over the
//! one TCP connection the viewer opened (counted from the guest's serial reports, never from
//! the console's word).
//!
//! ```text
//!   steady_viewer(bed) ── typing, clicking ── faults, migrations ──
//!   check_nothing_lost(bed, viewer): pause typing, drain the guest's reports, stop the viewer,
//!                                    tally sent vs received (keys in order, clicks by number)
//! ```

use std::path::PathBuf;

use guest::report::Report;

use crate::bench::input::ps2trace::Ps2Trace;
use crate::cobed::{CoBed, CoBedError, SessionCount};
use crate::steady::tally::{first_mismatch, key_presses, tally, Tally};
use crate::steady::{SteadyConfig, SteadyError, SteadyViewer};

/// The keys a viewer must have typed, at least, for a session's count to prove anything.
pub const ENOUGH_KEYS: usize = 51;

/// Why a session did not deliver exactly once.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The bed could not count the session.
    #[error("counting the session")]
    Bed(#[from] CoBedError),
    /// The viewer's one connection failed.
    #[error("the viewer's connection dropped: {0}")]
    ConnectionDropped(String),
    /// The viewer hardly typed: the run proves nothing.
    #[error("the viewer typed too little to judge: {0:?}")]
    TooFewKeys(Tally),
    /// Keys were lost (beyond those allowed), duplicated, reordered or unexpected.
    #[error("every key once, in order: {0:?}")]
    Keys(Tally),
    /// Clicks sent and received differ.
    #[error("every click once: sent {sent}, received {received}")]
    Clicks {
        /// Clicks the viewer sent.
        sent: usize,
        /// Left clicks the guest reported.
        received: usize,
    },
}

/// A steady viewer (a key every 10 ms, a click every 100 ms) from the bed's client host to its
/// service address.
pub async fn steady_viewer(bed: &CoBed) -> Result<SteadyViewer, SteadyError> {
    SteadyViewer::connect_from(
        bed.testbed().client(),
        bed.service(),
        SteadyConfig::default(),
    )
    .await
}

/// Stops the viewer, counts its session ([`CoBed::count_session`]: it waits for a guest that
/// lags the viewer), and checks that every key and click arrived once, in order, over the one
/// connection it opened. A loss is located on stdout: the first key the guest did not report
/// in order, and when it was typed (after the first key).
pub async fn check_nothing_lost(
    bed: &mut CoBed,
    viewer: SteadyViewer,
) -> Result<Tally, DeliveryError> {
    let count = bed.count_session(viewer, None).await?;
    check_count(&count)
}

/// Input QEMU's PS/2 devices lost on their own, after dmore handed it over, as their traces
/// show it ([`crate::bench::input::ps2trace`]): key presses QEMU dropped at a full keyboard
/// queue and left clicks its mouse never reported. PS/2 has no flow control: a guest whose
/// vCPU does not run for longer than its 16-byte queue lasts loses input from any sender,
/// QEMU's own VNC server included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuLosses {
    /// Which key presses QEMU dropped at a full keyboard queue: 0-based places among all the
    /// presses the session's QEMUs got, in order. The console hands QEMU every key once, in
    /// order, so the n-th press QEMU got is the viewer's n-th key (if it was not, the check
    /// that forgives these fails).
    pub key_presses: Vec<usize>,
    /// Left clicks never reported.
    pub clicks: u64,
}

impl QemuLosses {
    /// The losses the PS/2 traces of a bed's QEMUs show ([`CoBed::ps2_traces`], in the order
    /// the QEMUs ran).
    pub fn from_traces(traces: &[(PathBuf, Ps2Trace)]) -> QemuLosses {
        let mut losses = QemuLosses::default();
        let mut before = 0u64;
        for (_, t) in traces {
            losses.key_presses.extend(
                t.dropped_press_indices
                    .iter()
                    .map(|i| usize::try_from(before + i).unwrap_or(usize::MAX)),
            );
            losses.clicks += t.tally.lost_clicks;
            before += t.presses;
        }
        losses
    }
}

/// Stops the viewer and counts its session like [`check_nothing_lost`], but forgives exactly
/// the keys and clicks the bed's QEMUs lost on their own, as their PS/2 traces show (the bed
/// needs [`CoBedOptions::ps2_trace`](crate::cobed::CoBedOptions::ps2_trace); without traces
/// nothing is forgiven). When anything was forgiven, or the check fails, prints each QEMU's
/// replay: what it dropped and when.
pub async fn check_nothing_lost_by_dmore(
    bed: &mut CoBed,
    viewer: SteadyViewer,
) -> Result<Tally, DeliveryError> {
    let count = bed.count_session(viewer, None).await?;
    check_count_by_dmore(&count, &bed.ps2_traces())
}

/// [`check_count_but`] forgiving exactly what `traces` (the PS/2 replays of the session's
/// QEMUs, in the order they ran: [`ps2trace::chain`](crate::bench::input::ps2trace::chain))
/// show QEMU lost on its own; when anything was forgiven, or the check fails, prints each
/// QEMU's replay: what it dropped and when.
pub fn check_count_by_dmore(
    count: &SessionCount,
    traces: &[(PathBuf, Ps2Trace)],
) -> Result<Tally, DeliveryError> {
    let qemu = QemuLosses::from_traces(traces);
    let checked = check_count_but(count, &qemu);
    if checked.is_err() || qemu != QemuLosses::default() {
        for (vm, trace) in traces {
            println!(
                "{}: PS/2 {:?}; keyboard drops at {:?}; clicks lost at {:?}",
                vm.display(),
                trace.tally,
                trace.drop_times,
                trace.lost_click_times
            );
        }
    }
    checked
}

/// Checks a counted session ([`crate::cobed::count_session`]): every key and click once, in
/// order, over one connection, and enough keys to judge; a loss is located on stdout.
pub fn check_count(count: &SessionCount) -> Result<Tally, DeliveryError> {
    check_count_but(count, &QemuLosses::default())
}

/// [`check_count`], except that exactly the keys and clicks `qemu` lost on its own are
/// missing (never fewer, never others: a key the console lost beside them fails the check),
/// and nothing is duplicated or reordered: the guest's keys are matched against the viewer's
/// without the presses QEMU dropped.
pub fn check_count_but(count: &SessionCount, qemu: &QemuLosses) -> Result<Tally, DeliveryError> {
    let (keys, (sent, received)) = (count.keys, count.clicks);
    println!(
        "keys {keys:?}; clicks sent {sent} received {received}; connection kept: {}",
        count.log.connection_kept()
    );
    if !keys.exact() {
        if let Some(i) = first_mismatch(&count.log.key_codes(), &key_presses(&count.reports)) {
            let first = count.log.keys.first().map(|k| k.at);
            let key = count.log.keys.get(i);
            let at = key.zip(first).map(|(k, f)| k.at.duration_since(f));
            let wall = key.map(|k| wall_clock(k.at));
            println!(
                "first key out of order: #{i} typed at {at:?} after the first, at {wall:?} s \
                 (Unix time, as in QEMU's traces)"
            );
        }
        print_count_jumps("key", &count.reports, |r| match r {
            Report::Key { count, .. } => Some(*count),
            _ => None,
        });
    }
    if let Some((_, why)) = &count.log.dropped {
        return Err(DeliveryError::ConnectionDropped(why.clone()));
    }
    if sent != received {
        print_click_gaps(&count.reports);
    }
    if keys.sent < ENOUGH_KEYS {
        return Err(DeliveryError::TooFewKeys(keys));
    }
    if !keys_but(&count.log.key_codes(), &count.reports, qemu).exact() {
        return Err(DeliveryError::Keys(keys));
    }
    let clicks_lost = usize::try_from(qemu.clicks).unwrap_or(usize::MAX);
    if sent.checked_sub(received) != Some(clicks_lost) {
        return Err(DeliveryError::Clicks { sent, received });
    }
    Ok(keys)
}

/// The keys a viewer `sent` (key codes, in order) against the presses the guest `reports`,
/// without the presses `qemu` dropped on its own (printed when there are any). Every key
/// arriving is exact whatever the traces say: a libvirt run's trace once counted a dropped
/// press while all 2,145 keys arrived, and taking it out of what was sent left the guest's
/// report of it "unexpected".
pub fn keys_but(sent: &[u16], reports: &[Report], qemu: &QemuLosses) -> Tally {
    let all = tally(sent, &key_presses(reports));
    if all.exact() {
        return all;
    }
    let kept: Vec<u16> = sent
        .iter()
        .enumerate()
        .filter(|(i, _)| !qemu.key_presses.contains(i))
        .map(|(_, code)| *code)
        .collect();
    let but_qemu = tally(&kept, &key_presses(reports));
    if !qemu.key_presses.is_empty() {
        println!(
            "without the {} presses QEMU dropped: {but_qemu:?}",
            qemu.key_presses.len()
        );
    }
    but_qemu
}

/// `at` as seconds since the Unix epoch (to match it with QEMU's `-msg timestamp=on` traces).
fn wall_clock(at: std::time::Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.saturating_sub(at.elapsed())).as_secs_f64()
}

/// Where the guest's button count jumped (clicks lost) or repeated.
fn print_click_gaps(reports: &[Report]) {
    print_count_jumps("button", reports, |r| match r {
        Report::Button { count, .. } => Some(*count),
        _ => None,
    });
}

/// Where the guest's running count of `what` events (from `count_of` each report) jumped or
/// repeated: a jump with every report in between means the guest never saw those events; a
/// repeat means a report came twice (its serial output, not the input).
fn print_count_jumps(what: &str, reports: &[Report], count_of: impl Fn(&Report) -> Option<u64>) {
    let counts: Vec<u64> = reports.iter().filter_map(count_of).collect();
    let gaps: Vec<(u64, u64)> = counts
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    println!(
        "{what} events reported {} (the guest counted {:?}); jumps in its count: {gaps:?}",
        counts.len(),
        counts.last()
    );
}

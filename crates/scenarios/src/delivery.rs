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

use std::time::Duration;

use guest::report::Report;

use crate::cobed::CoBed;
use crate::steady::tally::{key_presses, left_clicks, tally, Tally};
use crate::steady::{SteadyConfig, SteadyError, SteadyViewer};

/// Bound on draining the guest's last reports (a guard against hanging, not a measure).
const DRAIN: Duration = Duration::from_secs(60);

/// Why a session did not deliver exactly once.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
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

/// Stops the viewer, takes every report, and checks that every key and click arrived once, in
/// order, over the one connection it opened. A loss is located on stdout: the first key the
/// guest did not report in order, and when it was typed (after the first key).
pub async fn check_nothing_lost(
    bed: &mut CoBed,
    viewer: SteadyViewer,
) -> Result<Tally, DeliveryError> {
    viewer.set_typing(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reports = bed
        .collect_reports(Duration::from_millis(500), DRAIN)
        .await
        .to_vec();
    let log = viewer.stop().await;
    let keys = tally(&log.key_codes(), &key_presses(&reports));
    let (sent, received) = (log.clicks.len(), left_clicks(&reports));
    println!(
        "keys {keys:?}; clicks sent {sent} received {received}; connection kept: {}",
        log.connection_kept()
    );
    if !keys.exact() {
        let (codes, got) = (log.key_codes(), key_presses(&reports));
        if let Some(i) = codes.iter().zip(&got).position(|(s, g)| s != g) {
            let first = log.keys.first().map(|k| k.at);
            let at = log
                .keys
                .get(i)
                .zip(first)
                .map(|(k, f)| k.at.duration_since(f));
            println!("first key out of order: #{i} typed at {at:?} after the first");
        }
    }
    if let Some((_, why)) = log.dropped {
        return Err(DeliveryError::ConnectionDropped(why));
    }
    if sent != received {
        print_click_gaps(&reports);
    }
    if keys.sent <= 50 {
        return Err(DeliveryError::TooFewKeys(keys));
    }
    if !keys.exact() {
        return Err(DeliveryError::Keys(keys));
    }
    if sent != received {
        return Err(DeliveryError::Clicks { sent, received });
    }
    Ok(keys)
}

/// Where the guest's button count jumped (clicks lost) or repeated.
fn print_click_gaps(reports: &[Report]) {
    let counts: Vec<u64> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Button { count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    let gaps: Vec<(u64, u64)> = counts
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    println!(
        "button events reported {} (the guest counted {:?}); jumps in its count: {gaps:?}",
        counts.len(),
        counts.last()
    );
}

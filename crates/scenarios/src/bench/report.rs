//! The benchmark's figures: percentiles, the table, and the targets met or missed.

use std::fmt;
use std::time::Duration;

use super::keys::KeyResults;
use super::screen::FrameResults;

/// Key-response overhead target, p50 (issue 5).
pub const TARGET_KEY_P50_US: f64 = 50.0;
/// Screen-path overhead target for small raw updates, p50 (issue 5).
pub const TARGET_SMALL_P50_US: f64 = 20.0;
/// RSS target with 4 viewers at 720x400 (issue 5).
pub const TARGET_RSS_KIB: u64 = 16 * 1024;

/// The console's footprint with some viewers subscribed to an animated screen.
#[derive(Debug, Clone, Copy)]
pub struct LoadRow {
    /// Screen width.
    pub width: u16,
    /// Screen height.
    pub height: u16,
    /// Viewers connected and subscribed.
    pub viewers: usize,
    /// `VmRSS` at the end of the window, KiB.
    pub rss_kib: u64,
    /// CPU time over the window as a share of one core, %.
    pub cpu_percent: f64,
    /// Updates each viewer received per second, on average over the window.
    pub updates_per_viewer_s: f64,
}

/// Everything one `dmore bench console` run measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// How the guest ran (accelerator, firmware).
    pub machine: String,
    /// Key-press latencies.
    pub keys: KeyResults,
    /// Small raw updates (the animated corner).
    pub small: FrameResults,
    /// Full-screen raw updates (F1 repaints).
    pub full: FrameResults,
    /// Screen size of the screen-path measurement.
    pub screen: (u16, u16),
    /// RSS and CPU rows.
    pub load: Vec<LoadRow>,
}

/// Nearest-rank percentile `p` (0..=100) of `sorted`.
pub fn percentile<T: Copy>(sorted: &[T], p: usize) -> Option<T> {
    let n = sorted.len();
    let rank = (p.min(100) * n).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn us_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// p50 and p99 of durations, µs.
pub fn duration_p50_p99(values: &[Duration]) -> Option<(f64, f64)> {
    let mut v = values.to_vec();
    v.sort_unstable();
    Some((us_of(percentile(&v, 50)?), us_of(percentile(&v, 99)?)))
}

/// p50 and p99 of signed ns, µs.
pub fn ns_p50_p99(values: &[i64]) -> Option<(f64, f64)> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let us = |ns: i64| ns as f64 / 1e3;
    Some((us(percentile(&v, 50)?), us(percentile(&v, 99)?)))
}

impl BenchReport {
    /// Key-response overhead (console minus direct), p50 and p99, µs.
    pub fn key_overhead(&self) -> Option<(f64, f64)> {
        let (d50, d99) = duration_p50_p99(&self.keys.direct)?;
        let (c50, c99) = duration_p50_p99(&self.keys.console)?;
        Some((c50 - d50, c99 - d99))
    }

    /// The 4-viewer 720x400 row, if measured.
    pub fn rss_target_row(&self) -> Option<&LoadRow> {
        self.load
            .iter()
            .find(|r| r.viewers == 4 && (r.width, r.height) == (720, 400))
    }
}

fn opt(v: Option<(f64, f64)>) -> String {
    match v {
        Some((p50, p99)) => format!("{p50:>9.1} {p99:>9.1}"),
        None => format!("{:>9} {:>9}", "-", "-"),
    }
}

fn verdict(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    value: Option<f64>,
    target: f64,
    unit: &str,
) -> fmt::Result {
    match value {
        Some(v) if v <= target => writeln!(
            f,
            "  {what:<44} {v:>9.1} {unit} <= {target} {unit}: met (by {:.1} {unit})",
            target - v
        ),
        Some(v) => writeln!(
            f,
            "  {what:<44} {v:>9.1} {unit} >  {target} {unit}: MISSED by {:.1} {unit} ({:.1}x)",
            v - target,
            v / target
        ),
        None => writeln!(f, "  {what:<44} not measured"),
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(f)?;
        writeln!(
            f,
            "key response (KeyEvent -> guest serial report)     n       p50 µs    p99 µs"
        )?;
        let direct = duration_p50_p99(&self.keys.direct);
        let console = duration_p50_p99(&self.keys.console);
        writeln!(
            f,
            "  direct to QEMU's VNC (TCP, key-delay-ms=0) {:>6} {}",
            self.keys.direct.len(),
            opt(direct)
        )?;
        writeln!(
            f,
            "  through dmore console                      {:>6} {}",
            self.keys.console.len(),
            opt(console)
        )?;
        writeln!(
            f,
            "  overhead (console - direct)                       {}",
            opt(self.key_overhead())
        )?;
        writeln!(f)?;
        let (w, h) = self.screen;
        writeln!(f, "screen path at {w}x{h}, Raw (console arrival - direct arrival)  n  unmatched  p50 µs    p99 µs")?;
        writeln!(
            f,
            "  small update (animated corner)           {:>6} {:>9} {}",
            self.small.diffs_ns.len(),
            self.small.unmatched,
            opt(ns_p50_p99(&self.small.diffs_ns))
        )?;
        writeln!(
            f,
            "  full screen (F1 repaint)                 {:>6} {:>9} {}",
            self.full.diffs_ns.len(),
            self.full.unmatched,
            opt(ns_p50_p99(&self.full.diffs_ns))
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "console process, animated screen, subscribed viewers (ZRLE)"
        )?;
        writeln!(
            f,
            "  screen     viewers   RSS MiB   CPU % of a core   updates/s per viewer"
        )?;
        for r in &self.load {
            writeln!(
                f,
                "  {:>4}x{:<4} {:>7} {:>9.1} {:>17.1} {:>22.1}",
                r.width,
                r.height,
                r.viewers,
                r.rss_kib as f64 / 1024.0,
                r.cpu_percent,
                r.updates_per_viewer_s
            )?;
        }
        writeln!(f)?;
        writeln!(f, "targets (issue 5)")?;
        verdict(
            f,
            "key-response overhead p50",
            self.key_overhead().map(|o| o.0),
            TARGET_KEY_P50_US,
            "µs",
        )?;
        verdict(
            f,
            "screen-path overhead p50, small raw update",
            ns_p50_p99(&self.small.diffs_ns).map(|o| o.0),
            TARGET_SMALL_P50_US,
            "µs",
        )?;
        verdict(
            f,
            "RSS with 4 viewers at 720x400",
            self.rss_target_row().map(|r| r.rss_kib as f64 / 1024.0),
            TARGET_RSS_KIB as f64 / 1024.0,
            "MiB",
        )?;
        writeln!(
            f,
            "  (the paper's DomR: +221 µs per key, +9 µs per screen update)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&[7i64], 99), Some(7));
        assert_eq!(percentile::<i64>(&[], 50), None);
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        let report = BenchReport {
            keys: KeyResults {
                direct: vec![Duration::from_micros(200)],
                console: vec![Duration::from_micros(300)],
            },
            ..BenchReport::default()
        };
        let text = report.to_string();
        assert!(text.contains("MISSED by 50.0 µs"), "{text}");
        assert!(text.contains("RSS with 4 viewers at 720x400") && text.contains("not measured"));
    }
}

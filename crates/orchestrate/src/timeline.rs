//! The figures of one co-migration: QEMU's (from `query-migrate`) and the consoles' (from the
//! destination console's `status`), and how they are shown.

use std::fmt::Write as _;
use std::time::Duration;

use migrate::vm::MigrationReport;
use serde_json::Value;

/// What one co-migration took. Every figure a side did not report is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Wall time measured here, from `prepare` to the destination console serving.
    pub total: Duration,
    /// QEMU's own `total-time` (ms).
    pub qemu_total_ms: Option<u64>,
    /// QEMU's VM downtime (ms): how long the VM ran nowhere.
    pub vm_downtime_ms: Option<u64>,
    /// From the source console's freeze to the destination console's takeover (two hosts'
    /// clocks: only as good as their synchronisation).
    pub freeze_to_takeover: Option<Duration>,
    /// When the destination console took over (µs since the Unix epoch, its host's clock):
    /// where a viewer's input is served from the destination on.
    pub taken_over_at_us: Option<u64>,
    /// Size of the console state that moved (the snapshot).
    pub state_bytes: Option<u64>,
    /// Viewer connections that moved with the console.
    pub viewers_moved: Option<u64>,
    /// RAM bytes QEMU transferred.
    pub ram_transferred: Option<u64>,
    /// Whether the VM was held at `pre-switchover` until the destination console was ready.
    pub held_switchover: bool,
}

/// The co-migration figures a destination console reports under `status.comigration`
/// (`snapshot_bytes`, `viewers_moved`, `frozen_at_us`, `taken_over_at_us`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleFigures {
    /// Bytes of the console snapshot that moved.
    pub snapshot_bytes: Option<u64>,
    /// Viewer connections restored on the destination.
    pub viewers_moved: Option<u64>,
    /// When the source console froze (µs since the Unix epoch, the source host's clock).
    pub frozen_at_us: Option<u64>,
    /// When the destination console took over (µs since the Unix epoch, its own clock).
    pub taken_over_at_us: Option<u64>,
}

impl ConsoleFigures {
    /// Reads a console's `status` reply. A missing `comigration` object, or a field that is
    /// absent or not a count, leaves that figure `None`: figures are informational, and a
    /// console that moved the session must not fail the co-migration over its report.
    pub fn from_status(status: &Value) -> ConsoleFigures {
        let c = status.get("comigration");
        let count = |key: &str| c.and_then(|c| c.get(key)).and_then(Value::as_u64);
        ConsoleFigures {
            snapshot_bytes: count("snapshot_bytes"),
            viewers_moved: count("viewers_moved"),
            frozen_at_us: count("frozen_at_us"),
            taken_over_at_us: count("taken_over_at_us"),
        }
    }

    /// From the freeze to the takeover; `None` if a time is missing or the takeover reads
    /// earlier than the freeze (the hosts' clocks disagree).
    pub fn freeze_to_takeover(&self) -> Option<Duration> {
        let gap = self.taken_over_at_us?.checked_sub(self.frozen_at_us?)?;
        Some(Duration::from_micros(gap))
    }
}

impl Timeline {
    /// Puts together the wall time, QEMU's report and the destination console's figures.
    pub fn new(total: Duration, qemu: &MigrationReport, console: &ConsoleFigures) -> Timeline {
        Timeline {
            total,
            qemu_total_ms: qemu.total_time_ms,
            vm_downtime_ms: qemu.downtime_ms,
            freeze_to_takeover: console.freeze_to_takeover(),
            taken_over_at_us: console.taken_over_at_us,
            state_bytes: console.snapshot_bytes,
            viewers_moved: console.viewers_moved,
            ram_transferred: qemu.ram_transferred,
            held_switchover: qemu.paused_at_switchover,
        }
    }

    /// A few aligned lines for people: total, VM downtime, console freeze→takeover, console
    /// state bytes, viewers moved.
    pub fn render(&self) -> String {
        let unknown = || "not reported".to_string();
        let mut qemu = self
            .vm_downtime_ms
            .map_or_else(unknown, |ms| format!("{ms} ms"));
        let mut detail = Vec::new();
        if let Some(ms) = self.qemu_total_ms {
            detail.push(format!("migration {ms} ms"));
        }
        if let Some(b) = self.ram_transferred {
            detail.push(format!("{} of RAM sent", bytes(b)));
        }
        if !detail.is_empty() {
            let _ = write!(qemu, " ({})", detail.join(", "));
        }
        let rows = [
            ("total (prepare to console serving)", duration(self.total)),
            ("VM downtime (QEMU)", qemu),
            (
                "console freeze -> takeover",
                self.freeze_to_takeover.map_or_else(unknown, duration),
            ),
            (
                "console state",
                self.state_bytes
                    .map_or_else(unknown, |b| format!("{b} bytes")),
            ),
            (
                "viewers moved",
                self.viewers_moved.map_or_else(unknown, |n| n.to_string()),
            ),
            (
                "switchover",
                if self.held_switchover {
                    "held until the destination console was ready".to_string()
                } else {
                    "not held (the console moved beside QEMU's switchover)".to_string()
                },
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            let _ = writeln!(out, "  {key:<width$}  {value}");
        }
        out
    }
}

/// A duration for people: ms with one decimal below 10 s, else seconds.
fn duration(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A byte count for people (binary units).
fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    // Precision loss above 2^53 bytes does not matter for a display.
    #[allow(clippy::cast_precision_loss)]
    let mut value = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrate::vm::MigrationStatus;
    use serde_json::json;

    fn report() -> MigrationReport {
        MigrationReport {
            status: MigrationStatus::Completed,
            total_time_ms: Some(240),
            downtime_ms: Some(7),
            setup_time_ms: Some(2),
            ram_transferred: Some(3 << 20),
            wall: Duration::from_millis(250),
            polls: 12,
            paused_at_switchover: true,
        }
    }

    #[test]
    fn console_figures_come_from_the_comigration_object() {
        let status = json!({"ok": true, "role": "destination", "phase": "Serving",
            "comigration": {"snapshot_bytes": 48213, "viewers_moved": 2,
                "frozen_at_us": 1_700_000_000_000_000u64,
                "taken_over_at_us": 1_700_000_000_035_250u64}});
        let f = ConsoleFigures::from_status(&status);
        assert_eq!(f.snapshot_bytes, Some(48213));
        assert_eq!(f.viewers_moved, Some(2));
        assert_eq!(f.freeze_to_takeover(), Some(Duration::from_micros(35_250)));
    }

    #[test]
    fn missing_or_malformed_figures_are_none_not_errors() {
        for status in [
            json!({"ok": true}),
            json!({"comigration": null}),
            json!({"comigration": "yes"}),
            json!({"comigration": {"snapshot_bytes": -1, "viewers_moved": "two",
                "frozen_at_us": 1.5}}),
        ] {
            let f = ConsoleFigures::from_status(&status);
            assert_eq!(f, ConsoleFigures::default(), "{status}");
            assert_eq!(f.freeze_to_takeover(), None);
        }
    }

    #[test]
    fn a_takeover_before_the_freeze_is_clock_skew_not_a_duration() {
        let f = ConsoleFigures {
            frozen_at_us: Some(2_000),
            taken_over_at_us: Some(1_000),
            ..ConsoleFigures::default()
        };
        assert_eq!(f.freeze_to_takeover(), None);
    }

    #[test]
    fn timeline_combines_qemu_and_console_figures() {
        let console = ConsoleFigures {
            snapshot_bytes: Some(900),
            viewers_moved: Some(1),
            frozen_at_us: Some(10_000),
            taken_over_at_us: Some(12_500),
        };
        let t = Timeline::new(Duration::from_millis(300), &report(), &console);
        assert_eq!(
            t,
            Timeline {
                total: Duration::from_millis(300),
                qemu_total_ms: Some(240),
                vm_downtime_ms: Some(7),
                freeze_to_takeover: Some(Duration::from_micros(2_500)),
                taken_over_at_us: Some(12_500),
                state_bytes: Some(900),
                viewers_moved: Some(1),
                ram_transferred: Some(3 << 20),
                held_switchover: true,
            }
        );
    }

    #[test]
    fn render_aligns_one_line_per_figure() {
        let console = ConsoleFigures {
            snapshot_bytes: Some(48213),
            viewers_moved: Some(1),
            frozen_at_us: Some(0),
            taken_over_at_us: Some(35_250),
        };
        let text = Timeline::new(Duration::from_millis(412), &report(), &console).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].ends_with("412.0 ms"), "{text}");
        assert!(
            lines[1].ends_with("7 ms (migration 240 ms, 3.0 MiB of RAM sent)"),
            "{text}"
        );
        assert!(lines[2].ends_with("35.2 ms"), "{text}");
        assert!(lines[3].ends_with("48213 bytes"), "{text}");
        assert!(lines[4].ends_with(" 1"), "{text}");
        assert!(lines[5].contains("held"), "{text}");
        // Values start in one column: keys hold single spaces, the gap after them is wider.
        let value_col = |l: &str| {
            let key_end = l.find("  ").unwrap_or(0);
            key_end + l[key_end..].len() - l[key_end..].trim_start().len()
        };
        let cols: Vec<usize> = lines.iter().map(|l| value_col(&l[2..])).collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{cols:?}\n{text}");
    }

    #[test]
    fn render_says_what_was_not_reported() {
        let t = Timeline {
            total: Duration::from_secs(12),
            ..Timeline::default()
        };
        let text = t.render();
        assert!(text.lines().next().unwrap().ends_with("12.00 s"), "{text}");
        assert_eq!(text.matches("not reported").count(), 4, "{text}");
        assert!(text.contains("not held"), "{text}");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(128 << 20), "128.0 MiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }
}

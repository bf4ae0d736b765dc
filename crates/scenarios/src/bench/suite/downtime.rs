//! `dmore bench downtime`: per co-migration, the VM's downtime (QEMU's figure), the console's
//! freeze → takeover, and the gap the viewer saw (the longest pause between the guest's
//! echoes of a key every 10 ms, on the viewer's screen); keys lost; and beside it plain QEMU's
//! VNC through the same number of plain migrations (the baseline: its viewer is cut and
//! reconnects after 1 s).
//!
//! It runs the demo's scripted part ([`crate::demo`]) and the baseline ([`crate::baseline`])
//! and keeps their figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::plot::{self, Series};
use super::{at_most, mean, ms, pct, Metric, Run, SuiteError, Summary};
use crate::demo::{self, DemoOptions};

/// Issue 13: viewer gap ≤ VM downtime + 20 ms.
pub const TARGET_GAP_OVER_DOWNTIME_MS: f64 = 20.0;
/// Issue 13: freeze → takeover ≤ 5 ms p50.
pub const TARGET_TAKEOVER_MS: f64 = 5.0;

/// One co-migration's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MoveSample {
    /// QEMU's VM downtime, ms.
    pub vm_downtime_ms: Option<u64>,
    /// Source console's freeze → destination console's takeover, ms.
    pub freeze_to_takeover_ms: Option<f64>,
    /// The viewer's longest pause without a screen change around the move, ms.
    pub viewer_gap_ms: f64,
    /// The orchestrator's wall time for the move, ms.
    pub total_ms: f64,
    /// Keys lost in this move's row.
    pub keys_lost: usize,
}

/// One plain migration's figures (the baseline).
#[derive(Debug, Clone, Serialize)]
pub struct PlainSample {
    /// QEMU's VM downtime, ms.
    pub vm_downtime_ms: Option<u64>,
    /// Keys typed.
    pub typed: usize,
    /// Keys lost in all.
    pub lost: usize,
    /// Keys written to the live connection that the guest never saw.
    pub lost_in_switchover: usize,
}

/// The raw samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DowntimeSamples {
    /// dmore's co-migrations.
    pub dmore: Vec<MoveSample>,
    /// Plain QEMU's migrations.
    pub plain: Vec<PlainSample>,
    /// Keys the steady viewer typed over the whole dmore run, and lost.
    pub dmore_keys: (usize, usize),
    /// Of the keys lost, those QEMU's PS/2 queue dropped itself, as its trace shows (a guest
    /// that did not read in time; any sender loses those).
    pub dmore_keys_qemu_dropped: usize,
}

/// Runs `moves` co-migrations (then as many plain ones) with the `dmore` executable.
pub async fn run(
    dir: &Path,
    command: String,
    quick: bool,
    dmore: PathBuf,
    mut progress: impl FnMut(&str),
) -> Result<Summary, SuiteError> {
    let run = Run::start(dir, "downtime", command, quick)?;
    let moves = if quick { 2 } else { 15 };
    let options = DemoOptions {
        migrations: moves,
        settle: Duration::from_millis(if quick { 300 } else { 1000 }),
        ..DemoOptions::new(dmore)
    };
    progress(&format!(
        "{moves} co-migrations under a viewer typing every 10 ms, then {moves} plain ones"
    ));
    let report = demo::run(&options, |event| {
        if let demo::DemoEvent::Row(row) = event {
            progress(&format!("co-migration {}: {row}", row.n));
        }
    })
    .await?;
    let mut samples = DowntimeSamples {
        dmore_keys: (report.keys.sent, report.keys.lost_with_pending()),
        dmore_keys_qemu_dropped: report.qemu_dropped.key_presses.len(),
        ..DowntimeSamples::default()
    };
    for row in &report.rows {
        samples.dmore.push(MoveSample {
            vm_downtime_ms: row.timeline.vm_downtime_ms,
            freeze_to_takeover_ms: row.timeline.freeze_to_takeover.map(ms),
            viewer_gap_ms: ms(row.gap),
            total_ms: ms(row.timeline.total),
            keys_lost: row.keys.lost,
        });
    }
    for r in report.baseline.iter().flat_map(|b| &b.runs) {
        samples.plain.push(PlainSample {
            vm_downtime_ms: r.downtime_ms,
            typed: r.typed,
            lost: r.lost(),
            lost_in_switchover: r.lost_in_switchover(),
        });
    }
    summarise(run, &samples)
}

fn summarise(run: Run, s: &DowntimeSamples) -> Result<Summary, SuiteError> {
    run.write_samples(s)?;
    let down = |v: &[Option<u64>]| -> Vec<f64> { v.iter().flatten().map(|&d| d as f64).collect() };
    let dmore_down = down(&s.dmore.iter().map(|m| m.vm_downtime_ms).collect::<Vec<_>>());
    let plain_down = down(&s.plain.iter().map(|m| m.vm_downtime_ms).collect::<Vec<_>>());
    let takeover: Vec<f64> = s
        .dmore
        .iter()
        .filter_map(|m| m.freeze_to_takeover_ms)
        .collect();
    let gaps: Vec<f64> = s.dmore.iter().map(|m| m.viewer_gap_ms).collect();
    let over: Vec<f64> = s
        .dmore
        .iter()
        .filter_map(|m| Some(m.viewer_gap_ms - m.vm_downtime_ms? as f64))
        .collect();
    let per = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    let plain_lost: usize = s.plain.iter().map(|p| p.lost_in_switchover).sum();
    let plain_all: usize = s.plain.iter().map(|p| p.lost).sum();
    let dmore_lost = per(s.dmore_keys.1, s.dmore.len());
    let by_dmore = per(
        s.dmore_keys.1.saturating_sub(s.dmore_keys_qemu_dropped),
        s.dmore.len(),
    );
    let by_qemu = per(s.dmore_keys_qemu_dropped, s.dmore.len());
    let max_over = over
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let metrics = vec![
        Metric::new(
            "keys lost per migration, in the switchover",
            "keys",
            per(plain_lost, s.plain.len()),
            by_dmore,
        )
        .paper("1.4 → 0")
        .target("0", by_dmore.map(|l| l == 0.0)),
        Metric::new(
            "keys QEMU's PS/2 queue dropped itself per migration (traced; any sender)",
            "keys",
            None,
            by_qemu,
        ),
        Metric::new(
            "keys lost per migration, with plain's reconnect after 1 s",
            "keys",
            per(plain_all, s.plain.len()),
            dmore_lost,
        ),
        Metric::new(
            "VM downtime, p50",
            "ms",
            pct(&plain_down, 50),
            pct(&dmore_down, 50),
        ),
        Metric::new(
            "VM downtime, mean",
            "ms",
            mean(&plain_down),
            mean(&dmore_down),
        ),
        Metric::new(
            "console freeze → takeover, p50",
            "ms",
            None,
            pct(&takeover, 50),
        )
        .paper("3× VM downtime")
        .target("≤ 5 ms", at_most(pct(&takeover, 50), TARGET_TAKEOVER_MS)),
        Metric::new("console freeze → takeover, max", "ms", None, {
            sorted_last(&takeover)
        }),
        Metric::new("viewer gap, p50", "ms", None, pct(&gaps, 50)),
        Metric::new("viewer gap − VM downtime, p50", "ms", None, pct(&over, 50)).target(
            "≤ +20 ms",
            at_most(pct(&over, 50), TARGET_GAP_OVER_DOWNTIME_MS),
        ),
        Metric::new("viewer gap − VM downtime, max", "ms", None, max_over),
    ];
    let index = |v: Vec<Option<f64>>| -> Vec<(f64, f64)> {
        v.into_iter()
            .enumerate()
            .filter_map(|(i, y)| Some(((i + 1) as f64, y?)))
            .collect()
    };
    let series = |name: &str, points| Series {
        name: name.to_owned(),
        points,
        spread: Vec::new(),
    };
    let plot_file = run.file_name("moves.png");
    plot::lines(
        &run.path("moves.png"),
        "Per co-migration: VM downtime, console freeze → takeover, viewer gap",
        ("co-migration (#)", "time (ms)"),
        &[
            series(
                "VM downtime (QEMU)",
                index(
                    s.dmore
                        .iter()
                        .map(|m| m.vm_downtime_ms.map(|d| d as f64))
                        .collect(),
                ),
            ),
            series(
                "console freeze → takeover",
                index(s.dmore.iter().map(|m| m.freeze_to_takeover_ms).collect()),
            ),
            series(
                "viewer gap (longest pause between echoes)",
                index(s.dmore.iter().map(|m| Some(m.viewer_gap_ms)).collect()),
            ),
            series(
                "target: viewer gap ≤ VM downtime + 20 ms",
                index(
                    s.dmore
                        .iter()
                        .map(|m| m.vm_downtime_ms.map(|d| d as f64 + 20.0))
                        .collect(),
                ),
            ),
        ],
        &[plot::Reference {
            label: "target: freeze → takeover ≤ 5 ms".to_owned(),
            at: TARGET_TAKEOVER_MS,
        }],
    )?;
    let notes = vec![
        "dmore: the demo's steady viewer (a key every 10 ms, a click every 100 ms) on the \
         moving service address; co-migrations A → B → A … of an idle 128 MiB guest, not \
         held, 1 s apart; the viewer gap is its longest pause without a screen change from \
         the move's start to 1 s after its end."
            .to_owned(),
        "plain QEMU: the baseline's typist (a key every 50 ms, as the paper) on QEMU's own \
         VNC, cut by each migration and reconnecting after 1 s; 'in the switchover' counts \
         keys written to the live connection that the guest never saw."
            .to_owned(),
    ];
    Ok(run.finish(
        "VM downtime, console freeze → takeover, viewer gap and keys lost per migration",
        "KVM where it works (the co-migration bed), TCG otherwise",
        metrics,
        vec![plot_file],
        notes,
    )?)
}

fn sorted_last(v: &[f64]) -> Option<f64> {
    super::sorted(v).last().copied()
}

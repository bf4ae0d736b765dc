//! `dmore bench report`: the summaries of one results folder as one markdown page (the
//! committed `docs/results.md`), and the plain-text table each bench prints.

use std::fmt::Write as _;
use std::path::Path;

use super::{read_summaries, Metric, ResultsError, Summary};

/// Writes the page of every summary in `results` to `page`. Plots are linked where they are
/// when the page is in the results folder; otherwise they are copied into a folder named
/// after the page (`docs/results.md` → `docs/results/`) and linked there. Returns the
/// summaries.
pub fn write(results: &Path, page: &Path) -> Result<Vec<Summary>, ResultsError> {
    let summaries = read_summaries(results)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ResultsError::Io { path, source }
    };
    let here = page
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let same = std::fs::canonicalize(here).ok() == std::fs::canonicalize(results).ok();
    let plots_dir = if same {
        ".".to_owned()
    } else {
        let stem = page
            .file_stem()
            .map_or("results".into(), |s| s.to_string_lossy().into_owned());
        let dir = here.join(&stem);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for plot in summaries.iter().flat_map(|s| &s.plots) {
            let to = dir.join(plot);
            std::fs::copy(results.join(plot), &to).map_err(io(&to))?;
        }
        stem
    };
    std::fs::write(page, markdown(&summaries, &plots_dir)).map_err(io(page))?;
    Ok(summaries)
}

/// A figure as the tables show it: a few significant digits, `-` when not measured.
fn figure(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn verdict(m: &Metric) -> &'static str {
    match (m.target.is_some(), m.met) {
        (false, _) => "",
        (true, Some(true)) => "met",
        (true, Some(false)) => "NOT met",
        (true, None) => "not measured",
    }
}

fn ratio(m: &Metric) -> String {
    m.ratio().map_or("-".to_owned(), |r| format!("{r:.2}×"))
}

/// Civil date and time (UTC) of a Unix time, `YYYY-MM-DD HH:MM UTC`.
pub fn utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// One bench's table as plain text (what `dmore bench NAME` prints).
pub fn text(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} — {}", s.bench, s.title);
    let _ = writeln!(
        out,
        "{:<58} {:>10} {:>11} {:>11} {:>7}  target",
        "metric", "paper", "plain QEMU", "dmore", "ratio"
    );
    for m in &s.metrics {
        let target = m
            .target
            .as_deref()
            .map_or(String::new(), |t| format!("{t}: {}", verdict(m)));
        let _ = writeln!(
            out,
            "{:<58} {:>10} {:>11} {:>11} {:>7}  {target}",
            format!("{} ({})", m.name, m.unit),
            m.paper.as_deref().unwrap_or("-"),
            figure(m.qemu),
            figure(m.dmore),
            ratio(m),
        );
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(
        out,
        "ran {:.0} s{}; {}",
        s.seconds,
        if s.quick { " (--quick)" } else { "" },
        s.machine
    );
    let _ = writeln!(out, "files: {}", s.plots.join(", "));
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A metric's table cells from its name to its target (`no_target` where it has none).
fn figures(m: &Metric, no_target: &str) -> String {
    format!(
        "{} ({}) | {} | {} | {} | {} | {}",
        cell(&m.name),
        m.unit,
        cell(m.paper.as_deref().unwrap_or("-")),
        figure(m.qemu),
        figure(m.dmore),
        ratio(m),
        cell(m.target.as_deref().unwrap_or(no_target))
    )
}

/// The markdown page: one summary table of every target, then per bench its table, plots,
/// notes, machine and command. `plots_dir` is where the page links the PNGs (relative to the
/// page).
pub fn markdown(summaries: &[Summary], plots_dir: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# dmore against the D-MORE paper and plain QEMU\n");
    let _ = writeln!(
        out,
        "Generated by `dmore bench report` from the raw samples of one `dmore bench` run; \
         do not edit by hand. Plain QEMU (its own VNC server, its own `migrate`) was measured \
         beside dmore in the same run, on the same guest. The paper is Kawahara & Kourai, \
         *D-MORE* (2014), measured on Xen with its own hardware: its figures are the \
         reference, not a measurement of this machine.\n"
    );
    if summaries.iter().any(|s| s.quick) {
        let _ = writeln!(
            out,
            "**Some benches ran with `--quick`: a few samples each, to check the output's \
             form; their figures mean little.**\n"
        );
    }
    if let Some(first) = summaries.first() {
        let total: f64 = summaries.iter().map(|s| s.seconds).sum();
        let _ = writeln!(
            out,
            "Run: `cargo run --release -p dmore -- bench all --out results`, then `dmore bench \
             report`; the benches took {:.0} min {:.0} s together.\n",
            (total / 60.0).floor(),
            total % 60.0
        );
        let _ = writeln!(out, "Machine: {}.", first.machine);
        let _ = writeln!(
            out,
            "The machine is **shared and loaded** (two cores, other builds and tests running \
             beside the bench): tails (p90, p99, max) and CPU figures are pessimistic, and \
             differences of tens of µs are within the run-to-run noise.\n"
        );
    }
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| bench | metric | paper | plain QEMU | dmore | dmore / QEMU | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for s in summaries {
        for m in s.metrics.iter().filter(|m| m.target.is_some()) {
            let _ = writeln!(
                out,
                "| {} | {} | **{}** |",
                s.bench,
                figures(m, ""),
                verdict(m)
            );
        }
    }
    for s in summaries {
        let _ = writeln!(out, "\n## `{}`: {}\n", s.bench, s.title);
        let _ = writeln!(
            out,
            "`{}` — {:.0} s{}, finished {}.\n",
            s.command,
            s.seconds,
            if s.quick { ", --quick" } else { "" },
            utc(s.finished_unix)
        );
        let _ = writeln!(
            out,
            "| metric | paper | plain QEMU | dmore | dmore / QEMU | target | |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for m in &s.metrics {
            let _ = writeln!(out, "| {} | {} |", figures(m, "-"), verdict(m));
        }
        if !s.notes.is_empty() {
            let _ = writeln!(out);
            for n in &s.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        let _ = writeln!(out);
        for p in &s.plots {
            let _ = writeln!(out, "![{p}]({plots_dir}/{p})");
        }
        let _ = writeln!(out, "\nMachine: {}.", s.machine);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            bench: "response".into(),
            title: "key response".into(),
            command: "dmore bench response".into(),
            machine: "2 cores".into(),
            finished_unix: 1_796_000_000,
            seconds: 61.0,
            quick: false,
            metrics: vec![
                Metric::new("key → guest, p50", "µs", Some(700.0), Some(712.5))
                    .paper("+221 µs")
                    .target("≤ QEMU + 20 µs", Some(true)),
                Metric::new("x | y", "ms", None, Some(3.0)).target("≤ 1 ms", Some(false)),
            ],
            plots: vec!["response_cdf.png".into()],
            notes: vec!["loaded".into()],
        }
    }

    #[test]
    fn the_page_has_every_target_its_verdict_and_the_plots() {
        let page = markdown(&[summary()], "results");
        assert!(page.contains("| response | key → guest, p50 (µs) | +221 µs | 700 | 712 | 1.02× | ≤ QEMU + 20 µs | **met** |"), "{page}");
        assert!(page.contains("x \\| y (ms)"), "{page}");
        assert!(page.contains("**NOT met**"));
        assert!(page.contains("![response_cdf.png](results/response_cdf.png)"));
        assert!(page.contains("`dmore bench response` — 61 s"));
    }

    #[test]
    fn unix_times_become_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_000_000), "2026-11-30 00:53 UTC");
    }
}

//! `dmore bench response | downtime | migration | screen | all | report`: the D-MORE paper's
//! evaluation (Kawahara & Kourai 2014) redone on real QEMU, plain QEMU measured beside dmore in
//! the same run (issue 13; `screen` is issue 18's).
//!
//! Every bench writes, under its results folder (`--out`, default `results/`):
//!
//! ```text
//!  NAME.json          raw samples (one bench's own shape)
//!  NAME.summary.json  its figures: per metric the paper's, plain QEMU's, dmore's, the target
//!                     and met or not; the machine, the command, the run time ([`Summary`])
//!  NAME*.png          its plots (plot)
//! ```
//!
//! and `dmore bench report` turns every `*.summary.json` of a folder into one markdown page
//! ([`report::markdown`]) with the plots beside it. Nothing here asserts a timing: a target
//! missed is a figure in the report, not an error.

pub mod downtime;
pub mod migration;
pub mod plot;
pub mod report;
pub mod response;
pub mod screen;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a bench's results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A file could not be written or read.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A summary file is not what `dmore bench` writes.
    #[error("{path} is not a bench summary")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

/// Why a bench of the suite stopped.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Writing its results.
    #[error("writing the results")]
    Results(#[from] ResultsError),
    /// A measurement on one guest and its console.
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    /// The co-migration bed.
    #[error(transparent)]
    Bed(#[from] crate::cobed::CoBedError),
    /// The demo's run (downtime).
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// A plain QEMU migration.
    #[error(transparent)]
    Plain(#[from] crate::baseline::BaselineError),
    /// The steady viewer.
    #[error(transparent)]
    Viewer(#[from] crate::steady::SteadyError),
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

/// One figure of a bench: the paper's, plain QEMU's and dmore's, and the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// What it is, e.g. "key → guest serial report, p50".
    pub name: String,
    /// Unit of `qemu` and `dmore`, e.g. "µs".
    pub unit: String,
    /// The paper's figure, as it reports it (e.g. "+221 µs"), if it has one.
    pub paper: Option<String>,
    /// Plain QEMU's figure in the same run.
    pub qemu: Option<f64>,
    /// dmore's figure.
    pub dmore: Option<f64>,
    /// The target (issue 13 or 18), as text.
    pub target: Option<String>,
    /// Whether dmore met the target (`None`: no target, or not measured).
    pub met: Option<bool>,
}

impl Metric {
    /// A figure with no paper value and no target yet.
    pub fn new(name: &str, unit: &str, qemu: Option<f64>, dmore: Option<f64>) -> Metric {
        Metric {
            name: name.to_owned(),
            unit: unit.to_owned(),
            paper: None,
            qemu,
            dmore,
            target: None,
            met: None,
        }
    }

    /// With the paper's figure.
    pub fn paper(mut self, paper: &str) -> Metric {
        self.paper = Some(paper.to_owned());
        self
    }

    /// With a target and whether it was met (`None` when a figure is missing).
    pub fn target(mut self, target: &str, met: Option<bool>) -> Metric {
        self.target = Some(target.to_owned());
        self.met = met;
        self
    }

    /// dmore / plain QEMU, when both are measured and QEMU's is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.dmore, self.qemu) {
            (Some(d), Some(q)) if q != 0.0 => Some(d / q),
            _ => None,
        }
    }
}

/// One bench run's figures and where they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The bench's name (`response`, ...); also the files' stem.
    pub bench: String,
    /// One line saying what it measures.
    pub title: String,
    /// The command that ran it.
    pub command: String,
    /// The machine: CPU, cores, kernel, accelerator, load.
    pub machine: String,
    /// When it finished, seconds since the Unix epoch.
    pub finished_unix: u64,
    /// How long it ran, seconds.
    pub seconds: f64,
    /// Whether it ran with `--quick` (figures from a few samples: form only).
    pub quick: bool,
    /// Its figures.
    pub metrics: Vec<Metric>,
    /// Its plots' file names, relative to the results folder.
    pub plots: Vec<String>,
    /// What to know when reading the figures.
    pub notes: Vec<String>,
}

/// A bench run under way: where its files go, when it started.
#[derive(Debug)]
pub struct Run {
    dir: PathBuf,
    bench: &'static str,
    command: String,
    quick: bool,
    started: Instant,
    load_before: String,
}

impl Run {
    /// Starts bench `bench` writing into `dir` (created), run by `command`.
    pub fn start(
        dir: &Path,
        bench: &'static str,
        command: String,
        quick: bool,
    ) -> Result<Run, ResultsError> {
        std::fs::create_dir_all(dir).map_err(|source| ResultsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Run {
            dir: dir.to_owned(),
            bench,
            command,
            quick,
            started: Instant::now(),
            load_before: loadavg(),
        })
    }

    /// Whether this is a `--quick` run.
    pub fn quick(&self) -> bool {
        self.quick
    }

    /// The path of a file of this run, e.g. `path("cdf.png")` → `DIR/NAME_cdf.png`.
    pub fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}_{suffix}", self.bench))
    }

    /// The file name (relative to the results folder) of [`path`](Self::path).
    pub fn file_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.bench)
    }

    /// Writes the raw samples as `DIR/NAME.json`.
    pub fn write_samples<T: Serialize>(&self, samples: &T) -> Result<(), ResultsError> {
        let path = self.dir.join(format!("{}.json", self.bench));
        write_json(&path, samples)
    }

    /// Writes `DIR/NAME.summary.json` and returns the summary; `guest` says how the guest
    /// ran (accelerator, firmware, memory).
    pub fn finish(
        self,
        title: &str,
        guest: &str,
        metrics: Vec<Metric>,
        plots: Vec<String>,
        notes: Vec<String>,
    ) -> Result<Summary, ResultsError> {
        let summary = Summary {
            bench: self.bench.to_owned(),
            title: title.to_owned(),
            command: self.command,
            machine: format!(
                "{}; guest: {guest}; load average (1/5/15 min) {} at the start, {} at the end",
                host(),
                self.load_before,
                loadavg()
            ),
            finished_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            seconds: self.started.elapsed().as_secs_f64(),
            quick: self.quick,
            metrics,
            plots,
            notes,
        };
        let path = self.dir.join(format!("{}.summary.json", self.bench));
        write_json(&path, &summary)?;
        Ok(summary)
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ResultsError> {
    let io = |source| ResultsError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_string_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(io)
}

/// Every `*.summary.json` in `dir`, in the suite's order (response, downtime, migration,
/// screen, then any other by name).
pub fn read_summaries(dir: &Path) -> Result<Vec<Summary>, ResultsError> {
    let io = |source| ResultsError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".summary.json"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ResultsError::Io {
            path: path.clone(),
            source,
        })?;
        let summary: Summary =
            serde_json::from_str(&text).map_err(|source| ResultsError::Parse { path, source })?;
        out.push(summary);
    }
    let rank = |b: &str| {
        ["response", "downtime", "migration", "screen"]
            .iter()
            .position(|n| *n == b)
            .unwrap_or(usize::MAX)
    };
    out.sort_by(|a, b| (rank(&a.bench), &a.bench).cmp(&(rank(&b.bench), &b.bench)));
    Ok(out)
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The CPU model, cores, memory and kernel.
fn host() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |k| k.trim().to_owned());
    format!("{model}, {cores} cores, {mem_gib:.0} GiB, Linux {kernel}, QEMU 7.2")
}

/// Sorted copy of the finite values.
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile `p` of `values` (any order).
pub fn pct(values: &[f64], p: usize) -> Option<f64> {
    crate::bench::percentile(&sorted(values), p)
}

/// Mean of `values`.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A duration in µs.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration in ms.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `value ≤ limit`, `None` when not measured.
pub fn at_most(value: Option<f64>, limit: f64) -> Option<bool> {
    value.map(|v| v <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_round_trip_in_the_suites_order() {
        let dir = std::env::temp_dir().join(format!("dmore-suite-test-{}", std::process::id()));
        for bench in ["screen", "response", "extra", "migration"] {
            let run = Run::start(&dir, bench, format!("dmore bench {bench}"), true)
                .expect("results folder");
            run.write_samples(&[1.0, 2.0]).expect("samples");
            run.finish(
                "t",
                "KVM",
                vec![Metric::new("m", "ms", Some(2.0), Some(1.0)).target("≤ 1", Some(true))],
                vec![],
                vec![],
            )
            .expect("summary");
        }
        let got = read_summaries(&dir).expect("read back");
        let _ = std::fs::remove_dir_all(&dir);
        let order: Vec<&str> = got.iter().map(|s| s.bench.as_str()).collect();
        assert_eq!(order, ["response", "migration", "screen", "extra"]);
        assert_eq!(got[0].metrics[0].ratio(), Some(0.5));
        assert!(got[0].machine.contains("cores"), "{}", got[0].machine);
    }
}

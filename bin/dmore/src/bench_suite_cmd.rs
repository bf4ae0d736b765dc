//! `dmore bench response | downtime | migration | screen | all | report`: the paper's
//! evaluation beside plain QEMU (scenarios::bench::suite), each writing raw samples, a summary
//! and plots under a results folder.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use scenarios::bench::suite::migration::MigrationBenchOptions;
use scenarios::bench::suite::{downtime, migration, report, response, screen, Summary};
use scenarios::bench::{self, ConsoleSockets};

/// Where the results go, and how long to measure.
#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// The results folder (raw samples, summaries, plots).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// A few samples each, in seconds: checks the output's form, measures nothing worth
    /// reading.
    #[arg(long)]
    quick: bool,
}

/// `dmore bench migration`'s choices.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrationArgs {
    #[command(flatten)]
    pub(crate) suite: SuiteArgs,
    /// Guest sizes, MiB, comma-separated (default 128,512,1024,2048; --quick: 128).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<u32>>,
    /// Migrations per size, workload and mode (default 5; --quick: 1).
    #[arg(long)]
    runs: Option<usize>,
}

/// `dmore bench report`'s files.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The results folder to read.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// The markdown page to write (its plots are copied next to it, in a folder named after
    /// it).
    #[arg(long, default_value = "docs/results.md")]
    page: PathBuf,
}

/// Which bench of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Key response and screen update.
    Response,
    /// Per-migration downtime, takeover, viewer gap, keys lost.
    Downtime,
    /// Migration time and downtime against memory size.
    Migration,
    /// Bytes, CPU and fps per encoding.
    Screen,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Response => "response",
            Which::Downtime => "downtime",
            Which::Migration => "migration",
            Which::Screen => "screen",
        }
    }
}

fn command(name: &str, args: &SuiteArgs) -> String {
    format!(
        "cargo run --release -p dmore -- bench {name} --out {}{}",
        args.out.display(),
        if args.quick { " --quick" } else { "" }
    )
}

/// Runs one bench and prints its table.
pub fn run_one(
    which: Which,
    args: &SuiteArgs,
    migration: Option<&MigrationArgs>,
) -> anyhow::Result<Summary> {
    if cfg!(debug_assertions) && !args.quick {
        eprintln!(
            "note: this is a debug build; measure with `cargo run --release -p dmore -- bench ...`"
        );
    }
    let exe = std::env::current_exe().context("finding the dmore binary to run its consoles")?;
    let launch = |s: &ConsoleSockets<'_>| bench::console_command(&exe, s);
    let progress = |what: &str| eprintln!("bench {}: {what}", which.name());
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (out, quick) = (args.out.as_path(), args.quick);
    let cmd = command(which.name(), args);
    let summary = runtime
        .block_on(async {
            match which {
                Which::Response => response::run(out, cmd, quick, launch, progress).await,
                Which::Downtime => downtime::run(out, cmd, quick, exe.clone(), progress).await,
                Which::Screen => screen::run(out, cmd, quick, launch, progress).await,
                Which::Migration => {
                    let mut options = MigrationBenchOptions::new(quick);
                    let mut cmd = cmd;
                    if let Some(m) = migration {
                        if let Some(sizes) = &m.sizes {
                            options.sizes.clone_from(sizes);
                            cmd.push_str(&format!(
                                " --sizes {}",
                                sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                            ));
                        }
                        if let Some(runs) = m.runs {
                            options.runs = runs;
                            cmd.push_str(&format!(" --runs {runs}"));
                        }
                    }
                    migration::run(out, cmd, &options, quick, exe.clone(), progress).await
                }
            }
        })
        .with_context(|| {
            format!(
                "dmore bench {} (needs qemu-system-x86_64 and root for the test hosts; see .ci/setup)",
                which.name()
            )
        })?;
    println!("{}", report::text(&summary));
    Ok(summary)
}

/// `dmore bench all`: every bench in turn, then the page in the results folder.
pub fn run_all(args: &SuiteArgs) -> anyhow::Result<()> {
    for which in [
        Which::Response,
        Which::Downtime,
        Which::Migration,
        Which::Screen,
    ] {
        run_one(which, args, None)?;
    }
    let page = args.out.join("results.md");
    write_report(&args.out, &page)
}

/// `dmore bench report`.
pub fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    write_report(&args.out, &args.page)
}

fn write_report(results: &Path, page: &Path) -> anyhow::Result<()> {
    let summaries = report::write(results, page)
        .with_context(|| format!("writing {} from {}", page.display(), results.display()))?;
    anyhow::ensure!(
        !summaries.is_empty(),
        "no *.summary.json in {}: run `dmore bench all --out {}` first",
        results.display(),
        results.display()
    );
    println!(
        "wrote {} ({} benches: {})",
        page.display(),
        summaries.len(),
        summaries
            .iter()
            .map(|s| s.bench.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

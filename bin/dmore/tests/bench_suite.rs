//! `dmore bench all --quick` as CI runs it: every bench of the suite runs on real QEMU with a
//! few samples and its output is well formed (raw samples that parse, a summary per bench with
//! figures, PNG plots, the markdown page naming every bench and target). No timing is
//! asserted: a missed target is a figure, not a failure.

use std::path::Path;
use std::process::Command;

use scenarios::bench::suite::read_summaries;

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
}

#[test]
fn the_quick_suite_writes_samples_summaries_plots_and_the_page() {
    let out = tempfile::tempdir().expect("a scratch folder");
    let status = Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["bench", "all", "--quick", "--out"])
        .arg(out.path())
        .status()
        .expect("running dmore bench all --quick");
    assert!(status.success(), "dmore bench all --quick: {status}");

    let summaries = read_summaries(out.path()).expect("the summaries parse");
    let benches: Vec<&str> = summaries.iter().map(|s| s.bench.as_str()).collect();
    assert_eq!(benches, ["response", "downtime", "migration", "screen"]);
    for s in &summaries {
        assert!(s.quick, "{} says it was not --quick", s.bench);
        assert!(!s.metrics.is_empty(), "{} has no figures", s.bench);
        assert!(
            s.metrics.iter().any(|m| m.dmore.is_some()),
            "{} measured nothing of dmore: {:?}",
            s.bench,
            s.metrics
        );
        assert!(!s.plots.is_empty(), "{} drew no plot", s.bench);
        for plot in &s.plots {
            assert!(is_png(&out.path().join(plot)), "{plot} is not a PNG");
        }
        let raw = std::fs::read_to_string(out.path().join(format!("{}.json", s.bench)))
            .expect("the raw samples");
        serde_json::from_str::<serde_json::Value>(&raw).expect("the raw samples are JSON");
    }

    let page = std::fs::read_to_string(out.path().join("results.md")).expect("the page");
    assert!(page.contains("## Targets"), "{page}");
    for s in &summaries {
        assert!(page.contains(&format!("## `{}`", s.bench)), "{page}");
        for m in s.metrics.iter().filter(|m| m.target.is_some()) {
            assert!(page.contains(&m.name), "the page lacks {}", m.name);
        }
        for plot in &s.plots {
            assert!(
                page.contains(&format!("(./{plot})")),
                "the page lacks {plot}"
            );
        }
    }
}

//! `dmore bench serial --quick` on real QEMU (the tiny guest's COM2): the run completes and
//! prints well-formed figures for both paths (bytes arrived on each, echoes measured on each,
//! both targets judged) and the output gap of one co-migration through the serial lane and
//! through `ssh` at the gateway (network namespaces: root). No timing is asserted: the figures
//! are printed, not judged here.

use std::process::Command;

/// The number before `unit` after the first `key` in `line`.
fn figure(line: &str, key: &str, unit: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find(unit)?;
    rest[..end].trim().parse().ok()
}

#[test]
fn the_quick_serial_bench_prints_both_paths() {
    let out = Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["bench", "serial", "--quick"])
        .output()
        .expect("running dmore bench serial");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "dmore bench serial --quick failed");
    let line = |start: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}"))
    };
    let tp = line("output throughput");
    for (key, unit) in [("direct", "B/s"), ("dmore", "B/s")] {
        let v = figure(tp, key, unit).unwrap_or_else(|| panic!("{key} in {tp:?}"));
        assert!(v > 0.0, "no byte arrived on the {key} path: {tp}");
    }
    let ratio: Option<f64> = tp.split("ratio").nth(1).and_then(|r| r.trim().parse().ok());
    assert!(ratio.is_some(), "no ratio in {tp:?}");
    let echo = line("keystroke echo (100 + 100 samples)");
    for key in ["direct p50", "dmore p50", "p99"] {
        let v = figure(echo, key, "µs").unwrap_or_else(|| panic!("{key} in {echo:?}"));
        assert!(v > 0.0, "{key} of no echo: {echo}");
    }
    line("round 1: direct");
    line("console CPU over its windows");
    let gap = line("move 1: output gap");
    for key in ["serial lane", "ssh via the gateway"] {
        let v = figure(gap, key, "ms").unwrap_or_else(|| panic!("{key} in {gap:?}"));
        assert!(v > 0.0, "no output gap measured through the {key}: {gap}");
    }
    for target in ["target throughput", "target echo p50"] {
        let l = line(target);
        assert!(l.contains(": met (") || l.contains(": MISSED ("), "{l}");
    }
}

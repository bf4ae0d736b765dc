//! `dmore bench console` with small numbers: every measurement produces data (every key
//! reported by the guest, every frame matched on both clients, RSS > 0). No timed assertion:
//! the figures are printed, not checked.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use scenarios::bench::{self, BenchOptions, ConsoleSockets};

const CHILD_ENV: &str = "DMORE_BENCH_TEST_CONSOLE";

/// The console process: this test binary re-executed into this function (the `dmore` binary
/// is not built for a library's tests).
#[test]
fn console_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (vnc, qmp) = spec.split_once('\n').expect("vnc and qmp paths");
    let config = console::front::ConsoleConfig {
        link: console::back::LinkConfig::new(PathBuf::from(vnc), PathBuf::from(qmp)),
        listen: "127.0.0.1:0".parse().expect("address"),
        access: console::front::Access {
            insecure_no_auth: true,
            ..console::front::Access::default()
        },
        name: "dmore-bench".into(),
        control: None,
        restore_from: None,
        migration: None,
        qemu_wait: console::front::DEFAULT_QEMU_WAIT,
        lossy: false,
        serial: None,
        gateway: None,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let code = match rt.block_on(console::front::run(config)) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("console child failed: {e}");
            3
        }
    };
    std::process::exit(code);
}

fn launch(s: &ConsoleSockets<'_>) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("test binary"));
    c.args([
        "--exact",
        "console_child",
        "--nocapture",
        "--test-threads=1",
    ]);
    let mut spec = s.vnc.to_string_lossy().into_owned();
    spec.push('\n');
    spec.push_str(&s.qmp.to_string_lossy());
    c.env(CHILD_ENV, spec);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_measurement_produces_data() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let options = BenchOptions {
        keys: 50,
        frames: 20,
        window: Duration::from_secs(1),
        ..BenchOptions::default()
    };
    let report = bench::run(&options, launch, |what| eprintln!("bench: {what}")).await?;
    println!("{report}");
    assert_eq!(report.keys.direct.len(), 25, "every direct key reported");
    assert_eq!(report.keys.console.len(), 25, "every console key reported");
    assert_eq!(report.small.diffs_ns.len(), 20, "every small frame matched");
    assert_eq!(
        report.full.diffs_ns.len(),
        20,
        "every full-screen frame matched"
    );
    assert_eq!(report.load.len(), 6, "1, 4, 16 viewers at two screen sizes");
    for row in &report.load {
        assert!(row.rss_kib > 0, "RSS measured: {row:?}");
        assert!(
            row.updates_per_viewer_s > 0.0,
            "viewers received updates: {row:?}"
        );
    }
    Ok(())
}

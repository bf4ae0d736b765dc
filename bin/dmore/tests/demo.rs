//! The demo's promise on real hosts, real QEMU and real `dmore console` processes: a viewer
//! typing a key every 10 ms and clicking every 100 ms keeps its one connection across
//! co-migrations A → B → A, and the guest receives every key and click once, in order.
//! Skipped (with a note) where network namespaces cannot be made (not root).

use std::time::Duration;

use scenarios::cobed::{CoBed, CoBedOptions};
use scenarios::demo::{self, DemoError, DemoOptions};
use scenarios::steady::{SteadyConfig, SteadyViewer};

/// The bed, or `None` (with a note) where the testbed fell back to loopback (not root).
async fn bed() -> anyhow::Result<Option<CoBed>> {
    Ok(CoBed::start_or_skip(CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"))).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_comigrations_lose_nothing_and_keep_the_connection() -> anyhow::Result<()> {
    let Some(mut bed) = bed().await? else {
        return Ok(());
    };
    let viewer = SteadyViewer::connect_from(
        bed.testbed().client(),
        bed.service(),
        SteadyConfig::default(),
    )
    .await?;
    let before = viewer.snapshot();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=2 {
        let (from, to) = (bed.home(), bed.other());
        let timeline = bed.migrate(false).await?;
        println!("migration {n} {from:?} -> {to:?}:\n{}", timeline.render());
        assert_eq!(bed.home(), to);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let count = bed.count_session(viewer, None).await?;
    let (keys, clicks, log) = (count.keys, count.clicks, count.log);
    println!(
        "keys {keys:?}; clicks sent {} received {}; updates {}; connection kept: {}",
        clicks.0,
        clicks.1,
        log.updates.len(),
        log.connection_kept()
    );
    if std::env::var_os("DEMO_TEST_LOGS").is_some() {
        for host in ["a", "b"] {
            for n in 1..=3 {
                let path = bed
                    .testbed()
                    .run_dir()
                    .join(host)
                    .join(format!("vm{n}/console.stderr"));
                if let Ok(text) = std::fs::read_to_string(&path) {
                    println!("==== {}\n{text}", path.display());
                }
            }
        }
    }
    assert!(log.connection_kept(), "dropped: {:?}", log.dropped);
    assert_eq!(log.local, before.local, "the same 4-tuple throughout");
    assert!(keys.sent > 100, "the viewer typed: {keys:?}");
    assert!(keys.exact(), "every key once, in order: {keys:?}");
    assert_eq!(clicks.0, clicks.1, "every click once");
    Ok(())
}

/// The demo's library entry, as `dmore demo --migrations 2 --no-baseline` runs it.
async fn demo_run() -> anyhow::Result<()> {
    let mut options = DemoOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.migrations = 2;
    options.baseline = false;
    let report = match demo::run(&options, |e| println!("{e:?}")).await {
        Err(DemoError::Bed(e)) if e.needs_namespaces() => {
            testbed::skip::skip(
                "demo",
                "the demo needs root (network namespaces, TCP_REPAIR)",
            );
            return Ok(());
        }
        other => other?,
    };
    println!("{report}");
    assert_eq!(report.rows.len(), 2);
    assert!(report.connection_kept, "{report:?}");
    assert!(
        report.keys.sent > 100,
        "the viewer typed: {:?}",
        report.keys
    );
    assert!(
        report.keys.exact(),
        "every key once, in order: {:?}",
        report.keys
    );
    assert_eq!(report.clicks.0, report.clicks.1, "every click once");
    let capture = report.capture.as_ref().expect("the demo captures");
    assert_eq!(capture.connections.len(), 1, "one 4-tuple: {capture:?}");
    let flags = capture.total();
    assert_eq!((flags.syn, flags.fin, flags.rst), (1, 0, 0), "{capture:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_loses_nothing_over_one_connection_while_the_mouse_moves() -> anyhow::Result<()> {
    demo_run().await
}

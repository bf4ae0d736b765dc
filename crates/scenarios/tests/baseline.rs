//! The baseline on real hosts and real QEMU, once per workload: a viewer straight on QEMU's VNC
//! loses its connection and the keys typed until it reconnects, while the guest's key counter
//! carries on at the destination.

use std::time::Duration;

use scenarios::baseline::{self, BaselineOptions};

#[tokio::test]
async fn a_plain_console_drops_and_loses_keys_across_a_migration() -> anyhow::Result<()> {
    let options = BaselineOptions {
        runs: 1,
        reconnect_delays: vec![Duration::from_secs(1)],
        typing: Duration::from_millis(800),
        ..BaselineOptions::default()
    };
    let report = baseline::run(&options, |r| println!("{r:?}")).await?;
    println!("{report}");
    assert_eq!(report.runs.len(), 2, "one run idle, one dirtying memory");
    for run in &report.runs {
        assert!(
            run.dropped,
            "the viewer's connection survived a plain migration: {run:?}"
        );
        assert_eq!(run.typed, run.sent + run.lost_while_disconnected());
        // 1 s without a connection at a key per 50 ms: about 20 keys typed into the void.
        assert!(run.lost_while_disconnected() >= 10, "{run:?}");
        // Keys reached the guest before and after the migration (the counter continued on B).
        assert!(
            run.received > run.typed / 2 && run.received < run.typed,
            "{run:?}"
        );
    }
    Ok(())
}

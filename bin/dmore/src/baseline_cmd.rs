//! `dmore baseline`: measures what a plain QEMU console loses across a live migration.

use std::time::Duration;

use anyhow::Context;
use scenarios::baseline::{self, BaselineOptions, Workload};

/// Measure the "before" column: keys a viewer connected straight to QEMU's own VNC server loses
/// when the VM live-migrates.
///
/// Creates test hosts A, B and a client (network namespaces when run as root, loopback
/// otherwise), boots the test guest on A, and has a scripted viewer on the client type a key
/// every 50 ms into QEMU's VNC while the VM migrates to B. The source QEMU then exits, as a
/// cloud's manager ends it; the viewer reconnects to B after a delay, as a user with a bookmark
/// (1 s) or noVNC's automatic reconnect (5 s) would. The guest counts every key it received.
///
/// Example: `dmore baseline --runs 20`  (about 8 minutes; `--runs 2` for a quick look)
#[derive(clap::Args, Debug)]
pub struct BaselineArgs {
    /// Migrations per workload and reconnect delay.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Reconnect delays to measure, in seconds (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 5.0])]
    reconnect_delay: Vec<f64>,
    /// Time between two keys, ms.
    #[arg(long, default_value_t = 50)]
    key_interval_ms: u64,
    /// Also measure with the guest dirtying this many MiB (0: idle only).
    #[arg(long, default_value_t = 64)]
    dirty_mib: u32,
    /// ... at this rate, MiB/s (64 converges under QEMU's defaults; see crates/guest).
    #[arg(long, default_value_t = 64)]
    dirty_rate: u32,
}

/// Runs the baseline and prints a line per run and the table.
pub fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let mut workloads = vec![Workload::Idle];
    if args.dirty_mib > 0 {
        workloads.push(Workload::Dirty {
            mib: args.dirty_mib,
            rate_mib_s: args.dirty_rate,
        });
    }
    let reconnect_delays = args
        .reconnect_delay
        .iter()
        .map(|&s| {
            Duration::try_from_secs_f64(s).context("--reconnect-delay takes seconds, e.g. 1,5")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = BaselineOptions {
        runs: args.runs,
        workloads,
        reconnect_delays,
        key_interval: Duration::from_millis(args.key_interval_ms),
        ..BaselineOptions::default()
    };
    let total = options.runs * options.workloads.len() * options.reconnect_delays.len();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut done = 0;
    let report = runtime
        .block_on(baseline::run(&options, |r| {
            done += 1;
            println!(
                "run {done:>3}/{total}: {:<24} reconnect {:.0}s: typed {:>3}, reached the guest {:>3}, lost {:>3} \
                 ({} in the switchover, {} while disconnected), connection {}, VM downtime {} ms",
                r.workload.to_string(),
                r.reconnect_delay.as_secs_f64(),
                r.typed,
                r.received,
                r.lost(),
                r.lost_in_switchover(),
                r.lost_while_disconnected(),
                if r.dropped { "dropped" } else { "kept" },
                r.downtime_ms.map_or("?".into(), |d| d.to_string()),
            );
        }))
        .context("measuring the baseline (run as root for network-namespace hosts; see .ci/setup for QEMU)")?;
    println!("\nBaseline: a viewer on QEMU's own VNC server across a live migration\n{report}");
    Ok(())
}

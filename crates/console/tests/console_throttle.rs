//! Auto-converge throttling the source's vCPU during a migration must not overrun QEMU's PS/2
//! keyboard queue under keys typed through the console. A guest dirtying 16 MiB at 64 MiB/s
//! is migrated (dmore's `migrate::vm`) at 8 MiB/s with `auto-converge` and
//! `cpu-throttle-initial` 99 % (QEMU's highest: the vCPU sleeps 990 ms after each 10 ms it
//! runs; `DMORE_THROTTLE_INITIAL` sets another) while a viewer types 100 keys/s
//! (`DMORE_TYPE_MS`: ms between keys); QEMU's PS/2 trace then tells how many bytes its queue
//! dropped. The console holds input while the guest's vCPU has not run since QEMU took the
//! last keys (`journal::guest`): none may be dropped. Without that gate the same run dropped
//! 280 bytes (140 presses) at 99 % and 16–313 at 90 %.
//! `cargo test -p console --test console_throttle -- --nocapture` (~7 s).

mod console_support;

use std::time::{Duration, Instant};

use console_support::*;
use migrate::vm::{Migration, MigrationOptions, Phase};
use serde_json::json;
use testbed::ps2trace;
use testbed::qemu::{Qemu, QemuConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The destination: the same guest, `-incoming defer`.
async fn launch_destination(dir: &std::path::Path) -> anyhow::Result<Qemu> {
    let mut cfg = QemuConfig::new(dir.join("dst"));
    cfg.key_delay_ms = Some(0);
    cfg.incoming = true;
    cfg.guest.dirty_mib = 16;
    cfg.guest.dirty_rate_mib_s = 64;
    Ok(Qemu::launch(cfg).await?)
}

/// Wall-clock times (seconds since the epoch) of the trace's `migration_throttle` lines: each
/// a step of auto-converge.
fn throttle_steps(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(":migration_throttle"))
        .filter_map(|l| l.split_once('@')?.1.split_once(':')?.0.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_converge_throttling_does_not_overrun_the_ps2_queue() -> anyhow::Result<()> {
    let initial = env_u64("DMORE_THROTTLE_INITIAL", 99);
    let gap = Duration::from_millis(env_u64("DMORE_TYPE_MS", 10));
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("dmT-").tempdir()?;
    let guest = guest::GuestOptions {
        dirty_mib: 16,
        dirty_rate_mib_s: 64,
        ..guest::GuestOptions::default()
    };
    let throttle_trace = vec!["-trace".into(), "migration_throttle".into()];
    let vm = launch_vm_with(dir.path(), guest, throttle_trace).await?;
    let dst = launch_destination(dir.path()).await?;
    let console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;
    let viewer = Viewer::tcp(console.addr, None).await?;

    vm.qmp()
        .execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
        )
        .await?;
    vm.qmp()
        .execute(
            "migrate-set-parameters",
            json!({"cpu-throttle-initial": initial, "max-bandwidth": 8u64 << 20}),
        )
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mark = ps2_mark(dir.path())?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let mut migration =
        Migration::start(vm.qmp(), dst.qmp(), &uri, MigrationOptions::default()).await?;
    let mut typed = 0u64;
    let mut highest = 0u64;
    let typing = async {
        let text = "abcdefghijklmnopqrstuvwxyz";
        for c in text.chars().cycle() {
            viewer.type_text(&c.to_string()).await?;
            typed += 1;
            if typed.is_multiple_of(10) {
                let m = vm.qmp().execute("query-migrate", json!({})).await?;
                let pct = m["cpu-throttle-percentage"].as_u64().unwrap_or(0);
                highest = highest.max(pct);
            }
            tokio::time::sleep(gap).await;
        }
        anyhow::Ok(())
    };
    let phase = tokio::select! {
        phase = migration.run() => phase?,
        ended = typing => { ended?; anyhow::bail!("typing ended") }
    };
    let report = migration.report();
    drop(migration);
    anyhow::ensure!(phase == Phase::Completed, "migration ended {phase:?}");

    let log = std::fs::read_to_string(ps2_log(dir.path()))?;
    let steps = throttle_steps(&log);
    let trace = ps2trace::tally(&log);
    let pacing = ps2::pacing()?;
    let got = trace.key_events.len().saturating_sub(mark);
    let dropped: Vec<&ps2trace::KeyEvent> = trace
        .key_events
        .get(mark..)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.dropped)
        .collect();
    let first_step = steps.first().copied();
    let after_step = trace
        .drops
        .iter()
        .filter(|d| first_step.is_some_and(|s| d.time.is_some_and(|t| t >= s)))
        .count();
    let starved = trace
        .drops
        .iter()
        .filter(|d| d.guest_starved(&pacing))
        .count();
    let longest_unread = trace
        .drops
        .iter()
        .filter_map(|d| d.unread_for)
        .fold(0.0f64, f64::max);
    let last_drop = trace.drops.last().and_then(|d| d.time);
    println!(
        "[{}] cpu-throttle-initial {initial} %, 8 MiB/s, 16 MiB dirtied at 64 MiB/s: migration \
         {:?} ms (downtime {:?} ms); auto-converge stepped {} times, first {:?} s after the \
         start, highest throttle polled {highest} %",
        if testbed::qemu::kvm_usable() {
            "kvm+qboot"
        } else {
            "tcg"
        },
        report.total_time_ms,
        report.downtime_ms,
        steps.len(),
        first_step.map(|s| s - started),
    );
    println!(
        "typed {typed} keys ({} ms apart) through the console; the source QEMU got {got} key \
         events and its PS/2 queue dropped {} of them ({} bytes, {} presses), {after_step} \
         bytes after the first throttle step, the last {:?} s after the start; {starved} bytes \
         dropped with the guest unread longer than the console's pacing fills the queue \
         (longest unread {:.0} ms); test ran {:?}",
        gap.as_millis(),
        dropped.len(),
        trace.drops.len(),
        trace.drops.iter().filter(|d| d.press).count(),
        last_drop.map(|t| t - started),
        longest_unread * 1e3,
        t0.elapsed()
    );
    anyhow::ensure!(
        !steps.is_empty(),
        "auto-converge never throttled the vCPU: the run proves nothing"
    );
    anyhow::ensure!(
        got > 0,
        "the source QEMU got no key events: the run proves nothing"
    );
    anyhow::ensure!(
        trace.drops.is_empty(),
        "QEMU's PS/2 queue dropped {} bytes of keys the console sent to a throttled vCPU",
        trace.drops.len()
    );
    Ok(())
}

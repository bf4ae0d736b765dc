//! 300 keys typed while the VM is held paused by a migration (`pause-before-switchover`, held
//! at `pre-switchover`), end to end: through the console *process*, from an RFB viewer on
//! TCP, every key reaches the guest once, in order, after `migrate_cancel` lets the VM run
//! (or QEMU's PS/2 trace forgives it: `ps2_support`);
//! the same 300 keys typed by a viewer straight on QEMU's VNC are all lost.

mod console_support;

use std::time::Instant;

use console_support::*;
use migrate::vm::{Migration, MigrationOptions, Phase};
use testbed::qemu::{Qemu, QemuConfig};

/// The destination of the migration: the same guest, started with `-incoming defer`.
async fn launch_destination(dir: &std::path::Path) -> anyhow::Result<Qemu> {
    let mut cfg = QemuConfig::new(dir.join("dst"));
    cfg.key_delay_ms = Some(0);
    cfg.incoming = true;
    Ok(Qemu::launch(cfg).await?)
}

fn cycle(alphabet: &str, n: usize) -> String {
    alphabet.chars().cycle().take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_keys_typed_during_a_held_migration_arrive_once_after_cancel() -> anyhow::Result<()>
{
    let t0 = Instant::now();
    let dir = tempfile::Builder::new().prefix("dmP-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let dst = launch_destination(dir.path()).await?;
    let console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;
    let viewer = Viewer::tcp(console.addr, None).await?;
    let mut direct = Viewer::direct(&vm).await?;

    // Both paths work while the VM runs.
    viewer.type_text("z").await?;
    assert_eq!(read_keys(&mut vm, 2).await?, expected_keys("z"));
    direct.type_text("z").await?;
    assert_eq!(read_keys(&mut vm, 2).await?, expected_keys("z"));

    // Migrate to a destination and hold the source paused at `pre-switchover`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let opts = MigrationOptions {
        pause_before_switchover: true,
        ..MigrationOptions::default()
    };
    let mut migration = Migration::start(vm.qmp(), dst.qmp(), &uri, opts).await?;
    assert_eq!(migration.run().await?, Phase::PreSwitchover);
    assert_eq!(vm.qmp().query_status().await?.status, "finish-migrate");
    console
        .wait_status("VM stopped", |s| s["vm_running"] == false)
        .await?;

    // Straight to QEMU's VNC first: 300 digits, then a fence proving QEMU has handled
    // (dropped) them all before the VM runs again.
    let direct_text = cycle("0123456789", 300);
    direct.type_text(&direct_text).await?;
    direct.fence().await?;

    // Through the console: 300 letters, all held by the console while the VM is paused.
    let text = cycle("abcdefghijklmnopqrstuvwxy", 300);
    let mark = ps2_mark(dir.path())?;
    viewer.type_text(&text).await?;
    let s = console
        .wait_status("all keys held", |s| s["held"] == 2 * text.len())
        .await?;
    eprintln!("console while held at pre-switchover: {s}");

    migration.cancel().await?;
    let t_resume = Instant::now();
    let report = migration.report();
    drop(migration);
    eprintln!("migration cancelled: {report:?}");

    // Every console key once, in order, then the console's marker (a letter the text has
    // not).
    let got = read_keys_through(&mut vm, &viewer, "z").await?;
    let replay = t_resume.elapsed();
    let digits: Vec<u16> = expected_keys(&direct_text).iter().map(|k| k.1).collect();
    let direct_arrived = got.iter().filter(|k| digits.contains(&k.1)).count();
    assert_eq!(direct_arrived, 0, "direct VNC keys reached the guest");
    let want = expected_keys(&format!("{text}z"));
    check_keys(dir.path(), "held at pre-switchover", mark, &want, &got)?;
    // The next report is the marker's, typed straight on QEMU's VNC now that the VM runs:
    // no console key came twice and none of the 600 direct events arrived late.
    assert_no_more_keys(&mut vm, &direct, "z").await?;
    let s = console.status().await?;
    eprintln!("console after the resume: {s}");
    assert_eq!(s["link_uncertain"], 0, "{s}");
    println!(
        "held migration (pre-switchover, cancelled): through the console {} events \
         arrived of {} typed (replayed in {replay:?} after the cancel); straight on QEMU's \
         VNC {direct_arrived} of {} arrived; test ran {:?}",
        got.len(),
        want.len(),
        2 * direct_text.len(),
        t0.elapsed()
    );
    Ok(())
}

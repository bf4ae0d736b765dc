//! Freeze and restore across processes: a console holding input for a paused VM is frozen and
//! taken over by a fresh console process, which receives the viewer's live socket. Every held
//! key reaches the guest exactly once after the VM runs, and the viewer's ZRLE stream (one
//! inflater across both processes) keeps decoding to QEMU's exact screen.

mod console_support;

use console_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_freeze_restore_in_a_fresh_process() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmI-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let mut old = ConsoleProc::spawn(&vm, dir.path(), "old", None, None).await?;
    let viewer = Viewer::tcp(old.addr, None).await?;
    let direct = Viewer::direct(&vm).await?;

    // Some ZRLE traffic before the freeze, so the viewer's inflater has history.
    viewer.type_text("pre").await?;
    assert_eq!(read_keys(&mut vm, 6).await?, expected_keys("pre"));
    screens_match(&direct, &[&viewer]).await?;

    // Pause the VM; once the console has seen it, typed keys are held.
    vm.qmp().stop().await?;
    old.wait_status("VM stopped", |s| s["vm_running"] == false)
        .await?;
    let held = "heldkeys";
    let mark = ps2_mark(dir.path())?;
    viewer.type_text(held).await?;
    let s = old
        .wait_status("all keys held", |s| s["held"] == 2 * held.len())
        .await?;
    eprintln!("old console before the freeze: {s}");

    // A fresh process takes over: it freezes the old one and receives the viewer's socket.
    let new = ConsoleProc::spawn(&vm, dir.path(), "new", None, Some(&old.control)).await?;
    let exit = old.wait_exit().await?;
    assert!(exit.success(), "old console: {exit}");
    let s = new
        .wait_status("viewer restored", |s| s["viewers"] == 1)
        .await?;
    eprintln!("new console after the restore: {s}");

    vm.qmp().cont().await?;
    // Every held key once (nothing twice: the next reports are the marker's).
    let got = read_keys_through(&mut vm, &viewer, "post").await?;
    let typed = expected_keys(&format!("{held}post"));
    check_keys(dir.path(), "held across processes", mark, &typed, &got)?;
    // The same viewer connection, its inflater continuing across both processes.
    screens_match(&direct, &[&viewer]).await?;
    assert!(viewer.alive());
    let s = new.status().await?;
    eprintln!("new console at the end: {s}");
    Ok(())
}

/// One journal, carried whole: keys typed while the VM is paused sit in the link's journal —
/// some of them refused by QEMU (`VM not running`) after a brief `cont`/`stop` let the link
/// start replaying — the console is frozen, a fresh process restores that journal, and after
/// `cont` every key arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_freeze_carries_the_links_journal_with_refused_batches() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmM-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let old = ConsoleProc::spawn(&vm, dir.path(), "old", None, None).await?;
    let viewer = Viewer::tcp(old.addr, None).await?;

    vm.qmp().stop().await?;
    old.wait_status("VM stopped", |s| s["vm_running"] == false)
        .await?;
    let text: String = "abcdefghijklmnopqrstuvwxyz"
        .chars()
        .cycle()
        .take(100)
        .collect();
    let mark = ps2_mark(dir.path())?;
    viewer.type_text(&text).await?;
    old.wait_status("all keys in the link's journal", |s| {
        s["held"] == 2 * text.len()
    })
    .await?;

    // Let the VM run for an instant: the link starts replaying, and a batch it sent reaches
    // QEMU after the `stop` (which is shorter, and QEMU reads QMP a byte at a time).
    let mut tries = 0;
    let s = loop {
        tries += 1;
        vm.qmp().cont().await?;
        vm.qmp().stop().await?;
        let s = old
            .wait_status("VM stopped again", |s| s["vm_running"] == false)
            .await?;
        if s["link_qmp_not_running"].as_u64().unwrap_or(0) > 0 || tries >= 30 {
            break s;
        }
    };
    eprintln!("old console after {tries} cont/stop: {s}");
    anyhow::ensure!(
        s["link_qmp_not_running"].as_u64().unwrap_or(0) > 0,
        "no batch met `VM not running` in {tries} tries: {s}"
    );

    let new = ConsoleProc::spawn(&vm, dir.path(), "new", None, Some(&old.control)).await?;
    let mut old = old;
    let exit = old.wait_exit().await?;
    assert!(exit.success(), "old console: {exit}");
    let s = new
        .wait_status("viewer restored", |s| s["viewers"] == 1)
        .await?;
    eprintln!("new console after the restore: {s}");
    assert_eq!(
        s["vm_running"], false,
        "the restored console knows the VM is paused"
    );
    assert!(s["held"].as_u64().unwrap_or(0) > 0);

    vm.qmp().cont().await?;
    let got = read_keys_through(&mut vm, &viewer, "1").await?;
    let typed = expected_keys(&format!("{text}1"));
    check_keys(dir.path(), "the carried journal", mark, &typed, &got)?;
    let s = new.status().await?;
    eprintln!("new console at the end: {s}");
    assert_eq!(s["link_uncertain"], 0);
    Ok(())
}

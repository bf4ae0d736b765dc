//! QEMU going away under a serving console (a crash, a kill) does not drop the session: the
//! viewers stay connected and are told through the desktop name (DesktopName, -307), input
//! typed meanwhile is discarded and counted (never delivered), and when the VM is started
//! again on the same sockets the console re-attaches and serves the same viewers the new
//! screen. Past `qemu_wait` without QEMU, the console closes its viewers and exits non-zero.

mod console_support;

use std::time::{Duration, Instant};

use console_support::*;

const GONE: &str = "QEMU has gone";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_keeps_its_viewers_while_qemu_is_restarted() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmG-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let console = ConsoleProc::spawn_qemu_wait(&vm, dir.path(), "c", DEADLINE).await?;
    let mut named = Viewer::tcp_named(console.addr).await?;
    let plain = Viewer::tcp(console.addr, None).await?;
    assert_eq!(named.wait_name(|_| true).await?, "dmore-test");
    named.type_text("ab").await?;
    assert_eq!(read_keys(&mut vm, 4).await?, expected_keys("ab"));

    // QEMU killed (SIGKILL: a crash).
    drop(vm);
    console
        .wait_status("QEMU gone", |s| s["qemu"] == "gone")
        .await?;
    let name = named.wait_name(|n| n.contains(GONE)).await?;
    println!("desktop name while QEMU is gone: {name:?}");
    named.type_text("xy").await?;
    plain.type_text("z").await?;
    let s = console
        .wait_status("typed input discarded", |s| s["input_discarded"] == 6)
        .await?;
    assert_eq!(s["viewers"], 2, "{s}");
    assert!(named.alive() && plain.alive(), "a viewer was closed");
    // A viewer arriving meanwhile is admitted and learns it from ServerInit.
    let mut late = Viewer::tcp_named(console.addr).await?;
    assert!(late.wait_name(|_| true).await?.contains(GONE));

    // The VM started again on the same sockets (a manager restarting it).
    let mut vm = launch_vm(dir.path(), false).await?;
    let s = console
        .wait_status("re-attached", |s| s["qemu"] == "attached")
        .await?;
    assert_eq!(s["reattached"], 1, "{s}");
    assert_eq!(named.wait_name(|n| !n.contains(GONE)).await?, "dmore-test");
    assert_eq!(late.wait_name(|n| !n.contains(GONE)).await?, "dmore-test");
    named.type_text("cd").await?;
    plain.type_text("e").await?;
    late.type_text("f").await?;
    // Only what was typed after the re-attach reaches the new VM: nothing discarded did.
    let mut got = read_keys(&mut vm, 8).await?;
    got.sort_unstable();
    let mut want = expected_keys("cdef");
    want.sort_unstable();
    assert_eq!(got, want);
    assert_no_more_keys(&mut vm, &named, "g").await?;
    let s = console.status().await?;
    assert_eq!(s["input_discarded"], 6, "{s}");
    assert_eq!(s["viewers"], 3, "{s}");
    let direct = Viewer::direct(&vm).await?;
    screens_match(&direct, &[&named, &plain, &late]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_gives_up_after_qemu_wait_and_exits_non_zero() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmG-").tempdir()?;
    let vm = launch_vm(dir.path(), false).await?;
    let mut console =
        ConsoleProc::spawn_qemu_wait(&vm, dir.path(), "c", Duration::from_secs(2)).await?;
    let mut viewer = Viewer::tcp_named(console.addr).await?;
    // Its first update answers a request sent after its SetEncodings: DesktopName is known.
    let deadline = Instant::now() + DEADLINE;
    while viewer.framebuffer().is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no first update");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vm.shutdown(Duration::from_secs(10)).await?;
    viewer.wait_name(|n| n.contains(GONE)).await?;
    let status = console.wait_exit().await?;
    assert_eq!(status.code(), Some(3), "console exit: {status}");
    // The viewer was closed, not left hanging.
    let deadline = Instant::now() + DEADLINE;
    while viewer.alive() {
        anyhow::ensure!(Instant::now() < deadline, "the viewer was never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Settling: a console that just took over (a fresh process restored from a frozen one) holds
/// input for the paused VM when QEMU is killed. The held input goes with that QEMU (the VM is
/// gone); the viewer stays, and the VM started again gets only what is typed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_settling_after_a_takeover_keeps_its_viewer_when_qemu_dies() -> anyhow::Result<()>
{
    let dir = tempfile::Builder::new().prefix("dmG-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let old = ConsoleProc::spawn(&vm, dir.path(), "old", None, None).await?;
    let mut viewer = Viewer::tcp_named(old.addr).await?;
    viewer.type_text("a").await?;
    assert_eq!(read_keys(&mut vm, 2).await?, expected_keys("a"));
    vm.qmp().stop().await?;
    old.wait_status("VM stopped", |s| s["vm_running"] == false)
        .await?;
    viewer.type_text("bc").await?;
    old.wait_status("keys held", |s| s["held"] == 4).await?;
    let new = ConsoleProc::spawn(&vm, dir.path(), "new", None, Some(&old.control)).await?;
    new.wait_status("viewer restored, keys held", |s| {
        s["viewers"] == 1 && s["held"] == 4
    })
    .await?;

    drop(vm);
    new.wait_status("QEMU gone", |s| s["qemu"] == "gone")
        .await?;
    viewer.wait_name(|n| n.contains(GONE)).await?;
    viewer.type_text("d").await?;
    new.wait_status("typed input discarded", |s| s["input_discarded"] == 2)
        .await?;
    assert!(viewer.alive(), "the viewer was closed");

    let mut vm = launch_vm(dir.path(), false).await?;
    new.wait_status("re-attached", |s| s["reattached"] == 1)
        .await?;
    viewer.wait_name(|n| !n.contains(GONE)).await?;
    viewer.type_text("e").await?;
    assert_eq!(read_keys(&mut vm, 2).await?, expected_keys("e"));
    assert_no_more_keys(&mut vm, &viewer, "g").await?;
    let direct = Viewer::direct(&vm).await?;
    screens_match(&direct, &[&viewer]).await?;
    Ok(())
}

//! Held input at its bound: with the VM paused, a viewer types more keys than the journal
//! holds; the console stops reading that viewer (nothing dropped), and after `cont` every key
//! arrives exactly once, in order (or, QEMU's PS/2 trace shows, was dropped by QEMU's own
//! queue while the guest did not run: `ps2_support`).

mod console_support;

use console_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_full_journal_stops_reading_the_viewer_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmI-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;
    let viewer = Viewer::tcp(console.addr, None).await?;
    let other = Viewer::tcp(console.addr, None).await?;

    vm.qmp().stop().await?;
    console
        .wait_status("VM stopped", |s| s["vm_running"] == false)
        .await?;
    // 2100 keys = 4200 events, beyond the bound of 4096 held events.
    let text: String = "abcdefghijklmnopqrstuvwxyz"
        .chars()
        .cycle()
        .take(2100)
        .collect();
    let mark = ps2_mark(dir.path())?;
    viewer.type_text(&text).await?;
    let s = console
        .wait_status("the journal full and the viewer refused", |s| {
            s["held"] == 4096 && s["viewer_list"][0]["blocked"].as_u64().unwrap_or(0) > 0
        })
        .await?;
    eprintln!("at the bound: {s}");
    // The other viewer is still served while the first waits.
    let direct = Viewer::direct(&vm).await?;
    screens_match(&direct, &[&other]).await?;

    vm.qmp().cont().await?;
    // Every key once, in order, then the marker the same viewer typed after them.
    let got = read_keys_through(&mut vm, &viewer, "1").await?;
    let typed = expected_keys(&format!("{text}1"));
    check_keys(dir.path(), "4,200 held keys", mark, &typed, &got)?;
    assert_no_more_keys(&mut vm, &other, "z").await?;
    let s = console.status().await?;
    eprintln!("after the resume: {s}");
    Ok(())
}

//! Two RFB-crate viewers and vncdotool share one console process on real QEMU: each one's keys
//! reach the guest exactly once and in order, and both viewers end with QEMU's exact screen.

mod console_support;

use console_support::*;
use testbed::viewers::{Vncdo, VncdoEncoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_two_viewers_and_vncdo_share_one_console() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmI-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;
    let a = Viewer::tcp(console.addr, None).await?;
    let b = Viewer::tcp(console.addr, None).await?;
    let direct = Viewer::direct(&vm).await?;

    a.type_text("abc").await?;
    assert_eq!(read_keys(&mut vm, 6).await?, expected_keys("abc"));
    b.type_text("defg").await?;
    assert_eq!(read_keys(&mut vm, 8).await?, expected_keys("defg"));
    let vncdo = Vncdo::new(
        format!("127.0.0.1::{}", console.addr.port()),
        None,
        VncdoEncoding::Raw,
    );
    vncdo.type_text("hij").await?;
    assert_eq!(read_keys(&mut vm, 6).await?, expected_keys("hij"));
    // Interleaved: each viewer's own order holds, nothing doubles.
    a.type_text("kl").await?;
    b.type_text("mn").await?;
    let mut got = read_keys(&mut vm, 8).await?;
    got.sort();
    let mut want = [expected_keys("kl"), expected_keys("mn")].concat();
    want.sort();
    assert_eq!(got, want);
    assert_no_more_keys(&mut vm, &a, "z").await?;

    screens_match(&direct, &[&a, &b]).await?;
    let s = console.status().await?;
    eprintln!("console status after the test: {s}");
    assert_eq!(s["viewers"], 2, "{s}");
    Ok(())
}

//! Viewer access: a view-only viewer asking for an exclusive session does not disconnect the
//! full-access viewers, and wrong passwords from one address make that address wait (others
//! are not held).

mod console_support;

use console_support::*;
use std::net::SocketAddr;
use std::time::Duration;

/// An RFB client from `from` (a loopback address) to the console.
async fn viewer_from(
    from: &str,
    console: SocketAddr,
    password: &str,
    shared: bool,
) -> anyhow::Result<Viewer> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.parse()?, 0))?;
    let stream = sock.connect(console).await?;
    connect_viewer_shared(stream, Some(password), shared).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_only_cannot_evict_and_wrong_passwords_back_off() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmA-").tempdir()?;
    let vm = launch_vm(dir.path(), false).await?;
    let console = ConsoleProc::spawn_with(
        &vm,
        dir.path(),
        "c",
        (Some("full-pass"), Some("view-pass")),
        None,
    )
    .await?;

    let full = viewer_from("127.0.0.1", console.addr, "full-pass", true).await?;
    let _exclusive = viewer_from("127.0.0.1", console.addr, "view-pass", false).await?;
    let s = console
        .wait_status("both viewers", |s| s["viewers"] == 2)
        .await?;
    assert!(full.alive(), "the full-access viewer stays: {s}");

    // Three wrong passwords cost nothing; the fourth makes 127.0.0.3 wait.
    for _ in 0..4 {
        assert!(viewer_from("127.0.0.3", console.addr, "guess", true)
            .await
            .is_err());
    }
    // The console has counted every failure once no handshake is in progress.
    console
        .wait_status("the failures counted", |s| s["handshakes"] == 0)
        .await?;
    let held = viewer_from("127.0.0.3", console.addr, "full-pass", true).await;
    assert!(held.is_err(), "even the right password waits its turn");
    let other = viewer_from("127.0.0.4", console.addr, "full-pass", true).await;
    assert!(other.is_ok(), "another address is not held");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = viewer_from("127.0.0.3", console.addr, "full-pass", true).await;
    assert!(after.is_ok(), "after the wait the right password works");
    assert!(full.alive());
    Ok(())
}

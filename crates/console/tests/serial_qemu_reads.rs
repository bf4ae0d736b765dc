//! What QEMU 7.2 reads from a serial chardev socket, measured the way the serial lane measures
//! it (one byte per `write()`, `SIOCOUTQ` over a one-byte write's memory): a stopped VM's
//! QEMU fills the 16550A's FIFO up to the receive trigger level the guest set (14 here, FCR
//! 0xc7: `serial_can_receive` offers `itl - count` while the count is at most the trigger
//! level, so from an empty FIFO it stops at the trigger level, short of the FIFO's 16) and
//! not one byte more, however long it waits; a running guest that reads its UART takes
//! everything.
//! These are the facts the lane's exactly-once input rests on (module docs of
//! `console::serial`).

use anyhow::Context as _;
use console::front::serial::WriteUnit;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::time::Duration;
use testbed::qemu::{Qemu, QemuConfig};

/// Bytes written to the paused VM's socket: more than the FIFO takes.
const WRITTEN: usize = 40;
/// The receive trigger level the tiny guest sets (FCR 0xc7).
const TRIGGER: usize = 14;

#[tokio::test]
async fn a_stopped_vm_reads_what_the_fifo_takes_and_no_more() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("dmore-serial-")
        .tempdir_in("/tmp")?;
    let mut cfg = QemuConfig::new(dir.path());
    cfg.guest.uart_ms = 1000;
    cfg.serial_console = true;
    let mut qemu = Qemu::launch(cfg).await?;
    qemu.wait_ready(Duration::from_secs(60)).await?;
    let path = qemu.serial_console_path().context("serial console")?;
    let mut sock = std::os::unix::net::UnixStream::connect(path)?;
    let unit = WriteUnit::measure()?;
    let unread = |s: &std::os::unix::net::UnixStream| unit.unread(s.as_raw_fd());

    qemu.qmp().stop().await?;
    for _ in 0..WRITTEN {
        sock.write_all(b"a")?;
    }
    // However long the stopped VM waits, QEMU fills the FIFO to the trigger level, no more.
    let mut seen = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.push(unread(&sock)?);
    }
    println!(
        "one-byte write = {} B of SIOCOUTQ; VM stopped, {WRITTEN} written: unread every 200 ms {seen:?}",
        unit.0
    );
    anyhow::ensure!(
        seen.iter().all(|&u| u == WRITTEN - TRIGGER),
        "a stopped VM's UART took {:?} bytes, not its trigger level's {TRIGGER}",
        seen.iter().map(|u| WRITTEN - u).collect::<Vec<_>>()
    );

    // Running, the guest reads its UART (and echoes): QEMU takes the rest.
    qemu.qmp().cont().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while unread(&sock)? > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the running guest left bytes unread"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("VM running: all {WRITTEN} read");
    qemu.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

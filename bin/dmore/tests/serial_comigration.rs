//! The serial console across co-migrations (the tiny guest's COM2: it echoes and counts what
//! it receives and writes a numbered line every 20 ms). A client attached through the
//! console's serial lane on the service address types a line every 50 ms while the VM
//! co-migrates A → B → A …; every typed byte reached the guest exactly once (the guest's count
//! and its echoes), and the client received exactly what the guest wrote (numbered lines with
//! no gap or repeat, echoes equal to what was typed). Beside it, the baseline: a client on
//! QEMU's own chardev socket, reconnecting to the new QEMU after each plain migration, loses
//! its connection and bytes at each move (printed, and asserted to be lost at least once).
//!
//! Skipped (with a note) where network namespaces cannot be made (not root).

use std::time::Duration;

use anyhow::{ensure, Context as _};
use guest::GuestOptions;
use scenarios::cobed::{CoBed, CoBedOptions};
use scenarios::migrations_from_env;
use scenarios::serial::{SerialClient, LINE_MS};

mod serial_baseline;

/// Bound on the wait for the guest to count every typed byte (a guard, not a timing).
const WAIT: Duration = Duration::from_secs(60);
/// Typing between moves.
const BETWEEN: Duration = Duration::from_millis(700);

/// One bed at a time: each runs two QEMUs and two consoles on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Co-migrations per test; `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 3;

fn serial_guest() -> GuestOptions {
    GuestOptions {
        uart_ms: LINE_MS,
        ..GuestOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_bytes_cross_co_migrations_exactly_once() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.guest = serial_guest();
    options.serial_port = Some(5901);
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let client_host = bed.testbed().client().clone();
    let addr = bed
        .serial_service()
        .context("the bed serves the serial lane")?;
    let client = SerialClient::through_dmore(move || {
        let host = client_host.clone();
        async move {
            let s = scenarios::typist::connect_from(&host, addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }
    });
    tokio::time::sleep(BETWEEN).await;
    let s = client.stream();
    println!(
        "before the moves: client has {} lines, guest counted {:?} of {} typed",
        s.lines.len(),
        s.received(),
        client.typed().len()
    );
    if let Some(ctl) = bed.home_control() {
        let st = console::control::request(ctl, &console::control::Command::Status).await?;
        println!("console's serial lane: {}", st["serial"]);
    }
    let moves = migrations_from_env(MIGRATIONS);
    for n in 1..=moves {
        let (from, to) = (bed.home(), bed.other());
        let t = bed.migrate(false).await?;
        let s = client.stream();
        println!(
            "move {n} {from:?}->{to:?}: VM downtime {:?} ms; client has {} lines, guest counted {:?} of {} typed",
            t.vm_downtime_ms,
            s.lines.len(),
            s.received(),
            client.typed().len()
        );
        tokio::time::sleep(BETWEEN).await;
    }
    let (typed, output, report) = client.finish(WAIT, |n| n).await;
    // An operator attaching on the VM's last host sees the scrollback that moved with it.
    let attach = bed.home_serial_attach().context("the attach socket")?;
    let late = late_viewer(&attach, output.len()).await?;
    let s = scenarios::serial::parse(&output);
    println!(
        "late viewer on {}: scrollback {} B, equal to the client's first {} B: {}",
        attach.display(),
        late.len(),
        late.len().min(output.len()),
        output.starts_with(&late[..late.len().min(output.len())])
    );
    println!(
        "dmore, {moves} moves: {}; link {report:?}",
        s.summary(&typed, &output)
    );
    ensure!(
        late.len() >= output.len() && late.starts_with(&output),
        "the scrollback moved with the console: a viewer attaching after the moves sees all the client saw"
    );
    if let Err(e) = s.check_exact(&typed) {
        let o = String::from_utf8_lossy(&output);
        println!("output's end: {:?}", &o[o.len().saturating_sub(600)..]);
        return Err(e.into());
    }
    let report = report.context("the client's link ended cleanly")?;
    ensure!(
        report.lost == 0,
        "no output lost at a reconnection: {report:?}"
    );
    Ok(())
}

/// What a viewer attaching at `path` gets of the scrollback: its first `want` bytes at least
/// (the header's output offset must be 0: nothing evicted).
async fn late_viewer(path: &std::path::Path, want: usize) -> anyhow::Result<Vec<u8>> {
    use console::serial::Header;
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(path).await?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + WAIT;
    let (header, used) = loop {
        if let Some(h) = Header::parse(&got)? {
            break h;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await??;
        ensure!(n > 0, "the console closed before its header");
        got.extend_from_slice(&buf[..n]);
    };
    ensure!(header.output == 0, "scrollback from the start: {header:?}");
    got.drain(..used);
    while got.len() < want {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await??;
        ensure!(n > 0, "the console closed the late viewer");
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// The baseline: a client on QEMU's own chardev (as `virsh console`), reconnecting after each
/// plain migration, loses its connection and bytes at each move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_a_client_on_qemus_chardev_loses_bytes_at_each_move() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    serial_baseline::run(
        "tiny guest",
        |cfg| cfg.guest = serial_guest(),
        migrations_from_env(MIGRATIONS),
        BETWEEN,
    )
    .await
}

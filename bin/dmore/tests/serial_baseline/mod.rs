//! The serial console's baseline, shared by the serial tests: a client on QEMU's own chardev
//! socket (as `virsh console`), the VM migrated with plain QEMU migrations between hosts A and
//! B, the client reconnecting to the new QEMU's socket 200 ms after the old one closed it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use migrate::vm::{self as migration, MigrationOptions};
use scenarios::serial::SerialClient;
use testbed::hosts::Testbed;
use testbed::qemu::{Qemu, QemuConfig};

/// Runs the baseline on a guest `configure` sets up (its COM2 as the tiny guest's `uart=`),
/// `moves` moves with `between` of typing after each; prints what was lost (`guest` names
/// it) and fails unless the client lost its connection at each move and lost output.
pub async fn run(
    guest: &str,
    configure: impl Fn(&mut QemuConfig),
    moves: usize,
    between: Duration,
) -> anyhow::Result<()> {
    let testbed = match Testbed::create() {
        Ok(t) => t,
        Err(e) if !testbed::skip::on_ci() => {
            println!("skipped: the baseline needs network namespaces ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut generation = 0;
    let mut launch = |host: &testbed::hosts::Host, incoming: bool| {
        generation += 1;
        let mut cfg = host.qemu_config(&format!("b{generation}"));
        configure(&mut cfg);
        cfg.serial_console = true;
        cfg.incoming = incoming;
        Qemu::launch(cfg)
    };
    let mut home = launch(testbed.a(), false).await?;
    home.wait_ready(Duration::from_secs(30)).await?;
    let path = Arc::new(Mutex::new(PathBuf::from(
        home.serial_console_path().context("serial console")?,
    )));
    let client = SerialClient::on_qemu(Arc::clone(&path), Duration::from_millis(200));
    tokio::time::sleep(between).await;
    let mut on_a = true;
    for n in 1..=moves {
        let to = if on_a { testbed.b() } else { testbed.a() };
        let dst = launch(to, true).await?;
        let uri = to.incoming_uri()?;
        let m = match migration::migrate(home.qmp(), dst.qmp(), &uri, MigrationOptions::default())
            .await
        {
            Ok(m) => m,
            Err(e) => {
                println!("source QEMU's stderr: {}", home.stderr());
                println!("destination QEMU's stderr: {}", dst.stderr());
                return Err(e.into());
            }
        };
        *path.lock().unwrap_or_else(|e| e.into_inner()) =
            PathBuf::from(dst.serial_console_path().context("serial console")?);
        let old = std::mem::replace(&mut home, dst);
        let _ = old.qmp().quit().await;
        let _ = old.shutdown(Duration::from_secs(5)).await;
        on_a = !on_a;
        println!("baseline move {n}: VM downtime {:?} ms", m.downtime_ms);
        tokio::time::sleep(between).await;
    }
    let (typed, output, report) = client.finish(Duration::from_secs(5), |n| n).await;
    let _ = home.shutdown(Duration::from_secs(5)).await;
    let s = scenarios::serial::parse(&output);
    let received = s.received().unwrap_or(0) as usize;
    let lost_in = typed.len().saturating_sub(received);
    println!(
        "baseline (QEMU's chardev, {guest}), {moves} moves: connections {:?}; typed {} B, guest received {} B: {} B lost ({:.1} per move); output lines missing {} ({:.1} per move), repeated {}, garbled {}",
        report.map(|r| r.connections),
        typed.len(),
        received,
        lost_in,
        lost_in as f64 / moves as f64,
        s.missing_lines(),
        s.missing_lines() as f64 / moves as f64,
        s.repeated_lines(),
        s.garbled
    );
    ensure!(
        report.is_some_and(|r| r.connections as usize > moves),
        "the plain client lost its connection at each move"
    );
    ensure!(
        s.missing_lines() > 0,
        "the plain client lost output across the moves"
    );
    Ok(())
}

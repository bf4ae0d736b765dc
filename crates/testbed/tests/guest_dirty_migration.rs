//! Measures which dirty rates of the test guest still let a 128 MiB guest migrate over
//! loopback under QEMU's default limits (max-bandwidth 32 MiB/s, downtime-limit 300 ms in
//! QEMU 7.2). A measurement, not a check: `cargo test -p testbed --test guest_dirty_migration
//! -- --ignored --nocapture`. Its figures are in the guest crate's docs.

use std::time::Duration;

use guest::GuestOptions;
use testbed::qemu::{AccelChoice, Qemu, QemuConfig};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);
/// A migration still running after this is taken as not converging.
const GIVE_UP: Duration = Duration::from_secs(40);

async fn migrate_once(dirty_mib: u32, rate: u32) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let guest = GuestOptions {
        dirty_mib,
        dirty_rate_mib_s: rate,
        ..GuestOptions::default()
    };
    let accel = match std::env::var("ACCEL").as_deref() {
        Ok("tcg") => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    };
    let mut src_cfg = QemuConfig::new(dir.path().join("src"));
    src_cfg.guest = guest;
    src_cfg.accel = accel;
    let mut dst_cfg = QemuConfig::new(dir.path().join("dst"));
    dst_cfg.guest = guest;
    dst_cfg.accel = accel;
    dst_cfg.incoming = true;
    let mut src = Qemu::launch(src_cfg).await?;
    src.wait_ready(WAIT).await?;
    let dst = Qemu::launch(dst_cfg).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.qmp().migrate_incoming(&uri).await?;
    // Let the workload run a moment so the region is dirty before the first pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let params = src
        .qmp()
        .execute("query-migrate-parameters", serde_json::Value::Null)
        .await?;
    println!(
        "defaults: max-bandwidth {} B/s, downtime-limit {} ms",
        params["max-bandwidth"], params["downtime-limit"]
    );
    let start = Instant::now();
    src.qmp().migrate(&uri).await?;
    let accel = src.accel();
    let outcome = loop {
        let info = src.qmp().query_migrate().await?;
        match info.status.as_deref() {
            Some("completed") => {
                let info = src.qmp().query_migrate().await?;
                break format!(
                    "converged: total {} ms, downtime {} ms",
                    info.total_time.unwrap_or(0),
                    info.downtime.unwrap_or(0)
                );
            }
            Some("failed") => break format!("failed: {:?}", info.error_desc),
            _ if start.elapsed() > GIVE_UP => {
                let ram = info.ram.unwrap_or_default();
                src.qmp().migrate_cancel().await?;
                break format!(
                    "did not converge in {GIVE_UP:?} (remaining {} KiB, dirty {} pages/s, {:.0} Mbit/s)",
                    ram.remaining.unwrap_or(0) / 1024,
                    ram.dirty_pages_rate.unwrap_or(0),
                    ram.mbps.unwrap_or(0.0)
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    drop(dst);
    src.shutdown(WAIT).await?;
    Ok(format!(
        "{accel} dirty={dirty_mib} MiB rate={rate} MiB/s: {outcome}"
    ))
}

#[tokio::test]
#[ignore = "a measurement that takes minutes; run with --ignored"]
async fn which_dirty_rates_converge() -> anyhow::Result<()> {
    let rates: Vec<u32> = std::env::var("DIRTY_RATES")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 8, 16, 24, 32, 40, 64]);
    let dirty_mib = std::env::var("DIRTY_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    for rate in rates {
        println!("{}", migrate_once(dirty_mib, rate).await?);
    }
    Ok(())
}

//! The baseline: what a plain QEMU console loses when its VM live-migrates.
//!
//! A scripted viewer on the client host types a key every 50 ms into QEMU's own VNC server on
//! host A while the VM migrates to host B. As a managed cloud does, the source QEMU exits once
//! the migration completes; the viewer's connection drops and, like a user with a bookmark (or
//! noVNC's automatic reconnect), it connects to B after a stated delay. The guest reports every
//! key it received on its serial port, so the keys lost are counted, not estimated:
//!
//! ```text
//!  client ──VNC──> A: QEMU (guest counts keys) ──migrate──> B: QEMU (count continues)
//!     │  typing ......... paused ... dropped ── reconnect_delay ── connect to B ── typing
//!     │                   └ lost: dropped by QEMU    └ lost: typed while disconnected
//! ```

mod report;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest::report::Report;
use guest::GuestOptions;
use migrate::vm::{self as migration, MigrationOptions};
use testbed::hosts::{Host, HostsError, Testbed};
use testbed::qemu::Qemu;
use tokio::sync::watch;

pub use report::{BaselineReport, RunResult, Workload};

use crate::typist::{self, TypistConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BaselineOptions {
    /// Migrations per workload and reconnect delay.
    pub runs: usize,
    /// Guest workloads to measure under.
    pub workloads: Vec<Workload>,
    /// How long the viewer waits before reconnecting after a drop.
    pub reconnect_delays: Vec<Duration>,
    /// Time between two keys.
    pub key_interval: Duration,
    /// Typing before the migration starts, and after the viewer reconnected.
    pub typing: Duration,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

impl Default for BaselineOptions {
    /// 20 runs each, idle and dirtying 64 MiB at 64 MiB/s (which converges, see the guest's
    /// docs), reconnecting after 1 s and after noVNC's default 5 s, a key every 50 ms, a
    /// 128 MiB guest.
    fn default() -> Self {
        BaselineOptions {
            runs: 20,
            workloads: vec![
                Workload::Idle,
                Workload::Dirty {
                    mib: 64,
                    rate_mib_s: 64,
                },
            ],
            reconnect_delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
            key_interval: Duration::from_millis(50),
            typing: Duration::from_millis(1500),
            memory_mib: 128,
        }
    }
}

/// Why the baseline could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The test hosts could not be made.
    #[error("creating the test hosts")]
    Hosts(#[from] HostsError),
    /// QEMU did not start.
    #[error("starting QEMU on host {host}")]
    Launch {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: testbed::qemu::LaunchError,
    },
    /// The guest did not come up.
    #[error("the guest on host {host} did not come up")]
    Guest {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: testbed::qemu::SerialError,
    },
    /// The migration failed.
    #[error("migrating A -> B")]
    Migrate(#[from] migration::MigrateError),
    /// No port for QEMU's VNC display was free.
    #[error("no free VNC port (5900-5999) on host {0}")]
    NoVncPort(&'static str),
    /// The scripted viewer's task failed.
    #[error("the scripted viewer failed")]
    Typist(#[from] tokio::task::JoinError),
}

/// Measures every workload × reconnect delay `runs` times on one set of test hosts, calling
/// `progress` after each run.
pub async fn run(
    options: &BaselineOptions,
    mut progress: impl FnMut(&RunResult),
) -> Result<BaselineReport, BaselineError> {
    let testbed = Testbed::create()?;
    tracing::info!(mode = %testbed.mode(), "test hosts ready");
    let mut report = BaselineReport::default();
    for &workload in &options.workloads {
        for &delay in &options.reconnect_delays {
            for _ in 0..options.runs {
                let result = one_migration(&testbed, options, workload, delay).await?;
                progress(&result);
                report.runs.push(result);
            }
        }
    }
    Ok(report)
}

/// A port for a VNC display (QEMU wants 5900 + display number) free on `host`.
fn free_vnc_port(host: &Host) -> Result<u16, BaselineError> {
    let ip = host.ip();
    let port = host
        .run(move || (5900..6000).find(|&port| std::net::TcpListener::bind((ip, port)).is_ok()))?;
    port.ok_or(BaselineError::NoVncPort(host.name()))
}

/// QEMU on `host` with its own VNC display on TCP and no console (plain QEMU), waiting for
/// the guest unless `incoming`; also the plain side of `dmore bench migration`.
pub(crate) async fn launch(
    host: &Host,
    name: &str,
    guest: GuestOptions,
    memory_mib: u32,
    incoming: bool,
) -> Result<(Qemu, SocketAddr), BaselineError> {
    let vnc = SocketAddr::from((host.ip(), free_vnc_port(host)?));
    let mut cfg = host.qemu_config(name);
    cfg.memory_mib = memory_mib;
    cfg.guest = guest;
    cfg.incoming = incoming;
    cfg.vnc_tcp = Some(vnc);
    let mut qemu = Qemu::launch(cfg)
        .await
        .map_err(|source| BaselineError::Launch {
            host: host.name(),
            source,
        })?;
    if !incoming {
        qemu.wait_ready(Duration::from_secs(30))
            .await
            .map_err(|source| BaselineError::Guest {
                host: host.name(),
                source,
            })?;
    }
    Ok((qemu, vnc))
}

/// Key presses the guest reported, until its serial port closed or was quiet for `quiet`.
async fn key_presses(qemu: &mut Qemu, quiet: Duration) -> usize {
    let mut presses = 0;
    while let Ok(Some(report)) = tokio::time::timeout(quiet, qemu.serial().recv()).await {
        if matches!(report, Report::Key { down: true, .. }) {
            presses += 1;
        }
    }
    presses
}

async fn one_migration(
    testbed: &Testbed,
    options: &BaselineOptions,
    workload: Workload,
    reconnect_delay: Duration,
) -> Result<RunResult, BaselineError> {
    let guest = match workload {
        Workload::Idle => GuestOptions::default(),
        Workload::Dirty { mib, rate_mib_s } => GuestOptions {
            dirty_mib: mib,
            dirty_rate_mib_s: rate_mib_s,
            ..GuestOptions::default()
        },
    };
    let (mut src, src_vnc) = launch(testbed.a(), "src", guest, options.memory_mib, false).await?;
    let (mut dst, dst_vnc) = launch(testbed.b(), "dst", guest, options.memory_mib, true).await?;

    // The viewer's bookmark: where the console is now.
    let console_at = Arc::new(Mutex::new(src_vnc));
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = testbed.client().clone();
    let target = Arc::clone(&console_at);
    let config = TypistConfig {
        interval: options.key_interval,
        reconnect_delay,
    };
    let typist = tokio::spawn(typist::type_until(
        config,
        move || {
            let addr = *target.lock().unwrap_or_else(|e| e.into_inner());
            let client = client.clone();
            async move { typist::connect_from(&client, addr).await }
        },
        stop_rx,
    ));

    tokio::time::sleep(options.typing).await;
    let uri = testbed.b().incoming_uri()?;
    let migrated =
        migration::migrate(src.qmp(), dst.qmp(), &uri, MigrationOptions::default()).await?;
    *console_at.lock().unwrap_or_else(|e| e.into_inner()) = dst_vnc;

    // The source QEMU exits at once, as a manager ends it after a successful migration (an
    // optimistic baseline: libvirt's confirm phase takes longer). Its serial port, read to
    // the end, tells every key the guest received on A.
    let _ = src.qmp().quit().await;
    let received_on_a = key_presses(&mut src, Duration::from_secs(2)).await;
    let _ = src.shutdown(Duration::from_secs(5)).await;
    tokio::time::sleep(reconnect_delay + options.typing).await;
    let _ = stop_tx.send(true);
    let log = typist.await?;
    let received_on_b = key_presses(&mut dst, Duration::from_millis(500)).await;
    let _ = dst.shutdown(Duration::from_secs(5)).await;
    Ok(RunResult::new(
        workload,
        reconnect_delay,
        &log,
        received_on_a + received_on_b,
        migrated.downtime_ms,
    ))
}

//! `dmore migrate`: one co-migration of a VM and its console, driven end to end.
//!
//! The orchestrator talks to four endpoints: the two QEMUs' *main* QMP monitors (never the
//! consoles' own monitors) and the two consoles' control sockets.
//!
//! ```text
//!  source console        orchestrator                    destination console
//!      |  <-- version, status --+-- version, status -->        |  (Waiting)
//!      |  <-- prepare DEST ----|                               |
//!      |  ====== connects, pre-copies its screen =============>|
//!      |  <-- migration-started|                               |
//!      |          src QEMU <-- migrate (dst: migrate-incoming) |
//!      |          ... polls query-migrate (Progress::Precopy)  |
//!  STOP: freezes, sends its snapshot =========================>|  (Ready)
//!      |   [--hold-switchover: wait Ready -->, then migrate-continue]
//!      |          completed, dst QEMU runs (RESUME) ---------->|  takes over
//!      |                       |-- wait Serving -------------->|  (Serving)
//!      |                       |-- status: comigration figures>|
//!    exits        src QEMU <-- quit (unless --keep-source)
//! ```
//!
//! **Failure guarantee**: if [`comigrate`] fails before the destination VM runs, it has
//! cancelled QEMU's migration, seen the source VM run again and told the source console
//! (`migration-ended`): the VM and its console stay on the source, and the error says so. If
//! it fails after (the destination console does not reach `Serving`), the source QEMU is left
//! in place and the error says the VM now runs on the destination.

#![warn(missing_docs)]

mod consoles;
mod error;
mod timeline;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use console::control::Command;
use migrate::vm::{MigrateError, Migration, MigrationOptions, Monitor, Phase};
use migrate::Side;

use consoles::{Console, CONTROL_TIMEOUT};
pub use error::OrchestrateError;
pub use timeline::{ConsoleFigures, Timeline};
use watch::{emit, Watch};

/// How long a QMP socket may take to greet us; longer means another client holds it.
const QMP_GREETING: Duration = Duration::from_secs(5);

/// What to migrate where: the four sockets, the addresses, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The source QEMU's main QMP monitor.
    pub source_qmp: PathBuf,
    /// The destination QEMU's main QMP monitor (a QEMU started with `-incoming defer`).
    pub dest_qmp: PathBuf,
    /// Where the destination QEMU listens for the migration stream (`tcp:HOST:PORT`).
    pub incoming_uri: String,
    /// The source console's control socket.
    pub source_console: PathBuf,
    /// The destination console's control socket (a console started with `--incoming`).
    pub dest_console: PathBuf,
    /// The destination console's `--incoming` address, as the source console reaches it.
    pub dest_console_addr: SocketAddr,
    /// Hold the source VM at `pre-switchover` until the destination console is `Ready`
    /// (the console's move then counts in the VM's downtime).
    pub hold_switchover: bool,
    /// QEMU's `events` migration capability (`MIGRATION` events to every monitor).
    pub events: bool,
    /// The limit of each stage: QEMU's migration, the console's readiness, the takeover.
    pub timeout: Duration,
    /// `quit` the source QEMU once the destination console serves.
    pub quit_source: bool,
}

impl Plan {
    /// Checks what can be checked without touching anything.
    pub fn check(&self) -> Result<(), OrchestrateError> {
        let bad = |s: String| Err(OrchestrateError::Plan(s));
        if self.source_qmp == self.dest_qmp {
            return bad(format!(
                "the source and destination QMP sockets are both {}: give each QEMU's own",
                self.source_qmp.display()
            ));
        }
        if self.source_console == self.dest_console {
            return bad(format!(
                "the source and destination consoles are both {}: give each console's own \
                 control socket",
                self.source_console.display()
            ));
        }
        match self.incoming_uri.split_once(':') {
            Some((transport, address)) if !transport.is_empty() && !address.is_empty() => {}
            _ => {
                return bad(format!(
                    "the incoming URI {:?} is not TRANSPORT:ADDRESS (e.g. tcp:10.0.0.2:4444)",
                    self.incoming_uri
                ))
            }
        }
        let addr = self.dest_console_addr;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return bad(format!(
                "the destination console address {addr} must be the IP and port its \
                 `--incoming` listens on, as the source host reaches it"
            ));
        }
        if self.timeout.is_zero() {
            return bad("the timeout must be more than zero".into());
        }
        Ok(())
    }
}

/// Where a co-migration stands, reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Checking and preparing the consoles, connecting to QEMU.
    Preparing,
    /// QEMU pre-copies RAM (bytes, from the source's `query-migrate`; zeros during setup).
    Precopy {
        /// RAM bytes sent so far.
        transferred: u64,
        /// The guest's RAM size.
        total: u64,
        /// Dirty bytes left to send.
        remaining: u64,
    },
    /// The source VM is paused for the switchover (the source console freezes now).
    Switchover,
    /// QEMU is done; waiting for the destination console to serve.
    WaitingForConsole,
    /// Done.
    Done,
}

/// Runs one co-migration as `plan` says and returns its figures; `progress` hears each
/// [`Progress`] (pre-copy updates at every `query-migrate` poll, a few ms apart).
///
/// See the crate docs for the steps and the failure guarantee.
pub async fn comigrate(
    plan: &Plan,
    progress: impl FnMut(&Progress),
) -> Result<Timeline, OrchestrateError> {
    plan.check()?;
    let progress = Mutex::new(progress);
    emit(&progress, &Progress::Preparing);
    let source = Console::new(Side::Source, &plan.source_console);
    let dest = Console::new(Side::Destination, &plan.dest_console);
    for console in [&source, &dest] {
        console.check_version().await?;
        console.check_role().await?;
    }
    let (src, _src_events) = connect_qmp(Side::Source, &plan.source_qmp).await?;
    let (dst, _dst_events) = connect_qmp(Side::Destination, &plan.dest_qmp).await?;
    let timeline = drive(plan, &source, &dest, src.client(), dst.client(), &progress).await?;
    if plan.quit_source {
        if let Err(source) = src.client().quit().await {
            return Err(OrchestrateError::QuitSource {
                timeline: Box::new(timeline),
                source: Box::new(source),
            });
        }
    }
    emit(&progress, &Progress::Done);
    Ok(timeline)
}

/// Connects to a QEMU's main QMP monitor, giving up if it does not greet in time.
async fn connect_qmp(
    side: Side,
    path: &std::path::Path,
) -> Result<(qmp::Connection, qmp::Events), OrchestrateError> {
    match tokio::time::timeout(QMP_GREETING, qmp::Connection::connect(path)).await {
        Err(_) => Err(OrchestrateError::QmpBusy {
            side,
            path: path.to_path_buf(),
            after: QMP_GREETING,
        }),
        Ok(Err(source)) => Err(OrchestrateError::QmpConnect {
            side,
            path: path.to_path_buf(),
            source: Box::new(source),
        }),
        Ok(Ok(pair)) => Ok(pair),
    }
}

/// The co-migration proper, from `prepare` to the destination console serving, over any
/// two monitors (QEMU's in production, scripted ones in tests).
async fn drive<S: Monitor, D: Monitor, P: FnMut(&Progress)>(
    plan: &Plan,
    source: &Console<'_>,
    dest: &Console<'_>,
    src: &S,
    dst: &D,
    progress: &Mutex<P>,
) -> Result<Timeline, OrchestrateError> {
    let started = Instant::now();
    source
        .ask(
            &Command::Prepare(plan.dest_console_addr),
            CONTROL_TIMEOUT,
            "check that --dest-console-addr is the destination console's --incoming address \
             as the source host reaches it, and that both consoles read the same \
             --peer-key-file",
        )
        .await?;
    source
        .ask(
            &Command::MigrationStarted,
            CONTROL_TIMEOUT,
            "see the source console's log",
        )
        .await?;

    let options = MigrationOptions {
        pause_before_switchover: plan.hold_switchover,
        events: plan.events,
        timeout: plan.timeout,
        ..MigrationOptions::default()
    };
    let watch = Watch::new(src, progress);
    let mut migration = match Migration::start(&watch, dst, &plan.incoming_uri, options).await {
        Ok(m) => m,
        Err(e) => return Err(stays_on_source(source, e).await),
    };
    match migration.run().await {
        Err(e) => return Err(stays_on_source(source, e).await),
        Ok(Phase::Completed) => {}
        Ok(Phase::PreSwitchover) => {
            let ready = dest
                .wait(
                    "Ready",
                    plan.timeout,
                    "the destination console did not get the source console's state: see \
                     both consoles' logs",
                )
                .await;
            if let Err(cause) = ready {
                let cancel_error = migration.cancel().await.err().map(Box::new);
                tell_migration_ended(source).await;
                return Err(OrchestrateError::NotReady {
                    cause: Box::new(cause),
                    cancel_error,
                });
            }
            if let Err(e) = migration.proceed().await {
                return Err(stays_on_source(source, e).await);
            }
        }
        Ok(phase) => {
            let e = MigrateError::WrongPhase { call: "run", phase };
            return Err(stays_on_source(source, e).await);
        }
    }

    watch.switchover();
    emit(progress, &Progress::WaitingForConsole);
    dest.wait(
        "Serving",
        plan.timeout,
        "the destination console did not take over: see its log",
    )
    .await
    .map_err(|cause| OrchestrateError::Takeover {
        cause: Box::new(cause),
    })?;
    let total = started.elapsed();
    let figures = match dest
        .ask(&Command::Status, CONTROL_TIMEOUT, "see its log")
        .await
    {
        Ok(status) => ConsoleFigures::from_status(&status),
        Err(e) => {
            tracing::warn!(error = %e, "the destination console serves but gave no figures");
            ConsoleFigures::default()
        }
    };
    Ok(Timeline::new(total, &migration.report(), &figures))
}

/// After QEMU's migration failed (the driver cancelled it and saw the source run again):
/// tells the source console, and returns the error to report.
async fn stays_on_source(source: &Console<'_>, e: MigrateError) -> OrchestrateError {
    tell_migration_ended(source).await;
    OrchestrateError::Migration {
        vm_on_source: !matches!(e, MigrateError::SourceNotRunning { .. }),
        source: Box::new(e),
    }
}

/// `migration-ended` on the source console. A failure here is logged, not returned: the
/// migration's own error matters more, and the console thaws anyway when its VM runs again.
async fn tell_migration_ended(source: &Console<'_>) {
    if let Err(e) = source
        .ask(
            &Command::MigrationEnded,
            CONTROL_TIMEOUT,
            "see the source console's log",
        )
        .await
    {
        tracing::warn!(console = %source.path().display(), error = %e,
            "could not tell the source console that the migration ended");
    }
}

#[cfg(test)]
mod tests;

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
//! **Interrupt** ([`comigrate_until`], Ctrl-C in `dmore migrate`): before the destination VM
//! runs, QEMU's migration is cancelled (`migrate_cancel`), the source VM runs again, the source
//! console is told (`migration-ended`) and serves on, and the result is
//! [`OrchestrateError::Interrupted`]; after it (past the point of no return) the co-migration
//! is finished as if nothing came, and [`Progress::TooLateToCancel`] says so.
//!
//! **Failure guarantee**: if [`comigrate`] fails before the destination VM runs, it has
//! cancelled QEMU's migration, seen the source VM run again and told the source console
//! (`migration-ended`): the VM and its console stay on the source, and the error says so. If
//! it fails after (the destination console does not reach `Serving`), the source QEMU is left
//! in place and the error says the VM now runs on the destination.

#![warn(missing_docs)]

mod consoles;
mod error;
mod interrupt;
mod timeline;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use console::control::Command;
use migrate::vm::{MigrateError, Migration, MigrationOptions, Monitor, Phase};
use migrate::Side;

use consoles::{Console, CONTROL_TIMEOUT};
pub use error::OrchestrateError;
use interrupt::Interrupt;
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
    /// The interrupt came after the destination VM ran: the co-migration is finished anyway.
    TooLateToCancel,
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
    comigrate_until(plan, progress, std::future::pending()).await
}

/// [`comigrate`], stopped cleanly when `interrupt` completes (the operator's Ctrl-C): see
/// the crate docs, "Interrupt".
pub async fn comigrate_until(
    plan: &Plan,
    progress: impl FnMut(&Progress),
    interrupt: impl Future<Output = ()>,
) -> Result<Timeline, OrchestrateError> {
    plan.check()?;
    let progress = Mutex::new(progress);
    let mut interrupt = Interrupt::new(interrupt);
    emit(&progress, &Progress::Preparing);
    let source = Console::new(Side::Source, &plan.source_console);
    let dest = Console::new(Side::Destination, &plan.dest_console);
    for console in [&source, &dest] {
        console.check_version().await?;
        console.check_role().await?;
    }
    let (src, _src_events) = connect_qmp(Side::Source, &plan.source_qmp).await?;
    let (dst, _dst_events) = connect_qmp(Side::Destination, &plan.dest_qmp).await?;
    let steps = Steps {
        plan,
        source: &source,
        dest: &dest,
        progress: &progress,
    };
    let timeline = steps
        .drive(src.client(), dst.client(), &mut interrupt)
        .await?;
    if plan.quit_source {
        let quit = steps.finishing(src.client().quit(), &mut interrupt).await;
        if let Err(source) = quit {
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

/// What every step of one co-migration needs.
struct Steps<'a, P> {
    plan: &'a Plan,
    source: &'a Console<'a>,
    dest: &'a Console<'a>,
    progress: &'a Mutex<P>,
}

/// How the step before the switchover ended.
enum Switch {
    /// The VM runs on the destination.
    Done,
    /// The interrupt came first and the migration was cancelled: the VM runs on the source.
    Cancelled,
}

impl<P: FnMut(&Progress)> Steps<'_, P> {
    /// The co-migration proper, from `prepare` to the destination console serving, over any
    /// two monitors (QEMU's in production, scripted ones in tests).
    async fn drive<S: Monitor, D: Monitor, F: Future<Output = ()>>(
        &self,
        src: &S,
        dst: &D,
        interrupt: &mut Interrupt<F>,
    ) -> Result<Timeline, OrchestrateError> {
        let (plan, source, dest) = (self.plan, self.source, self.dest);
        let started = Instant::now();
        let mut announce = pin!(async {
            source
                .ask(
                    &Command::Prepare(plan.dest_console_addr),
                    CONTROL_TIMEOUT,
                    "check that --dest-console-addr is the destination console's --incoming \
                     address as the source host reaches it, and that both consoles read the \
                     same --peer-key-file",
                )
                .await?;
            source
                .ask(
                    &Command::MigrationStarted,
                    CONTROL_TIMEOUT,
                    "see the source console's log",
                )
                .await
        });
        let interrupted = tokio::select! {
            biased;
            announced = &mut announce => {
                announced?;
                false
            }
            () = interrupt.fired() => true,
        };
        if interrupted {
            // Let the console finish the command it has (a prepare cut short could still
            // connect and announce a migration nobody ends), then undo the announcement.
            let _ = announce.await;
            return Err(self.interrupted(None).await);
        }

        let options = MigrationOptions {
            pause_before_switchover: plan.hold_switchover,
            events: plan.events,
            timeout: plan.timeout,
            ..MigrationOptions::default()
        };
        let watch = Watch::new(src, self.progress);
        let mut migration = match Migration::start(&watch, dst, &plan.incoming_uri, options).await {
            Ok(m) => m,
            Err(e) => return Err(stays_on_source(source, e).await),
        };
        match self.switch(&mut migration, interrupt).await? {
            Switch::Done => {}
            Switch::Cancelled => return Err(self.interrupted(None).await),
        }

        watch.switchover();
        emit(self.progress, &Progress::WaitingForConsole);
        let serving = dest.wait(
            "Serving",
            plan.timeout,
            "the destination console did not take over: see its log",
        );
        self.finishing(serving, interrupt)
            .await
            .map_err(|cause| OrchestrateError::Takeover {
                cause: Box::new(cause),
            })?;
        let total = started.elapsed();
        let status = dest.ask(&Command::Status, CONTROL_TIMEOUT, "see its log");
        let figures = match self.finishing(status, interrupt).await {
            Ok(status) => ConsoleFigures::from_status(&status),
            Err(e) => {
                tracing::warn!(error = %e, "the destination console serves but gave no figures");
                ConsoleFigures::default()
            }
        };
        Ok(Timeline::new(total, &migration.report(), &figures))
    }

    /// QEMU's migration from `migrate` until the destination VM runs (through
    /// `pre-switchover` and the destination console's `Ready` with `--hold-switchover`),
    /// cancelled if the interrupt comes first.
    async fn switch<S: Monitor, D: Monitor, F: Future<Output = ()>>(
        &self,
        migration: &mut Migration<'_, S, D>,
        interrupt: &mut Interrupt<F>,
    ) -> Result<Switch, OrchestrateError> {
        let (plan, source, dest) = (self.plan, self.source, self.dest);
        let reached = tokio::select! {
            biased;
            reached = migration.run() => Some(reached),
            () = interrupt.fired() => None,
        };
        let phase = match reached {
            None => return self.cancel(migration).await,
            Some(Err(e)) => return Err(stays_on_source(source, e).await),
            Some(Ok(phase)) => phase,
        };
        match phase {
            Phase::Completed => Ok(Switch::Done),
            Phase::PreSwitchover => {
                let ready = tokio::select! {
                    biased;
                    ready = dest.wait(
                        "Ready",
                        plan.timeout,
                        "the destination console did not get the source console's state: see \
                         both consoles' logs",
                    ) => Some(ready),
                    () = interrupt.fired() => None,
                };
                match ready {
                    None => return self.cancel(migration).await,
                    Some(Err(cause)) => {
                        let cancel_error = migration.cancel().await.err().map(Box::new);
                        tell_migration_ended(source).await;
                        return Err(OrchestrateError::NotReady {
                            cause: Box::new(cause),
                            cancel_error,
                        });
                    }
                    Some(Ok(_)) => {}
                }
                let proceeded = tokio::select! {
                    biased;
                    proceeded = migration.proceed() => Some(proceeded),
                    () = interrupt.fired() => None,
                };
                match proceeded {
                    None => self.cancel(migration).await,
                    Some(Err(e)) => Err(stays_on_source(source, e).await),
                    Some(Ok(())) => Ok(Switch::Done),
                }
            }
            phase => {
                let e = MigrateError::WrongPhase { call: "run", phase };
                Err(stays_on_source(source, e).await)
            }
        }
    }

    /// The interrupt came during QEMU's migration: cancel it, unless it completed already.
    async fn cancel<S: Monitor, D: Monitor>(
        &self,
        migration: &mut Migration<'_, S, D>,
    ) -> Result<Switch, OrchestrateError> {
        tracing::info!("interrupted: cancelling the migration");
        match migration.interrupt().await {
            Ok(Phase::Completed) => {
                emit(self.progress, &Progress::TooLateToCancel);
                Ok(Switch::Done)
            }
            Ok(_) => Ok(Switch::Cancelled),
            Err(e) => Err(self.interrupted(Some(e)).await),
        }
    }

    /// A step after the destination VM ran: an interrupt now is only reported, the step
    /// finishes.
    async fn finishing<T, F: Future<Output = ()>>(
        &self,
        step: impl Future<Output = T>,
        interrupt: &mut Interrupt<F>,
    ) -> T {
        let mut step = pin!(step);
        tokio::select! {
            biased;
            done = &mut step => return done,
            () = interrupt.fired() => emit(self.progress, &Progress::TooLateToCancel),
        }
        step.await
    }

    /// After an interrupt before the switchover: the source console is told, and asked
    /// where it stands for the error.
    async fn interrupted(&self, cancel_error: Option<MigrateError>) -> OrchestrateError {
        tell_migration_ended(self.source).await;
        let source_console = match self
            .source
            .ask(&Command::Status, CONTROL_TIMEOUT, "see its log")
            .await
        {
            Ok(status) => format!(
                "{}, {} viewer(s)",
                status["phase"].as_str().unwrap_or("?"),
                status["viewers"]
            ),
            Err(e) => format!("no status ({e})"),
        };
        OrchestrateError::Interrupted {
            source_console,
            cancel_error: cancel_error.map(Box::new),
        }
    }
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

//! Drives QEMU's own live migration from one host's QEMU to another's (what `dmore migrate`
//! runs for VMs no manager owns, and what the tests and the baseline use).
//!
//! ```text
//!  dst: migrate-set-capabilities              src: migrate-set-capabilities
//!       (events, return-path)                     (events, return-path,
//!       migrate-incoming tcp:B:PORT                pause-before-switchover)
//!                    |                            migrate tcp:B:PORT
//!                    v                                     |
//!   Setup --> Active --(pause-before-switchover)--> PreSwitchover --continue--+
//!                 \                                        |                  |
//!                  +--------------------------------------(cancel)--> Cancelled (src runs)
//!                  |                                                          v
//!                  +-------------------------------------------------> Completed (dst runs)
//!   any error or `failed` status: migrate_cancel, wait until the source runs, report why
//! ```
//!
//! The driver polls `query-migrate` on the source (it needs no events, so it works whether
//! the `events` capability is on or off). **Failure guarantee**: whenever [`Migration`]
//! returns an error, it has cancelled the migration and seen the source VM `running` again
//! (or says in the error that it could not).
//!
//! `return-path` is always on: without it the source counts a migration `completed` once it
//! has written its last device state, even into a destination that died at the switchover,
//! and stays `postmigrate` — the VM runs nowhere (measured in `dmore`'s fault matrix). With
//! it the source waits for the destination to confirm, and a dead destination fails the
//! migration, so the source can run again.

mod info;

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::Side;

pub use info::{MigrateInfo, MigrationStatus};

/// The QMP commands a migration needs, so that the driver runs on any monitor (the `qmp`
/// crate's client, or a scripted one in tests).
pub trait Monitor {
    /// Runs one QMP command and returns its `return` value, or a human-readable error.
    fn execute(
        &self,
        command: &str,
        args: Value,
    ) -> impl std::future::Future<Output = Result<Value, MonitorError>>;
}

/// A failed QMP command, as the migration driver reports it.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// QEMU answered with an error.
    #[error("QMP error {class}: {desc}")]
    Qmp {
        /// The error class (`GenericError`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The monitor connection failed.
    #[error("QMP connection: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Monitor for qmp::Client {
    async fn execute(&self, command: &str, args: Value) -> Result<Value, MonitorError> {
        qmp::Client::execute(self, command, args)
            .await
            .map_err(|e| match e.qmp_error() {
                Some(q) => MonitorError::Qmp {
                    class: q.class.clone(),
                    desc: q.desc.clone(),
                },
                None => MonitorError::Connection(Box::new(e)),
            })
    }
}

/// Errors of a migration. The source VM has been put back to running unless
/// [`MigrateError::SourceNotRunning`] says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A QMP command failed.
    #[error("{side} QEMU: `{command}` failed: {source}")]
    Command {
        /// `source` or `destination`.
        side: Side,
        /// The command.
        command: String,
        /// The monitor's error.
        #[source]
        source: MonitorError,
    },
    /// A reply did not have the expected shape.
    #[error("{side} QEMU: unexpected reply to `{command}`: {detail}")]
    Reply {
        /// `source` or `destination`.
        side: Side,
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The migration ended in a state other than `completed`.
    #[error("migration ended {status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Failed {
        /// The final status.
        status: MigrationStatus,
        /// QEMU's `error-desc`, if any.
        reason: Option<String>,
    },
    /// The migration did not finish in time (it was cancelled).
    #[error("migration not finished after {0:?} (last status {1}); cancelled")]
    Timeout(Duration, MigrationStatus),
    /// The call was made in a phase where it is not allowed.
    #[error("`{call}` is not allowed in phase {phase}")]
    WrongPhase {
        /// The call.
        call: &'static str,
        /// The phase the migration was in.
        phase: Phase,
    },
    /// After a failure, the source VM did not run again.
    #[error("{cause}; and the source VM did not run again (status {status})")]
    SourceNotRunning {
        /// The failure that made us cancel.
        cause: Box<MigrateError>,
        /// The source's last run state.
        status: String,
    },
    /// The destination did not run after a completed migration.
    #[error("migration completed but the destination is {0}, not running")]
    DestinationNotRunning(String),
}

/// Where a [`Migration`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// RAM is being copied (or set up).
    Running,
    /// The source is paused at `pre-switchover`, waiting for continue or cancel.
    PreSwitchover,
    /// Done: the destination runs.
    Completed,
    /// Cancelled or failed: the source runs.
    Aborted,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::PreSwitchover => "pre-switchover",
            Phase::Completed => "completed",
            Phase::Aborted => "aborted",
        })
    }
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// Turn on `pause-before-switchover` on the source: [`Migration::run`] then stops at
    /// `pre-switchover` and the caller decides ([`Migration::proceed`] or
    /// [`Migration::cancel`]).
    pub pause_before_switchover: bool,
    /// Turn the `events` capability on (on both sides) or off: `MIGRATION` events are then
    /// sent (or not) to every monitor. The driver itself only polls.
    pub events: bool,
    /// How often `query-migrate` is polled.
    pub poll_interval: Duration,
    /// Give up (and cancel) after this long.
    pub timeout: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            pause_before_switchover: false,
            events: true,
            poll_interval: Duration::from_millis(5),
            timeout: Duration::from_secs(120),
        }
    }
}

/// What a finished (or aborted) migration reports.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// The final status (`completed`, `cancelled`, ...).
    pub status: MigrationStatus,
    /// QEMU's total time (ms), from the source's `query-migrate`.
    pub total_time_ms: Option<u64>,
    /// QEMU's VM downtime (ms), from the source's `query-migrate`.
    pub downtime_ms: Option<u64>,
    /// QEMU's setup time (ms).
    pub setup_time_ms: Option<u64>,
    /// RAM bytes transferred.
    pub ram_transferred: Option<u64>,
    /// Wall time measured here, from `migrate` to the end.
    pub wall: Duration,
    /// Number of `query-migrate` polls made.
    pub polls: u32,
    /// Whether the source paused at `pre-switchover`.
    pub paused_at_switchover: bool,
}

/// One live migration in progress, from `migrate` to completion or cancellation.
pub struct Migration<'m, S: Monitor, D: Monitor> {
    src: &'m S,
    dst: &'m D,
    opts: MigrationOptions,
    started: Instant,
    phase: Phase,
    polls: u32,
    paused: bool,
    last: MigrateInfo,
}

impl<S: Monitor, D: Monitor> fmt::Debug for Migration<'_, S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("phase", &self.phase)
            .field("status", &self.last.status)
            .field("polls", &self.polls)
            .finish()
    }
}

/// Migrates and, at `pre-switchover` (if asked for), continues at once; returns the report.
pub async fn migrate<S: Monitor, D: Monitor>(
    src: &S,
    dst: &D,
    uri: &str,
    opts: MigrationOptions,
) -> Result<MigrationReport, MigrateError> {
    let mut m = Migration::start(src, dst, uri, opts).await?;
    if m.run().await? == Phase::PreSwitchover {
        m.proceed().await?;
    }
    Ok(m.report())
}

impl<'m, S: Monitor, D: Monitor> Migration<'m, S, D> {
    /// Sets capabilities on both sides, `migrate-incoming URI` on the destination (a QEMU
    /// started with `-incoming defer`), then `migrate URI` on the source.
    pub async fn start(
        src: &'m S,
        dst: &'m D,
        uri: &str,
        opts: MigrationOptions,
    ) -> Result<Self, MigrateError> {
        let _span = tracing::info_span!("migrate", uri).entered();
        let caps = |pairs: &[(&str, bool)]| {
            let list: Vec<Value> = pairs
                .iter()
                .map(|(c, on)| json!({"capability": c, "state": on}))
                .collect();
            json!({ "capabilities": list })
        };
        call(
            dst,
            Side::Destination,
            "migrate-set-capabilities",
            caps(&[("events", opts.events), ("return-path", true)]),
        )
        .await?;
        call(
            dst,
            Side::Destination,
            "migrate-incoming",
            json!({ "uri": uri }),
        )
        .await?;
        call(
            src,
            Side::Source,
            "migrate-set-capabilities",
            caps(&[
                ("events", opts.events),
                ("return-path", true),
                ("pause-before-switchover", opts.pause_before_switchover),
            ]),
        )
        .await?;
        let started = Instant::now();
        call(src, Side::Source, "migrate", json!({ "uri": uri })).await?;
        tracing::info!("migration started");
        Ok(Migration {
            src,
            dst,
            opts,
            started,
            phase: Phase::Running,
            polls: 0,
            paused: false,
            last: MigrateInfo::default(),
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The last `query-migrate` answer.
    pub fn last_info(&self) -> &MigrateInfo {
        &self.last
    }

    /// Polls until the migration completes or (with `pause-before-switchover`) the source
    /// waits at `pre-switchover`; returns the phase reached. On failure or timeout it cancels
    /// and returns the error with the source running again.
    pub async fn run(&mut self) -> Result<Phase, MigrateError> {
        if self.phase != Phase::Running {
            return Err(MigrateError::WrongPhase {
                call: "run",
                phase: self.phase,
            });
        }
        match self.poll_until_settled().await {
            Ok(phase) => Ok(phase),
            Err(cause) => Err(self.abort(cause).await),
        }
    }

    /// At `pre-switchover`: `migrate-continue`, then polls to completion and checks the
    /// destination runs.
    pub async fn proceed(&mut self) -> Result<(), MigrateError> {
        if self.phase != Phase::PreSwitchover {
            return Err(MigrateError::WrongPhase {
                call: "proceed",
                phase: self.phase,
            });
        }
        let step = async {
            call(
                self.src,
                Side::Source,
                "migrate-continue",
                json!({"state": "pre-switchover"}),
            )
            .await?;
            self.phase = Phase::Running;
            self.poll_until_settled().await
        };
        match step.await {
            Ok(_) => Ok(()),
            Err(cause) => Err(self.abort(cause).await),
        }
    }

    /// Cancels the migration (allowed while running or at `pre-switchover`) and waits until
    /// the source VM runs again.
    pub async fn cancel(&mut self) -> Result<(), MigrateError> {
        if !matches!(self.phase, Phase::Running | Phase::PreSwitchover) {
            return Err(MigrateError::WrongPhase {
                call: "cancel",
                phase: self.phase,
            });
        }
        call(self.src, Side::Source, "migrate_cancel", json!({})).await?;
        self.wait_source_running().await?;
        self.last = self.query().await?;
        self.phase = Phase::Aborted;
        Ok(())
    }

    /// Stops the migration on the operator's word (Ctrl-C), wherever it stands: `migrate_cancel`,
    /// then whichever way QEMU went. Returns [`Phase::Aborted`] once the source VM runs again
    /// and the migration is over (`cancelled`; or still `cancelling` after a while: see
    /// [`last_info`](Self::last_info)),
    /// or [`Phase::Completed`] if the migration had completed already — the destination VM
    /// runs, the point of no return is behind (QEMU ignores a cancel then). Call it after
    /// dropping a [`run`](Self::run) or [`proceed`](Self::proceed) future: the phase they
    /// left is fine whatever it is.
    pub async fn interrupt(&mut self) -> Result<Phase, MigrateError> {
        if self.phase == Phase::Completed {
            return Ok(Phase::Completed);
        }
        call(self.src, Side::Source, "migrate_cancel", json!({})).await?;
        // A running migration is `cancelling` once the cancel returns; a completed one
        // stays `completed`.
        self.last = self.query().await?;
        if self.last.status == MigrationStatus::Completed {
            self.wait_destination_running().await?;
            self.settle_figures().await?;
            self.phase = Phase::Completed;
            return Ok(Phase::Completed);
        }
        self.phase = Phase::Aborted;
        self.wait_source_running().await?;
        // The source runs at once, but a migration thread throttled by `max-bandwidth` stays
        // `cancelling` a while; until it is over no new migration can start.
        let deadline = Instant::now() + SETTLE;
        loop {
            self.last = self.query().await?;
            if self.last.status.is_final() || Instant::now() > deadline {
                return Ok(Phase::Aborted);
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    /// The figures so far (final once the phase is `Completed` or `Aborted`).
    pub fn report(&self) -> MigrationReport {
        MigrationReport {
            status: self.last.status.clone(),
            total_time_ms: self.last.total_time_ms,
            downtime_ms: self.last.downtime_ms,
            setup_time_ms: self.last.setup_time_ms,
            ram_transferred: self.last.ram_transferred,
            wall: self.started.elapsed(),
            polls: self.polls,
            paused_at_switchover: self.paused,
        }
    }

    async fn query(&mut self) -> Result<MigrateInfo, MigrateError> {
        self.polls = self.polls.saturating_add(1);
        let v = call(self.src, Side::Source, "query-migrate", json!({})).await?;
        MigrateInfo::from_json(&v).map_err(|detail| MigrateError::Reply {
            side: Side::Source,
            command: "query-migrate".into(),
            detail,
        })
    }

    async fn poll_until_settled(&mut self) -> Result<Phase, MigrateError> {
        loop {
            let info = self.query().await?;
            let status = info.status.clone();
            self.last = info;
            match status {
                MigrationStatus::Completed => {
                    self.wait_destination_running().await?;
                    self.settle_figures().await?;
                    self.phase = Phase::Completed;
                    tracing::info!(report = ?self.report(), "migration completed");
                    return Ok(Phase::Completed);
                }
                MigrationStatus::PreSwitchover => {
                    self.paused = true;
                    self.phase = Phase::PreSwitchover;
                    return Ok(Phase::PreSwitchover);
                }
                s if s.is_final() => {
                    return Err(MigrateError::Failed {
                        status: s,
                        reason: self.last.error_desc.clone(),
                    })
                }
                s => {
                    if self.started.elapsed() > self.opts.timeout {
                        return Err(MigrateError::Timeout(self.opts.timeout, s));
                    }
                }
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    /// QEMU 7.2 sets `completed` before it computes `total-time` and `downtime`, so a poll
    /// right at completion can read zeros; re-read a few times until they are filled in.
    async fn settle_figures(&mut self) -> Result<(), MigrateError> {
        for _ in 0..FIGURE_RETRIES {
            if self.last.total_time_ms.unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(self.opts.poll_interval).await;
            self.last = self.query().await?;
        }
        Ok(())
    }

    /// Cancels after `cause` and makes sure the source runs; returns the error to report.
    async fn abort(&mut self, cause: MigrateError) -> MigrateError {
        tracing::warn!(error = %cause, "migration failed; cancelling");
        // Cancelling a migration that already failed is harmless (QEMU ignores it).
        let _ = call(self.src, Side::Source, "migrate_cancel", json!({})).await;
        self.phase = Phase::Aborted;
        match self.wait_source_running().await {
            Ok(()) => cause,
            Err(MigrateError::SourceNotRunning { status, .. }) => MigrateError::SourceNotRunning {
                cause: Box::new(cause),
                status,
            },
            Err(other) => MigrateError::SourceNotRunning {
                cause: Box::new(cause),
                status: other.to_string(),
            },
        }
    }

    async fn wait_source_running(&mut self) -> Result<(), MigrateError> {
        let status = wait_running(self.src, Side::Source, self.opts.poll_interval).await?;
        if status == "running" {
            Ok(())
        } else {
            Err(MigrateError::SourceNotRunning {
                cause: Box::new(MigrateError::Failed {
                    status: self.last.status.clone(),
                    reason: self.last.error_desc.clone(),
                }),
                status,
            })
        }
    }

    async fn wait_destination_running(&mut self) -> Result<(), MigrateError> {
        let status = wait_running(self.dst, Side::Destination, self.opts.poll_interval).await?;
        if status == "running" {
            Ok(())
        } else {
            Err(MigrateError::DestinationNotRunning(status))
        }
    }
}

/// How many times [`Migration::settle_figures`] re-reads `query-migrate`.
const FIGURE_RETRIES: u32 = 20;

/// How long a side may take to settle into `running` after a migration ends.
const SETTLE: Duration = Duration::from_secs(10);

/// Polls `query-status` until the VM runs or [`SETTLE`] passes; returns the last run state.
async fn wait_running<M: Monitor>(
    m: &M,
    side: Side,
    interval: Duration,
) -> Result<String, MigrateError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = call(m, side, "query-status", json!({})).await?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        if status == "running" || Instant::now() > deadline {
            return Ok(status);
        }
        tokio::time::sleep(interval).await;
    }
}

async fn call<M: Monitor>(
    m: &M,
    side: Side,
    command: &str,
    args: Value,
) -> Result<Value, MigrateError> {
    m.execute(command, args)
        .await
        .map_err(|source| MigrateError::Command {
            side,
            command: command.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;

    /// A scripted monitor: `query-migrate` answers from a list (the last one repeats),
    /// `query-status` from another (then `running`), everything else `{}` unless it is the
    /// one command scripted to fail. Logs every command.
    #[derive(Default)]
    struct Fake {
        log: RefCell<Vec<String>>,
        migrate: RefCell<VecDeque<Value>>,
        status: RefCell<VecDeque<&'static str>>,
        fail: Option<&'static str>,
    }

    impl Fake {
        fn with_migrate(answers: Vec<Value>) -> Self {
            Fake {
                migrate: RefCell::new(answers.into()),
                ..Fake::default()
            }
        }
        fn log(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    impl Monitor for Fake {
        async fn execute(&self, command: &str, args: Value) -> Result<Value, MonitorError> {
            self.log.borrow_mut().push(match command {
                "migrate-set-capabilities" => format!("{command} {args}"),
                _ => command.to_string(),
            });
            if self.fail == Some(command) {
                return Err(MonitorError::Qmp {
                    class: "GenericError".into(),
                    desc: "scripted".into(),
                });
            }
            Ok(match command {
                "query-migrate" => {
                    let mut q = self.migrate.borrow_mut();
                    if q.len() > 1 {
                        q.pop_front().unwrap_or_default()
                    } else {
                        q.front().cloned().unwrap_or_else(|| json!({}))
                    }
                }
                "query-status" => {
                    let s = self.status.borrow_mut().pop_front().unwrap_or("running");
                    json!({"status": s, "running": s == "running"})
                }
                _ => json!({}),
            })
        }
    }

    fn fast() -> MigrationOptions {
        MigrationOptions {
            poll_interval: Duration::from_millis(1),
            ..MigrationOptions::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn plain_migration_sets_up_both_sides_then_polls_to_completion() {
        let src = Fake::with_migrate(vec![
            json!({"status": "setup"}),
            json!({"status": "active"}),
            json!({"status": "completed", "total-time": 240, "downtime": 7}),
        ]);
        let dst = Fake {
            status: RefCell::new(vec!["inmigrate"].into()),
            ..Fake::default()
        };
        let report = rt()
            .block_on(migrate(&src, &dst, "tcp:10.213.1.11:4444", fast()))
            .unwrap();
        assert_eq!(report.status, MigrationStatus::Completed);
        assert_eq!(
            (report.total_time_ms, report.downtime_ms),
            (Some(240), Some(7))
        );
        assert_eq!(report.polls, 3);
        assert!(!report.paused_at_switchover);
        assert_eq!(
            dst.log(),
            [
                r#"migrate-set-capabilities {"capabilities":[{"capability":"events","state":true},{"capability":"return-path","state":true}]}"#,
                "migrate-incoming",
                "query-status",
                "query-status",
            ]
        );
        let log = src.log();
        assert!(
            log[0].contains(r#""pause-before-switchover","state":false"#),
            "{log:?}"
        );
        assert_eq!(
            log[1..],
            ["migrate", "query-migrate", "query-migrate", "query-migrate"]
        );
    }

    #[test]
    fn an_interrupt_cancels_a_running_migration_and_waits_for_the_source() {
        let src = Fake {
            migrate: RefCell::new(
                vec![
                    json!({"status": "active"}),
                    json!({"status": "cancelling"}),
                    json!({"status": "cancelled"}),
                ]
                .into(),
            ),
            status: RefCell::new(vec!["finish-migrate"].into()),
            ..Fake::default()
        };
        let dst = Fake::default();
        let phase = rt().block_on(async {
            let mut m = Migration::start(&src, &dst, "tcp:10.213.1.11:4444", fast()).await?;
            m.query().await?;
            m.interrupt().await
        });
        assert_eq!(phase.unwrap(), Phase::Aborted);
        let log = src.log();
        assert_eq!(
            log[2..],
            [
                "query-migrate",
                "migrate_cancel",
                "query-migrate",
                "query-status",
                "query-status",
                "query-migrate"
            ]
        );
    }

    #[test]
    fn an_interrupt_after_completion_reports_the_point_of_no_return() {
        let src = Fake::with_migrate(vec![json!({"status": "completed", "total-time": 30})]);
        let dst = Fake::default();
        let phase = rt().block_on(async {
            let mut m = Migration::start(&src, &dst, "tcp:10.213.1.11:4444", fast()).await?;
            m.interrupt().await
        });
        assert_eq!(phase.unwrap(), Phase::Completed);
        assert!(
            dst.log().contains(&"query-status".to_owned()),
            "{:?}",
            dst.log()
        );
    }

    #[test]
    fn figures_read_as_zero_at_completion_are_read_again() {
        let src = Fake::with_migrate(vec![
            json!({"status": "completed", "total-time": 0, "downtime": 0}),
            json!({"status": "completed"}),
            json!({"status": "completed", "total-time": 16, "downtime": 7}),
        ]);
        let dst = Fake::default();
        let report = rt()
            .block_on(migrate(&src, &dst, "tcp:x:1", fast()))
            .unwrap();
        assert_eq!(
            (report.total_time_ms, report.downtime_ms),
            (Some(16), Some(7))
        );
        assert_eq!(report.polls, 3);
    }

    #[test]
    fn pause_before_switchover_stops_there_until_proceed() {
        let src = Fake::with_migrate(vec![
            json!({"status": "active"}),
            json!({"status": "pre-switchover"}),
            json!({"status": "device"}),
            json!({"status": "completed", "downtime": 3}),
        ]);
        let dst = Fake::default();
        let opts = MigrationOptions {
            pause_before_switchover: true,
            events: false,
            ..fast()
        };
        rt().block_on(async {
            let mut m = Migration::start(&src, &dst, "tcp:x:1", opts).await.unwrap();
            assert_eq!(m.run().await.unwrap(), Phase::PreSwitchover);
            assert!(!src.log().contains(&"migrate-continue".to_string()));
            assert!(m.run().await.is_err(), "run twice is a wrong phase");
            m.proceed().await.unwrap();
            assert_eq!(m.phase(), Phase::Completed);
            assert!(m.report().paused_at_switchover);
        });
        let log = src.log();
        assert!(log[0].contains(r#""pause-before-switchover","state":true"#));
        assert!(log[0].contains(r#""events","state":false"#));
        assert!(log.contains(&"migrate-continue".to_string()));
        assert!(!log.contains(&"migrate_cancel".to_string()));
    }

    #[test]
    fn cancel_at_pre_switchover_leaves_the_source_running() {
        let src = Fake::with_migrate(vec![
            json!({"status": "pre-switchover"}),
            json!({"status": "cancelled"}),
        ]);
        src.status
            .borrow_mut()
            .extend(["finish-migrate", "running"]);
        let dst = Fake::default();
        let opts = MigrationOptions {
            pause_before_switchover: true,
            ..fast()
        };
        rt().block_on(async {
            let mut m = Migration::start(&src, &dst, "tcp:x:1", opts).await.unwrap();
            assert_eq!(m.run().await.unwrap(), Phase::PreSwitchover);
            m.cancel().await.unwrap();
            assert_eq!(m.phase(), Phase::Aborted);
            assert_eq!(m.report().status, MigrationStatus::Cancelled);
            assert!(m.proceed().await.is_err(), "no continue after cancel");
        });
        let log = src.log();
        let cancel = log.iter().position(|c| c == "migrate_cancel").unwrap();
        assert_eq!(
            log[cancel + 1..cancel + 3],
            ["query-status", "query-status"]
        );
    }

    #[test]
    fn failed_migration_is_cancelled_and_reports_why() {
        let src = Fake::with_migrate(vec![
            json!({"status": "active"}),
            json!({"status": "failed", "error-desc": "Unable to write to socket"}),
        ]);
        let dst = Fake::default();
        let err = rt()
            .block_on(migrate(&src, &dst, "tcp:x:1", fast()))
            .unwrap_err();
        match &err {
            MigrateError::Failed { status, reason } => {
                assert_eq!(*status, MigrationStatus::Failed);
                assert_eq!(reason.as_deref(), Some("Unable to write to socket"));
            }
            other => panic!("unexpected {other}"),
        }
        let log = src.log();
        assert_eq!(log[log.len() - 2..], ["migrate_cancel", "query-status"]);
    }

    #[test]
    fn source_that_stays_paused_is_reported() {
        // The source fails, then cannot even say its run state.
        let src = Fake {
            fail: Some("query-status"),
            ..Fake::with_migrate(vec![json!({"status": "failed"})])
        };
        let dst = Fake::default();
        let err = rt()
            .block_on(migrate(&src, &dst, "tcp:x:1", fast()))
            .unwrap_err();
        assert!(
            matches!(err, MigrateError::SourceNotRunning { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_refused_migrate_command_is_an_error_naming_the_side() {
        let src = Fake {
            fail: Some("migrate"),
            ..Fake::default()
        };
        let dst = Fake::default();
        let err = rt()
            .block_on(migrate(&src, &dst, "tcp:x:1", fast()))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("source QEMU: `migrate` failed"),
            "{err}"
        );
    }
}

//! What can go wrong in a co-migration, each error saying where the VM and its console are
//! and what to do.

use std::path::PathBuf;
use std::time::Duration;

use console::control::ControlError;
use migrate::vm::MigrateError;
use migrate::Side;

use crate::Timeline;

/// Why [`crate::comigrate`] failed. The messages name the cause and the fix; the source chain
/// carries the lower layers' details.
#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    /// The [`crate::Plan`] contradicts itself (caught before anything is touched).
    #[error("invalid plan: {0}")]
    Plan(String),
    /// A console's control socket could not be reached.
    #[error("the {side} console at {} does not answer: {fix}", path.display())]
    ConsoleDown {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// How to start it.
        fix: String,
        /// The socket error.
        #[source]
        source: Box<ControlError>,
    },
    /// A console did not reply to a command in time.
    #[error(
        "the {side} console at {} did not answer `{command}` within {after:?}: {fix}",
        path.display()
    )]
    ConsoleTimeout {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// How long we waited.
        after: Duration,
        /// What to check.
        fix: &'static str,
    },
    /// A console speaks another control interface (or is not a dmore console).
    #[error(
        "the {side} console at {} answered `version` with {reply}, but this dmore speaks \
         dmore-console control version {}: run the same dmore release on both hosts",
        path.display(), console::control::CONTROL_VERSION
    )]
    ConsoleVersion {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// What it answered.
        reply: String,
    },
    /// A console is in the wrong role for its place in the plan.
    #[error("the {side} console at {} is a {role} console: {fix}", path.display())]
    ConsoleRole {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// The role it reported.
        role: String,
        /// What to give instead.
        fix: &'static str,
    },
    /// A console is in the middle of another migration of its VM.
    #[error(
        "the {side} console at {} is busy with another migration (phase {phase}): one \
         migration of a VM at a time; wait until it ends (or interrupt the `dmore migrate` \
         running it); if none runs, `migration-ended` on its control socket frees it; \
         nothing was touched",
        path.display()
    )]
    Busy {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// The phase it reported.
        phase: String,
    },
    /// A console refused a step of the co-migration.
    #[error("the {side} console at {} refused {step}: {fix}", path.display())]
    ConsoleRefused {
        /// Which console.
        side: Side,
        /// Its control socket.
        path: PathBuf,
        /// The step (a control command).
        step: String,
        /// What to check.
        fix: &'static str,
        /// The console's answer.
        #[source]
        source: Box<ControlError>,
    },
    /// A QEMU's main QMP monitor could not be reached.
    #[error(
        "cannot use the {side} QEMU's QMP monitor at {}: give its main monitor's socket \
         (`-qmp unix:PATH,server=on,wait=off`, not the console's own monitor)",
        path.display()
    )]
    QmpConnect {
        /// Which QEMU.
        side: Side,
        /// The socket.
        path: PathBuf,
        /// The QMP error.
        #[source]
        source: Box<qmp::Error>,
    },
    /// A QMP socket accepted the connection but never greeted: someone else holds it.
    #[error(
        "the {side} QEMU's QMP socket at {} did not greet within {after:?}: another client \
         holds it (a QMP socket serves one client at a time); give the VM's main monitor, \
         not the console's",
        path.display()
    )]
    QmpBusy {
        /// Which QEMU.
        side: Side,
        /// The socket.
        path: PathBuf,
        /// How long we waited.
        after: Duration,
    },
    /// QEMU's migration failed or timed out before the VM ran on the destination; it was
    /// cancelled.
    #[error("the QEMU migration failed; {}", if *vm_on_source {
        "it was cancelled: the VM and its console stay on the source"
    } else {
        "and the source VM did not run again: check both QEMUs (`query-status`)"
    })]
    Migration {
        /// Whether the source VM runs again (the usual case).
        vm_on_source: bool,
        /// The driver's error.
        #[source]
        source: Box<MigrateError>,
    },
    /// With `--hold-switchover`: the destination console was not ready at the switchover,
    /// so the migration was cancelled.
    #[error(
        "the destination console was not ready at the switchover, so the migration was \
         cancelled{}",
        if cancel_error.is_some() {
            " but the cancel failed: check the source QEMU (`query-status`)"
        } else {
            ": the VM and its console stay on the source"
        }
    )]
    NotReady {
        /// Why the console was not ready.
        #[source]
        cause: Box<OrchestrateError>,
        /// The cancel's own failure, if any.
        cancel_error: Option<Box<MigrateError>>,
    },
    /// The operator interrupted the co-migration before the destination VM ran: QEMU's
    /// migration was cancelled and the source console told.
    #[error(
        "interrupted before the switchover: {}",
        if cancel_error.is_some() {
            "cancelling QEMU's migration failed: check the source QEMU (`query-status`)".to_owned()
        } else {
            format!(
                "QEMU's migration was cancelled; the VM runs on the source and its console \
                 serves there (source console: {source_console}); the destination QEMU and \
                 console can be stopped"
            )
        }
    )]
    Interrupted {
        /// The source console's phase and viewers after the cancel, as it reported them.
        source_console: String,
        /// The cancel's own failure, if any.
        #[source]
        cancel_error: Option<Box<MigrateError>>,
    },
    /// The VM runs on the destination, but its console did not take over.
    #[error(
        "the VM now runs on the destination, but its console did not take over: the source \
         QEMU was left in place (not quit); look at the destination console's `status`"
    )]
    Takeover {
        /// What failed.
        #[source]
        cause: Box<OrchestrateError>,
    },
    /// Everything moved, but the source QEMU did not quit.
    #[error(
        "the VM and its console moved, but the source QEMU did not quit: stop it yourself \
         (`quit` on its QMP monitor)"
    )]
    QuitSource {
        /// The co-migration's figures.
        timeline: Box<Timeline>,
        /// The QMP error.
        #[source]
        source: Box<qmp::Error>,
    },
}

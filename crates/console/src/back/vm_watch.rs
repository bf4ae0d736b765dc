//! Where the VM and its migration are, inferred from what QEMU and the console say: a sans-I/O
//! step. The link feeds it QMP events, the answer to the `query-status` it asked after a
//! `STOP`, and the console's own announcements; it hands back decisions the link carries out
//! (tell the journal, tell the console, ask QEMU). No sockets, no clock.
//!
//! Call order: one `handle_*` call, then [`VmWatch::poll_decision`] until `None`, carrying out
//! each decision in the order given (the journal must hear "migration ended" before "VM
//! resumed"). A new watch starts with one decision queued: turn `events` on at attach.
//!
//! ```text
//!            MIGRATION setup/active/..., announce(true)
//!   ┌──────┐ ───────────────────────────────────────────▶ ┌───────────┐
//!   │ none │                                              │ announced │
//!   └──────┘ ◀─────────────────────────────────────────── └───────────┘
//!    │    ▲    MIGRATION completed (VM stopped; any phase),      ▲
//!    │    │    failed or cancelled, announce(false),             │ MIGRATION setup/...,
//!    │    │    RESUME after a migration's STOP                   │ announce(true)
//!    │    │                                               ┌──────────┐
//!    │    └────────────────────────────────────────────── │ inferred │
//!    └── STOP, then query-status finish-migrate ────────▶ │          │
//!        or postmigrate                                   └──────────┘
//! ```
//!
//! With the VM running, `MIGRATION` `completed` and `postcopy-*` are an incoming migration's
//! (post-copy's tail on its destination, after the takeover): they move nothing.
//!
//! Every end of a migration turns QEMU's `events` capability back on, and so does every
//! `RESUME` ([`Decision::EventsOn`]); run-state events older than the connect-time
//! `query-status` are already in its answer and are ignored.

use std::collections::VecDeque;
use std::fmt;

use migrate::vm::MigrationStatus;

use super::VmEvent;

/// How the link learned that a migration is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migration {
    /// None runs, as far as the link knows.
    None,
    /// From `MIGRATION` events (the `events` capability is on) or the console's announcement.
    Announced,
    /// From `query-status` after a `STOP` (`finish-migrate`/`postmigrate`); the next
    /// `RESUME` ends it, since QEMU resumes a source only when its migration is over.
    Inferred,
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Migration::None => "none",
            Migration::Announced => "announced",
            Migration::Inferred => "inferred",
        })
    }
}

/// What the journal is told, one of its `handle_*` run-state calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JournalCall {
    /// `Journal::handle_vm_stopped`.
    VmStopped,
    /// `Journal::handle_vm_resumed`.
    VmResumed,
    /// `Journal::handle_migration_started`.
    MigrationStarted,
    /// `Journal::handle_migration_ended`.
    MigrationEnded,
}

/// What the link does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Tell the journal.
    Journal(JournalCall),
    /// Tell the console (`LinkEvent::Vm`).
    Tell(VmEvent),
    /// Ask QEMU `query-status`, whose answer goes to [`VmWatch::handle_stop_status`]: was
    /// this `STOP` a migration's?
    ClassifyStop,
    /// Turn QEMU's `events` migration capability on, so that the next migration announces
    /// itself (`MIGRATION` `setup`/`active`) and the journal closes the fast lane long before
    /// the switchover's `STOP`. Without it a manager that leaves the capability at QEMU's
    /// default (off) and runs a bare `migrate` gives no sign before that `STOP`, and a
    /// fast-lane key QEMU reads just after it is dropped (only reported uncertain).
    ///
    /// Why the console may set this one capability, although it otherwise only watches (it
    /// must not fight a manager, DESIGN.md "Who migrates the VM"): `events` changes nothing
    /// but whether QEMU *sends notifications* (`migration/migration.c` checks it only before
    /// emitting `MIGRATION`/`MIGRATION_PASS`); libvirt turns it on itself for every migration,
    /// so under libvirt this changes nothing; `migrate-set-capabilities` with one entry
    /// leaves every other capability as it is; and it is decided only at attach and when a
    /// migration has ended (or the VM resumed), never during one: QEMU refuses it while a
    /// migration runs, and that refusal is only logged. A manager that turns `events` off
    /// right before its `migrate` wins (the console does not turn it back on during that
    /// migration); the source console's `prepare` covers that case (the hub announces the
    /// migration to the link then).
    EventsOn,
}

/// The VM's run state and migration phase as the link knows them, and the decisions they
/// lead to (module docs).
#[derive(Debug)]
pub(super) struct VmWatch {
    /// The VM runs (`query-status` at connect, then `STOP`/`RESUME`).
    running: bool,
    /// Position of the connect-time `query-status` reply: run-state events before it are
    /// already reflected in its answer.
    status_seq: qmp::Seq,
    migration: Migration,
    /// The last `STOP` was a migration's (classified by `query-status`): the next `RESUME`
    /// ends that migration, since QEMU resumes a source only once its migration is over.
    stopped_for_migration: bool,
    /// QEMU's own `MIGRATION` events showed the migration under way (not only an
    /// announcement): an announcement that expires then changes nothing.
    qemu_migrating: bool,
    decisions: VecDeque<Decision>,
}

impl VmWatch {
    /// A watch for a VM that `running` or not at the connect-time `query-status`, answered at
    /// `status_seq`. Its first decision turns `events` on.
    pub(super) fn new(running: bool, status_seq: qmp::Seq) -> Self {
        VmWatch {
            running,
            status_seq,
            migration: Migration::None,
            stopped_for_migration: false,
            qemu_migrating: false,
            decisions: VecDeque::from([Decision::EventsOn]),
        }
    }

    /// The VM runs, as far as the link knows.
    pub(super) fn running(&self) -> bool {
        self.running
    }

    /// The next decision, oldest first.
    pub(super) fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// A QMP event: `STOP`, `RESUME` and `MIGRATION` move the watch, others are ignored.
    pub(super) fn handle_event(&mut self, event: &qmp::Event) {
        let run_state = matches!(event.name.as_str(), "STOP" | "RESUME");
        if run_state && event.seq < self.status_seq {
            tracing::debug!(event = %event.name, "run-state event older than the connect status");
            return;
        }
        match event.name.as_str() {
            "STOP" => {
                self.running = false;
                self.decide(Decision::Journal(JournalCall::VmStopped));
                self.decide(Decision::Tell(VmEvent::Stopped));
                self.decide(Decision::ClassifyStop);
            }
            "RESUME" => {
                if std::mem::take(&mut self.stopped_for_migration)
                    && self.migration != Migration::None
                {
                    self.end(VmEvent::MigrationEnded);
                }
                // A destination that just took its VM in, or a VM continued after a plain
                // `stop`: no outgoing migration runs, so the capability can be set (if one
                // does, QEMU refuses and nothing changes).
                self.decide(Decision::EventsOn);
                self.running = true;
                self.decide(Decision::Journal(JournalCall::VmResumed));
                self.decide(Decision::Tell(VmEvent::Resumed));
            }
            "MIGRATION" => {
                let Some(status) = event.migration_status() else {
                    return;
                };
                match MigrationStatus::from_name(status) {
                    // An outgoing migration stops its VM before it completes or enters
                    // post-copy: with the VM running these are an incoming migration's, the
                    // tail of post-copy on its destination (the VM runs here while the rest
                    // of its RAM comes). Not a move of this console's session.
                    MigrationStatus::Completed if self.running => {
                        tracing::debug!("an incoming post-copy migration completed");
                        if self.migration == Migration::None {
                            self.decide(Decision::EventsOn);
                        } else {
                            self.end(VmEvent::MigrationEnded);
                        }
                    }
                    MigrationStatus::Other(other)
                        if self.running && other.starts_with("postcopy") => {}
                    MigrationStatus::Completed => self.end(VmEvent::MigrationCompleted),
                    MigrationStatus::Failed | MigrationStatus::Cancelled => {
                        // Already ended if the source resumed (or the console said so) first.
                        if self.migration != Migration::None {
                            self.end(VmEvent::MigrationEnded);
                        }
                    }
                    MigrationStatus::None | MigrationStatus::Cancelling => {}
                    MigrationStatus::Setup
                    | MigrationStatus::Active
                    | MigrationStatus::PreSwitchover
                    | MigrationStatus::Device
                    | MigrationStatus::Other(_) => {
                        self.qemu_migrating = true;
                        self.announce();
                    }
                }
            }
            _ => {}
        }
    }

    /// The answer to the `query-status` of [`Decision::ClassifyStop`]; `None` when QEMU
    /// refused it or answered an unexpected shape (the stop is then not a migration's).
    pub(super) fn handle_stop_status(&mut self, status: Option<&qmp::StatusInfo>) {
        let migrating =
            status.is_some_and(|s| matches!(s.status.as_str(), "finish-migrate" | "postmigrate"));
        if !migrating {
            return;
        }
        self.stopped_for_migration = true;
        if self.migration == Migration::None {
            self.set_phase(Migration::Inferred);
            self.decide(Decision::Journal(JournalCall::MigrationStarted));
        }
        self.decide(Decision::Tell(VmEvent::StoppedForMigration));
    }

    /// The console itself started (`true`) or ended without moving the VM (`false`) a
    /// migration.
    pub(super) fn handle_announced(&mut self, migrating: bool) {
        if migrating {
            self.announce();
        } else if self.migration != Migration::None {
            self.end(VmEvent::MigrationEnded);
        }
    }

    /// An announcement from the destination host ([`Self::handle_announced`]) that QEMU
    /// never followed with a migration of its own (libvirt aborted before migrating): the
    /// migration ends here. Nothing changes once QEMU's `MIGRATION` events took over.
    pub(super) fn handle_announcement_expired(&mut self) {
        if self.migration == Migration::Announced && !self.qemu_migrating {
            tracing::debug!("the announced migration never started in QEMU");
            self.end(VmEvent::MigrationEnded);
        }
    }

    /// A migration is announced: it starts here unless the watch already knew of it.
    fn announce(&mut self) {
        if self.migration == Migration::None {
            self.decide(Decision::Journal(JournalCall::MigrationStarted));
            self.decide(Decision::Tell(VmEvent::MigrationStarted));
        }
        self.set_phase(Migration::Announced);
    }

    /// The migration ended, `how`.
    fn end(&mut self, how: VmEvent) {
        self.set_phase(Migration::None);
        self.qemu_migrating = false;
        // After `completed` the VM stays stopped here, so the fast lane stays closed anyway.
        self.decide(Decision::Journal(JournalCall::MigrationEnded));
        self.decide(Decision::Tell(how));
        self.decide(Decision::EventsOn);
    }

    fn set_phase(&mut self, to: Migration) {
        if self.migration != to {
            tracing::debug!(from = %self.migration, %to, "migration phase");
            self.migration = to;
        }
    }

    fn decide(&mut self, decision: Decision) {
        self.decisions.push_back(decision);
    }
}

#[cfg(test)]
mod tests;

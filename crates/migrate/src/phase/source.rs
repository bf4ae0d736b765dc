//! The source console's phase machine.

use std::fmt;

use super::{received_name, Link, PhaseError, Rejected, Side};
use crate::protocol::{AbortReason, Message};

/// Where the source console is in a migration.
///
/// **Invariant** (enforced in [`step`]): if the migration fails, the source keeps serving its
/// viewers; if it succeeds, the session is handed over exactly once. The source stops serving
/// only at the freeze (its VM stopped for the switchover), keeps its checkpoint in `Frozen`
/// and `Sent` until the destination acknowledges its takeover (`TakenOver`: release, exit) or
/// its own VM runs again (`Resumed`: thaw from that checkpoint and serve again). Nothing else
/// releases it: a lost destination, an `Abort` or a finished migration only make it reconnect
/// and wait for the VM's run state to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Serving viewers; no migration seen.
    Serving {
        /// The connection to a destination console, if one was made.
        peer: Link,
    },
    /// QEMU pre-copies RAM; still serving.
    Precopying {
        /// The connection to the destination console.
        peer: Link,
    },
    /// Frozen with the checkpoint kept; no live connection has the snapshot yet: reconnecting.
    Frozen,
    /// Frozen; the snapshot was written to the live connection; waiting for `TakenOver`.
    Sent,
    /// The source VM runs again: restoring the viewers from the checkpoint.
    Thawing,
    /// Handed over; the console exits.
    Done,
}

impl SourceState {
    /// The phase's name.
    pub fn name(&self) -> &'static str {
        match self {
            SourceState::Serving { .. } => "Serving",
            SourceState::Precopying { .. } => "Precopying",
            SourceState::Frozen => "Frozen",
            SourceState::Sent => "Sent",
            SourceState::Thawing => "Thawing",
            SourceState::Done => "Done",
        }
    }

    /// Whether this console serves the session (reads viewers, delivers input) in this phase.
    /// `Thawing` counts: it is already committed to serving.
    pub fn serves(&self) -> bool {
        matches!(
            self,
            SourceState::Serving { .. } | SourceState::Precopying { .. } | SourceState::Thawing
        )
    }
}

impl fmt::Display for SourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to the source console: its VM's run state, its peer, its own long actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// QEMU started migrating the VM (`MIGRATION` status `setup`/`active`; absent when the
    /// `events` capability is off).
    MigrationStarted,
    /// The VM stopped for the switchover (`STOP` with run state `finish-migrate`, or status
    /// `pre-switchover`/`device`).
    StoppedForMigration,
    /// The VM stopped for another reason (a plain `stop`).
    Stopped,
    /// The source VM runs (`RESUME`).
    Resumed,
    /// QEMU reports the migration completed (source now `postmigrate`).
    MigrationCompleted,
    /// QEMU reports the migration failed or was cancelled.
    MigrationFailed,
    /// Hellos exchanged with a destination console on a new connection.
    PeerConnected,
    /// The connection to the destination closed or failed.
    PeerLost,
    /// A message from the destination console.
    Received(Message),
    /// The shell finished [`SourceAction::Thaw`].
    Thawed,
}

impl SourceEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SourceEvent::MigrationStarted => "MigrationStarted",
            SourceEvent::StoppedForMigration => "StoppedForMigration",
            SourceEvent::Stopped => "Stopped",
            SourceEvent::Resumed => "Resumed",
            SourceEvent::MigrationCompleted => "MigrationCompleted",
            SourceEvent::MigrationFailed => "MigrationFailed",
            SourceEvent::PeerConnected => "PeerConnected",
            SourceEvent::PeerLost => "PeerLost",
            SourceEvent::Received(m) => received_name(m),
            SourceEvent::Thawed => "Thawed",
        }
    }
}

/// What the source console's shell must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAction {
    /// Stop reading viewers, hold input, checkpoint the viewer connections and take the final
    /// snapshot; keep the checkpoint until `ReleaseCheckpoint` or `Thaw`.
    Freeze,
    /// Send the kept snapshot on the live connection.
    SendSnapshot,
    /// Tell the destination this migration is off.
    SendAbort(AbortReason),
    /// Close any connection and connect to the destination console until it answers
    /// (`PeerConnected`): the one `prepare` named, else each configured peer in turn.
    Connect,
    /// Close the connection and stop connecting.
    Disconnect,
    /// Restore the viewers from the kept checkpoint and deliver held input here; report
    /// `Thawed`.
    Thaw,
    /// The destination owns the session: drop the checkpoint (its sockets stay closed).
    ReleaseCheckpoint,
    /// Exit the console process.
    Exit,
}

/// The source console's dispatcher: the next state and the actions to perform, or the
/// unchanged state and why `event` is illegal now.
pub fn step(
    state: SourceState,
    event: SourceEvent,
) -> Result<(SourceState, Vec<SourceAction>), Rejected<SourceState>> {
    let span = tracing::debug_span!("comigration", role = "source", phase = %state);
    let _enter = span.enter();
    let event_name = event.name();
    let from = state.name();
    let res = dispatch(state, event);
    match &res {
        Ok((next, actions)) if next.name() != from => {
            tracing::info!(event = event_name, to = %next, ?actions, "phase change");
        }
        Ok(_) => tracing::debug!(event = event_name, "same phase"),
        Err(r) => tracing::warn!(error = %r.error, "event refused"),
    }
    res
}

type Step = Result<(SourceState, Vec<SourceAction>), Rejected<SourceState>>;

fn dispatch(state: SourceState, event: SourceEvent) -> Step {
    use SourceAction as A;
    use SourceEvent as E;
    use SourceState as S;
    let stay = |s: SourceState| Ok((s, vec![]));
    match (state, event) {
        (S::Done, e) => Err(Rejected {
            state: S::Done,
            error: PhaseError::Finished {
                side: Side::Source,
                event: e.name(),
            },
        }),

        // Before the freeze: serving; the VM's stop for the switchover is the only way out.
        (
            S::Serving { peer } | S::Precopying { peer },
            E::StoppedForMigration | E::MigrationCompleted,
        ) => {
            // MigrationCompleted here means the stop was missed (events off, a STOP
            // classified late): the VM has left, so freeze now.
            Ok(freeze(peer))
        }
        // No destination console connected yet (a manager such as libvirt migrates with no
        // `prepare`): look for it now, so the snapshot can leave at the freeze.
        (
            S::Serving {
                peer: Link::Disconnected,
            },
            E::MigrationStarted,
        ) => Ok((
            S::Precopying {
                peer: Link::Disconnected,
            },
            vec![A::Connect],
        )),
        (S::Serving { peer }, E::MigrationStarted) => stay(S::Precopying { peer }),
        (s @ (S::Serving { .. } | S::Precopying { .. }), E::Stopped | E::Resumed) => stay(s),
        (s @ S::Serving { .. }, E::MigrationFailed) => stay(s),
        (S::Precopying { peer }, E::MigrationFailed) => {
            let mut actions = vec![];
            if peer == Link::Connected {
                actions.push(A::SendAbort(AbortReason::MigrationFailed));
            }
            actions.push(A::Disconnect);
            Ok((
                S::Serving {
                    peer: Link::Disconnected,
                },
                actions,
            ))
        }
        (
            S::Serving {
                peer: Link::Disconnected,
            },
            E::PeerConnected,
        ) => stay(S::Serving {
            peer: Link::Connected,
        }),
        (
            S::Precopying {
                peer: Link::Disconnected,
            },
            E::PeerConnected,
        ) => stay(S::Precopying {
            peer: Link::Connected,
        }),
        (S::Serving { .. }, E::PeerLost) => stay(S::Serving {
            peer: Link::Disconnected,
        }),
        (S::Precopying { .. }, E::PeerLost) => Ok((
            S::Precopying {
                peer: Link::Disconnected,
            },
            vec![A::Connect],
        )),
        (
            s @ S::Serving {
                peer: Link::Connected,
            },
            E::Received(Message::Abort { .. }),
        ) => stay(s),
        (
            S::Precopying {
                peer: Link::Connected,
            },
            E::Received(Message::Abort { .. }),
        ) => Ok((
            S::Precopying {
                peer: Link::Disconnected,
            },
            vec![A::Connect],
        )),
        // A destination whose VM runs asks before our STOP was read: the freeze sends it.
        (
            s @ (S::Serving {
                peer: Link::Connected,
            }
            | S::Precopying {
                peer: Link::Connected,
            }),
            E::Received(Message::ResendSnapshot),
        ) => stay(s),

        // Frozen, checkpoint kept: only TakenOver releases it, only Resumed thaws it.
        (S::Frozen, E::PeerConnected) => Ok((S::Sent, vec![A::SendSnapshot])),
        (S::Sent, E::Received(Message::ResendSnapshot)) => Ok((S::Sent, vec![A::SendSnapshot])),
        (S::Sent, E::Received(Message::TakenOver { .. })) => {
            Ok((S::Done, vec![A::ReleaseCheckpoint, A::Exit]))
        }
        (S::Sent, E::PeerLost | E::Received(Message::Abort { .. })) => {
            Ok((S::Frozen, vec![A::Connect]))
        }
        (S::Frozen, E::PeerLost) => stay(S::Frozen),
        (S::Frozen, E::Resumed) => Ok((S::Thawing, vec![A::Disconnect, A::Thaw])),
        (S::Sent, E::Resumed) => Ok((
            S::Thawing,
            vec![
                A::SendAbort(AbortReason::SourceResumed),
                A::Disconnect,
                A::Thaw,
            ],
        )),
        (
            s @ (S::Frozen | S::Sent),
            E::Stopped | E::StoppedForMigration | E::MigrationCompleted | E::MigrationFailed,
        ) => stay(s),

        (S::Thawing, E::Thawed) => stay(S::Serving {
            peer: Link::Disconnected,
        }),
        (S::Thawing, E::PeerLost | E::Stopped | E::Resumed) => stay(S::Thawing),

        (state, event) => Err(Rejected {
            error: PhaseError::Illegal {
                side: Side::Source,
                phase: state.name(),
                event: event.name(),
            },
            state,
        }),
    }
}

/// The freeze: checkpoint, then the snapshot at once if a destination is connected.
fn freeze(peer: Link) -> (SourceState, Vec<SourceAction>) {
    match peer {
        Link::Connected => (
            SourceState::Sent,
            vec![SourceAction::Freeze, SourceAction::SendSnapshot],
        ),
        Link::Disconnected => (
            SourceState::Frozen,
            vec![SourceAction::Freeze, SourceAction::Connect],
        ),
    }
}

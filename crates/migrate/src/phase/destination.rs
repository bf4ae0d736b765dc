//! The destination console's phase machine.

use std::fmt;

use super::{received_name, Link, PhaseError, Rejected, Side};
use crate::protocol::Message;

/// Where the destination console is in a migration.
///
/// **Invariant** (enforced in [`step`]): the destination serves only once its own VM runs
/// (`Resumed`), and only from a snapshot the source took at its freeze; it restores once per
/// process (later copies of the snapshot are answered with `TakenOver`, never restored).
/// When its VM runs before any snapshot arrived (e.g. this console was restarted), it asks
/// the source for the one kept in its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationState {
    /// No source console connected; no snapshot.
    Waiting,
    /// A source console connected (Hellos exchanged).
    Connected,
    /// The final snapshot is here; waiting for the VM to run.
    Ready {
        /// The snapshot, restored at `Resumed`.
        snapshot: Vec<u8>,
        /// The connection to the source.
        peer: Link,
    },
    /// The VM runs and no snapshot is here: asked the source for it.
    Fetching {
        /// The connection to the source.
        peer: Link,
    },
    /// Restoring the viewers from the snapshot.
    TakingOver {
        /// The connection to the source.
        peer: Link,
    },
    /// Serving the session; acknowledges with `TakenOver` to any source that connects.
    Serving {
        /// The connection to the source.
        peer: Link,
    },
}

impl DestinationState {
    /// The phase's name.
    pub fn name(&self) -> &'static str {
        match self {
            DestinationState::Waiting => "Waiting",
            DestinationState::Connected => "Connected",
            DestinationState::Ready { .. } => "Ready",
            DestinationState::Fetching { .. } => "Fetching",
            DestinationState::TakingOver { .. } => "TakingOver",
            DestinationState::Serving { .. } => "Serving",
        }
    }

    /// Whether this console serves the session in this phase (`TakingOver` counts: it is
    /// committed).
    pub fn serves(&self) -> bool {
        matches!(
            self,
            DestinationState::TakingOver { .. } | DestinationState::Serving { .. }
        )
    }
}

impl fmt::Display for DestinationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to the destination console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationEvent {
    /// Hellos exchanged with a source console on a new connection.
    PeerConnected,
    /// The connection to the source closed or failed.
    PeerLost,
    /// A message from the source console.
    Received(Message),
    /// The destination VM runs (`RESUME`, or found running at start).
    Resumed,
    /// The destination VM stopped (a plain `stop` after the migration).
    Stopped,
    /// The shell finished [`DestinationAction::Restore`].
    Restored,
}

impl DestinationEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            DestinationEvent::PeerConnected => "PeerConnected",
            DestinationEvent::PeerLost => "PeerLost",
            DestinationEvent::Received(m) => received_name(m),
            DestinationEvent::Resumed => "Resumed",
            DestinationEvent::Stopped => "Stopped",
            DestinationEvent::Restored => "Restored",
        }
    }
}

/// What the destination console's shell must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationAction {
    /// Send `ResendSnapshot`: the VM runs and no snapshot is here.
    RequestSnapshot,
    /// Restore the viewers from this snapshot and deliver held input; report `Restored`.
    Restore {
        /// The snapshot.
        snapshot: Vec<u8>,
    },
    /// Send `TakenOver`: the session is ours.
    SendTakenOver,
    /// Drop any snapshot: this migration is off.
    Discard,
}

/// The destination console's dispatcher: the next state and the actions to perform, or the
/// unchanged state and why `event` is illegal now.
pub fn step(
    state: DestinationState,
    event: DestinationEvent,
) -> Result<(DestinationState, Vec<DestinationAction>), Rejected<DestinationState>> {
    let span = tracing::debug_span!("comigration", role = "destination", phase = %state);
    let _enter = span.enter();
    let event_name = event.name();
    let from = state.name();
    let res = dispatch(state, event);
    match &res {
        Ok((next, _)) if next.name() != from => {
            tracing::info!(event = event_name, to = %next, "phase change");
        }
        Ok(_) => tracing::debug!(event = event_name, "same phase"),
        Err(r) => tracing::warn!(error = %r.error, "event refused"),
    }
    res
}

type Step = Result<(DestinationState, Vec<DestinationAction>), Rejected<DestinationState>>;

fn dispatch(state: DestinationState, event: DestinationEvent) -> Step {
    use DestinationAction as A;
    use DestinationEvent as E;
    use DestinationState as S;
    use Link::{Connected, Disconnected};
    let stay = |s: DestinationState| Ok((s, vec![]));
    match (state, event) {
        (S::Waiting, E::PeerConnected) => stay(S::Connected),
        (S::Waiting, E::Resumed) => stay(S::Fetching { peer: Disconnected }),
        (S::Waiting, E::PeerLost | E::Stopped) => stay(S::Waiting),

        (S::Connected, E::Received(Message::Snapshot { bytes })) => stay(S::Ready {
            snapshot: bytes,
            peer: Connected,
        }),
        (S::Connected, E::Resumed) => {
            Ok((S::Fetching { peer: Connected }, vec![A::RequestSnapshot]))
        }
        (S::Connected, E::PeerLost) => stay(S::Waiting),
        (S::Connected, E::Stopped) => stay(S::Connected),

        // The source gives up before our VM ran: our QEMU will not run this VM.
        (
            S::Connected
            | S::Ready {
                peer: Connected, ..
            },
            E::Received(Message::Abort { .. }),
        ) => Ok((S::Waiting, vec![A::Discard])),

        (S::Ready { snapshot, peer }, E::Resumed) => {
            Ok((S::TakingOver { peer }, vec![A::Restore { snapshot }]))
        }
        // A resend (new connection after a loss) replaces the copy; it is the same checkpoint.
        (
            S::Ready {
                peer: Connected, ..
            },
            E::Received(Message::Snapshot { bytes }),
        ) => stay(S::Ready {
            snapshot: bytes,
            peer: Connected,
        }),
        (S::Ready { snapshot, .. }, E::PeerLost) => stay(S::Ready {
            snapshot,
            peer: Disconnected,
        }),
        (
            S::Ready {
                snapshot,
                peer: Disconnected,
            },
            E::PeerConnected,
        ) => stay(S::Ready {
            snapshot,
            peer: Connected,
        }),
        (s @ S::Ready { .. }, E::Stopped) => stay(s),

        (S::Fetching { peer: Disconnected }, E::PeerConnected) => {
            Ok((S::Fetching { peer: Connected }, vec![A::RequestSnapshot]))
        }
        (S::Fetching { .. }, E::PeerLost) => stay(S::Fetching { peer: Disconnected }),
        (S::Fetching { peer: Connected }, E::Received(Message::Snapshot { bytes })) => Ok((
            S::TakingOver { peer: Connected },
            vec![A::Restore { snapshot: bytes }],
        )),
        (s @ S::Fetching { .. }, E::Resumed | E::Stopped) => stay(s),

        // Committed: restore once; later snapshots are acknowledged, never restored again.
        (S::TakingOver { peer }, E::Restored) => {
            let actions = if peer == Connected {
                vec![A::SendTakenOver]
            } else {
                vec![]
            };
            Ok((S::Serving { peer }, actions))
        }
        (S::TakingOver { .. }, E::PeerLost) => stay(S::TakingOver { peer: Disconnected }),
        (S::TakingOver { peer: Disconnected }, E::PeerConnected) => {
            stay(S::TakingOver { peer: Connected })
        }
        (s @ S::TakingOver { peer: Connected }, E::Received(Message::Snapshot { .. })) => stay(s),
        (s @ S::TakingOver { .. }, E::Resumed | E::Stopped) => stay(s),

        (S::Serving { peer: Disconnected }, E::PeerConnected) => {
            Ok((S::Serving { peer: Connected }, vec![A::SendTakenOver]))
        }
        (S::Serving { peer: Connected }, E::Received(Message::Snapshot { .. })) => {
            Ok((S::Serving { peer: Connected }, vec![A::SendTakenOver]))
        }
        (S::Serving { .. }, E::PeerLost) => stay(S::Serving { peer: Disconnected }),
        (s @ S::Serving { .. }, E::Resumed | E::Stopped) => stay(s),

        (state, event) => Err(Rejected {
            error: PhaseError::Illegal {
                side: Side::Destination,
                phase: state.name(),
                event: event.name(),
            },
            state,
        }),
    }
}

//! The co-migration phase machines: what the source and the destination console do as their
//! VMs' run states change and as the transfer protocol's messages arrive.
//!
//! Pure: each machine is one dispatcher, `step(state, event)`, which takes the state by value
//! and returns the next state and the [actions](SourceAction) the I/O shell performs, in
//! order. No sockets, no clock. The shell feeds VM events from its QMP monitor in the order
//! QEMU sent them, peer events from its [`Codec`](crate::protocol::Codec), and the
//! completion of long actions (`Thawed`, `Restored`).
//!
//! ```text
//!  source                                        destination
//!  ------                                        -----------
//!  Serving --MigrationStarted--> Precopying      Waiting --PeerConnected--> Connected
//!     |                              |                                         | Snapshot
//!     +------StoppedForMigration-----+                                         v
//!                 | Freeze                       Ready{snapshot} --Resumed--> TakingOver
//!                 v  (checkpoint kept)                                 Restore |
//!  Frozen --PeerConnected / SendSnapshot--> Sent                    Restored  v
//!     ^            (a new connection)        |                      Serving, SendTakenOver
//!     +--PeerLost / Abort: reconnect---------+
//!                                            | TakenOver: ReleaseCheckpoint, Exit
//!                                            v
//!                                           Done
//!  Frozen/Sent --Resumed (source VM runs again)--> Thawing --Thawed--> Serving
//!  Precopying --MigrationFailed--> Serving (SendAbort)
//!  destination: Resumed before any snapshot --> Fetching (RequestSnapshot) --Snapshot-->
//!  TakingOver; source Abort before its VM runs --> Waiting (Discard).
//! ```
//!
//! Why this is safe: QEMU never runs both VMs, the source's VM stops before the
//! destination's runs, and a migration ends either with the destination's `RESUME` or with
//! the source's. The source stops serving only at the freeze and serves again only when its
//! own VM runs; the destination serves only when its VM runs, from the snapshot taken at the
//! freeze. So the session is in exactly one place, and the source's checkpoint lives until the
//! destination acknowledges (`TakenOver`) or the source's VM runs again.
//!
//! An illegal (state, event) pair is a [`PhaseError`], returned in a [`Rejected`] together
//! with the unchanged state: a confused or hostile peer cannot make a console drop its state.
//! Duplicate run-state reports (a `STOP` seen both as an event and by `query-status`) are
//! legal no-ops.
//!
//! After a takeover the destination console is the VM's console: for the next migration its
//! shell runs a new source machine from `Serving`, and keeps the destination machine (in
//! `Serving`) only to answer a late or reconnecting source with `TakenOver`.
//!
//! What is not survivable: the destination console dying *after* the source received its
//! `TakenOver` (the source has exited; as with any console process, the session dies with
//! it), and the source console dying while frozen (nobody holds the checkpoint).

mod destination;
mod source;

pub use destination::{
    step as destination_step, DestinationAction, DestinationEvent, DestinationState,
};
pub use source::{step as source_step, SourceAction, SourceEvent, SourceState};

use std::fmt;

/// Whether a machine has a live, authenticated connection to its peer console (its Hellos
/// exchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Hellos exchanged; messages may be sent.
    Connected,
    /// No connection (never made, lost, or closed).
    Disconnected,
}

pub use crate::Side;

/// An event the current phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    /// The event cannot happen in this phase if QEMU and the peer keep their guarantees (or
    /// the shell fed events out of order).
    #[error("{side} console: {event} is illegal in phase {phase}")]
    Illegal {
        /// Which machine.
        side: Side,
        /// The phase it was in.
        phase: &'static str,
        /// The event refused.
        event: &'static str,
    },
    /// The machine has finished (the source handed over and exits); nothing more is expected.
    #[error("{side} console: finished, {event} arrived after the end")]
    Finished {
        /// Which machine.
        side: Side,
        /// The event refused.
        event: &'static str,
    },
}

/// A refused step: the error, and the state as it was, so the shell can carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step refused, state kept as it was")]
pub struct Rejected<S: fmt::Debug> {
    /// The state, unchanged.
    pub state: S,
    /// Why the event was refused.
    #[source]
    pub error: PhaseError,
}

/// The name of a peer message as an event, for errors and logs.
fn received_name(m: &crate::protocol::Message) -> &'static str {
    use crate::protocol::Message;
    match m {
        Message::Hello(_) => "Received(Hello)",
        Message::Snapshot { .. } => "Received(Snapshot)",
        Message::TakenOver { .. } => "Received(TakenOver)",
        Message::ResendSnapshot => "Received(ResendSnapshot)",
        Message::Abort { .. } => "Received(Abort)",
        // Answered by the serving console outside the phase machines.
        Message::Announce => "Received(Announce)",
        Message::Announced => "Received(Announced)",
    }
}

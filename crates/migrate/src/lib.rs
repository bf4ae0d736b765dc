//! Moving a console with its VM.
//!
//! The co-migration orchestrator (the source console freezes when its VM stops for the
//! switchover, the destination takes over when its VM runs, the source thaws if its own VM
//! runs again) is being built from these parts:
//! - [`vm`]: drives QEMU's own migration (migrate-incoming/migrate, pause-before-switchover,
//!   cancel on failure) over any QMP monitor;
//! - [`protocol`]: the console-to-console transfer protocol (versioned, authenticated), sans-I/O;
//! - [`phase`]: the source and destination consoles' phase machines, pure;
//! - [`tcp`]: checkpoints an established TCP socket with Linux `TCP_REPAIR` on one host and
//!   recreates it on another, so an unmodified viewer keeps its connection while the service
//!   address moves with the VM.

#![warn(missing_docs)]

pub mod phase;
pub mod protocol;
pub mod tcp;
pub mod vm;

/// Which end of a migration: the host, QEMU and console the VM leaves, or the ones it arrives at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the VM leaves from.
    Source,
    /// Where the VM arrives.
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

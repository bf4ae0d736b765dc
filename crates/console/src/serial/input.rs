//! Typed bytes on their way to the UART, counted so that none is written twice or lost.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// What the console knows of the VM, deciding whether it may write to QEMU (the graphics
/// lanes' run-state rule, plus the migration hold; see the module docs of [`crate::serial`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gate {
    /// The VM runs here (`RESUME`, or `running` at attach).
    pub running: bool,
    /// A migration of this VM is under way (bytes written now could be read after QEMU saved
    /// the UART).
    pub migrating: bool,
    /// The console is frozen for a hand-over.
    pub frozen: bool,
}

impl Gate {
    /// Whether bytes may be written to QEMU now.
    pub fn open(self) -> bool {
        self.running && !self.migrating && !self.frozen
    }
}

/// The socket's unread count contradicts what was written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("QEMU has {unread} bytes unread but only {written} were written to it")]
pub struct MeasureError {
    /// The measured unread count.
    pub unread: usize,
    /// Bytes written and not yet known read.
    pub written: usize,
}

/// Typed bytes by absolute offset: `[0, consumed)` reached the UART; `pending` follows, its
/// first `in_socket` bytes written to the current QEMU socket and not yet known read.
///
/// Call order: [`accept`](Self::accept) what viewers type; [`next_write`](Self::next_write)
/// and [`wrote`](Self::wrote) for each byte written; [`measured`](Self::measured) with the
/// socket's unread count; [`detach`](Self::detach) when the socket is left (freeze), after a
/// last measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLedger {
    consumed: u64,
    pending: VecDeque<u8>,
    /// Written to the socket of this process; a snapshot carries none (`detach`).
    #[serde(skip)]
    in_socket: usize,
    limit: usize,
}

impl InputLedger {
    /// An empty ledger holding at most `limit` pending bytes.
    pub fn new(limit: usize) -> InputLedger {
        InputLedger {
            consumed: 0,
            pending: VecDeque::new(),
            in_socket: 0,
            limit,
        }
    }

    /// Takes as many of `bytes` as there is room for; returns how many.
    pub fn accept(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.pending.extend(&bytes[..n]);
        n
    }

    /// Pending bytes that may still be accepted.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.pending.len())
    }

    /// Bytes accepted from viewers so far, all time (a resuming viewer's input offset).
    pub fn accepted(&self) -> u64 {
        self.consumed + self.pending.len() as u64
    }

    /// Bytes QEMU consumed, all time.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes accepted and not yet known consumed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes written to the socket and not yet known read.
    pub fn in_socket(&self) -> usize {
        self.in_socket
    }

    /// The next byte to write, if the gate is open and fewer than `window` are in the socket.
    pub fn next_write(&self, gate: Gate, window: usize) -> Option<u8> {
        if !gate.open() || self.in_socket >= window {
            return None;
        }
        self.pending.get(self.in_socket).copied()
    }

    /// One byte (the one [`next_write`](Self::next_write) gave) went into the socket.
    pub fn wrote(&mut self) {
        self.in_socket = (self.in_socket + 1).min(self.pending.len());
    }

    /// The socket has `unread` written bytes QEMU has not read: the rest are consumed.
    pub fn measured(&mut self, unread: usize) -> Result<u64, MeasureError> {
        if unread > self.in_socket {
            return Err(MeasureError {
                unread,
                written: self.in_socket,
            });
        }
        let read = self.in_socket - unread;
        self.pending.drain(..read);
        self.consumed += read as u64;
        self.in_socket = unread;
        Ok(read as u64)
    }

    /// The socket is left behind (its QEMU stopped for good, or the console moves): the bytes
    /// in it count as never written, to be written again wherever the VM runs next.
    pub fn detach(&mut self) -> usize {
        std::mem::take(&mut self.in_socket)
    }
}

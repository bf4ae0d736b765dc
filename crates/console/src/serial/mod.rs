//! The serial lane's pure core: the bytes between the serial viewers and the guest's UART,
//! accounted so that each crosses a co-migration exactly once.
//!
//! ```text
//!  viewers ──accept──▶ InputLedger ──write 1 byte per write()──▶ QEMU chardev socket ─▶ UART
//!                        consumed | in the socket | not yet written
//!                                  ▲ SIOCOUTQ / unit = bytes QEMU has not read
//!  viewers ◀──since(offset)── Scrollback ◀──push── QEMU chardev socket ◀─ UART (guest output)
//! ```
//!
//! # What QEMU reads, and how the console knows (QEMU 7.2, `chardev/char-socket.c`,
//! `hw/char/serial.c`)
//!
//! QEMU's socket chardev reads from its socket only as many bytes as the 16550A will take
//! (`tcp_chr_read_poll` asks `serial_can_receive`: `itl - count` while the FIFO holds at most
//! the receive trigger level the guest set, one without FIFO) and hands every byte it read
//! to the UART at once: a byte QEMU read is in the UART's FIFO, which is device state and
//! migrates with the VM; a byte still in the socket dies with the source QEMU. So "what the
//! guest will get" is exactly "what QEMU read", and the console must know that count at the
//! switchover. Measured (`tests/serial_qemu_reads.rs`): with the VM stopped, QEMU fills an
//! empty FIFO to the trigger level (14 of 40 bytes written, with FCR 0xc7) and reads not one
//! byte more however long it waits; running, the guest's reads let it take the rest.
//!
//! `ioctl(SIOCOUTQ)` on the console's end of a unix stream socket does not count bytes: it is
//! the memory of the writes the peer has not finished reading, and a write's memory is freed
//! only when all of it was read. So the console writes **one byte per `write()`**: each write
//! is then read whole or not at all, its memory is the same every time (768 bytes on kernel
//! 6.18; measured once per process on a socketpair, `front::serial::WriteUnit`), and
//! `SIOCOUTQ / unit` is the exact number of written bytes QEMU has not read
//! ([`InputLedger::measured`]). At most 16 bytes (the FIFO) are in the socket at once: QEMU
//! takes no more before the guest reads, so one-byte writes cost nothing the UART would not
//! make the writer wait for.
//!
//! # The switchover
//!
//! The count is exact at any instant; what matters is that QEMU reads nothing between the
//! console's last measurement and QEMU's save of the UART (a byte read then is in the
//! migrated FIFO *and* counted unread; one read after the save went into a FIFO that does not
//! migrate). A stopped guest never makes room in its FIFO, so after the stop QEMU reads only
//! what arrived within its main-loop latency before the stop while the FIFO had room. The
//! run-state rule ([`Gate`]) keeps that case away: the console writes only while the VM runs
//! **and no migration is under way** (`MIGRATION` from `setup` on), so the last byte was
//! written a whole pre-copy before the stop, and a guest that reads its UART has emptied the
//! socket long before (at the freeze the console measures once more; what is still unread
//! stays unconsumed, [`InputLedger::detach`], and the destination writes it once its VM
//! runs). Left: a guest that reads its UART slowly enough to leave bytes in the socket for
//! the whole pre-copy with room in its FIFO at the stop (the freeze logs such bytes); and a
//! manager that migrates with the `events` capability off (no `MIGRATION` event to hold on).
//! Typed input waits for the switchover (held, in order, like the graphics lanes' input
//! around a migration); output flows all the time.
//!
//! # Output
//!
//! QEMU writes the guest's bytes to the socket as the guest writes them (synchronously in the
//! UART's transmit path), so once the VM stopped every byte the guest wrote is in the
//! console's receive buffer: the freeze reads the socket dry, then snapshots the
//! [`Scrollback`]. Output bytes carry absolute offsets; a viewer that resumes (the
//! [`Header`] says where the console's output and input stand) gets each byte once.

mod header;
mod input;
mod resume;
mod scrollback;
#[cfg(test)]
mod tests;

pub use header::{Header, HeaderError, HEADER_MAX};
pub use input::{Gate, InputLedger, MeasureError};
pub use resume::{Resume, ResumeError, Resumed};
pub use scrollback::Scrollback;

use serde::{Deserialize, Serialize};

/// Version of [`SerialState`]'s snapshot piece.
pub const SERIAL_STATE_VERSION: u32 = 1;

/// Default scrollback kept and moved with the console (`--serial-scrollback`).
pub const DEFAULT_SCROLLBACK: usize = 256 << 10;

/// Most typed bytes the console holds for the guest before it stops reading viewers.
pub const INPUT_LIMIT: usize = 64 << 10;

/// The serial lane's state that moves with the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Typed bytes QEMU has not consumed, with the count of those it has.
    pub input: InputLedger,
    /// The guest's output, the last bytes of it.
    pub output: Scrollback,
}

impl SerialState {
    /// A fresh lane keeping `scrollback` bytes of output.
    pub fn new(scrollback: usize) -> SerialState {
        SerialState {
            input: InputLedger::new(INPUT_LIMIT),
            output: Scrollback::new(scrollback),
        }
    }
}

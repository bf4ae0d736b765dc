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
//! (`tcp_chr_read_poll` asks `serial_can_receive`: up to the receive trigger level, then one
//! at a time up to the 16-byte FIFO; one without FIFO) and hands every byte it read to the
//! UART at once: a byte QEMU read is in the UART's FIFO, which is device state and migrates
//! with the VM; a byte still in the socket dies with the source QEMU. So "what the guest will
//! get" is exactly "what QEMU read", and the console must know that count at the switchover.
//!
//! `ioctl(SIOCOUTQ)` on the console's end of a unix stream socket does not count bytes: it is
//! the memory of the writes the peer has not finished reading, and a write's memory is freed
//! only when all of it was read. So the console writes **one byte per `write()`**: each write
//! is then read whole or not at all, its memory is the same every time (measured once per
//! process on a socketpair: [`crate::front::serial`]'s `unit`), and `SIOCOUTQ / unit` is the
//! exact number of written bytes QEMU has not read ([`InputLedger::measured`]). At most
//! `window` bytes are in the socket at once (the FIFO's 16: QEMU takes no more before the
//! guest reads), so one-byte writes cost nothing the UART would not make the writer wait for.
//!
//! # The switchover
//!
//! The count is exact at any instant; what matters is that no read happens after QEMU saved
//! the UART's state (the source then put a byte into a FIFO that does not migrate). QEMU reads
//! only while the UART has room, and a stopped guest never makes room: once the VM stopped,
//! a byte in the socket is read after the save only if it arrived within QEMU's main-loop
//! latency before the stop. The run-state rule ([`Gate`]) closes that window: the console
//! writes only while the VM runs **and no migration is under way** (`MIGRATION` from `setup`
//! on, or a `prepare`/announce from the orchestrator), so every byte was written long before
//! the stop; at the freeze it measures the unread count once more, keeps the unread bytes as
//! not consumed ([`InputLedger::detach`]), and the destination writes them to its QEMU once its
//! VM runs. Typed input waits for the switchover (it is held, in order, like the graphics
//! lanes' input around a migration); output flows all the time.
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

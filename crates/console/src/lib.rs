//! The dmore console process (DomR): one per VM, between the viewers and QEMU.
//!
//! Its pure (sans-I/O) cores: the input path's decisions ([`journal`]), the screen cache with
//! each viewer's pending damage ([`screen`]), one viewer connection's state machine
//! ([`session`]), and the versioned snapshot of all of them ([`snapshot`]).
#![warn(missing_docs)]

pub mod back;
pub mod control;
pub mod front;
pub mod journal;
pub mod keymap;
pub mod privilege;
pub mod screen;
pub mod serial;
pub mod serial_attach;
pub mod session;
pub mod snapshot;

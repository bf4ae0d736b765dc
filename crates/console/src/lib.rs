//! The dmore console process (DomR): one per VM, between the viewers and QEMU.
//!
//! So far it holds the pure decision core of the input path, [`journal`].
#![warn(missing_docs)]

pub mod journal;

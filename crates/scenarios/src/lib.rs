//! End-to-end scenarios on real hosts and real QEMU, and the scripted viewers they use:
//! the baseline (a plain QEMU console across a live migration, the "before" column).
#![warn(missing_docs)]

pub mod baseline;
pub mod bench;
pub mod cobed;
pub mod delivery;
pub mod demo;
pub mod serial;
pub mod soak;
pub mod steady;
pub mod typist;

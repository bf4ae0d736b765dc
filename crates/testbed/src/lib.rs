//! Real VMs on real hosts for dmore's tests, demo and benchmarks: a QEMU launcher for the test
//! guest, test hosts in network namespaces, and live migration between them.
#![warn(missing_docs)]

pub mod hosts;
pub mod migrate;
pub mod qemu;
pub mod sweep;
pub mod viewers;

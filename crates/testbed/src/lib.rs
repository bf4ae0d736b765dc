//! Real VMs on real hosts for dmore's tests, demo and benchmarks: a QEMU launcher for the test
//! guest, test hosts in network namespaces, real viewers, and a private libvirtd. (Live migration between them is
//! `migrate::vm`.)
#![warn(missing_docs)]

pub mod capture;
pub mod hosts;
pub mod libvirtd;
mod netns;
pub mod ps2trace;
pub mod qemu;
mod runs;
pub mod service;
pub mod skip;
pub mod sweep;
pub mod viewers;

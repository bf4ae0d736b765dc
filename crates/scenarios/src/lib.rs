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

/// Co-migrations per end-to-end test: `DMORE_MIGRATIONS=N` sets N, else `default`.
pub fn migrations_from_env(default: usize) -> usize {
    std::env::var("DMORE_MIGRATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

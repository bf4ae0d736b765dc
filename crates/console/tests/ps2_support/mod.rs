//! QEMU's PS/2 keyboard queue in the console tests: QEMU runs with testbed's trace of it
//! ([`ps2trace`]), and a test that demands every key tells, when one is missing, which QEMU's
//! own queue dropped (with the trace's evidence) and which the console lost. Included by both
//! harnesses (`console_support`, `back_support`).
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::Path;

use testbed::ps2trace;

/// QEMU's arguments to trace its PS/2 queue into `log`.
pub fn qemu_args(log: &Path) -> Vec<OsString> {
    ps2trace::qemu_args(log)
}

/// QEMU's key events so far, from the trace at `log`: where the keys typed next start, for
/// [`check_keys`].
pub fn mark(log: &Path) -> anyhow::Result<usize> {
    Ok(ps2trace::read(log)?.key_events.len())
}

/// The console's documented pacing of key events (`journal::Config`, "Pacing"):
/// `max_paced_per_batch` back to back, then one per `key_drain`, counted from when each was
/// due but at most one `key_drain` back (the journal's `note_key`: a key sent late lets the
/// next one go that much sooner), so one more may follow at once.
pub fn pacing() -> anyhow::Result<ps2trace::Pacing> {
    let journal = console::journal::Config::default();
    Ok(ps2trace::Pacing {
        burst: u64::try_from(journal.max_paced_per_batch)? + 1,
        drain: journal.key_drain,
    })
}

/// Checks that the guest `reported` every key event `typed` (QEMU got nothing else since
/// `mark`), forgiving only what the trace proves QEMU's PS/2 queue dropped while the guest did
/// not run and the console kept its documented pacing ([`pacing`],
/// [`ps2trace::Ps2Drop::guest_starved`]); prints the
/// attribution, and the count forgiven, when a key is missing.
pub fn check_keys(
    log: &Path,
    what: &str,
    mark: usize,
    typed: &[(bool, u16)],
    reported: &[(bool, u16)],
) -> anyhow::Result<()> {
    if typed == reported {
        println!("{what}: all {} key events reported", typed.len());
        return Ok(());
    }
    let a = ps2trace::attribute(typed, reported, &ps2trace::read(log)?, mark, &pacing()?);
    println!("{what}: {a}");
    anyhow::ensure!(a.ok(), "{what}: keys lost: {a}");
    Ok(())
}

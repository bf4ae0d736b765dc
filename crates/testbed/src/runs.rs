//! What a test run leaves on the machine, and who owns it: the names and places the hosts
//! create and the sweep removes. `owner.pid` holds the owner's pid and its start time (so a
//! reused pid is not mistaken for the owner), read back from `/proc`.

use std::io;
use std::path::Path;

/// Prefix of every namespace a testbed creates: `dmt-<run>-<role>`.
pub const NETNS_PREFIX: &str = "dmt-";

/// Root of all runs' directories: `<RUNS_ROOT>/<run>/<host>/`.
pub const RUNS_ROOT: &str = "/tmp/dmore-testbed";

/// Name of the file in a run directory that says which process owns the run.
pub const OWNER_FILE: &str = "owner.pid";

/// The identity of a process: pid and start time (clock ticks after boot, `/proc/PID/stat`
/// field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnerRecord {
    pub(crate) pid: i32,
    pub(crate) start: u64,
}

impl OwnerRecord {
    /// This process.
    pub(crate) fn of_self() -> io::Result<Self> {
        let pid = i32::try_from(std::process::id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
        let stat = proc_stat(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no /proc/self/stat"))?;
        Ok(OwnerRecord {
            pid,
            start: stat.start,
        })
    }

    /// Writes `owner.pid` into `dir` atomically (a reader sees all of it or none).
    pub(crate) fn write_into(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{OWNER_FILE}.tmp"));
        std::fs::write(&tmp, format!("{} {}\n", self.pid, self.start))?;
        std::fs::rename(&tmp, dir.join(OWNER_FILE))
    }

    /// Reads `owner.pid` from `dir`; `None` if it is missing or malformed.
    pub(crate) fn read_from(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(OwnerRecord { pid, start })
    }
}

/// Whether the recorded owner still runs (same pid, same start time, not a zombie).
pub(crate) fn owner_alive(owner: &OwnerRecord) -> bool {
    proc_stat(owner.pid).is_some_and(|s| s.start == owner.start && s.state != 'Z')
}

/// The parts of `/proc/PID/stat` the testbed needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// Start time in clock ticks after boot.
    pub(crate) start: u64,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone or the file is not understood.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': split after
    // the last ')'. Field 3 (state) is then the first, field 22 (start time) the 20th.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start })
}

/// Whether `pid` is gone or a zombie (exited, only waiting to be reaped).
pub(crate) fn process_gone(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z' || s.state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_record_round_trips_and_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let me = OwnerRecord::of_self().unwrap();
        me.write_into(dir.path()).unwrap();
        assert_eq!(OwnerRecord::read_from(dir.path()), Some(me));
        assert!(owner_alive(&me));
    }

    #[test]
    fn reused_pid_is_not_the_owner() {
        let me = OwnerRecord::of_self().unwrap();
        let impostor = OwnerRecord {
            start: me.start + 1,
            ..me
        };
        assert!(!owner_alive(&impostor));
    }

    #[test]
    fn malformed_owner_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OWNER_FILE), "12x\n").unwrap();
        assert_eq!(OwnerRecord::read_from(dir.path()), None);
    }
}

//! The sweeper: removes what dead test runs left behind (a run killed by SIGKILL cannot clean
//! up after itself), and never touches a live run's things.
//!
//! A run is dead when its `owner.pid` names a process that no longer runs (pid *and* start
//! time compared, so a reused pid does not keep a dead run alive). For a dead run the sweeper
//! kills the QEMUs named by pidfiles in its directories (only after checking, through
//! `/proc/PID/exe` and `/proc/PID/cmdline`, that the pid still is a QEMU of that run), kills
//! whatever still runs in its namespaces, deletes the namespaces and removes its directory.
//! A namespace with the testbed's prefix whose run directory is gone is an orphan (a run
//! creates its directory before its namespaces and removes it after them) and goes too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{delete_netns, list_netns, netns_pids};
use crate::runs::{owner_alive, process_gone, OwnerRecord, NETNS_PREFIX, OWNER_FILE, RUNS_ROOT};

/// A run directory without `owner.pid` younger than this may still be being created.
const OWNERLESS_GRACE: Duration = Duration::from_secs(300);

/// How long to wait for killed processes to exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How deep pidfiles are looked for below a run directory (`<run>/<host>/<sub>/x.pid`).
const PIDFILE_DEPTH: usize = 3;

/// What a sweep (or a run's removal) removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the runs whose directories were removed.
    pub runs: Vec<String>,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// Pids killed.
    pub killed: Vec<i32>,
}

impl SweepReport {
    fn merge(&mut self, other: SweepReport) {
        self.runs.extend(other.runs);
        self.namespaces.extend(other.namespaces);
        self.killed.extend(other.killed);
    }
}

/// Errors of a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The runs' root directory could not be listed.
    #[error("listing {path}: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Removes every dead run's processes, namespaces and directories (see the module docs).
/// Safe to call from several processes at once.
pub fn sweep() -> Result<SweepReport, SweepError> {
    let mut report = SweepReport::default();
    let root = Path::new(RUNS_ROOT);
    match std::fs::read_dir(root) {
        Ok(entries) => {
            for entry in entries.filter_map(|e| e.ok()) {
                let Ok(id) = entry.file_name().into_string() else {
                    continue;
                };
                let dir = entry.path();
                if dir.is_dir() && run_is_dead(&dir) {
                    tracing::info!(run = %id, "sweeping a dead test run");
                    report.merge(remove_run(&id, &dir));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SweepError::List {
                path: root.to_path_buf(),
                source,
            })
        }
    }
    for ns in list_netns(NETNS_PREFIX) {
        let Some(id) = run_id_of_netns(&ns) else {
            continue;
        };
        if !root.join(id).exists() {
            tracing::info!(netns = %ns, "sweeping an orphaned namespace");
            report.killed.extend(kill_all(netns_pids(&ns)));
            if delete_netns(&ns).is_ok() {
                report.namespaces.push(ns);
            }
        }
    }
    Ok(report)
}

/// Removes one run: kills its QEMUs and whatever runs in its namespaces, deletes the
/// namespaces, removes the directory. Best effort; used by `Drop`, the signal handler and the
/// sweep.
pub(crate) fn remove_run(run_id: &str, dir: &Path) -> SweepReport {
    let mut report = SweepReport::default();
    let mut pids = Vec::new();
    collect_pidfiles(dir, PIDFILE_DEPTH, &mut pids);
    let qemus: Vec<i32> = pids.into_iter().filter(|p| is_qemu_of(*p, dir)).collect();
    report.killed.extend(kill_all(qemus));
    for ns in list_netns(&format!("{NETNS_PREFIX}{run_id}-")) {
        report.killed.extend(kill_all(netns_pids(&ns)));
        match delete_netns(&ns) {
            Ok(()) => report.namespaces.push(ns),
            Err(e) => tracing::warn!(netns = %ns, error = %e, "deleting a namespace failed"),
        }
    }
    wait_gone(&report.killed);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => report.runs.push(run_id.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing a run dir failed"),
    }
    report
}

/// `dmt-<run>-<role>` → `<run>`.
fn run_id_of_netns(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (id, _role) = rest.split_once('-')?;
    (!id.is_empty()).then_some(id)
}

fn run_is_dead(dir: &Path) -> bool {
    match OwnerRecord::read_from(dir) {
        Some(owner) => !owner_alive(&owner),
        None => {
            // No (readable) owner: being created right now, or killed before writing it.
            let age = std::fs::metadata(dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            age.is_some_and(|a| a > OWNERLESS_GRACE)
        }
    }
}

/// Pids from `*.pid` files (except `owner.pid`) below `dir`.
fn collect_pidfiles(dir: &Path, depth: usize, out: &mut Vec<i32>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            collect_pidfiles(&path, depth - 1, out);
        } else if kind.is_file()
            && path.extension().is_some_and(|e| e == "pid")
            && entry.file_name() != OWNER_FILE
        {
            // Pidfiles are a few bytes; anything long is not one.
            if entry.metadata().is_ok_and(|m| m.len() <= 32) {
                if let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                {
                    out.push(pid);
                }
            }
        }
    }
}

/// Whether `pid` runs a QEMU binary whose command line mentions `dir` (its sockets and
/// pidfile live there), so a recycled pid is never killed.
fn is_qemu_of(pid: i32, dir: &Path) -> bool {
    let exe_is_qemu = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("qemu-system"));
    if !exe_is_qemu {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// SIGKILLs each pid (except this process) and returns those the signal reached.
fn kill_all(pids: Vec<i32>) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    pids.into_iter()
        .filter(|p| *p > 1 && *p != me)
        .filter(|p| kill(Pid::from_raw(*p), Signal::SIGKILL).is_ok())
        .collect()
}

/// Polls until every pid has exited (or is a zombie), up to [`KILL_WAIT`].
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + KILL_WAIT;
    while !pids.iter().all(|p| process_gone(*p)) {
        if Instant::now() > deadline {
            tracing::warn!(?pids, "killed processes still running");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_map_to_run_ids() {
        assert_eq!(run_id_of_netns("dmt-a1b2c3-sw"), Some("a1b2c3"));
        assert_eq!(run_id_of_netns("dmt-a1b2c3-client"), Some("a1b2c3"));
        assert_eq!(run_id_of_netns("dmt--a"), None);
        assert_eq!(run_id_of_netns("dmtx-a1-a"), None);
        assert_eq!(run_id_of_netns("dmt-nodash"), None);
    }

    #[test]
    fn pidfiles_are_found_below_the_run_but_not_owner_pid() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("a");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(dir.path().join(OWNER_FILE), "4242 1\n").unwrap();
        std::fs::write(host.join("qemu.pid"), "31337\n").unwrap();
        std::fs::write(host.join("junk.pid"), "not a pid").unwrap();
        std::fs::write(host.join("big.pid"), "1".repeat(100)).unwrap();
        let mut pids = Vec::new();
        collect_pidfiles(dir.path(), PIDFILE_DEPTH, &mut pids);
        assert_eq!(pids, vec![31337]);
    }

    #[test]
    fn a_non_qemu_process_is_never_taken_for_qemu() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!is_qemu_of(me, Path::new("/")));
    }
}

//! The guest's clock for the journal's input gate (`journal::guest`): the CPU time of QEMU's
//! vCPU threads, which QEMU names in `query-cpus-fast` (`thread-id`) and the kernel counts in
//! `/proc/<tid>/schedstat` (first field: ns on a CPU), readable without privilege.
//!
//! A thread id means something only in QEMU's PID namespace. The clock is used only if each
//! thread belongs to a process whose command line names the QMP socket the console attached
//! to, so a console in another namespace (or a recycled id) never paces input on a stranger's
//! clock: it goes without the gate, as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Sums the CPU time of a VM's vCPU threads.
#[derive(Debug)]
pub(super) struct GuestClock {
    schedstats: Vec<PathBuf>,
}

impl GuestClock {
    /// The clock of the vCPUs a `query-cpus-fast` reply lists, if each is a thread of the
    /// QEMU serving `qmp_socket` as this host's `/proc` shows it. `None` (logged): no gate.
    pub(super) fn of_vcpus(reply: &Value, qmp_socket: &Path) -> Option<GuestClock> {
        let threads: Vec<u64> = reply
            .as_array()?
            .iter()
            .filter_map(|cpu| cpu.get("thread-id")?.as_u64())
            .collect();
        if threads.is_empty() {
            tracing::info!("QEMU named no vCPU threads: input goes without the guest's clock");
            return None;
        }
        let socket = qmp_socket.to_string_lossy();
        for tid in &threads {
            if let Err(why) = thread_of_qemu(*tid, &socket) {
                tracing::info!(
                    tid,
                    why,
                    "a vCPU thread is not visible here: input goes without the guest's clock"
                );
                return None;
            }
        }
        let clock = GuestClock {
            schedstats: threads
                .iter()
                .map(|tid| PathBuf::from(format!("/proc/{tid}/schedstat")))
                .collect(),
        };
        clock.sample()?;
        tracing::info!(
            vcpus = threads.len(),
            "input waits for the guest to read: its vCPU threads' CPU time is visible"
        );
        Some(clock)
    }

    /// The vCPUs' CPU time in all; `None` if a thread is gone (QEMU exited).
    pub(super) fn sample(&self) -> Option<Duration> {
        let mut total: u64 = 0;
        for path in &self.schedstats {
            let text = std::fs::read_to_string(path).ok()?;
            total = total.saturating_add(on_cpu_ns(&text)?);
        }
        Some(Duration::from_nanos(total))
    }
}

/// The first field of a `schedstat` line: time on a CPU, ns.
fn on_cpu_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// Checks that thread `tid` belongs to a process whose command line mentions `qmp_socket`.
fn thread_of_qemu(tid: u64, qmp_socket: &str) -> Result<(), &'static str> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map_err(|_| "no such thread in this PID namespace")?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .map(str::trim)
        .ok_or("its status names no process")?;
    let cmdline = std::fs::read(format!("/proc/{tgid}/cmdline"))
        .map_err(|_| "its process's command line is not readable")?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains(qmp_socket) {
        Ok(())
    } else {
        Err("its process is not the QEMU of this QMP socket")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_schedstat_field_is_the_time_on_a_cpu() {
        assert_eq!(on_cpu_ns("254143977 50982094 1413\n"), Some(254_143_977));
        assert_eq!(on_cpu_ns(""), None);
        assert_eq!(on_cpu_ns("x 1 2"), None);
    }

    #[test]
    fn a_thread_of_another_process_gives_no_clock() {
        // This test's own thread: its process's command line names no QMP socket.
        let me = std::process::id();
        let reply = serde_json::json!([{ "cpu-index": 0, "thread-id": me }]);
        assert!(GuestClock::of_vcpus(&reply, Path::new("/run/dmore/no-such-qmp.sock")).is_none());
    }

    #[test]
    fn a_thread_of_the_right_process_gives_its_cpu_time() {
        // This test's own thread stands in for a vCPU; the test binary's command line holds
        // its own path, which stands in for the QMP socket.
        let tid = nix::unistd::gettid().as_raw();
        let exe = std::env::args().next().unwrap_or_default();
        let reply = serde_json::json!([{ "cpu-index": 0, "thread-id": tid }]);
        let clock = GuestClock::of_vcpus(&reply, Path::new(&exe)).expect("a clock");
        let before = clock.sample().expect("a sample");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(clock.sample().expect("a sample") > before, "the thread ran");
    }

    #[test]
    fn a_reply_without_threads_gives_no_clock() {
        let reply = serde_json::json!([{ "cpu-index": 0 }]);
        assert!(GuestClock::of_vcpus(&reply, Path::new("/x")).is_none());
    }
}

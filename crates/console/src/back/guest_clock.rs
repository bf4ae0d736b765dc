//! The guest's clock for the journal's input gate (`journal::guest`): what the kernel counts
//! for QEMU's vCPU threads, which QEMU names in `query-cpus-fast` (`thread-id`), in
//! `/proc/<tid>/schedstat` (ns on a CPU, ns waiting, times switched in), readable without
//! privilege.
//!
//! A thread id means something only in QEMU's PID namespace. The clock is used only if each
//! thread belongs to a process whose command line names the QMP socket the console attached
//! to, so a console in another namespace (or a recycled id) never paces input on a stranger's
//! clock: it goes without the gate, as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::journal::VcpuTime;

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

    /// The vCPU threads' counts, summed; `None` if a thread is gone (QEMU exited).
    pub(super) fn sample(&self) -> Option<VcpuTime> {
        let mut total = VcpuTime::default();
        for path in &self.schedstats {
            let text = std::fs::read_to_string(path).ok()?;
            let one = parse_schedstat(&text)?;
            total.on_cpu = total.on_cpu.saturating_add(one.on_cpu);
            total.switch_ins = total.switch_ins.saturating_add(one.switch_ins);
        }
        Some(total)
    }
}

/// A `schedstat` line: ns on a CPU, ns waiting for one, times switched in.
fn parse_schedstat(schedstat: &str) -> Option<VcpuTime> {
    let mut fields = schedstat.split_whitespace();
    let on_cpu = fields.next()?.parse().ok()?;
    let switch_ins = fields.nth(1)?.parse().ok()?;
    Some(VcpuTime {
        on_cpu: Duration::from_nanos(on_cpu),
        switch_ins,
    })
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
    fn a_schedstat_line_gives_the_time_on_a_cpu_and_the_switch_ins() {
        assert_eq!(
            parse_schedstat("254143977 50982094 1413\n"),
            Some(VcpuTime {
                on_cpu: Duration::from_nanos(254_143_977),
                switch_ins: 1413
            })
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1 2"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
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
        std::thread::sleep(Duration::from_millis(5));
        let after = clock.sample().expect("a sample");
        assert!(
            after.switch_ins > before.switch_ins,
            "switched in after the sleep: {after:?}"
        );
    }

    #[test]
    fn a_reply_without_threads_gives_no_clock() {
        let reply = serde_json::json!([{ "cpu-index": 0 }]);
        assert!(GuestClock::of_vcpus(&reply, Path::new("/x")).is_none());
    }
}

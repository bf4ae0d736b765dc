//! The baseline's accounting: which keys a plain console lost, and why, per run and overall.

use std::fmt;
use std::time::Duration;

use crate::typist::TypistLog;

/// The guest's workload during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The guest idles in `hlt`.
    Idle,
    /// The guest rewrites `mib` MiB at `rate_mib_s` MiB/s.
    Dirty {
        /// Size of the rewritten region.
        mib: u32,
        /// Rewrite rate.
        rate_mib_s: u32,
    },
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Idle => f.write_str("idle"),
            Workload::Dirty { mib, rate_mib_s } => {
                write!(f, "dirty {mib} MiB @ {rate_mib_s} MiB/s")
            }
        }
    }
}

/// One migration with a plain viewer typing on QEMU's own VNC server.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The guest's workload.
    pub workload: Workload,
    /// How long the viewer waited before reconnecting.
    pub reconnect_delay: Duration,
    /// Keys the user typed.
    pub typed: usize,
    /// Keys written to a live connection.
    pub sent: usize,
    /// Keys the guest reported.
    pub received: usize,
    /// Whether the viewer's connection dropped.
    pub dropped: bool,
    /// The VM's downtime as QEMU reported it, in ms.
    pub downtime_ms: Option<u64>,
}

impl RunResult {
    /// Builds a run's result from the typist's log and the guest's count of key presses.
    pub fn new(
        workload: Workload,
        reconnect_delay: Duration,
        log: &TypistLog,
        received: usize,
        downtime_ms: Option<u64>,
    ) -> RunResult {
        RunResult {
            workload,
            reconnect_delay,
            typed: log.keys.len(),
            sent: log.sent(),
            received,
            dropped: log.connections.iter().any(|c| c.dropped_at.is_some()),
            downtime_ms,
        }
    }

    /// Keys typed that never reached the guest.
    pub fn lost(&self) -> usize {
        self.typed.saturating_sub(self.received)
    }

    /// Keys written to a connection that the guest never saw: dropped silently by QEMU while
    /// the VM was paused for the switchover, or written into the dying connection.
    pub fn lost_in_switchover(&self) -> usize {
        self.sent.saturating_sub(self.received)
    }

    /// Keys typed while the viewer was disconnected, before it reconnected.
    pub fn lost_while_disconnected(&self) -> usize {
        self.typed - self.sent
    }
}

/// The baseline over many runs, grouped by workload and reconnect delay.
#[derive(Debug, Clone, Default)]
pub struct BaselineReport {
    /// Every run, in order.
    pub runs: Vec<RunResult>,
}

impl BaselineReport {
    fn groups(&self) -> Vec<(Workload, Duration)> {
        let mut groups: Vec<(Workload, Duration)> = Vec::new();
        for run in &self.runs {
            let key = (run.workload, run.reconnect_delay);
            if !groups.contains(&key) {
                groups.push(key);
            }
        }
        groups
    }
}

fn mean(values: impl Iterator<Item = usize>) -> f64 {
    let (sum, n) = values.fold((0usize, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

impl fmt::Display for BaselineReport {
    /// A table: one row per workload and reconnect delay, means per migration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<26} {:>9} {:>5} {:>8} {:>10} {:>12} {:>15} {:>11} {:>13}",
            "workload",
            "reconnect",
            "runs",
            "typed",
            "keys lost",
            "  paused/drop",
            "  disconnected",
            "dropped",
            "downtime (ms)"
        )?;
        for (workload, delay) in self.groups() {
            let runs: Vec<&RunResult> = self
                .runs
                .iter()
                .filter(|r| r.workload == workload && r.reconnect_delay == delay)
                .collect();
            let downtimes: Vec<usize> = runs
                .iter()
                .filter_map(|r| r.downtime_ms.and_then(|d| usize::try_from(d).ok()))
                .collect();
            writeln!(
                f,
                "{:<26} {:>8.1}s {:>5} {:>8.1} {:>10.1} {:>12.1} {:>15.1} {:>5}/{:<5} {:>13.1}",
                workload.to_string(),
                delay.as_secs_f64(),
                runs.len(),
                mean(runs.iter().map(|r| r.typed)),
                mean(runs.iter().map(|r| r.lost())),
                mean(runs.iter().map(|r| r.lost_in_switchover())),
                mean(runs.iter().map(|r| r.lost_while_disconnected())),
                runs.iter().filter(|r| r.dropped).count(),
                runs.len(),
                mean(downtimes.into_iter()),
            )?;
        }
        write!(
            f,
            "keys lost = typed - reached the guest (means per migration); \"paused/drop\" = sent on \
             the old connection but dropped by QEMU while the VM was paused or lost with the \
             socket; \"disconnected\" = typed before the viewer reconnected to the new host"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typist::{Connection, KeyFate, TypedKey};
    use std::time::Instant;

    fn log(sent_first: usize, unsent: usize, sent_after: usize) -> TypistLog {
        let now = Instant::now();
        let key = |fate| TypedKey {
            at: now,
            keysym: 0x61,
            fate,
        };
        let mut keys = vec![key(KeyFate::Sent { connection: 0 }); sent_first];
        keys.extend(vec![key(KeyFate::Unsent); unsent]);
        keys.extend(vec![key(KeyFate::Sent { connection: 1 }); sent_after]);
        TypistLog {
            keys,
            connections: vec![
                Connection {
                    connected_at: now,
                    dropped_at: Some(now),
                },
                Connection {
                    connected_at: now,
                    dropped_at: None,
                },
            ],
        }
    }

    #[test]
    fn losses_split_into_switchover_and_disconnected() {
        // 30 keys sent before the drop, 20 typed while disconnected, 10 sent after; the guest
        // saw 37: 3 went missing in the switchover.
        let run = RunResult::new(
            Workload::Idle,
            Duration::from_secs(1),
            &log(30, 20, 10),
            37,
            Some(12),
        );
        assert_eq!((run.typed, run.sent, run.lost()), (60, 40, 23));
        assert_eq!(run.lost_in_switchover(), 3);
        assert_eq!(run.lost_while_disconnected(), 20);
        assert!(run.dropped);
    }

    #[test]
    fn table_groups_runs_and_averages() {
        let mut report = BaselineReport::default();
        for received in [37, 39] {
            report.runs.push(RunResult::new(
                Workload::Idle,
                Duration::from_secs(1),
                &log(30, 20, 10),
                received,
                Some(10),
            ));
        }
        let text = report.to_string();
        let row = text.lines().nth(1).expect("one group row");
        assert!(row.starts_with("idle"), "{row}");
        // Mean lost (23 + 21) / 2 = 22.0; switchover (3 + 1) / 2 = 2.0; dropped 2/2.
        assert!(
            row.contains("22.0") && row.contains("2.0") && row.contains("2/2"),
            "{row}"
        );
        assert_eq!(text.lines().count(), 3);
    }
}

//! The console under test: a real `dmore console` process (or any command that runs one),
//! its viewer address read from its stdout, its memory and CPU read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;

/// The line a console prints once it listens (see `console::front::ConsoleConfig::listen`).
const LISTENING: &str = "dmore console: listening on ";
/// Linux's `USER_HZ`: the unit of `utime`/`stime` in `/proc/PID/stat` (100 on every Linux
/// architecture the console runs on).
const CLOCK_TICKS_PER_S: u64 = 100;

/// The QEMU sockets a console attaches to; [`run`](super::run)'s `launch` turns them into the
/// console's command line.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSockets<'a> {
    /// QEMU's VNC server socket (`key-delay-ms=0`).
    pub vnc: &'a Path,
    /// A QMP monitor for the console alone.
    pub qmp: &'a Path,
}

/// Why the console process could not be started or read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The command could not be spawned.
    #[error("cannot start the console process")]
    Spawn(#[source] std::io::Error),
    /// It exited before printing its address.
    #[error("the console exited before listening ({0}); its stderr says why")]
    Exited(std::process::ExitStatus),
    /// It printed no address in time.
    #[error("the console printed no `{LISTENING}ADDR` line within {0:?}")]
    NoAddress(Duration),
    /// The address it printed does not parse.
    #[error("the console printed an address that does not parse: {0:?}")]
    BadAddress(String),
    /// `/proc/PID/...` could not be read or parsed.
    #[error("reading /proc/{pid}/{file}")]
    Proc {
        /// The console's process id.
        pid: u32,
        /// `status` or `stat`.
        file: &'static str,
        /// Why (a parse failure is `InvalidData`).
        #[source]
        source: std::io::Error,
    },
}

/// A running console; killed and reaped on drop.
#[derive(Debug)]
pub struct ConsoleProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConsoleProcess {
    /// Spawns `command` (stdout is taken to read the address; stdin is closed) and waits up to
    /// `timeout` for it to listen.
    pub async fn spawn(command: Command, timeout: Duration) -> Result<Self, ProcessError> {
        ConsoleProcess::spawn_marked(command, LISTENING, timeout).await
    }

    /// [`ConsoleProcess::spawn`] for a process that prints `marker` and its address (e.g.
    /// `dmore gateway serve`'s `listening on ADDR`).
    pub async fn spawn_marked(
        mut command: Command,
        marker: &'static str,
        timeout: Duration,
    ) -> Result<Self, ProcessError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(ProcessError::Spawn)?;
        let stdout = child.stdout.take();
        let (tx, rx) = oneshot::channel::<String>();
        // A thread reads stdout to its end, so the console never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let Some(stdout) = stdout else { return };
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find(marker) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.get(at + marker.len()..).unwrap_or("").into());
                    }
                }
            }
        });
        // The process is owned (and killed on drop) from here on.
        let mut proc = ConsoleProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                // stdout closed without the line: the process is exiting.
                let status = proc.child.wait().map_err(ProcessError::Spawn)?;
                return Err(ProcessError::Exited(status));
            }
            Err(_) => return Err(ProcessError::NoAddress(timeout)),
        };
        proc.addr = line
            .trim()
            .parse()
            .map_err(|_| ProcessError::BadAddress(line.clone()))?;
        Ok(proc)
    }

    /// Where viewers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS` in `/proc/PID/status`), KiB.
    pub fn rss_kib(&self) -> Result<u64, ProcessError> {
        rss_kib(self.pid())
    }

    /// CPU time used so far, all threads, user + system ([`cpu_time`]).
    pub fn cpu_time(&self) -> Result<Duration, ProcessError> {
        cpu_time(self.pid())
    }
}

/// CPU time process `pid` used so far, all threads, user + system (`utime + stime` of
/// `/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> Result<Duration, ProcessError> {
    let err = |source| ProcessError::Proc {
        pid,
        file: "stat",
        source,
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(err)?;
    // Fields after the command name (which may hold spaces and parentheses): state is the
    // 3rd field overall, utime the 14th, stime the 15th.
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .and_then(|f| {
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            utime.checked_add(stime)
        })
        .ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "utime/stime",
            ))
        })?;
    Ok(Duration::from_millis(
        ticks.saturating_mul(1000 / CLOCK_TICKS_PER_S),
    ))
}

/// Resident memory of process `pid` (`VmRSS` in `/proc/PID/status`), KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcessError> {
    let err = |source| ProcessError::Proc {
        pid,
        file: "status",
        source,
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "VmRSS",
            ))
        })
}

/// The open file descriptors of process `pid` (the entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Result<usize, ProcessError> {
    let err = |source| ProcessError::Proc {
        pid,
        file: "fd",
        source,
    };
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(err)?
        .count())
}

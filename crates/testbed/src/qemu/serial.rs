//! The guest's serial port: a reader task turns the socket's bytes into lines, keeps every raw
//! line (for error messages) and hands parsed [`Report`]s to the harness in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest::report::{parse_line, Report};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest line kept; a longer one is cut (the guest never prints one).
const MAX_LINE: usize = 1024;
/// Raw lines kept for error messages; the oldest go first.
const MAX_LOG_LINES: usize = 10_000;

/// Why a wait on the serial port ended without what was waited for.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The serial connection closed: QEMU exited or closed the chardev.
    #[error(
        "the guest's serial port closed while waiting for {waited_for}; serial so far:\n{log}"
    )]
    Closed {
        /// What the caller waited for.
        waited_for: String,
        /// The last lines the guest printed.
        log: String,
    },
    /// Nothing arrived in time.
    #[error("no {waited_for} from the guest within {timeout:?}; serial so far:\n{log}")]
    Timeout {
        /// What the caller waited for.
        waited_for: String,
        /// How long it waited.
        timeout: Duration,
        /// The last lines the guest printed.
        log: String,
    },
    /// The guest reported a CPU exception or a device that did not acknowledge its setup.
    #[error("the guest failed ({report}) while waiting for {waited_for}; serial so far:\n{log}")]
    Guest {
        /// The `FAULT` or `NOACK` report.
        report: Report,
        /// What the caller waited for.
        waited_for: String,
        /// The last lines the guest printed.
        log: String,
    },
}

/// The harness's end of the guest's serial port.
#[derive(Debug)]
pub struct Serial {
    rx: mpsc::UnboundedReceiver<Report>,
    log: Arc<Mutex<Vec<String>>>,
    tail: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Serial {
    /// Starts reading `stream`.
    pub(crate) fn start(stream: UnixStream) -> Serial {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(None));
        let task = tokio::spawn(read_lines(stream, tx, Arc::clone(&log), Arc::clone(&tail)));
        Serial {
            rx,
            log,
            tail,
            task,
        }
    }

    /// The guest's last line, if the port closed in the middle of it. A live migration can
    /// stop the guest between two bytes of a line: the rest is printed on the destination
    /// QEMU's port, as its first line (see [`Serial::lines`]); join the two.
    pub fn unterminated_tail(&self) -> Option<String> {
        self.tail.lock().ok().and_then(|t| t.clone())
    }

    /// The next report, in the order the guest printed them; `None` once the port closed and
    /// every report was taken. Lines that are no report are skipped (they stay in the log).
    pub async fn recv(&mut self) -> Option<Report> {
        self.rx.recv().await
    }

    /// The next report within `timeout`. `FAULT` and `NOACK` lines are errors.
    pub async fn next(
        &mut self,
        timeout: Duration,
        waited_for: &str,
    ) -> Result<Report, SerialError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(report @ (Report::Fault(_) | Report::NoAck { .. }))) => {
                Err(SerialError::Guest {
                    report,
                    waited_for: waited_for.to_owned(),
                    log: self.log_tail(),
                })
            }
            Ok(Some(report)) => Ok(report),
            Ok(None) => Err(SerialError::Closed {
                waited_for: waited_for.to_owned(),
                log: self.log_tail(),
            }),
            Err(_) => Err(SerialError::Timeout {
                waited_for: waited_for.to_owned(),
                timeout,
                log: self.log_tail(),
            }),
        }
    }

    /// Waits for `READY`, skipping `OPTS`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), SerialError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.next(left, "READY").await? == Report::Ready {
                return Ok(());
            }
        }
    }

    /// Every line the guest printed so far (up to the last 10,000), raw.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last 40 lines, one string, for error messages.
    pub fn log_tail(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(40);
        lines.get(from..).unwrap_or_default().join("\n")
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_lines(
    mut stream: UnixStream,
    tx: mpsc::UnboundedSender<Report>,
    log: Arc<Mutex<Vec<String>>>,
    tail: Arc<Mutex<Option<String>>>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or_default() {
            if b == b'\n' {
                deliver(&mut pending, &tx, &log);
            } else if pending.len() < MAX_LINE {
                pending.push(b);
            }
        }
    }
    if !pending.is_empty() {
        if let Ok(mut tail) = tail.lock() {
            *tail = Some(String::from_utf8_lossy(&pending).into_owned());
        }
    }
}

fn deliver(pending: &mut Vec<u8>, tx: &mpsc::UnboundedSender<Report>, log: &Mutex<Vec<String>>) {
    let line = String::from_utf8_lossy(pending)
        .trim_end_matches('\r')
        .to_owned();
    pending.clear();
    let parsed = parse_line(&line);
    match &parsed {
        Ok(report) => tracing::trace!(%report, "guest serial"),
        Err(e) => tracing::debug!(%e, "guest serial: not a report"),
    }
    if let Ok(mut log) = log.lock() {
        if log.len() >= MAX_LOG_LINES {
            log.remove(0);
        }
        log.push(line);
    }
    if let Ok(report) = parsed {
        let _ = tx.send(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_line_cut_by_the_port_closing_is_kept_as_the_tail_not_dropped() {
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let mut serial = Serial::start(harness);
        guest.write_all(b"K 1 D 1e\nK 2 U").await.unwrap();
        drop(guest);
        let mut reports = Vec::new();
        while let Some(r) = serial.recv().await {
            reports.push(r);
        }
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(serial.unterminated_tail().as_deref(), Some("K 2 U"));
    }

    #[tokio::test]
    async fn a_port_closed_after_a_whole_line_has_no_tail() {
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let mut serial = Serial::start(harness);
        guest.write_all(b"K 1 D 1e\n").await.unwrap();
        drop(guest);
        while serial.recv().await.is_some() {}
        assert_eq!(serial.unterminated_tail(), None);
    }
}

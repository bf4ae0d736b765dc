//! The guest's serial port: a reader task turns the socket's bytes into lines, keeps every raw
//! line (for error messages) and hands parsed [`Report`]s to the harness in order.
//!
//! With the Linux guest, its lines ([`linux_guest::report`]) come in order on their own
//! channel ([`Serial::next_linux`]), and those the tiny guest has a word for (keys, the three
//! buttons, LEDs, READY: [`LinuxReport::as_guest_report`]) on the main one too, so a test
//! written for the tiny guest reads either.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest::report::{parse_line, Report};
use linux_guest::report::Report as LinuxReport;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::OwnedReadHalf;
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
    /// The Linux guest reported an error (`ERR`).
    #[error(
        "the Linux guest failed ({error}) while waiting for {waited_for}; serial so far:\n{log}"
    )]
    LinuxGuest {
        /// The text of its `ERR` line.
        error: String,
        /// What the caller waited for.
        waited_for: String,
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
    /// Reports, each with the time its line arrived.
    rx: mpsc::UnboundedReceiver<(Instant, Report)>,
    linux_rx: mpsc::UnboundedReceiver<LinuxReport>,
    port: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    log: Arc<Mutex<Vec<String>>>,
    tail: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
    /// [`Serial::chained`]'s task that joins the QEMUs' connections.
    relay: Option<JoinHandle<()>>,
}

impl Serial {
    /// Starts reading `stream`, the Linux guest's lines if `linux`, else the tiny guest's.
    pub(crate) fn start(stream: UnixStream, linux: bool) -> Serial {
        let (tx, rx) = mpsc::unbounded_channel();
        let (linux_tx, linux_rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(None));
        let (read, write) = stream.into_split();
        let channels = Channels {
            tx,
            linux: linux.then_some(linux_tx),
        };
        let task = tokio::spawn(read_lines(
            read,
            channels,
            Arc::clone(&log),
            Arc::clone(&tail),
        ));
        Serial {
            rx,
            linux_rx,
            port: Arc::new(tokio::sync::Mutex::new(write)),
            log,
            tail,
            task,
            relay: None,
        }
    }

    /// The serial port of a VM that a manager (libvirt) starts and migrates, each of its QEMUs
    /// a client of `listener` (`<serial type='unix'><source mode='connect' …/>`): their
    /// connections are read whole, one after the other in the order they connected (a
    /// destination QEMU connects when it starts, before the switchover, and the source's
    /// connection closes when that QEMU exits), as one port. A line cut by the switchover
    /// is joined again. Lines sent to the guest go nowhere.
    pub fn chained(listener: tokio::net::UnixListener, linux: bool) -> std::io::Result<Serial> {
        let (ours, mut theirs) = UnixStream::pair()?;
        let mut serial = Serial::start(ours, linux);
        serial.relay = Some(tokio::spawn(async move {
            while let Ok((mut qemu, _)) = listener.accept().await {
                if tokio::io::copy(&mut qemu, &mut theirs).await.is_err() {
                    tracing::debug!("a QEMU's serial connection failed: the next one is read");
                }
            }
        }));
        Ok(serial)
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
        self.rx.recv().await.map(|(_, report)| report)
    }

    /// [`recv`](Self::recv), with the time the report's line came out of the port (not the
    /// time it was taken): what a lag is measured against.
    pub async fn recv_timed(&mut self) -> Option<(Instant, Report)> {
        self.rx.recv().await
    }

    /// The next report within `timeout`. `FAULT` and `NOACK` lines are errors.
    pub async fn next(
        &mut self,
        timeout: Duration,
        waited_for: &str,
    ) -> Result<Report, SerialError> {
        let got = tokio::time::timeout(timeout, self.recv()).await;
        match self.received(got, timeout, waited_for)? {
            report @ (Report::Fault(_) | Report::NoAck { .. }) => Err(SerialError::Guest {
                report,
                waited_for: waited_for.to_owned(),
                log: self.log_tail(),
            }),
            report => Ok(report),
        }
    }

    /// The Linux guest's next report within `timeout` (none from the tiny guest). `ERR` lines
    /// are errors.
    pub async fn next_linux(
        &mut self,
        timeout: Duration,
        waited_for: &str,
    ) -> Result<LinuxReport, SerialError> {
        let got = tokio::time::timeout(timeout, self.linux_rx.recv()).await;
        match self.received(got, timeout, waited_for)? {
            LinuxReport::Error(error) => Err(SerialError::LinuxGuest {
                error,
                waited_for: waited_for.to_owned(),
                log: self.log_tail(),
            }),
            report => Ok(report),
        }
    }

    /// A timed wait for either guest's report: the report, or why none came (closed, timed out).
    fn received<T>(
        &self,
        got: Result<Option<T>, tokio::time::error::Elapsed>,
        timeout: Duration,
        waited_for: &str,
    ) -> Result<T, SerialError> {
        match got {
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

    /// Writes `line` and a newline to the guest (the Linux guest takes commands this way).
    pub async fn send_line(&self, line: &str) -> std::io::Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.port.lock().await.write_all(&bytes).await
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
        if let Some(relay) = &self.relay {
            relay.abort();
        }
    }
}

/// Where parsed lines go.
struct Channels {
    tx: mpsc::UnboundedSender<(Instant, Report)>,
    /// Set for the Linux guest: its lines are parsed with its grammar.
    linux: Option<mpsc::UnboundedSender<LinuxReport>>,
}

async fn read_lines(
    mut stream: OwnedReadHalf,
    channels: Channels,
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
                deliver(&mut pending, &channels, &log);
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

fn deliver(pending: &mut Vec<u8>, channels: &Channels, log: &Mutex<Vec<String>>) {
    let line = String::from_utf8_lossy(pending)
        .trim_end_matches('\r')
        .to_owned();
    pending.clear();
    if let Some(linux) = &channels.linux {
        let parsed = linux_guest::report::parse_line(&line);
        keep(log, line);
        match parsed {
            Ok(report) => {
                tracing::trace!(%report, "Linux guest serial");
                if let Some(mapped) = report.as_guest_report() {
                    let _ = channels.tx.send((Instant::now(), mapped));
                }
                let _ = linux.send(report);
            }
            Err(e) => tracing::debug!(%e, "Linux guest serial: not a report"),
        }
        return;
    }
    let parsed = parse_line(&line);
    match &parsed {
        Ok(report) => tracing::trace!(%report, "guest serial"),
        Err(e) => tracing::debug!(%e, "guest serial: not a report"),
    }
    keep(log, line);
    if let Ok(report) = parsed {
        let _ = channels.tx.send((Instant::now(), report));
    }
}

fn keep(log: &Mutex<Vec<String>>, line: String) {
    if let Ok(mut log) = log.lock() {
        if log.len() >= MAX_LOG_LINES {
            log.remove(0);
        }
        log.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_cut_by_the_port_closing_is_kept_as_the_tail_not_dropped() {
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let mut serial = Serial::start(harness, false);
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
    async fn linux_lines_come_on_their_channel_and_as_tiny_guest_reports() {
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let mut serial = Serial::start(harness, true);
        guest
            .write_all(b"\x1b[01;01HBdsDxe\nDEV 0 11 1 1 AT kbd\nREADY\nKEY 1 0 1e 1\nBTN 1 1 113 1\nERR x\n")
            .await
            .unwrap();
        let wait = Duration::from_secs(5);
        assert!(matches!(
            serial.next_linux(wait, "DEV").await,
            Ok(LinuxReport::Device { index: 0, .. })
        ));
        serial.next_linux(wait, "READY").await.unwrap();
        serial.next_linux(wait, "KEY").await.unwrap();
        serial.next_linux(wait, "BTN").await.unwrap();
        assert!(matches!(
            serial.next_linux(wait, "ERR").await,
            Err(SerialError::LinuxGuest { .. })
        ));
        // The side-button press has no tiny-guest word: only READY and the key.
        assert_eq!(serial.next(wait, "READY").await.unwrap(), Report::Ready);
        assert_eq!(
            serial.next(wait, "key").await.unwrap(),
            Report::Key {
                count: 1,
                down: true,
                code: 0x1e
            }
        );
        drop(guest);
        assert!(serial.recv().await.is_none());
        // Commands go the other way.
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let serial = Serial::start(harness, true);
        serial.send_line("SCROLL 3").await.unwrap();
        let mut buf = [0u8; 9];
        guest.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"SCROLL 3\n");
    }

    #[tokio::test]
    async fn a_port_closed_after_a_whole_line_has_no_tail() {
        let (mut guest, harness) = UnixStream::pair().unwrap();
        let mut serial = Serial::start(harness, false);
        guest.write_all(b"K 1 D 1e\n").await.unwrap();
        drop(guest);
        while serial.recv().await.is_some() {}
        assert_eq!(serial.unterminated_tail(), None);
    }
}

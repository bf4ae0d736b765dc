//! The serial console across co-migrations: a client types lines into the tiny guest's COM2
//! console while the guest writes numbered lines and echoes what it receives
//! ([`guest::GuestOptions::uart_ms`]); through dmore (resuming at each move) and, for the
//! baseline, on QEMU's own chardev socket (reconnecting to the new QEMU at each move).
//!
//! ```text
//!  typist ─lines─▶ client ─▶ dmore console (service address) ─▶ QEMU COM2 ─▶ guest: echo, count
//!  collector ◀──── client ◀─ dmore console ◀─ QEMU COM2 ◀─ guest: "#<line> <received>\n" every N ms
//! ```
//!
//! The guest's stream ([`parse`]) tells every check: echoes equal to what was typed (each
//! typed byte received once, each output byte delivered once), numbered lines without gap or
//! repeat (output neither lost nor doubled), and the last line's count of received bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::serial_attach::{attach_with, AttachError, AttachReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Numbered-line period of the guest (`uart=` ms).
pub const LINE_MS: u32 = 20;
/// How often the typist types a line.
pub const TYPE_EVERY: Duration = Duration::from_millis(50);
/// How long a client may take to reach the console again after a move.
const RECONNECT: Duration = Duration::from_secs(60);

/// What the guest wrote on its serial console, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStream {
    /// Numbered lines in order: (line number, bytes received so far).
    pub lines: Vec<(u32, u32)>,
    /// The bytes the guest echoed, in order.
    pub echoed: Vec<u8>,
    /// Bytes that fit neither (a cut or garbled line).
    pub garbled: usize,
}

impl GuestStream {
    /// Line numbers missing between the first and the last line seen.
    pub fn missing_lines(&self) -> u64 {
        let mut missing = 0;
        for w in self.lines.windows(2) {
            missing += u64::from(w[1].0.saturating_sub(w[0].0).saturating_sub(1));
        }
        missing
    }

    /// Lines seen again (a number not above the one before it).
    pub fn repeated_lines(&self) -> u64 {
        self.lines.windows(2).filter(|w| w[1].0 <= w[0].0).count() as u64
    }

    /// The guest's count of received bytes in its last line.
    pub fn received(&self) -> Option<u32> {
        self.lines.last().map(|l| l.1)
    }

    /// One line for a test's log: what was typed against what the guest received and echoed,
    /// and the numbered lines of `output` (the whole output the client got).
    pub fn summary(&self, typed: &[u8], output: &[u8]) -> String {
        format!(
            "typed {} B, guest received {:?} B, echoed back {} B; output {} B in {} numbered \
             lines (first {:?}), missing {}, repeated {}, garbled {}",
            typed.len(),
            self.received(),
            self.echoed.len(),
            output.len(),
            self.lines.len(),
            self.lines.first().map(|l| l.0),
            self.missing_lines(),
            self.repeated_lines(),
            self.garbled
        )
    }

    /// Exactly once both ways: the output whole (no line missing, repeated or garbled), the
    /// guest's count of received bytes equal to what was `typed`, and its echoes equal to
    /// `typed` (every byte received once, in order, and its echo delivered once).
    pub fn check_exact(&self, typed: &[u8]) -> Result<(), SerialMismatch> {
        if self.missing_lines() != 0 || self.repeated_lines() != 0 || self.garbled != 0 {
            return Err(SerialMismatch::Output {
                missing: self.missing_lines(),
                repeated: self.repeated_lines(),
                garbled: self.garbled,
            });
        }
        if self.received() != u32::try_from(typed.len()).ok() {
            return Err(SerialMismatch::Count {
                received: self.received(),
                typed: typed.len(),
            });
        }
        if self.echoed != typed {
            let at = self
                .echoed
                .iter()
                .zip(typed)
                .position(|(a, b)| a != b)
                .unwrap_or(typed.len().min(self.echoed.len()));
            let around = |b: &[u8]| {
                String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())])
                    .into_owned()
            };
            return Err(SerialMismatch::Echo {
                at,
                typed: around(typed),
                echoed: around(&self.echoed),
            });
        }
        Ok(())
    }
}

/// How a serial session was not exactly once ([`GuestStream::check_exact`]).
#[derive(Debug, thiserror::Error)]
pub enum SerialMismatch {
    /// The guest's numbered output lines were not whole and once.
    #[error("output lost, doubled or garbled: {missing} lines missing, {repeated} repeated, {garbled} bytes garbled")]
    Output {
        /// Line numbers missing.
        missing: u64,
        /// Lines seen again.
        repeated: u64,
        /// Bytes that fit no line.
        garbled: usize,
    },
    /// The guest did not count every typed byte once.
    #[error("the guest counted {received:?} bytes, {typed} were typed")]
    Count {
        /// The guest's count.
        received: Option<u32>,
        /// Bytes typed.
        typed: usize,
    },
    /// The echoes differ from what was typed.
    #[error("the guest's echoes differ from the typed bytes at byte {at}: typed {typed:?}, echoed {echoed:?}")]
    Echo {
        /// First differing byte.
        at: usize,
        /// Typed bytes around it.
        typed: String,
        /// Echoed bytes around it.
        echoed: String,
    },
}

/// Parses the guest's COM2 output (a cut line at the end is left out).
pub fn parse(stream: &[u8]) -> GuestStream {
    const LINE: usize = 19; // "#" 8 hex " " 8 hex "\n"
    let mut out = GuestStream::default();
    let mut i = 0;
    while i < stream.len() {
        if stream[i] != b'#' {
            out.echoed.push(stream[i]);
            i += 1;
            continue;
        }
        let Some(line) = stream.get(i..i + LINE) else {
            break;
        };
        let hex = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
        };
        match (hex(&line[1..9]), line[9], hex(&line[10..18]), line[18]) {
            (Some(n), b' ', Some(r), b'\n') => {
                out.lines.push((n, r));
                i += LINE;
            }
            _ => {
                out.garbled += 1;
                i += 1;
            }
        }
    }
    out
}

/// The `n`th line the typist types (no `#`: the guest's stream stays parseable): a shell
/// command whose answer ([`typed_answer`]) is not in its own echo (the quotes).
pub fn typed_line(n: u64) -> Vec<u8> {
    format!("echo {n:06} \"abcdefghijklmnopqrstuvwxyz\"\n").into_bytes()
}

/// What a shell prints for [`typed_line`]`(n)` (before its newline).
pub fn typed_answer(n: u64) -> String {
    format!("{n:06} abcdefghijklmnopqrstuvwxyz")
}

/// A serial client: a typist, a collector, and whatever carries them to the guest.
#[derive(Debug)]
pub struct SerialClient {
    typed: Arc<Mutex<Vec<u8>>>,
    output: Arc<Mutex<Vec<u8>>>,
    typing: Arc<AtomicBool>,
    /// `None` once typing stopped.
    typist: Option<JoinHandle<()>>,
    collector: JoinHandle<()>,
    link: JoinHandle<Result<AttachReport, AttachError>>,
}

impl SerialClient {
    /// Attaches through a dmore console (resuming across reconnections) with `connect`.
    pub fn through_dmore<C, F, S>(connect: C) -> SerialClient
    where
        C: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (input, typist_end) = tokio::io::duplex(1 << 16);
        let (collector_end, output) = tokio::io::duplex(1 << 16);
        let link = tokio::spawn(attach_with(connect, input, output, Some(RECONNECT)));
        SerialClient::start(typist_end, collector_end, link)
    }

    /// Attaches to QEMU's own chardev socket, as `virsh console` does: when the connection
    /// ends it connects to whatever `path` names now (the new QEMU after a move) after
    /// `reconnect_delay`; what is typed while disconnected is lost, as is what the guest
    /// writes meanwhile.
    pub fn on_qemu(path: Arc<Mutex<PathBuf>>, reconnect_delay: Duration) -> SerialClient {
        let (input, typist_end) = tokio::io::duplex(1 << 16);
        let (collector_end, output) = tokio::io::duplex(1 << 16);
        let link = tokio::spawn(plain_link(path, input, output, reconnect_delay));
        SerialClient::start(typist_end, collector_end, link)
    }

    /// Types into and reads from a process's stdin and stdout (OpenSSH's `ssh` to the
    /// gateway): one connection, which must last until the typing ends; the link's report
    /// then says 1 connection, and an error if the process exited before.
    pub fn over_process(child: tokio::process::Child) -> SerialClient {
        let (input, typist_end) = tokio::io::duplex(1 << 16);
        let (collector_end, output) = tokio::io::duplex(1 << 16);
        let link = tokio::spawn(process_link(child, input, output));
        SerialClient::start(typist_end, collector_end, link)
    }

    fn start(
        mut typist_end: tokio::io::DuplexStream,
        mut collector_end: tokio::io::DuplexStream,
        link: JoinHandle<Result<AttachReport, AttachError>>,
    ) -> SerialClient {
        let typed = Arc::new(Mutex::new(Vec::new()));
        let output = Arc::new(Mutex::new(Vec::new()));
        let typing = Arc::new(AtomicBool::new(true));
        let (t, on) = (Arc::clone(&typed), Arc::clone(&typing));
        let typist = tokio::spawn(async move {
            let mut n = 0;
            let mut tick = tokio::time::interval(TYPE_EVERY);
            while on.load(Ordering::Relaxed) {
                tick.tick().await;
                let line = typed_line(n);
                n += 1;
                if typist_end.write_all(&line).await.is_err() {
                    break;
                }
                lock(&t).extend_from_slice(&line);
            }
        });
        let o = Arc::clone(&output);
        let collector = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = collector_end.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                lock(&o).extend_from_slice(&buf[..n]);
            }
        });
        SerialClient {
            typed,
            output,
            typing,
            typist: Some(typist),
            collector,
            link,
        }
    }

    /// Everything the client received so far, parsed.
    pub fn stream(&self) -> GuestStream {
        parse(&lock(&self.output))
    }

    /// Bytes typed so far (handed to the link).
    pub fn typed(&self) -> Vec<u8> {
        lock(&self.typed).clone()
    }

    /// Everything the client received so far, raw.
    pub fn output(&self) -> Vec<u8> {
        lock(&self.output).clone()
    }

    /// Stops typing after the line being typed: everything typed.
    pub async fn stop_typing(&mut self) -> Vec<u8> {
        self.typing.store(false, Ordering::Relaxed);
        if let Some(typist) = self.typist.take() {
            let _ = typist.await;
        }
        self.typed()
    }

    /// Stops typing, waits until the guest counted `expect(typed)` bytes or `within` passed,
    /// then stops: what was typed, what was received, and the link's report.
    pub async fn finish(
        mut self,
        within: Duration,
        expect: impl Fn(usize) -> usize,
    ) -> (Vec<u8>, Vec<u8>, Option<AttachReport>) {
        let typed = self.stop_typing().await;
        let want = expect(typed.len());
        let deadline = Instant::now() + within;
        loop {
            let s = self.stream();
            let seen = s.received().unwrap_or(0) as usize;
            // Two more lines after the count is reached: their echoes are in by then.
            let settled = s.lines.iter().rev().take(2).all(|l| l.1 as usize >= want);
            if (seen >= want && settled && s.lines.len() >= 2) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.collector.abort();
        let _ = self.collector.await;
        let report = match tokio::time::timeout(Duration::from_secs(5), self.link).await {
            Ok(Ok(Ok(r))) => Some(r),
            _ => None,
        };
        let output = lock(&self.output).clone();
        (typed, output, report)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A process as the link: typed bytes to its stdin, its stdout to the output, until the
/// collector stops (the process is then stopped) or the process exits first (an error: the
/// connection dropped).
async fn process_link(
    mut child: tokio::process::Child,
    mut input: tokio::io::DuplexStream,
    mut output: tokio::io::DuplexStream,
) -> Result<AttachReport, AttachError> {
    let dropped = |why: String| AttachError::Connect {
        target: None,
        source: std::io::Error::other(why),
    };
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(dropped("the process has no piped stdin and stdout".into()));
    };
    let mut buf = vec![0u8; 4096];
    let mut typed = vec![0u8; 4096];
    let mut probe = [0u8; 1];
    let mut input_open = true;
    loop {
        tokio::select! {
            n = input.read(&mut typed), if input_open => match n {
                Ok(0) | Err(_) => input_open = false,
                Ok(n) => if stdin.write_all(&typed[..n]).await.is_err() {
                    return Err(dropped("its stdin closed".into()));
                },
            },
            // The collector never writes: a read ends only when it stopped (its end dropped),
            // which ends the session even when the process has nothing more to say.
            _ = output.read(&mut probe) => break,
            n = stdout.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Err(dropped("its stdout closed".into())),
                // The collector stopped: the session is over.
                Ok(n) => if output.write_all(&buf[..n]).await.is_err() {
                    break;
                },
            },
            status = child.wait() => {
                return Err(dropped(format!("the process exited ({status:?})")));
            }
        }
    }
    if child
        .try_wait()
        .map_err(|e| dropped(e.to_string()))?
        .is_some()
    {
        return Err(dropped("the process exited".into()));
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(AttachReport {
        connections: 1,
        ..AttachReport::default()
    })
}

/// The baseline's link: raw bytes on QEMU's chardev, reconnecting to the path of the moment.
async fn plain_link(
    path: Arc<Mutex<PathBuf>>,
    mut input: tokio::io::DuplexStream,
    mut output: tokio::io::DuplexStream,
    reconnect_delay: Duration,
) -> Result<AttachReport, AttachError> {
    let mut report = AttachReport::default();
    let mut buf = vec![0u8; 4096];
    let mut typed = vec![0u8; 4096];
    let mut input_open = true;
    loop {
        let at = lock(&path).clone();
        let Ok(mut stream) = tokio::net::UnixStream::connect(&at).await else {
            // Typed meanwhile: lost, as on a terminal with no connection.
            while let (true, Ok(Ok(n))) = (
                input_open,
                tokio::time::timeout(Duration::from_millis(1), input.read(&mut typed)).await,
            ) {
                if n == 0 {
                    input_open = false;
                    break;
                }
                report.lost += n as u64;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        report.connections += 1;
        loop {
            tokio::select! {
                n = input.read(&mut typed), if input_open => match n {
                    Ok(0) | Err(_) => input_open = false,
                    Ok(n) => if stream.write_all(&typed[..n]).await.is_err() {
                        report.lost += n as u64;
                        break;
                    },
                },
                n = stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if output.write_all(&buf[..n]).await.is_err() {
                        return Ok(report);
                    },
                },
            }
        }
        // Disconnected: what is typed until the user is back is lost.
        let back = Instant::now() + reconnect_delay;
        while Instant::now() < back {
            if !input_open {
                tokio::time::sleep_until(back).await;
                break;
            }
            match tokio::time::timeout_at(back, input.read(&mut typed)).await {
                Ok(Ok(n)) if n > 0 => report.lost += n as u64,
                Ok(_) => input_open = false,
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_stream_parses_into_lines_and_echoes() {
        let mut s = b"ab#00000000 00000002\nc".to_vec();
        s.extend_from_slice(b"#00000001 00000003\n#00000003 00000003\n#0000");
        let g = parse(&s);
        assert_eq!(g.lines, vec![(0, 2), (1, 3), (3, 3)]);
        assert_eq!(g.echoed, b"abc");
        assert_eq!(g.missing_lines(), 1);
        assert_eq!(g.repeated_lines(), 0);
        assert_eq!(g.received(), Some(3));
        assert!(!typed_line(7).contains(&b'#'));
        let (line, answer) = (typed_line(7), typed_answer(7));
        assert!(!line.windows(answer.len()).any(|w| w == answer.as_bytes()));
    }
}

//! Shared harness of the `back_*` tests: the test guest in QEMU (testbed's launcher) with a
//! trace of its PS/2 keyboard queue, its serial key reports, link events, and key sequences.
#![allow(dead_code)]

#[path = "../ps2_support/mod.rs"]
pub mod ps2;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use console::back::{LinkEvent, LinkEvents, LinkStats, QemuLink, VmEvent};
use console::journal::InputEvent;
use rfb::{ClientConfig, ClientMessage, Encoding, PixelFormat, RectPayload, ServerMessage};
use testbed::qemu::{AccelChoice, Qemu, QemuConfig};
use tokio::sync::mpsc;

/// How long any single wait may take before the test fails (not a timed assertion: a bound
/// on hanging).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One guest key report: `K <count> D|U <code>`, with the time the test read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// When the test received it.
    pub at: Instant,
    /// The guest's running count.
    pub count: u64,
    /// Make (true) or break.
    pub down: bool,
    /// QEMU key number (e0 xx as 0x80 | xx).
    pub code: u16,
}

/// The test guest in QEMU (testbed's launcher: killed on drop), with a second QMP monitor for
/// the link and `key-delay-ms=0`; its runtime directory is removed on drop.
pub struct Vm {
    /// The launched QEMU (field order: dropped before the directory).
    pub qemu: Qemu,
    /// QEMU's VNC socket.
    pub vnc: PathBuf,
    /// The QMP socket left for the link.
    pub qmp: PathBuf,
    /// QEMU's PS/2 trace ([`ps2`]).
    trace: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Starts the guest and waits for `READY` (`incoming`: `-incoming defer`, no wait).
    pub async fn launch(incoming: bool) -> anyhow::Result<Vm> {
        Vm::launch_on(incoming, AccelChoice::Auto).await
    }

    /// [`launch`](Self::launch) on a chosen accelerator.
    pub async fn launch_on(incoming: bool, accel: AccelChoice) -> anyhow::Result<Vm> {
        Vm::launch_with(incoming, accel, guest::GuestOptions::default()).await
    }

    /// [`launch_on`](Self::launch_on) with the guest's options (e.g. an animated screen).
    pub async fn launch_with(
        incoming: bool,
        accel: AccelChoice,
        guest: guest::GuestOptions,
    ) -> anyhow::Result<Vm> {
        let dir = tempfile::Builder::new()
            .prefix("dmore-back-")
            .tempdir_in("/tmp")?;
        let mut cfg = QemuConfig::new(dir.path());
        cfg.incoming = incoming;
        cfg.key_delay_ms = Some(0);
        cfg.extra_qmp = true;
        cfg.accel = accel;
        cfg.guest = guest;
        let trace = dir.path().join("ps2-trace.log");
        cfg.extra_args.extend(ps2::qemu_args(&trace));
        let mut qemu = Qemu::launch(cfg).await?;
        if !incoming {
            qemu.wait_ready(DEADLINE).await?;
        }
        let vnc = qemu.vnc_path().to_owned();
        let qmp = qemu
            .qmp2_path()
            .context("the launcher made no second QMP socket")?
            .to_owned();
        Ok(Vm {
            qemu,
            vnc,
            qmp,
            trace,
            _dir: dir,
        })
    }

    /// QEMU's key events so far (its PS/2 trace): where the keys typed next start, for
    /// [`check_keys`](Self::check_keys).
    pub fn ps2_mark(&self) -> anyhow::Result<usize> {
        ps2::mark(&self.trace)
    }

    /// [`ps2::check_keys`] on this QEMU's trace, from `mark` ([`ps2_mark`](Self::ps2_mark)).
    pub fn check_keys(
        &self,
        what: &str,
        mark: usize,
        typed: &[(bool, u16)],
        reported: &[(bool, u16)],
    ) -> anyhow::Result<()> {
        ps2::check_keys(&self.trace, what, mark, typed, reported)
    }

    /// The test's own QMP client (the launcher's monitor).
    pub fn qmp(&self) -> &qmp::Client {
        self.qemu.qmp()
    }

    /// The guest's key reports.
    pub fn serial(&mut self) -> Keys<'_> {
        Keys(self.qemu.serial())
    }

    /// A free TCP port on loopback for `migrate-incoming`.
    pub fn free_port() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    /// Polls `query-migrate` until its status is `want`.
    pub async fn wait_migration(&self, want: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let info = self.qmp().query_migrate().await?;
            match info.status.as_deref() {
                Some(s) if s == want => return Ok(()),
                Some("failed") => bail!("migration failed: {:?}", info.error_desc),
                _ => {}
            }
            anyhow::ensure!(Instant::now() < deadline, "migration never reached {want}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The accelerator testbed picks here.
pub fn accel() -> &'static str {
    if testbed::qemu::kvm_usable() {
        "kvm+qboot"
    } else {
        "tcg"
    }
}

/// Key reports of the guest's serial port.
pub struct Keys<'a>(&'a mut testbed::qemu::Serial);

impl Keys<'_> {
    /// The next key report (other reports skipped).
    pub async fn key(&mut self) -> anyhow::Result<Report> {
        loop {
            let r = self.0.next(DEADLINE, "a key report").await?;
            if let Some(k) = key_report(r) {
                return Ok(k);
            }
        }
    }

    /// The next `n` key reports.
    pub async fn keys(&mut self, n: usize) -> anyhow::Result<Vec<Report>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.key().await?);
        }
        Ok(out)
    }

    /// Reports until (and without) the first press of `marker`.
    pub async fn keys_until(&mut self, marker: u16) -> anyhow::Result<Vec<Report>> {
        let mut out = Vec::new();
        loop {
            let r = self.key().await?;
            if r.down && r.code == marker {
                return Ok(out);
            }
            out.push(r);
        }
    }

    /// Key reports already received, without waiting.
    pub async fn pending_keys(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        // A zero timeout still polls once: only what is already here.
        while let Ok(r) = self.0.next(Duration::ZERO, "nothing").await {
            out.extend(key_report(r));
        }
        out
    }
}

fn key_report(r: guest::report::Report) -> Option<Report> {
    match r {
        guest::report::Report::Key { count, down, code } => Some(Report {
            at: Instant::now(),
            count,
            down,
            code: if code > 0xff {
                0x80 | (code & 0x7f)
            } else {
                code
            },
        }),
        _ => None,
    }
}

/// One key: keysym and the US key number the guest will report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// X keysym.
    pub keysym: u32,
    /// QEMU key number.
    pub code: u16,
}

/// `n` distinct-looking keys cycling through a..z (keysyms and their codes).
pub fn letters(n: usize) -> Vec<Key> {
    cycling("abcdefghijklmnopqrstuvwxyz", n)
}

/// `n` keys cycling through the digits 1..0.
pub fn digits(n: usize) -> Vec<Key> {
    cycling("1234567890", n)
}

/// `n` keys cycling through the characters of `chars`.
fn cycling(chars: &str, n: usize) -> Vec<Key> {
    chars
        .chars()
        .cycle()
        .take(n)
        .map(|c| Key {
            keysym: u32::from(c),
            code: guest::keymap::scancode(c).map_or(0, u16::from),
        })
        .collect()
}

/// The journal event for `key` (with its scancode when `scancode`).
pub fn key_event(key: Key, down: bool, scancode: bool) -> InputEvent {
    InputEvent::Key {
        down,
        keysym: key.keysym,
        scancode: scancode.then_some(key.code),
    }
}

/// The (down, code) sequence a press and release of each key produces.
pub fn expected(keys: &[Key]) -> Vec<(bool, u16)> {
    keys.iter()
        .flat_map(|k| [(true, k.code), (false, k.code)])
        .collect()
}

/// (down, code) of reports.
pub fn seen(reports: &[Report]) -> Vec<(bool, u16)> {
    reports.iter().map(|r| (r.down, r.code)).collect()
}

/// Return key (the marker that ends a collection).
pub const ENTER: Key = Key {
    keysym: 0xff0d,
    code: 0x1c,
};

/// Collects the link's run-state events in a task, discarding screen events; the rest of the
/// events go to the returned receiver.
pub fn vm_events(mut events: LinkEvents) -> mpsc::UnboundedReceiver<LinkEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let keep = matches!(e, LinkEvent::Vm(_) | LinkEvent::Uncertain(_));
            if keep && tx.send(e).is_err() {
                break;
            }
        }
    });
    rx
}

/// Polls the link's counters until `pred` holds (bounded by [`DEADLINE`]).
pub async fn wait_stats(
    link: &QemuLink,
    what: &str,
    pred: impl Fn(&LinkStats) -> bool,
) -> anyhow::Result<LinkStats> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = link.stats().await?;
        if pred(&s) {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "never {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the VM event `want` on `rx`, returning everything else seen before it.
pub async fn wait_vm(
    rx: &mut mpsc::UnboundedReceiver<LinkEvent>,
    want: VmEvent,
) -> anyhow::Result<Vec<LinkEvent>> {
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .with_context(|| format!("no {want:?} before the deadline; saw {seen:?}"))?
            .context("link events ended")?;
        if e == LinkEvent::Vm(want) {
            return Ok(seen);
        }
        seen.push(e);
    }
}

/// p-th percentile (0..=100) of sorted durations, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: usize) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_micros()
}

/// A plain VNC client on QEMU's socket, as a viewer without dmore would be.
pub async fn plain_client(
    vm: &Vm,
) -> anyhow::Result<(
    vnc::client::ClientReader<tokio::net::UnixStream>,
    vnc::client::ClientWriter<tokio::net::UnixStream>,
)> {
    let stream = tokio::net::UnixStream::connect(&vm.vnc).await?;
    let config = ClientConfig::no_auth();
    let setup = vnc::client::Setup {
        pixel_format: Some(PixelFormat::RGBX32_LE),
        encodings: vec![Encoding::Raw],
    };
    let (_, reader, writer) = vnc::client::connect(stream, config, &setup).await?;
    Ok((reader, writer))
}

/// Sends a SetEncodings listing -258 and waits for QEMU's answer: every message before it
/// has been handled.
pub async fn vnc_fence(
    reader: &mut vnc::client::ClientReader<tokio::net::UnixStream>,
    writer: &mut vnc::client::ClientWriter<tokio::net::UnixStream>,
) -> anyhow::Result<()> {
    writer
        .send(&ClientMessage::SetEncodings(vec![
            Encoding::Raw,
            Encoding::QemuExtendedKeyEvent,
        ]))
        .await?;
    loop {
        let msg = tokio::time::timeout(DEADLINE, reader.read_message()).await??;
        if let ServerMessage::FramebufferUpdate(rects) = msg {
            if rects
                .iter()
                .any(|r| r.payload == RectPayload::QemuExtendedKeyEvent)
            {
                return Ok(());
            }
        }
    }
}

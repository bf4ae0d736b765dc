//! The tiny test guest (`crates/guest`) as an [`InputGuest`]: it reports every PS/2 key and
//! mouse-button event on its serial port; its QEMU traces the PS/2 keyboard queue.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest::report::{Button, Report};
use testbed::qemu::{AccelChoice, Qemu, QemuConfig};

use super::ps2trace::{self, Ps2Trace};
use super::{InputGuest, Seen};
use crate::bench::{free_vnc_port, BenchError, ConsoleSockets, START_DEADLINE};

/// QEMU's trace events for the PS/2 keyboard queue (see [`ps2trace`]).
const TRACE_EVENTS: [&str; 4] = [
    "ps2_put_keycode",
    "ps2_read_data",
    "ps2_keyboard_set_translation",
    "ps2_keyboard_event",
];

/// The tiny guest in a QEMU with its VNC on TCP (`key-delay-ms=0`), a second QMP monitor for
/// a console, and a PS/2 trace.
#[derive(Debug)]
pub struct TinyGuest {
    vm: Qemu,
    direct: SocketAddr,
    trace: PathBuf,
    qmp2: PathBuf,
}

impl TinyGuest {
    /// Boots the guest in `dir` (`AccelChoice::Auto`: KVM+qboot where KVM works, TCG+SeaBIOS
    /// otherwise).
    pub async fn launch(
        dir: &Path,
        memory_mib: u32,
        accel: AccelChoice,
    ) -> Result<TinyGuest, BenchError> {
        let direct = SocketAddr::from(([127, 0, 0, 1], free_vnc_port()?));
        let trace = dir.join("ps2-trace.log");
        let mut cfg = QemuConfig::new(dir.join("tiny"));
        cfg.memory_mib = memory_mib;
        cfg.key_delay_ms = Some(0);
        cfg.extra_qmp = true;
        cfg.vnc_tcp = Some(direct);
        cfg.accel = accel;
        for event in TRACE_EVENTS {
            cfg.extra_args.extend(["-trace".into(), event.into()]);
        }
        cfg.extra_args
            .extend(["-D".into(), trace.clone().into_os_string()]);
        // Wall-clock timestamps on the trace lines: drops are counted per stream.
        cfg.extra_args
            .extend(["-msg".into(), "timestamp=on".into()]);
        let mut vm = Qemu::launch(cfg).await?;
        vm.wait_ready(START_DEADLINE).await?;
        let qmp2 = vm
            .qmp2_path()
            .ok_or(BenchError::Timeout("QEMU's second QMP monitor"))?
            .to_path_buf();
        Ok(TinyGuest {
            vm,
            direct,
            trace,
            qmp2,
        })
    }

    /// Stops QEMU (which flushes its trace) and replays the PS/2 keyboard queue from it.
    pub async fn finish(self) -> Result<Ps2Trace, BenchError> {
        let _ = self.vm.shutdown(Duration::from_secs(5)).await;
        let log = std::fs::read_to_string(&self.trace)
            .map_err(|e| BenchError::Scratch(self.trace.clone(), e))?;
        Ok(ps2trace::tally(&log))
    }
}

impl InputGuest for TinyGuest {
    fn describe(&self) -> String {
        format!(
            "the tiny test guest, {}, PS/2 keyboard and mouse (i8042 translation on), QEMU 7.2 \
             VNC key-delay-ms=0",
            self.vm.accel()
        )
    }

    fn direct(&self) -> SocketAddr {
        self.direct
    }

    fn console_sockets(&self) -> ConsoleSockets<'_> {
        ConsoleSockets {
            vnc: self.vm.vnc_path(),
            qmp: &self.qmp2,
        }
    }

    fn key_code(&self, keysym: u32) -> Option<u16> {
        key_code(keysym)
    }

    async fn next_seen(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(Instant, Seen)>, BenchError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, report) = match tokio::time::timeout(left, self.vm.serial().recv_timed()).await
            {
                Ok(Some(r)) => r,
                Ok(None) => return Err(BenchError::Timeout("the guest's serial port (closed)")),
                Err(_) => return Ok(None),
            };
            if let Report::Fault(_) | Report::NoAck { .. } = report {
                return Err(BenchError::Timeout("a guest that does not fault"));
            }
            if let Some(seen) = seen(&report) {
                return Ok(Some((at, seen)));
            }
        }
    }
}

/// The tiny guest's code (scancode set 1) for the key a viewer sends as `keysym`.
pub(super) fn key_code(keysym: u32) -> Option<u16> {
    if keysym == super::stream::SHIFT {
        return Some(0x2a);
    }
    char::from_u32(keysym)
        .and_then(guest::keymap::scancode)
        .map(u16::from)
}

/// The event of the stream a tiny guest's report is, if any (a key, the left button).
pub(super) fn seen(report: &Report) -> Option<Seen> {
    match *report {
        Report::Key { down, code, .. } => Some(Seen::Key { down, code }),
        Report::Button {
            down,
            button: Button::Left,
            ..
        } => Some(Seen::Left { down }),
        _ => None,
    }
}

//! The tiny test guest (`crates/guest`) as an [`InputGuest`]: it reports every PS/2 key and
//! mouse-button event on its serial port; its QEMU traces the PS/2 keyboard queue.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use guest::report::{Button, Report};
use testbed::qemu::{AccelChoice, QemuConfig};

use super::ps2trace::Ps2Trace;
use super::traced::TracedQemu;
use super::{set1_code, InputGuest, Seen};
use crate::bench::{BenchError, ConsoleSockets, START_DEADLINE};

/// The tiny guest in a QEMU with its VNC on TCP (`key-delay-ms=0`), a second QMP monitor for
/// a console, and a PS/2 trace.
#[derive(Debug)]
pub struct TinyGuest {
    qemu: TracedQemu,
}

impl TinyGuest {
    /// Boots the guest in `dir` (`AccelChoice::Auto`: KVM+qboot where KVM works, TCG+SeaBIOS
    /// otherwise).
    pub async fn launch(
        dir: &Path,
        memory_mib: u32,
        accel: AccelChoice,
    ) -> Result<TinyGuest, BenchError> {
        let mut cfg = QemuConfig::new(dir.join("tiny"));
        cfg.memory_mib = memory_mib;
        cfg.accel = accel;
        let mut qemu = TracedQemu::launch(cfg).await?;
        qemu.vm.wait_ready(START_DEADLINE).await?;
        Ok(TinyGuest { qemu })
    }
}

impl InputGuest for TinyGuest {
    fn describe(&self) -> String {
        format!(
            "the tiny test guest, {}, PS/2 keyboard and mouse (i8042 translation on), QEMU 7.2 \
             VNC key-delay-ms=0",
            self.qemu.vm.accel()
        )
    }

    fn direct(&self) -> SocketAddr {
        self.qemu.direct()
    }

    fn console_sockets(&self) -> ConsoleSockets<'_> {
        self.qemu.console_sockets()
    }

    fn key_code(&self, keysym: u32) -> Option<u16> {
        set1_code(keysym)
    }

    async fn next_seen(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(Instant, Seen)>, BenchError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, report) = match tokio::time::timeout(left, self.qemu.vm.serial().recv_timed())
                .await
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

    async fn finish(self) -> Result<Ps2Trace, BenchError> {
        self.qemu.finish().await
    }
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

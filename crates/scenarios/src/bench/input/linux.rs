//! The Linux test guest (`crates/linux-guest`: Debian's kernel under TCG, an init reporting
//! every evdev key and button event on its serial port) as an [`InputGuest`], with the PC's
//! PS/2 keyboard and mouse; its QEMU traces the PS/2 keyboard queue as the tiny guest's does.
//!
//! Graphics mode under SeaBIOS: QEMU boots the uncompressed kernel through its PVH entry,
//! READY in about half the time of the bzImage VGA text mode needs (`linux_guest` crate
//! docs); the display plays no part in input.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use linux_guest::keymap::{evdev_from_set1, BTN_LEFT};
use linux_guest::launch::{Display, Firmware, Input, LinuxOptions, SerialConsole};
use linux_guest::report::Report;
use testbed::qemu::{QemuConfig, SerialError};

use super::ps2trace::Ps2Trace;
use super::traced::TracedQemu;
use super::{set1_code, InputGuest, Seen};
use crate::bench::{BenchError, ConsoleSockets};

/// Longest wait for the guest's READY (a hang guard: TCG on a loaded machine).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

/// The devices and display the bench runs the Linux guest with.
const OPTIONS: LinuxOptions = LinuxOptions {
    input: Input::Ps2,
    display: Display::Graphics,
    firmware: Firmware::SeaBios,
    serial: SerialConsole::None,
};

/// The Linux guest in a QEMU with its VNC on TCP (`key-delay-ms=0`), a second QMP monitor
/// for a console, and a PS/2 trace.
#[derive(Debug)]
pub struct LinuxGuest {
    qemu: TracedQemu,
    release: String,
}

impl LinuxGuest {
    /// Boots the guest in `dir` (TCG: the Linux kernel does not boot under this machine's
    /// nested KVM) with the image's initramfs written there, and waits for its READY.
    pub async fn launch(dir: &Path) -> Result<LinuxGuest, BenchError> {
        let mut qemu = TracedQemu::launch(QemuConfig::linux(dir.join("linux"), OPTIONS)).await?;
        let mut release = String::new();
        loop {
            match qemu.vm.serial().next_linux(BOOT_DEADLINE, "READY").await? {
                Report::Init { release: r, .. } => release = r,
                Report::Ready => break,
                _ => {}
            }
        }
        Ok(LinuxGuest { qemu, release })
    }
}

impl InputGuest for LinuxGuest {
    fn describe(&self) -> String {
        format!(
            "the Linux guest (Debian kernel {}, evdev events), {}, SeaBIOS, PS/2 keyboard and \
             mouse (i8042 translation on), QEMU 7.2 VNC key-delay-ms=0",
            self.release,
            self.qemu.vm.accel()
        )
    }

    fn direct(&self) -> SocketAddr {
        self.qemu.direct()
    }

    fn console_sockets(&self) -> ConsoleSockets<'_> {
        self.qemu.console_sockets()
    }

    /// The evdev code (`KEY_A` = 30), mapped from the set-1 code by linux-guest's keymap.
    fn key_code(&self, keysym: u32) -> Option<u16> {
        set1_code(keysym).and_then(evdev_from_set1)
    }

    async fn next_seen(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(Instant, Seen)>, BenchError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = match self
                .qemu
                .vm
                .serial()
                .next_linux(left, "an input event")
                .await
            {
                Ok(r) => r,
                Err(SerialError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let at = Instant::now();
            if let Report::Input(event) = report {
                // A repeat (2) counts as a press, as the tiny guest sees a repeated make code.
                let down = event.value != 0;
                match (event.button, event.code) {
                    (false, code) => return Ok(Some((at, Seen::Key { down, code }))),
                    (true, BTN_LEFT) => return Ok(Some((at, Seen::Left { down }))),
                    (true, _) => {}
                }
            }
        }
    }

    async fn finish(self) -> Result<Ps2Trace, BenchError> {
        self.qemu.finish().await
    }
}

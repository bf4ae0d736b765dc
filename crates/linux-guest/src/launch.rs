//! How QEMU runs the Linux guest: input devices, display mode and firmware, as QEMU arguments
//! and the kernel command line. Pure.

use std::ffi::OsString;
use std::path::Path;

use crate::image::Image;

/// Debian's `ovmf`: UEFI firmware in one file, for `-bios`.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Linux's bus type of the i8042 PS/2 controller's devices.
pub const BUS_I8042: u16 = 0x11;
/// Linux's bus type of USB devices.
pub const BUS_USB: u16 = 0x03;

/// Which keyboard and pointer the viewer's input reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Input {
    /// The PC's own PS/2 keyboard and mouse (i8042).
    #[default]
    Ps2,
    /// USB HID on an xhci controller: `usb-kbd` and `usb-tablet`, the devices Windows guests
    /// use. (The PS/2 devices stay, as on any PC; QEMU sends input to the USB ones.)
    Usb,
}

/// What the guest shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Display {
    /// VGA text mode, 80x25 (720x400 pixels) under SeaBIOS. UEFI has no text mode: under
    /// OVMF this is the firmware's framebuffer (efifb) with a framebuffer console.
    #[default]
    Text,
    /// bochs DRM on QEMU's `-vga std`: a framebuffer console, and `/dev/fb0` for frames.
    Graphics,
}

/// The firmware that boots the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default BIOS.
    #[default]
    SeaBios,
    /// Debian's OVMF ([`OVMF`]).
    Ovmf,
}

/// One combination of devices, display and firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinuxOptions {
    /// Keyboard and pointer.
    pub input: Input,
    /// Text or graphics.
    pub display: Display,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// What the init serves on COM1.
    pub serial: SerialConsole,
}

/// A serial console on COM1 (`ttyS0`, QEMU's first `-serial`: `QemuConfig::serial_console`);
/// with one, the reports and the kernel's console move to COM2 (`ttyS1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SerialConsole {
    /// None: COM1 is the report port.
    #[default]
    None,
    /// The init's counting service, as the tiny guest's COM2 with `uart=<ms>`: every byte
    /// received counted and echoed, a numbered line every this many ms (`dmore.uart=`).
    Lines(u32),
    /// busybox's `sh` on a pty, the init relaying it to COM1 and counting both ways
    /// (`dmore.shell=1`; the `SERIAL` command reports the counts).
    Shell,
}

impl LinuxOptions {
    /// The devices the guest waits for before `READY`, as (bus type, count of devices with
    /// keys): PS/2 keyboard and mouse always; with USB, its keyboard and tablet too.
    pub fn wanted_devices(&self) -> Vec<(u16, usize)> {
        match self.input {
            Input::Ps2 => vec![(BUS_I8042, 2)],
            Input::Usb => vec![(BUS_I8042, 2), (BUS_USB, 2)],
        }
    }

    /// Whether COM1 is the serial console and COM2 the report port ([`serial`](Self::serial)).
    pub fn console_on_com1(&self) -> bool {
        self.serial != SerialConsole::None
    }

    /// The kernel command line: the kernel's console on the report port only (the screen is
    /// the init's; the serial console stays free of kernel messages), no console blanking, no
    /// cursor, `panic=-1` (with QEMU's `-no-reboot` a panic ends QEMU), and the init's options.
    pub fn cmdline(&self) -> String {
        let wait: Vec<String> = self
            .wanted_devices()
            .iter()
            .map(|(bus, n)| format!("{bus:x}:{n}"))
            .collect();
        let reports = if self.console_on_com1() {
            "ttyS1"
        } else {
            "ttyS0"
        };
        let mut line = format!(
            "console={reports} panic=-1 consoleblank=0 vt.global_cursor_default=0 dmore.wait={}",
            wait.join(",")
        );
        if self.display == Display::Graphics {
            line.push_str(" dmore.graphics=1");
        }
        match self.serial {
            SerialConsole::None => {}
            SerialConsole::Lines(ms) => line.push_str(&format!(" dmore.uart={ms}")),
            SerialConsole::Shell => line.push_str(" dmore.shell=1"),
        }
        line
    }

    /// QEMU's arguments for the kernel, the initramfs, the firmware and the USB devices.
    /// Graphics under SeaBIOS boots the uncompressed kernel where there is one (PVH entry:
    /// READY in ~7 s instead of ~15 s under TCG). Text mode needs the bzImage: a PVH-entered
    /// kernel is told nothing of the VGA text screen (no `screen_info`, which the bzImage's
    /// real-mode setup fills in), so it has no VGA console and the screen keeps SeaBIOS's
    /// lines. OVMF boots the bzImage (its EFI stub).
    pub fn qemu_args(&self, image: &Image) -> Vec<OsString> {
        let kernel = match (&image.vmlinux, self.firmware, self.display) {
            (Some(vmlinux), Firmware::SeaBios, Display::Graphics) => vmlinux,
            _ => &image.kernel,
        };
        let mut a: Vec<OsString> = vec![
            "-kernel".into(),
            kernel.clone().into(),
            "-initrd".into(),
            image.initrd.clone().into(),
            "-append".into(),
            self.cmdline().into(),
        ];
        if self.firmware == Firmware::Ovmf {
            a.extend(["-bios".into(), Path::new(OVMF).into()]);
        }
        if self.input == Input::Usb {
            for device in [
                "qemu-xhci,id=xhci",
                "usb-kbd,bus=xhci.0",
                "usb-tablet,bus=xhci.0",
            ] {
                a.extend(["-device".into(), device.into()]);
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn joined(opts: LinuxOptions) -> String {
        let image = Image {
            kernel: PathBuf::from("/k"),
            vmlinux: None,
            initrd: PathBuf::from("/i"),
            version: "v".into(),
        };
        opts.qemu_args(&image)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn defaults_are_ps2_text_seabios() {
        let a = joined(LinuxOptions::default());
        assert!(
            a.starts_with("-kernel /k -initrd /i -append console=ttyS0 "),
            "{a}"
        );
        assert!(a.ends_with("dmore.wait=11:2"), "{a}");
        assert!(!a.contains("-bios") && !a.contains("usb"), "{a}");
    }

    #[test]
    fn seabios_graphics_boots_the_uncompressed_kernel_and_the_rest_the_bzimage() {
        let image = Image {
            kernel: PathBuf::from("/bz"),
            vmlinux: Some(PathBuf::from("/elf")),
            initrd: PathBuf::from("/i"),
            version: "v".into(),
        };
        let kernel = |firmware, display| {
            let opts = LinuxOptions {
                firmware,
                display,
                ..LinuxOptions::default()
            };
            opts.qemu_args(&image)[1].clone()
        };
        assert_eq!(kernel(Firmware::SeaBios, Display::Graphics), "/elf");
        assert_eq!(kernel(Firmware::SeaBios, Display::Text), "/bz");
        assert_eq!(kernel(Firmware::Ovmf, Display::Graphics), "/bz");
        assert_eq!(kernel(Firmware::Ovmf, Display::Text), "/bz");
    }

    #[test]
    fn a_serial_console_takes_com1_and_the_kernel_reports_on_com2() {
        let a = joined(LinuxOptions {
            serial: SerialConsole::Lines(20),
            ..LinuxOptions::default()
        });
        assert!(a.contains("-append console=ttyS1 "), "{a}");
        assert!(a.ends_with("dmore.wait=11:2 dmore.uart=20"), "{a}");
        let a = joined(LinuxOptions {
            serial: SerialConsole::Shell,
            ..LinuxOptions::default()
        });
        assert!(a.contains("-append console=ttyS1 "), "{a}");
        assert!(a.ends_with("dmore.wait=11:2 dmore.shell=1"), "{a}");
        assert!(!LinuxOptions::default().console_on_com1());
    }

    #[test]
    fn usb_graphics_ovmf() {
        let a = joined(LinuxOptions {
            input: Input::Usb,
            display: Display::Graphics,
            firmware: Firmware::Ovmf,
            serial: SerialConsole::None,
        });
        assert!(a.contains("dmore.wait=11:2,3:2 dmore.graphics=1"), "{a}");
        assert!(a.contains(&format!("-bios {OVMF}")), "{a}");
        assert!(
            a.ends_with(
                "-device qemu-xhci,id=xhci -device usb-kbd,bus=xhci.0 -device usb-tablet,bus=xhci.0"
            ),
            "{a}"
        );
    }
}

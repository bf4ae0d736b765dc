//! dmore's Linux test guest: Debian's generic kernel (`linux-image-amd64`, unpacked by
//! `.ci/setup` into [`image::CACHE_DIR`], never installed) booted directly by QEMU
//! (`-kernel -initrd -append`) with a small initramfs made at test time ([`image`]): its init
//! (`init/main.rs`, a std-only Rust program linked statically, built by this crate's
//! `build.rs`) and the kernel modules for PS/2 mouse, evdev, USB HID (xhci, usbhid,
//! hid-generic) and, in graphics mode, bochs DRM.
//!
//! Beside the tiny test guest (crate `guest`) it is a real OS: the kernel's own drivers take
//! the keys, so a test sees what a real guest receives. The init reports every key and button
//! event the kernel hands to `/dev/input/event*` (the input events themselves, not a shell's
//! line buffer), grabbing each device so the kernel's console keyboard handler never acts on
//! a key (no VT switch, no Ctrl-Alt-Del reboot, no echo), and draws on demand.
//!
//! [`launch::LinuxOptions`] picks the combination: PS/2 or USB input, VGA text or the bochs
//! framebuffer console, SeaBIOS or OVMF. It runs under TCG: the Linux kernel does not boot
//! under this machine's nested `kvm-pvm` (DESIGN.md).
//!
//! With a serial console ([`launch::SerialConsole`]) the init serves COM1 (`ttyS0`): its
//! counting service (echo, count, numbered lines, as the tiny guest's COM2 does) or a real
//! shell (busybox's `sh` on a pty, `/bin/busybox` from Debian's busybox-static copied into the
//! initramfs, the init relaying and counting); the reports, and the kernel's console, move to
//! COM2 (`ttyS1`); the testbed wires QEMU's chardevs to match.
//!
//! # Serial grammar (the report port, one report per `\n`-terminated line; [`report::parse_line`])
//! ```text
//! INIT <release> <ms>          init started; kernel release, ms since the kernel started
//! MODULES <ms>                 every listed module loaded (or an ERR line said why not)
//! DEV <n> <bus> <k> <l> <name> /dev/input/event<n> opened and grabbed: bus type (hex, 11 =
//!                              i8042, 3 = USB, 19 = host), whether it has keys (0/1) and
//!                              LEDs (0/1), and its name (may hold spaces)
//! FB <w>x<h> <bpp> <name>      the DRM framebuffer (graphics mode) was found
//! BOOTED <ms>                  ms since the kernel started when READY was printed
//! READY                        the wanted devices (and framebuffer) are there
//! KEY <n> <dev> <code> <value> key event n (from 1) on event<dev>: evdev code (hex), value
//!                              0 release, 1 press, 2 repeat (the device repeated it)
//! BTN <n> <dev> <code> <value> button event n (codes 100..15f hex; 110 left, 111 right,
//!                              112 middle), counted apart from keys
//! LED <mask>                   the init set the keyboards' LEDs (hex: scroll 1, num 2, caps 4)
//! DREW LINE|FRAME <k>          a SCROLL / FRAME / ANIM 0 / PICTURE command is drawn: k lines /
//!                              frames
//! PONG <n>                     answer to PING n
//! SERIAL <in> <out> <hash>     answer to SERIAL with the shell on COM1 (`dmore.shell=1`):
//!                              bytes read from COM1 for the shell, bytes of its output
//!                              written to COM1, their FNV-1a 64 ([`fnv`], 16 hex digits)
//! GONE <dev>                   a device went away
//! ERR <text>                   something failed (a module, a command); the init goes on
//! ```
//! Anything else on the port (firmware and kernel messages before `INIT`; OVMF writes ANSI
//! escapes first) is no report. After `INIT` the kernel prints only emergencies there.
//!
//! # Commands (test to guest, one per line on the same port)
//! `SCROLL <n>`: `n` numbered lines on the console (tty1: VGA text or framebuffer console),
//! scrolling it. `FRAME <n>`: `n` animation frames (a 128x128 square in a new colour at a new
//! place on `/dev/fb0`; a line on the text console). `ANIM <ms>`: one frame every `ms` ms;
//! `ANIM 0` stops and reports the count. `PICTURE`: one frame that is a photo-like picture
//! over the whole framebuffer (smooth gradients, thousands of colours: what a viewer that
//! allowed lossy is sent as JPEG; a line on the text console). `PING <n>`: answers `PONG <n>`.
//! `SERIAL`: answers `SERIAL ...` (with the shell on COM1; `ERR` otherwise).
//!
//! # Boot time (TCG)
//! For graphics under SeaBIOS QEMU boots the uncompressed kernel (`vmlinux`, extracted by
//! `.ci/setup`) through its PVH entry; the bzImage would first be loaded through fw_cfg and
//! XZ-decompressed in the guest, ~8 s under TCG. VGA text mode needs the bzImage: a kernel
//! entered through PVH gets no `screen_info` from the real-mode setup, so it has no VGA console
//! and the screen keeps SeaBIOS's two lines and its blinking cursor whatever tty1 is sent.
//! OVMF needs the bzImage (its EFI stub). Measured on this
//! 2-core machine with other builds running (load average 6-8), wall clock from launch to
//! `READY` (`cargo test -p testbed --test linux_guest -- --nocapture`, the four tests in
//! parallel): SeaBIOS 5.5-7.7 s (bzImage: 13-19 s), OVMF 19-20 s; the kernel itself reaches
//! `READY` 3.8-6.7 s after it started (`BOOTED`), USB adding ~1 s for its devices.
//!
//! # Held keys
//! The input core repeats held keys itself (value 2) on USB HID keyboards; the init turns that
//! off (`EVIOCSREP` with period 0), so every report is an event a device sent. The PS/2
//! keyboard has no such timer ("hardware" repeat: a repeated make code, which QEMU sends only
//! when the viewer repeats the key).
#![warn(missing_docs)]

pub mod fnv;
pub mod image;
pub mod keymap;
pub mod launch;
pub mod report;

use std::path::Path;

/// The guest's init, built by this crate's build script (a static x86_64 ELF).
pub fn init_path() -> &'static Path {
    Path::new(concat!(env!("OUT_DIR"), "/init"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_a_static_x86_64_elf() {
        let elf = std::fs::read(init_path()).expect("the build script writes the init");
        assert_eq!(elf.get(..4), Some(&b"\x7fELF"[..]));
        assert_eq!(elf.get(4), Some(&2), "64-bit ELF");
        // e_machine at offset 18: 0x3e, x86-64.
        assert_eq!(elf.get(18..20), Some(&[0x3eu8, 0][..]));
        // No PT_INTERP: nothing to load it with in the initramfs.
        assert!(
            !elf.windows(18).any(|w| w == b"/lib64/ld-linux-x8"),
            "the init is dynamically linked"
        );
    }
}

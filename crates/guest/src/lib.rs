//! dmore's tiny test guest: a 32-bit multiboot kernel, written in GNU as (`src/guest.s`) and
//! built by this crate's `build.rs` (`as --32`, `ld -m elf_i386 -N`) into the build directory.
//! QEMU boots it with `-kernel` ([`kernel_path`]) and `-append` ([`GuestOptions::cmdline`]).
//!
//! What it does, as a small real OS would:
//! - programs the i8042 itself: translation on (so the keyboard's scancode set 2 reaches the
//!   guest as set 1 under qboot and SeaBIOS alike), aux port and mouse data reporting on;
//!   remaps the 8259s, puts the local APIC in virtual-wire mode, runs the PIT at 1 kHz and
//!   idles in `hlt`, taking IRQ0 (timer), IRQ1 (keyboard) and IRQ12 (mouse);
//! - reports every key press and release, every mouse button edge and every LED change on
//!   COM1 (grammar below, parsed by [`report::parse_line`]); before each byte of a report it
//!   moves every byte the controller holds into a ring (4096 bytes, each with its status), at
//!   each keyboard or mouse interrupt and each timer tick, so QEMU's 16-byte PS/2 queues empty
//!   whenever its vCPU runs, as a real guest's handler empties them, not at the pace of its
//!   reports (each report byte is a VM exit that may wait for QEMU's main loop);
//! - sends the keyboard the LED command (`0xED`, mask) when Caps, Num or Scroll Lock is
//!   pressed, and reports the mask once the keyboard has acknowledged both bytes;
//! - sets VGA text mode 3 itself (registers, EGA palette, the 8x16 font `build.rs` takes from
//!   SeaBIOS's VGA BIOS): qboot runs no VGA BIOS, and a VGA left in its reset state shows
//!   QEMU's 640x480 "Guest has not initialized the display" placeholder and drops text writes;
//!   so the screen is the same 720x400 text under KVM+qboot as under SeaBIOS;
//! - echoes printable keys (US layout, [`keymap`]) on the VGA text screen at a cursor: Enter
//!   starts a line, Backspace rubs out, the screen scrolls; row 0 is a status line;
//! - optionally dirties memory at a set rate and animates a screen region ([`GuestOptions`]).
//!
//! # Serial grammar (COM1, 115200 8N1, one report per `\n`-terminated line)
//! ```text
//! OPTS dirty=<MiB> rate=<MiB/s> animate=<ms>   options in force (dirty capped to memory)
//! READY                                        interrupts on, devices programmed
//! K <n> D|U <code>     key event n (from 1); D press, U release; code = set-1 make code in
//!                      lowercase hex: 2 digits, or 4 (`e0xx`) for extended keys
//! B <n> D|U L|R|M      mouse button edge n (from 1): left, right, middle
//! L <mask>             the keyboard acknowledged LED mask <mask> (hex digit: scroll 1,
//!                      num 2, caps 4)
//! NOACK <sent> <got>   a device answered a setup byte with something else than ACK (hex)
//! FAULT <vector>       CPU exception (hex); the guest stops
//! ```
//! `<n>` is decimal and counts keys and buttons separately. Pause (`E1 ..`) is not reported.
//! Reports for one device come in the order of its events; an `L` line comes after the lock
//! key's press, possibly after later key reports.
//!
//! # Options (`-append`, the multiboot command line)
//! `dirty=<MiB> rate=<MiB/s> animate=<ms>`; QEMU puts the kernel's path first, unknown words
//! are ignored, numbers saturate at 1,000,000 (rate at 65,536).
//! - `dirty`/`rate`: from the 1 kHz timer the guest writes one word into each of `rate` MiB of
//!   pages per second, cycling through a `dirty` MiB region above the kernel (capped to the
//!   memory multiboot reports). One write per 4 KiB page is what makes a page dirty for
//!   migration, so this is a page-dirty rate of `rate × 256` pages/s.
//! - `animate`: every `<ms>` ms the top right 8 cells of the screen show the tick count in hex
//!   on a new background colour, so every update changes the region (frame-rate tests).
//! - `uart=<ms>` ([`GuestOptions::uart_ms`]): COM2 (0x2f8, 115200 8N1, FIFO with receive
//!   trigger 14) is a serial console: each byte received is echoed back on COM2 and counted,
//!   and every `<ms>` ms the guest writes `#<line> <received>\n` there (8 lowercase hex digits
//!   each: the line's number from 0, the bytes received so far). Typed bytes never contain
//!   `#`, so the stream parses as echoes and numbered lines.
//! - `fill=<n>` with `uart` ([`GuestOptions::uart_fill`]): the guest no longer halts between
//!   timer ticks and writes `n` filler bytes `.` on COM2 after each echo-and-line pass: COM2
//!   as fast as QEMU's UART takes it (throughput benches).
//! - `vbe=<w>x<h>` (e.g. [`vbe_option`]`(1024, 768)`; not part of [`GuestOptions`], append it
//!   to [`GuestOptions::cmdline`]): a 32 bpp graphics mode through the Bochs VBE ports, for
//!   firmware-independent screen sizes (works under qboot). The text echo does not show there;
//!   the animation fills the top right 64x16 pixels with a new colour per frame.
//!
//! The F1 key (make code `3b`) repaints the whole screen in a new colour (text mode: a new
//! background in every cell), so a viewer receives a full-screen update on demand.
//!
//! # Migration convergence (128 MiB guest, QEMU 7.2 defaults, loopback)
//! QEMU 7.2's defaults, read with `query-migrate-parameters`: `max-bandwidth` 128 MiB/s,
//! `downtime-limit` 300 ms. The guest touches its whole region once before `READY`, so every
//! page of it is non-zero and must be copied. Measured with `cargo test -p testbed --test
//! guest_dirty_migration -- --ignored --nocapture` (`DIRTY_MIB`, `DIRTY_RATES`, `ACCEL=tcg`),
//! one migration each, given up after 40 s:
//!
//! | `dirty` | `rate` MiB/s | KVM+qboot | TCG |
//! |---|---|---|---|
//! | 64 | 0, 8, 16, 32, 64 | converges, ~0.5 s, downtime 1–22 ms | converges, ~0.5 s, 29–31 ms |
//! | 64 | 96 | converges, 0.8 s, downtime 18–21 ms | — |
//! | 64 | 128 | marginal: 0.9 s, 3.7 s, or not in 40 s | converged in 6.4 s |
//! | 64 | 160 | converged in 2.0 s once | — |
//! | 64 | 192, 256 | never (QEMU sends at its 1074 Mbit/s cap) | never |
//! | 16 | 1000 | converges, 0.13 s: the region fits the downtime budget | — |
//!
//! So with a region larger than what 300 ms at 128 MiB/s carries (~38 MiB), rates up to
//! 96 MiB/s converge, about 128 MiB/s (the bandwidth cap) is a coin toss, and 192 MiB/s or more
//! never converges without auto-converge or a larger limit. Smaller regions converge at any
//! rate.
//!
//! # A note on `iret`
//! On the nested KVM (AMD) these machines run, a 32-bit `iret` never completes (the vCPU spins
//! on it). The interrupt handlers therefore return by restoring flags with IF clear and
//! `sti; ret`; see `irq_return` in `guest.s`.
#![warn(missing_docs)]

pub mod keymap;
pub mod report;

use std::path::Path;

/// The guest kernel built by this crate's build script: a multiboot ELF for QEMU's `-kernel`.
pub fn kernel_path() -> &'static Path {
    Path::new(concat!(env!("OUT_DIR"), "/guest.elf"))
}

/// The guest's command-line options (see the crate docs for what each does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestOptions {
    /// Size of the memory region the guest keeps rewriting, MiB (0: no dirtying).
    pub dirty_mib: u32,
    /// Rate at which the region is rewritten, MiB/s (page-dirty rate / 256).
    pub dirty_rate_mib_s: u32,
    /// Whether the top right 8 screen cells change on every 1 ms timer tick.
    pub animate: bool,
    /// A `width` x `height` 32 bpp graphics mode (Bochs VBE) instead of VGA text mode.
    pub vbe: Option<(u16, u16)>,
    /// The serial console on COM2 (`uart=<ms>`): echo and count received bytes, and write a
    /// numbered line every this many ms (0: COM2 untouched).
    pub uart_ms: u32,
    /// With `uart_ms`: filler bytes written after each pass over COM2, passes back to back
    /// (`fill=<n>`; 0: none, the guest halts until the next tick).
    pub uart_fill: u32,
}

impl GuestOptions {
    /// The multiboot command line for QEMU's `-append`, e.g. `dirty=64 rate=100 animate=1`.
    pub fn cmdline(&self) -> String {
        let mut line = format!(
            "dirty={} rate={} animate={}",
            self.dirty_mib,
            self.dirty_rate_mib_s,
            u8::from(self.animate)
        );
        if let Some((width, height)) = self.vbe {
            line.push_str(&format!(" vbe={width}x{height}"));
        }
        if self.uart_ms > 0 {
            line.push_str(&format!(" uart={}", self.uart_ms));
        }
        if self.uart_fill > 0 {
            line.push_str(&format!(" fill={}", self.uart_fill));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_built_as_one_segment_multiboot_elf() {
        let elf = std::fs::read(kernel_path()).expect("the build script writes the kernel");
        assert_eq!(elf.get(..4), Some(&b"\x7fELF"[..]));
        assert_eq!(elf.get(4), Some(&1), "32-bit ELF");
        // e_phnum at offset 44 (u16, little endian): one LOAD segment, or KVM fails to boot it.
        assert_eq!(elf.get(44..46), Some(&[1u8, 0][..]));
        // The multiboot header (magic 0x1BADB002) must sit in the first 8 KiB, 4-aligned.
        let head = &elf[..elf.len().min(8192)];
        let found = head
            .chunks_exact(4)
            .any(|w| w == 0x1bad_b002u32.to_le_bytes());
        assert!(found, "no multiboot header in the first 8 KiB");
    }

    #[test]
    fn cmdline_lists_every_option() {
        let opts = GuestOptions {
            dirty_mib: 64,
            dirty_rate_mib_s: 100,
            animate: true,
            vbe: None,
            uart_ms: 0,
            uart_fill: 0,
        };
        assert_eq!(opts.cmdline(), "dirty=64 rate=100 animate=1");
        let graphics = GuestOptions {
            vbe: Some((1024, 768)),
            ..opts
        };
        assert_eq!(
            graphics.cmdline(),
            "dirty=64 rate=100 animate=1 vbe=1024x768"
        );
        assert_eq!(
            GuestOptions::default().cmdline(),
            "dirty=0 rate=0 animate=0"
        );
        let flooding = GuestOptions {
            uart_ms: 1000,
            uart_fill: 64,
            ..GuestOptions::default()
        };
        assert_eq!(
            flooding.cmdline(),
            "dirty=0 rate=0 animate=0 uart=1000 fill=64"
        );
    }
}

//! Parsing the Linux guest's serial lines (grammar in the crate docs) into [`Report`]s, and
//! reading them as the tiny guest's reports ([`Report::as_guest_report`]).
//!
//! Pure and total: any line gives a `Report` or a [`ReportError`], never a panic.

use std::fmt;

use guest::report::{Button, Report as GuestReport};

use crate::keymap::{set1_from_evdev, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT};

/// One line the Linux guest printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `INIT <release> <ms>`: the init started.
    Init {
        /// The kernel release (`uname -r`).
        release: String,
        /// Milliseconds since the kernel started.
        uptime_ms: u64,
    },
    /// `MODULES <ms>`: the modules are loaded.
    Modules {
        /// Milliseconds since the kernel started.
        uptime_ms: u64,
    },
    /// `DEV <n> <bus> <keys> <leds> <name>`: an input device was opened.
    Device {
        /// Its number: `/dev/input/event<index>`.
        index: u32,
        /// Linux bus type (`BUS_I8042` 0x11, `BUS_USB` 0x03, `BUS_HOST` 0x19).
        bus: u16,
        /// Whether it has keys or buttons.
        keys: bool,
        /// Whether it has LEDs.
        leds: bool,
        /// Its name, e.g. `AT Translated Set 2 keyboard`, `QEMU QEMU USB Keyboard`.
        name: String,
    },
    /// `FB <w>x<h> <bpp> <name>`: the DRM framebuffer.
    Framebuffer {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Bits per pixel.
        bpp: u32,
        /// Its name (`bochs-drmdrmfb`).
        name: String,
    },
    /// `BOOTED <ms>`: ms since the kernel started when the guest became ready.
    Booted {
        /// Milliseconds since the kernel started.
        uptime_ms: u64,
    },
    /// `READY`.
    Ready,
    /// `KEY` or `BTN`: one `EV_KEY` event.
    Input(Input),
    /// `LED <mask>`: the init set the LEDs (scroll 1, num 2, caps 4).
    Leds(u8),
    /// `DREW LINE|FRAME <k>`: a drawing command is done.
    Drew {
        /// Frames (`FRAME`) rather than lines (`LINE`).
        frames: bool,
        /// Lines or frames drawn since boot.
        count: u64,
    },
    /// `PONG <n>`.
    Pong(u64),
    /// `SERIAL <received> <written> <hash>`: the shell's serial console so far.
    Serial(SerialCount),
    /// `GONE <dev>`: the device went away.
    Gone(u32),
    /// `ERR <text>`: something failed in the guest.
    Error(String),
}

/// One key or button event as the guest's kernel delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Input {
    /// A button (`BTN`, codes 0x100..0x160), not a key (`KEY`).
    pub button: bool,
    /// Running count (from 1), keys and buttons counted apart.
    pub count: u64,
    /// The device: `/dev/input/event<device>`.
    pub device: u32,
    /// The evdev code (`KEY_A` = 30, `BTN_LEFT` = 0x110).
    pub code: u16,
    /// 0 release, 1 press, 2 repeat.
    pub value: i32,
}

/// The shell's serial console (`dmore.shell=1`) as the init relayed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialCount {
    /// Bytes the init read from COM1 and handed to the shell.
    pub received: u64,
    /// Bytes of the shell's output the init wrote to COM1.
    pub written: u64,
    /// Their FNV-1a 64 ([`crate::fnv`]).
    pub hash: u64,
}

/// Why a line is not a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The line's first word is no report the guest prints.
    #[error("unknown report {0:?}")]
    Unknown(String),
    /// The first word is known but the rest does not fit the grammar.
    #[error("malformed {kind} report {line:?}")]
    Malformed {
        /// The report's first word.
        kind: &'static str,
        /// The whole line (shortened to 80 characters).
        line: String,
    },
}

/// Parses one serial line (with or without its trailing `\r`/`\n`).
pub fn parse_line(line: &str) -> Result<Report, ReportError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
    let words: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(' ').collect()
    };
    let bad = |kind: &'static str| ReportError::Malformed {
        kind,
        line: line.chars().take(80).collect(),
    };
    let dec = |w: &str| w.parse::<u64>().ok().filter(|_| is_digits(w));
    let hex16 = |w: &str| {
        u16::from_str_radix(w, 16)
            .ok()
            .filter(|_| w.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let flag = |w: &str| match w {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    };
    // The name of DEV and FB: the rest of the line after the fixed words.
    let tail = |fixed: usize| rest.splitn(fixed + 1, ' ').nth(fixed).map(str::to_owned);
    match (first, words.as_slice()) {
        ("INIT", [release, ms]) => Ok(Report::Init {
            release: (*release).to_owned(),
            uptime_ms: dec(ms).ok_or_else(|| bad("INIT"))?,
        }),
        ("MODULES", [ms]) => Ok(Report::Modules {
            uptime_ms: dec(ms).ok_or_else(|| bad("MODULES"))?,
        }),
        ("BOOTED", [ms]) => Ok(Report::Booted {
            uptime_ms: dec(ms).ok_or_else(|| bad("BOOTED"))?,
        }),
        ("READY", []) => Ok(Report::Ready),
        ("DEV", [index, bus, keys, leds, _, ..]) => Ok(Report::Device {
            index: dec(index)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad("DEV"))?,
            bus: hex16(bus).ok_or_else(|| bad("DEV"))?,
            keys: flag(keys).ok_or_else(|| bad("DEV"))?,
            leds: flag(leds).ok_or_else(|| bad("DEV"))?,
            name: tail(4).ok_or_else(|| bad("DEV"))?,
        }),
        ("FB", [size, bpp, _, ..]) => {
            let (w, h) = size.split_once('x').ok_or_else(|| bad("FB"))?;
            let num = |w: &str| {
                dec(w)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| bad("FB"))
            };
            Ok(Report::Framebuffer {
                width: num(w)?,
                height: num(h)?,
                bpp: num(bpp)?,
                name: tail(2).ok_or_else(|| bad("FB"))?,
            })
        }
        (kind @ ("KEY" | "BTN"), [count, device, code, value]) => {
            let kind = if kind == "KEY" { "KEY" } else { "BTN" };
            let input = Input {
                button: kind == "BTN",
                count: dec(count).ok_or_else(|| bad(kind))?,
                device: dec(device)
                    .and_then(|d| u32::try_from(d).ok())
                    .ok_or_else(|| bad(kind))?,
                code: hex16(code).ok_or_else(|| bad(kind))?,
                value: match *value {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(bad(kind)),
                },
            };
            if input.button != (0x100..0x160).contains(&input.code) {
                return Err(bad(kind));
            }
            Ok(Report::Input(input))
        }
        ("LED", [mask]) => hex16(mask)
            .filter(|m| *m <= 7 && mask.len() == 1)
            .map(|m| Report::Leds(m as u8))
            .ok_or_else(|| bad("LED")),
        ("DREW", [what, count]) => Ok(Report::Drew {
            frames: match *what {
                "FRAME" => true,
                "LINE" => false,
                _ => return Err(bad("DREW")),
            },
            count: dec(count).ok_or_else(|| bad("DREW"))?,
        }),
        ("PONG", [n]) => Ok(Report::Pong(dec(n).ok_or_else(|| bad("PONG"))?)),
        ("SERIAL", [received, written, hash]) => Ok(Report::Serial(SerialCount {
            received: dec(received).ok_or_else(|| bad("SERIAL"))?,
            written: dec(written).ok_or_else(|| bad("SERIAL"))?,
            hash: u64::from_str_radix(hash, 16)
                .ok()
                .filter(|_| hash.len() == 16)
                .ok_or_else(|| bad("SERIAL"))?,
        })),
        ("GONE", [n]) => Ok(Report::Gone(
            dec(n)
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| bad("GONE"))?,
        )),
        ("ERR", [_, ..]) => Ok(Report::Error(rest.to_owned())),
        (
            kind @ ("INIT" | "MODULES" | "BOOTED" | "READY" | "DEV" | "FB" | "KEY" | "BTN" | "LED"
            | "DREW" | "PONG" | "SERIAL" | "GONE" | "ERR"),
            _,
        ) => Err(bad(known(kind))),
        _ => Err(ReportError::Unknown(first.chars().take(16).collect())),
    }
}

fn is_digits(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

/// The report kind as a static string, for errors.
fn known(kind: &str) -> &'static str {
    [
        "INIT", "MODULES", "BOOTED", "READY", "DEV", "FB", "KEY", "BTN", "LED", "DREW", "PONG",
        "SERIAL", "GONE", "ERR",
    ]
    .into_iter()
    .find(|k| *k == kind)
    .unwrap_or("?")
}

impl Report {
    /// This report in the tiny guest's vocabulary, where it has one: keys of a US PC keyboard
    /// as set-1 codes (a repeat as another press, as the tiny guest sees a repeated make code),
    /// the left, right and middle buttons, LEDs and READY; with the counts as the Linux guest
    /// numbered them. So a test written for the tiny guest reads this one's keys the same way.
    pub fn as_guest_report(&self) -> Option<GuestReport> {
        match self {
            Report::Ready => Some(GuestReport::Ready),
            Report::Leds(mask) => Some(GuestReport::Leds(*mask)),
            Report::Input(input) if input.button => {
                let button = match input.code {
                    BTN_LEFT => Button::Left,
                    BTN_RIGHT => Button::Right,
                    BTN_MIDDLE => Button::Middle,
                    _ => return None,
                };
                Some(GuestReport::Button {
                    count: input.count,
                    down: input.value != 0,
                    button,
                })
            }
            Report::Input(input) => Some(GuestReport::Key {
                count: input.count,
                down: input.value != 0,
                code: set1_from_evdev(input.code)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Report {
    /// Formats the report exactly as the guest prints it (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Init { release, uptime_ms } => write!(f, "INIT {release} {uptime_ms}"),
            Report::Modules { uptime_ms } => write!(f, "MODULES {uptime_ms}"),
            Report::Device {
                index,
                bus,
                keys,
                leds,
                name,
            } => write!(
                f,
                "DEV {index} {bus:x} {} {} {name}",
                u8::from(*keys),
                u8::from(*leds)
            ),
            Report::Framebuffer {
                width,
                height,
                bpp,
                name,
            } => write!(f, "FB {width}x{height} {bpp} {name}"),
            Report::Booted { uptime_ms } => write!(f, "BOOTED {uptime_ms}"),
            Report::Ready => f.write_str("READY"),
            Report::Input(i) => write!(
                f,
                "{} {} {} {:x} {}",
                if i.button { "BTN" } else { "KEY" },
                i.count,
                i.device,
                i.code,
                i.value
            ),
            Report::Leds(mask) => write!(f, "LED {mask:x}"),
            Report::Drew { frames, count } => {
                write!(f, "DREW {} {count}", if *frames { "FRAME" } else { "LINE" })
            }
            Report::Pong(n) => write!(f, "PONG {n}"),
            Report::Serial(c) => write!(f, "SERIAL {} {} {:016x}", c.received, c.written, c.hash),
            Report::Gone(n) => write!(f, "GONE {n}"),
            Report::Error(text) => write!(f, "ERR {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_the_guest_prints() {
        assert_eq!(
            parse_line("INIT 6.1.0-57-amd64 1834\r\n"),
            Ok(Report::Init {
                release: "6.1.0-57-amd64".into(),
                uptime_ms: 1834
            })
        );
        assert_eq!(
            parse_line("DEV 0 11 1 1 AT Translated Set 2 keyboard"),
            Ok(Report::Device {
                index: 0,
                bus: 0x11,
                keys: true,
                leds: true,
                name: "AT Translated Set 2 keyboard".into()
            })
        );
        assert_eq!(
            parse_line("FB 1280x800 32 bochs-drmdrmfb"),
            Ok(Report::Framebuffer {
                width: 1280,
                height: 800,
                bpp: 32,
                name: "bochs-drmdrmfb".into()
            })
        );
        let key = Input {
            button: false,
            count: 7,
            device: 2,
            code: 30,
            value: 1,
        };
        assert_eq!(parse_line("KEY 7 2 1e 1"), Ok(Report::Input(key)));
        let button = Input {
            button: true,
            count: 1,
            device: 4,
            code: BTN_RIGHT,
            value: 0,
        };
        assert_eq!(parse_line("BTN 1 4 111 0"), Ok(Report::Input(button)));
        assert_eq!(parse_line("LED 4"), Ok(Report::Leds(4)));
        assert_eq!(
            parse_line("DREW FRAME 12"),
            Ok(Report::Drew {
                frames: true,
                count: 12
            })
        );
        assert_eq!(
            parse_line("ERR module /lib/x.ko No such device (os error 19)"),
            Ok(Report::Error(
                "module /lib/x.ko No such device (os error 19)".into()
            ))
        );
        assert_eq!(parse_line("READY"), Ok(Report::Ready));
        assert_eq!(parse_line("PONG 3"), Ok(Report::Pong(3)));
        assert_eq!(parse_line("GONE 3"), Ok(Report::Gone(3)));
        assert_eq!(
            parse_line("SERIAL 12 345 00000000000000ff"),
            Ok(Report::Serial(SerialCount {
                received: 12,
                written: 345,
                hash: 0xff
            }))
        );
    }

    #[test]
    fn rejects_what_it_does_not_print() {
        for line in [
            "",
            "READY now",
            "KEY 1 2 1e",
            "KEY 1 2 1e 3",
            "KEY 1 2 110 1",
            "BTN 1 2 1e 1",
            "KEY +1 2 1e 1",
            "KEY 1 2 -1e 1",
            "LED 8",
            "LED 04",
            "DEV 1 11 2 0 x",
            "DEV 1 11 1 0",
            "FB 1280 32 x",
            "DREW PIXEL 1",
            "SERIAL 1 2 ff",
            "SERIAL 1 2",
            "ERR",
            "\x1b[01;01H\x1b[=3h",
            "key 1 2 1e 1",
        ] {
            assert!(parse_line(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn reads_as_the_tiny_guests_reports() {
        let input = |button, code, value| {
            Report::Input(Input {
                button,
                count: 5,
                device: 1,
                code,
                value,
            })
        };
        assert_eq!(
            input(false, 30, 1).as_guest_report(),
            Some(GuestReport::Key {
                count: 5,
                down: true,
                code: 0x1e
            })
        );
        assert_eq!(
            input(false, 103, 2).as_guest_report(),
            Some(GuestReport::Key {
                count: 5,
                down: true,
                code: 0xe048
            })
        );
        assert_eq!(
            input(true, BTN_MIDDLE, 0).as_guest_report(),
            Some(GuestReport::Button {
                count: 5,
                down: false,
                button: Button::Middle
            })
        );
        assert_eq!(input(true, 0x113, 1).as_guest_report(), None);
        assert_eq!(input(false, 200, 1).as_guest_report(), None);
        assert_eq!(
            Report::Leds(4).as_guest_report(),
            Some(GuestReport::Leds(4))
        );
        assert_eq!(Report::Pong(1).as_guest_report(), None);
    }

    proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,80}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn display_round_trips(
            count in any::<u64>(), device in any::<u32>(), key in 0u16..0x100,
            button in 0x100u16..0x160, value in 0i32..3, mask in 0u8..8,
            name in "[ -~]{1,30}", ms in any::<u64>(),
        ) {
            let name = name.trim_start_matches(' ').to_owned();
            prop_assume!(!name.is_empty());
            for r in [
                Report::Input(Input { button: false, count, device, code: key, value }),
                Report::Input(Input { button: true, count, device, code: button, value }),
                Report::Leds(mask),
                Report::Device { index: device, bus: key, keys: true, leds: false, name: name.clone() },
                Report::Framebuffer { width: device, height: 768, bpp: 32, name: name.clone() },
                Report::Init { release: "6.1.0-57-amd64".into(), uptime_ms: ms },
                Report::Booted { uptime_ms: ms },
                Report::Drew { frames: value == 1, count },
                Report::Gone(device),
                Report::Pong(count),
                Report::Serial(SerialCount { received: count, written: ms, hash: count ^ ms }),
            ] {
                prop_assert_eq!(parse_line(&r.to_string()), Ok(r));
            }
        }
    }
}

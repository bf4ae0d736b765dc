//! Parsing the guest's serial lines (grammar in the crate docs) into [`Report`]s.
//!
//! Pure and total: any line, however malformed, gives a `Report` or a [`ReportError`], never
//! a panic.

use std::fmt;

/// A mouse button the guest reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Button {
    /// Left button (`L`).
    Left,
    /// Right button (`R`).
    Right,
    /// Middle button (`M`).
    Middle,
}

impl fmt::Display for Button {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Button::Left => "L",
            Button::Right => "R",
            Button::Middle => "M",
        })
    }
}

/// One line the guest printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `READY`: interrupts are on and the devices are programmed.
    Ready,
    /// `K <n> D|U <code>`: key event number `count` (from 1); `code` is the set-1 make code,
    /// `0xe0xx` for extended keys.
    Key {
        /// Running count of key events, presses and releases alike.
        count: u64,
        /// Press (`D`) or release (`U`).
        down: bool,
        /// Set-1 make code (`0x00..=0x7f`, or `0xe000 | code` for extended keys).
        code: u16,
    },
    /// `B <n> D|U L|R|M`: mouse button edge number `count` (from 1).
    Button {
        /// Running count of button events.
        count: u64,
        /// Press (`D`) or release (`U`).
        down: bool,
        /// Which button.
        button: Button,
    },
    /// `L <mask>`: the keyboard acknowledged this LED mask (scroll 1, num 2, caps 4).
    Leds(u8),
    /// `OPTS dirty=.. rate=.. animate=..`: the options the guest runs with.
    Options {
        /// Dirtied region in MiB, after capping to the guest's memory.
        dirty_mib: u32,
        /// Dirty rate, MiB/s.
        dirty_rate_mib_s: u32,
        /// Animation period in ms (0: off).
        animate_ms: u32,
    },
    /// `NOACK <sent> <got>`: a device answered a setup byte with something other than ACK.
    NoAck {
        /// The byte the guest sent.
        sent: u8,
        /// What came back (`0xff`: nothing).
        got: u8,
    },
    /// `FAULT <vector>`: a CPU exception; the guest has stopped.
    Fault(u8),
}

/// Why a line is not a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The line's first word is no report the guest prints.
    #[error("unknown report {0:?}")]
    Unknown(String),
    /// The first word is known but the rest does not fit the grammar.
    #[error("malformed {kind} report {line:?}: {reason}")]
    Malformed {
        /// The report's first word.
        kind: &'static str,
        /// The whole line (shortened to 80 characters).
        line: String,
        /// What did not fit.
        reason: &'static str,
    },
}

/// Parses one serial line (without or with its trailing `\r`/`\n`).
pub fn parse_line(line: &str) -> Result<Report, ReportError> {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    let mut words = trimmed.split(' ');
    let first = words.next().unwrap_or("");
    let words: Vec<&str> = words.collect();
    let bad = |kind: &'static str, reason: &'static str| ReportError::Malformed {
        kind,
        line: trimmed.chars().take(80).collect(),
        reason,
    };
    match (first, words.as_slice()) {
        ("READY", []) => Ok(Report::Ready),
        ("READY", _) => Err(bad("READY", "trailing words")),
        ("K", [n, dir, code]) => {
            let count = n
                .parse()
                .map_err(|_| bad("K", "count is not a decimal number"))?;
            let down = direction(dir).ok_or_else(|| bad("K", "direction is not D or U"))?;
            let code = key_code(code).ok_or_else(|| bad("K", "code is not xx or e0xx hex"))?;
            Ok(Report::Key { count, down, code })
        }
        ("K", _) => Err(bad("K", "expected 3 words")),
        ("B", [n, dir, button]) => {
            let count = n
                .parse()
                .map_err(|_| bad("B", "count is not a decimal number"))?;
            let down = direction(dir).ok_or_else(|| bad("B", "direction is not D or U"))?;
            let button = match *button {
                "L" => Button::Left,
                "R" => Button::Right,
                "M" => Button::Middle,
                _ => return Err(bad("B", "button is not L, R or M")),
            };
            Ok(Report::Button {
                count,
                down,
                button,
            })
        }
        ("B", _) => Err(bad("B", "expected 3 words")),
        ("L", [mask]) => hex_u8(mask)
            .filter(|m| *m <= 7)
            .map(Report::Leds)
            .ok_or_else(|| bad("L", "mask is not a hex digit 0..7")),
        ("L", _) => Err(bad("L", "expected 1 word")),
        ("OPTS", [dirty, rate, animate]) => {
            let field = |word: &str, key: &str| {
                word.strip_prefix(key)
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| bad("OPTS", "expected dirty=N rate=N animate=N"))
            };
            Ok(Report::Options {
                dirty_mib: field(dirty, "dirty=")?,
                dirty_rate_mib_s: field(rate, "rate=")?,
                animate_ms: field(animate, "animate=")?,
            })
        }
        ("OPTS", _) => Err(bad("OPTS", "expected 3 words")),
        ("NOACK", [sent, got]) => match (hex_u8(sent), hex_u8(got)) {
            (Some(sent), Some(got)) => Ok(Report::NoAck { sent, got }),
            _ => Err(bad("NOACK", "bytes are not hex")),
        },
        ("NOACK", _) => Err(bad("NOACK", "expected 2 words")),
        ("FAULT", [vector]) => hex_u8(vector)
            .map(Report::Fault)
            .ok_or_else(|| bad("FAULT", "vector is not hex")),
        ("FAULT", _) => Err(bad("FAULT", "expected 1 word")),
        _ => Err(ReportError::Unknown(first.chars().take(16).collect())),
    }
}

fn direction(word: &str) -> Option<bool> {
    match word {
        "D" => Some(true),
        "U" => Some(false),
        _ => None,
    }
}

fn is_hex(word: &str, len: usize) -> bool {
    word.len() == len && word.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex_u8(word: &str) -> Option<u8> {
    if word.is_empty() || word.len() > 2 || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(word, 16).ok()
}

/// `xx` (a make code below 0x80) or `e0xx`.
fn key_code(word: &str) -> Option<u16> {
    if is_hex(word, 2) || (is_hex(word, 4) && word.starts_with("e0")) {
        u16::from_str_radix(word, 16).ok().filter(|c| c & 0x80 == 0)
    } else {
        None
    }
}

impl fmt::Display for Report {
    /// Formats the report exactly as the guest prints it (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = |down: bool| if down { "D" } else { "U" };
        match self {
            Report::Ready => f.write_str("READY"),
            Report::Key { count, down, code } if *code > 0xff => {
                write!(f, "K {count} {} {code:04x}", dir(*down))
            }
            Report::Key { count, down, code } => write!(f, "K {count} {} {code:02x}", dir(*down)),
            Report::Button {
                count,
                down,
                button,
            } => write!(f, "B {count} {} {button}", dir(*down)),
            Report::Leds(mask) => write!(f, "L {mask:x}"),
            Report::Options {
                dirty_mib,
                dirty_rate_mib_s,
                animate_ms,
            } => write!(
                f,
                "OPTS dirty={dirty_mib} rate={dirty_rate_mib_s} animate={animate_ms}"
            ),
            Report::NoAck { sent, got } => write!(f, "NOACK {sent:02x} {got:02x}"),
            Report::Fault(v) => write!(f, "FAULT {v:02x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse_line("READY"), Ok(Report::Ready));
        assert_eq!(
            parse_line("K 1 D 1e\n"),
            Ok(Report::Key {
                count: 1,
                down: true,
                code: 0x1e
            })
        );
        assert_eq!(
            parse_line("K 20 U e01c\r\n"),
            Ok(Report::Key {
                count: 20,
                down: false,
                code: 0xe01c
            })
        );
        assert_eq!(
            parse_line("B 3 D R"),
            Ok(Report::Button {
                count: 3,
                down: true,
                button: Button::Right
            })
        );
        assert_eq!(parse_line("L 4"), Ok(Report::Leds(4)));
        assert_eq!(
            parse_line("OPTS dirty=64 rate=10 animate=1"),
            Ok(Report::Options {
                dirty_mib: 64,
                dirty_rate_mib_s: 10,
                animate_ms: 1
            })
        );
        assert_eq!(
            parse_line("NOACK f4 ff"),
            Ok(Report::NoAck {
                sent: 0xf4,
                got: 0xff
            })
        );
        assert_eq!(parse_line("FAULT 0d"), Ok(Report::Fault(13)));
    }

    #[test]
    fn rejects_malformed_lines() {
        for line in [
            "",
            "READY now",
            "K",
            "K 1 D",
            "K x D 1e",
            "K 1 X 1e",
            "K 1 D 9e",
            "K 1 D e11c",
            "K 1 D 1",
            "K -1 D 1e",
            "B 1 D Q",
            "L 8",
            "L",
            "L 44",
            "FAULT 100",
            "OPTS dirty=1",
            "hello",
            "k 1 D 1e",
        ] {
            assert!(parse_line(line).is_err(), "{line:?} parsed");
        }
        assert_eq!(
            parse_line("hi there"),
            Err(ReportError::Unknown("hi".into()))
        );
    }

    proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,64}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn display_round_trips(
            count in any::<u64>(), down in any::<bool>(), code in 0u16..0x80, ext in any::<bool>(),
            button in 0u8..3, mask in 0u8..8,
        ) {
            let code = if ext { 0xe000 | code } else { code };
            let button = [Button::Left, Button::Right, Button::Middle][usize::from(button)];
            for r in [
                Report::Ready,
                Report::Key { count, down, code },
                Report::Button { count, down, button },
                Report::Leds(mask),
                Report::Fault(mask),
            ] {
                prop_assert_eq!(parse_line(&r.to_string()), Ok(r));
            }
        }
    }
}

//! Keysyms to QEMU key numbers exactly as QEMU 7.2's VNC server turns them, for the QMP lane.
//!
//! The fast lane hands a viewer's keys to QEMU's own VNC server, which picks the key number
//! (the "qnum": XT set 1 make code, an 0xe0 prefix folded into bit 7); the QMP lane's
//! `input-send-event` must name the number itself. This module makes the QMP lane pick the
//! very number QEMU's VNC server would, on every layout (`ui/vnc.c`, `ui/keymaps.c`,
//! `ui/kbd-state.c` of QEMU 7.2, read for this; none of it copied):
//!
//! - With `-k LAYOUT`, QEMU translates every key's keysym with that keymap file, also the
//!   Extended Key Events whose raw keycode it then ignores. Without `-k`, an Extended Key
//!   Event's keycode is used as it is, and a plain KeyEvent's keysym is translated with the
//!   `en-us` file. [`Layout`] is that choice.
//! - A keymap file ([`Keymap::parse`]) gives each keysym up to four keycodes, each with the
//!   modifiers it needs (`shift`, `altgr`, `ctrl`; `addupper` adds the upper-case name with
//!   `shift`). Translating ([`Keyboard::translate`]): `A`..`Z` are looked up as `a`..`z` (a
//!   graphic console), the keysym is cut to its low 16 bits, `ISO_Left_Tab` is `Tab`; with
//!   several keycodes a press takes the first whose modifiers equal the Shift/AltGr/Ctrl
//!   keys down now, a release the first whose key is down; else the first. The number is the
//!   keycode's low byte; 0 means no key: QEMU's VNC server gives the guest nothing.
//! - The modifiers are those of QEMU's per-display keyboard state, fed by the keys QEMU took
//!   ([`Keyboard::apply`]). The console announces QEMU's LED-state pseudo-encoding, which
//!   turns QEMU's lock-key sync (injected Caps/Num Lock presses) off for its connection.
//!
//! Not modelled: QEMU's Ctrl+Alt+1..9 console switch (QEMU's VNC server eats those presses
//! when its display is not bound to a console; the QMP lane delivers them), and text
//! consoles (no `A`..`Z` folding there).

mod names;
mod state;

pub use state::{Keyboard, MODIFIER_KEYS};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where QEMU's packaged keymap files are (`qemu-system-data`).
pub const QEMU_KEYMAP_DIR: &str = "/usr/share/qemu/keymaps";

/// The keymap QEMU's VNC server uses without `-k` (for plain KeyEvents).
pub const QEMU_DEFAULT_LAYOUT: &str = "en-us";

/// Keycode flag: the keysym needs Shift.
pub const SHIFT: u16 = 0x100;
/// Keycode flag: the keysym needs Ctrl.
pub const CTRL: u16 = 0x200;
/// Keycode flag: the keysym needs AltGr.
pub const ALTGR: u16 = 0x800;
/// The modifier flags a press is matched by.
const MODIFIERS: u16 = SHIFT | CTRL | ALTGR;
/// QEMU keeps at most this many keycodes per keysym (later lines are dropped with a warning).
const MAX_CODES: usize = 4;
/// QEMU reads keymap files with a 1024-byte line buffer: longer lines come in pieces.
const LINE_BUFFER: usize = 1024;
/// QEMU keeps the first 63 bytes of a keysym name.
const MAX_NAME: usize = 63;

/// A parsed keymap file: each keysym's keycodes, in file order (QEMU's `kbd_layout_t`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keymap {
    codes: HashMap<u32, Vec<u16>>,
}

/// Why a keymap file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// QEMU 7.2 refuses `include` lines ("keymap include files are not supported any more").
    #[error("line {line}: `include` lines are not supported (QEMU 7.2 refuses them too)")]
    Include {
        /// 1-based line number.
        line: usize,
    },
}

/// Why a layout could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error(
        "cannot read the keymap file {path} for layout {layout:?}: give --keymap the same \
         value as QEMU's -k, and install QEMU's keymaps (Debian: qemu-system-data)"
    )]
    Read {
        /// The layout asked for.
        layout: String,
        /// The file tried.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not one QEMU would take.
    #[error("the keymap file {path} is not one QEMU 7.2 accepts")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ParseError,
    },
}

impl Keymap {
    /// Parses a keymap file as QEMU 7.2 does: `#` comments and `map` lines skipped, a line
    /// `NAME KEYCODE [shift] [altgr] [ctrl] [addupper] ...` adds a keycode (C `strtol` with
    /// base 0, modifiers found anywhere after the name), unknown names skipped. Never panics;
    /// only `include` lines are refused.
    pub fn parse(text: &[u8]) -> Result<Keymap, ParseError> {
        let mut map = Keymap::default();
        for (index, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            for piece in line.chunks(LINE_BUFFER - 1) {
                // C strings end at the first NUL; fgets keeps the newline, QEMU strips it.
                let piece = piece.split(|b| *b == 0).next().unwrap_or_default();
                let piece = piece.strip_suffix(b"\n").unwrap_or(piece);
                map.parse_line(piece)
                    .map_err(|()| ParseError::Include { line: index + 1 })?;
            }
        }
        Ok(map)
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<(), ()> {
        if line.first() == Some(&b'#') || line.starts_with(b"map ") {
            return Ok(());
        }
        if line.starts_with(b"include ") {
            return Err(());
        }
        let name_len = line
            .iter()
            .take(MAX_NAME)
            .position(|b| *b == b' ')
            .unwrap_or(line.len().min(MAX_NAME));
        let (name, rest) = line.split_at(name_len);
        if name.is_empty() {
            return Ok(());
        }
        let Some(keysym) = names::keysym(name) else {
            return Ok(());
        };
        // QEMU skips one byte after the name (the space, or the 64th byte of a long name).
        let rest = rest.get(1..).unwrap_or_default();
        let mut code = c_strtol(rest) as u16;
        for (word, flag) in [(&b"shift"[..], SHIFT), (b"altgr", ALTGR), (b"ctrl", CTRL)] {
            if contains(rest, word) {
                code |= flag;
            }
        }
        self.add(keysym, code);
        if contains(rest, b"addupper") {
            if let Some(upper) = names::keysym(&name.to_ascii_uppercase()) {
                self.add(upper, code | SHIFT);
            }
        }
        Ok(())
    }

    fn add(&mut self, keysym: u32, code: u16) {
        let codes = self.codes.entry(keysym).or_default();
        if codes.len() < MAX_CODES {
            codes.push(code);
        } else {
            tracing::debug!(
                keysym,
                code,
                "more than {MAX_CODES} keycodes; dropped as QEMU does"
            );
        }
    }

    /// Reads the keymap file of `layout` (QEMU's `-k` value): a path if that names a
    /// readable file (as QEMU tries first), else `layout` in [`QEMU_KEYMAP_DIR`].
    pub fn load(layout: &str) -> Result<Keymap, LoadError> {
        let direct = Path::new(layout);
        let path = if direct.is_file() {
            direct.to_path_buf()
        } else {
            Path::new(QEMU_KEYMAP_DIR).join(layout)
        };
        let text = std::fs::read(&path).map_err(|source| LoadError::Read {
            layout: layout.to_owned(),
            path: path.clone(),
            source,
        })?;
        Keymap::parse(&text).map_err(|source| LoadError::Parse { path, source })
    }

    /// The keycodes (with modifier flags) of `keysym`, in file order; empty if none.
    pub fn codes(&self, keysym: u32) -> &[u16] {
        self.codes.get(&keysym).map_or(&[], Vec::as_slice)
    }

    /// Every keysym the file maps, with its keycodes (unordered).
    pub fn entries(&self) -> impl Iterator<Item = (u32, &[u16])> {
        self.codes.iter().map(|(k, v)| (*k, v.as_slice()))
    }
}

/// The keyboard translation QEMU's VNC server uses, from its `-k` option.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The keymap file's contents (`-k`'s, else `en-us`).
    pub keymap: Arc<Keymap>,
    /// `-k` was given: Extended Key Events' raw keycodes are ignored and keysyms translated.
    pub given: bool,
}

impl Layout {
    /// The layout of a QEMU started with `-k layout`, or without `-k` (`None`).
    pub fn load(layout: Option<&str>) -> Result<Layout, LoadError> {
        Ok(Layout {
            keymap: Arc::new(Keymap::load(layout.unwrap_or(QEMU_DEFAULT_LAYOUT))?),
            given: layout.is_some(),
        })
    }
}

/// Whether `word` occurs in `text` (C `strstr`).
fn contains(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len()).any(|w| w == word)
}

/// C `strtol(text, NULL, 0)` as QEMU stores it (an `int`, then a 16-bit keycode): blanks, a
/// sign, `0x` hex, `0` octal or decimal; no digits give 0; overflow saturates.
fn c_strtol(text: &[u8]) -> i64 {
    let mut rest = text;
    while let [b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r', tail @ ..] = rest {
        rest = tail;
    }
    let negative = match rest {
        [b'-', tail @ ..] => {
            rest = tail;
            true
        }
        [b'+', tail @ ..] => {
            rest = tail;
            false
        }
        _ => false,
    };
    let radix = match rest {
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => {
            rest = &rest[2..];
            16
        }
        [b'0', ..] => 8,
        _ => 10,
    };
    // Accumulated negative when negative, so that overflow clamps to LONG_MIN or LONG_MAX.
    let sign = if negative { -1 } else { 1 };
    let mut value: i64 = 0;
    for b in rest {
        let Some(digit) = char::from(*b).to_digit(radix) else {
            break;
        };
        let next = value
            .checked_mul(i64::from(radix))
            .and_then(|v| v.checked_add(sign * i64::from(digit)));
        value = match next {
            Some(v) => v,
            None if negative => return i64::MIN,
            None => return i64::MAX,
        };
    }
    value
}

#[cfg(test)]
mod tests;

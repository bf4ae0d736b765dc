//! The US-layout keymap the guest uses, for tests that predict what it reports: ASCII
//! characters to set-1 scancodes (with or without Shift), X11 keysyms and QEMU qcode names.
//!
//! The guest's own echo tables are generated from the same table (`keymap/table.rs`) by the
//! build script, so the two cannot disagree.

mod table;

pub use table::{Key, KEYS};

/// Set-1 make code of the left Shift key.
pub const SHIFT_CODE: u8 = 0x2a;
/// Set-1 make code of Caps Lock.
pub const CAPS_LOCK_CODE: u8 = 0x3a;
/// Set-1 make code of Num Lock.
pub const NUM_LOCK_CODE: u8 = 0x45;
/// Set-1 make code of Scroll Lock.
pub const SCROLL_LOCK_CODE: u8 = 0x46;

/// How to type one character: the key, and whether Shift must be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stroke {
    /// The key to press.
    pub key: &'static Key,
    /// Whether (left) Shift is held around it.
    pub shift: bool,
}

/// How to type `c` on a US keyboard, or `None` if no single key types it. Keys that type the
/// same character with and without Shift (Space, Enter, Tab, Backspace) need no Shift.
pub fn stroke(c: char) -> Option<Stroke> {
    KEYS.iter().find_map(|key| {
        if key.plain == Some(c) {
            Some(Stroke { key, shift: false })
        } else if key.shifted == Some(c) {
            Some(Stroke { key, shift: true })
        } else {
            None
        }
    })
}

/// The set-1 make code of the key that types `c` (Shift not included).
pub fn scancode(c: char) -> Option<u8> {
    stroke(c).map(|s| s.key.code)
}

/// QEMU's qcode name of the key that types `c` (Shift not included): `'a'` → `"a"`,
/// `'A'` → `"a"`, `'\n'` → `"ret"`.
pub fn qcode(c: char) -> Option<&'static str> {
    stroke(c).map(|s| s.key.qcode)
}

/// The key with set-1 make code `code`.
pub fn by_code(code: u8) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.code == code)
}

/// The key QEMU calls `qcode`.
pub fn by_qcode(qcode: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.qcode == qcode)
}

/// The character the guest echoes for make code `code` with Shift held or not (Caps Lock
/// aside), if any.
pub fn char_for(code: u8, shift: bool) -> Option<char> {
    by_code(code).and_then(|k| if shift { k.shifted } else { k.plain })
}

/// The X11 keysym a VNC viewer sends for `c` (RFC 6143 §7.5.4): Latin-1 characters are their
/// own code point; Enter, Tab and Backspace are the function keysyms `0xff0d`, `0xff09` and
/// `0xff08`. `None` for characters outside the keymap.
pub fn keysym(c: char) -> Option<u32> {
    match c {
        '\n' => Some(0xff0d),
        '\t' => Some(0xff09),
        '\u{8}' => Some(0xff08),
        ' '..='~' if stroke(c).is_some() => Some(u32::from(c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_digits_and_controls() {
        assert_eq!(scancode('a'), Some(0x1e));
        assert_eq!(qcode('a'), Some("a"));
        assert_eq!(qcode('\n'), Some("ret"));
        assert_eq!(qcode(' '), Some("spc"));
        let s = stroke('A').expect("A is typable");
        assert_eq!((s.key.code, s.shift), (0x1e, true));
        let s = stroke('!').expect("! is typable");
        assert_eq!((s.key.qcode, s.shift), ("1", true));
        assert_eq!(stroke('\n').map(|s| s.shift), Some(false));
        assert_eq!(scancode('é'), None);
        assert_eq!(char_for(0x10, false), Some('q'));
        assert_eq!(char_for(0x10, true), Some('Q'));
        assert_eq!(by_qcode("caps_lock").map(|k| k.code), Some(CAPS_LOCK_CODE));
        assert_eq!(by_code(SHIFT_CODE).map(|k| k.qcode), Some("shift"));
    }

    #[test]
    fn keysyms() {
        assert_eq!(keysym('a'), Some(0x61));
        assert_eq!(keysym('~'), Some(0x7e));
        assert_eq!(keysym('\n'), Some(0xff0d));
        assert_eq!(keysym('\u{7f}'), None);
    }

    #[test]
    fn every_printable_ascii_char_round_trips() {
        for c in (' '..='~').chain(['\n', '\t']) {
            let s = stroke(c).unwrap_or_else(|| panic!("{c:?} has no key"));
            assert_eq!(char_for(s.key.code, s.shift), Some(c), "{c:?}");
        }
    }

    #[test]
    fn table_is_consistent() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(k.code < 0x80, "{k:?}: a make code has the high bit clear");
            for other in &KEYS[i + 1..] {
                assert_ne!(k.code, other.code, "duplicate code");
                assert_ne!(k.qcode, other.qcode, "duplicate qcode");
            }
        }
    }
}

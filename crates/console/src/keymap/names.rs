//! Keysym names as QEMU 7.2 resolves them in its keymap files.
//!
//! QEMU looks a name up in its own table of X11 keysym names (`keysymdef.h` names with their
//! X11 values), else reads `U` and four more characters as a hexadecimal number (`U20AC` is
//! 0x20ac, not the X11 Unicode keysym 0x10020ac), else skips the line. Its table is a subset
//! of X11's: the names in [`QEMU_UNKNOWN`] appear in QEMU's shipped keymaps but QEMU 7.2 does
//! not know them, so it skips those lines, and so must we. The X11 names and values come from
//! the `x11-keysymdef` crate; [`ALIASES`] adds the few X11 aliases that crate lacks.

/// X11 names found in QEMU 7.2's shipped keymap files that QEMU's name table does not hold:
/// QEMU ignores the lines that use them (measured by comparing every name in
/// `/usr/share/qemu/keymaps/*` with QEMU's resolution; the end-to-end keymap test checks it).
const QEMU_UNKNOWN: &[&str] = &[
    "Arabic_0",
    "Arabic_1",
    "Arabic_2",
    "Arabic_3",
    "Arabic_4",
    "Arabic_5",
    "Arabic_6",
    "Arabic_7",
    "Arabic_8",
    "Arabic_9",
    "Arabic_gaf",
    "Arabic_jeh",
    "Arabic_peh",
    "Arabic_percent",
    "Arabic_superscript_alef",
    "Arabic_tcheh",
    "Arabic_veh",
    "Cancel",
    "EZH",
    "Find",
    "Greek_PI",
    "Greek_mu",
    "Greek_pi",
    "Help",
    "Hiragana",
    "Hiragana_Katakana",
    "ISO_Left_Tab",
    "ISO_Level3_Latch",
    "Linefeed",
    "Multi_key",
    "Redo",
    "SCHWA",
    "Undo",
    "VoidSymbol",
    "approxeq",
    "dead_belowcomma",
    "dead_belowmacron",
    "dead_stroke",
    "ellipsis",
    "emdash",
    "ezh",
    "greaterthanequal",
    "infinity",
    "leftsinglequotemark",
    "lessthanequal",
    "logicaland",
    "logicalor",
    "notequal",
    "permille",
    "rightsinglequotemark",
    "schwa",
    "singlelowquotemark",
];

/// X11 aliases (`keysymdef.h`) that QEMU knows and the `x11-keysymdef` crate does not.
const ALIASES: &[(&str, u32)] = &[("Page_Up", 0xff55), ("Page_Down", 0xff56), ("Oslash", 0xd8)];

/// The keysym QEMU gives `name` in a keymap file, `None` where QEMU skips the line.
pub fn keysym(name: &[u8]) -> Option<u32> {
    if let Ok(text) = std::str::from_utf8(name) {
        if QEMU_UNKNOWN.contains(&text) {
            return None;
        }
        if let Some(&(_, value)) = ALIASES.iter().find(|(n, _)| *n == text) {
            return Some(value);
        }
        if let Some(record) = x11_keysymdef::lookup_by_name(text) {
            return Some(record.keysym);
        }
    }
    match name {
        [b'U', digits @ ..] if digits.len() == 4 => unicode_form(digits),
        _ => None,
    }
}

/// The four characters after `U` read as C's `strtoul(.., 16)` reads them, when they are all
/// consumed and the value is positive: blanks, an optional `+`, an optional `0x`, hex digits.
fn unicode_form(digits: &[u8]) -> Option<u32> {
    let mut rest = digits;
    while let [b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r', tail @ ..] = rest {
        rest = tail;
    }
    if let [b'+', tail @ ..] = rest {
        rest = tail;
    } else if let [b'-', ..] = rest {
        // A negative value wraps to one QEMU's `> 0` check refuses (or is 0).
        return None;
    }
    if let [b'0', b'x' | b'X', d, ..] = rest {
        if d.is_ascii_hexdigit() {
            rest = &rest[2..];
        }
    }
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(rest).ok()?;
    u32::from_str_radix(text, 16).ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::keysym;

    #[test]
    fn x11_names_resolve_to_their_values() {
        assert_eq!(keysym(b"a"), Some(0x61));
        assert_eq!(keysym(b"udiaeresis"), Some(0xfc));
        assert_eq!(keysym(b"EuroSign"), Some(0x20ac));
        assert_eq!(keysym(b"Page_Up"), Some(0xff55));
        assert_eq!(keysym(b"Prior"), Some(0xff55));
        assert_eq!(keysym(b"dead_circumflex"), Some(0xfe52));
    }

    #[test]
    fn names_qemu_does_not_know_are_skipped() {
        assert_eq!(keysym(b"ISO_Left_Tab"), None);
        assert_eq!(keysym(b"Multi_key"), None);
        assert_eq!(keysym(b"no_such_name"), None);
        assert_eq!(keysym(b"0x0100002b"), None);
        assert_eq!(keysym(&[0xff, 0xfe]), None);
    }

    #[test]
    fn unicode_form_is_the_bare_hex_number() {
        assert_eq!(keysym(b"U20AC"), Some(0x20ac));
        assert_eq!(keysym(b"U017F"), Some(0x17f));
        assert_eq!(keysym(b"U+12f"), Some(0x12f));
        assert_eq!(keysym(b"U0x1F"), Some(0x1f));
        assert_eq!(keysym(b"U0000"), None);
        assert_eq!(keysym(b"U-123"), None);
        assert_eq!(keysym(b"U12G4"), None);
        assert_eq!(keysym(b"U12345"), None);
        assert_eq!(keysym(b"U0x"), None);
    }
}

//! X11 keysym → QEMU key number ("qnum": scancode set 1 make code, `0xe0`-prefixed keys as
//! `0x80 | code`), for a US PC keyboard.
//!
//! Needed on the QMP lane only: `input-send-event` takes key numbers, while viewers that send
//! plain RFB KeyEvents (vncdotool, most scripts) give only keysyms. The fast lane sends
//! keysyms as they are and lets QEMU's own keymap translate them. A shifted character maps to
//! its key (`'A'` and `'a'` are both `0x1e`): the viewer sends Shift itself, as a keyboard
//! would.

/// The QEMU key number for `keysym` on a US layout, or `None` for a keysym this table does not
/// know (such an event cannot go through QMP).
pub fn qnum(keysym: u32) -> Option<u16> {
    if let Some(c) = char::from_u32(keysym).filter(|_| keysym < 0x80) {
        return ascii(c);
    }
    let code = match keysym {
        0xff08 => 0x0e, // BackSpace
        0xff09 => 0x0f, // Tab
        0xff0d => 0x1c, // Return
        0xff13 => 0xc6, // Pause (QEMU's number for it)
        0xff14 => 0x46, // Scroll_Lock
        0xff1b => 0x01, // Escape
        0xff50 => 0xc7, // Home
        0xff51 => 0xcb, // Left
        0xff52 => 0xc8, // Up
        0xff53 => 0xcd, // Right
        0xff54 => 0xd0, // Down
        0xff55 => 0xc9, // Page_Up
        0xff56 => 0xd1, // Page_Down
        0xff57 => 0xcf, // End
        0xff61 => 0xb7, // Print
        0xff63 => 0xd2, // Insert
        0xff67 => 0xdd, // Menu
        0xff7f => 0x45, // Num_Lock
        0xff8d => 0x9c, // KP_Enter
        0xffaa => 0x37, // KP_Multiply
        0xffab => 0x4e, // KP_Add
        0xffad => 0x4a, // KP_Subtract
        0xffae => 0x53, // KP_Decimal
        0xffaf => 0xb5, // KP_Divide
        0xffb0..=0xffb9 => {
            const KP: [u16; 10] = [0x52, 0x4f, 0x50, 0x51, 0x4b, 0x4c, 0x4d, 0x47, 0x48, 0x49];
            return KP.get(usize::try_from(keysym - 0xffb0).ok()?).copied();
        }
        0xffbe..=0xffc7 => return u16::try_from(keysym - 0xffbe + 0x3b).ok(), // F1..F10
        0xffc8 => 0x57,                                                       // F11
        0xffc9 => 0x58,                                                       // F12
        0xffe1 => 0x2a,                                                       // Shift_L
        0xffe2 => 0x36,                                                       // Shift_R
        0xffe3 => 0x1d,                                                       // Control_L
        0xffe4 => 0x9d,                                                       // Control_R
        0xffe5 => 0x3a,                                                       // Caps_Lock
        0xffe7 | 0xffe9 => 0x38,                                              // Meta_L, Alt_L
        0xffe8 | 0xffea => 0xb8,                                              // Meta_R, Alt_R
        0xfe03 => 0xb8, // ISO_Level3_Shift (AltGr)
        0xffeb => 0xdb, // Super_L
        0xffec => 0xdc, // Super_R
        0xffff => 0xd3, // Delete
        _ => return None,
    };
    Some(code)
}

/// Printable ASCII (and space) on a US layout.
fn ascii(c: char) -> Option<u16> {
    const TOP: &[u8] = b"qwertyuiop";
    const HOME: &[u8] = b"asdfghjkl";
    const BOTTOM: &[u8] = b"zxcvbnm";
    let lower = c.to_ascii_lowercase();
    let row = |keys: &[u8], first: u16| {
        let i = keys.iter().position(|&k| char::from(k) == lower)?;
        u16::try_from(i).ok().map(|i| first + i)
    };
    if lower.is_ascii_lowercase() {
        return row(TOP, 0x10)
            .or_else(|| row(HOME, 0x1e))
            .or_else(|| row(BOTTOM, 0x2c));
    }
    let code = match c {
        '1' | '!' => 0x02,
        '2' | '@' => 0x03,
        '3' | '#' => 0x04,
        '4' | '$' => 0x05,
        '5' | '%' => 0x06,
        '6' | '^' => 0x07,
        '7' | '&' => 0x08,
        '8' | '*' => 0x09,
        '9' | '(' => 0x0a,
        '0' | ')' => 0x0b,
        '-' | '_' => 0x0c,
        '=' | '+' => 0x0d,
        '[' | '{' => 0x1a,
        ']' | '}' => 0x1b,
        ';' | ':' => 0x27,
        '\'' | '"' => 0x28,
        '`' | '~' => 0x29,
        '\\' | '|' => 0x2b,
        ',' | '<' => 0x33,
        '.' | '>' => 0x34,
        '/' | '?' => 0x35,
        ' ' => 0x39,
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::qnum;

    #[test]
    fn letters_digits_and_shifted_symbols_map_to_their_key() {
        assert_eq!(qnum(u32::from('a')), Some(0x1e));
        assert_eq!(qnum(u32::from('A')), Some(0x1e));
        assert_eq!(qnum(u32::from('q')), Some(0x10));
        assert_eq!(qnum(u32::from('p')), Some(0x19));
        assert_eq!(qnum(u32::from('l')), Some(0x26));
        assert_eq!(qnum(u32::from('m')), Some(0x32));
        assert_eq!(qnum(u32::from('1')), Some(0x02));
        assert_eq!(qnum(u32::from('0')), Some(0x0b));
        assert_eq!(qnum(u32::from('!')), Some(0x02));
        assert_eq!(qnum(u32::from('?')), Some(0x35));
        assert_eq!(qnum(u32::from(' ')), Some(0x39));
    }

    #[test]
    fn function_and_extended_keys() {
        assert_eq!(qnum(0xff0d), Some(0x1c));
        assert_eq!(qnum(0xffbe), Some(0x3b)); // F1
        assert_eq!(qnum(0xffc7), Some(0x44)); // F10
        assert_eq!(qnum(0xffc9), Some(0x58)); // F12
        assert_eq!(qnum(0xffb0), Some(0x52)); // KP_0
        assert_eq!(qnum(0xffb9), Some(0x49)); // KP_9
        assert_eq!(qnum(0xff52), Some(0xc8)); // Up: e0 48
        assert_eq!(qnum(0xffe4), Some(0x9d)); // Control_R: e0 1d
    }

    #[test]
    fn unknown_keysyms_are_none() {
        for keysym in [0, 0x7f, 0x80, 0xe9, 0x20ac, 0xfe50, 0x1000000, u32::MAX] {
            assert_eq!(qnum(keysym), None, "keysym {keysym:#x}");
        }
    }

    #[test]
    fn every_letter_has_a_distinct_key() {
        let mut codes: Vec<u16> = ('a'..='z').filter_map(|c| qnum(u32::from(c))).collect();
        assert_eq!(codes.len(), 26);
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 26);
    }
}

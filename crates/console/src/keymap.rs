//! X11 keysyms to QEMU key numbers ("qnum": the XT set 1 make code, an 0xe0 prefix folded
//! into bit 7) on a US layout, for viewers that send only keysyms (vncdotool, plain RFB).
//!
//! Needed on the QMP lane: `input-send-event` takes key numbers, while the fast lane sends
//! keysyms as they are and lets QEMU's own keymap translate them. A shifted character maps to
//! its key (`'A'` and `'a'` are both `0x1e`) with `needs_shift`: a viewer sends Shift itself,
//! as a keyboard would, so the QMP lane ignores that flag.

/// US layout rows: each character on a key, unshifted and shifted, with the key's qnum.
const CHAR_KEYS: &[(u8, u8, u16)] = &[
    (b'1', b'!', 0x02),
    (b'2', b'@', 0x03),
    (b'3', b'#', 0x04),
    (b'4', b'$', 0x05),
    (b'5', b'%', 0x06),
    (b'6', b'^', 0x07),
    (b'7', b'&', 0x08),
    (b'8', b'*', 0x09),
    (b'9', b'(', 0x0a),
    (b'0', b')', 0x0b),
    (b'-', b'_', 0x0c),
    (b'=', b'+', 0x0d),
    (b'q', b'Q', 0x10),
    (b'w', b'W', 0x11),
    (b'e', b'E', 0x12),
    (b'r', b'R', 0x13),
    (b't', b'T', 0x14),
    (b'y', b'Y', 0x15),
    (b'u', b'U', 0x16),
    (b'i', b'I', 0x17),
    (b'o', b'O', 0x18),
    (b'p', b'P', 0x19),
    (b'[', b'{', 0x1a),
    (b']', b'}', 0x1b),
    (b'a', b'A', 0x1e),
    (b's', b'S', 0x1f),
    (b'd', b'D', 0x20),
    (b'f', b'F', 0x21),
    (b'g', b'G', 0x22),
    (b'h', b'H', 0x23),
    (b'j', b'J', 0x24),
    (b'k', b'K', 0x25),
    (b'l', b'L', 0x26),
    (b';', b':', 0x27),
    (b'\'', b'"', 0x28),
    (b'`', b'~', 0x29),
    (b'\\', b'|', 0x2b),
    (b'z', b'Z', 0x2c),
    (b'x', b'X', 0x2d),
    (b'c', b'C', 0x2e),
    (b'v', b'V', 0x2f),
    (b'b', b'B', 0x30),
    (b'n', b'N', 0x31),
    (b'm', b'M', 0x32),
    (b',', b'<', 0x33),
    (b'.', b'>', 0x34),
    (b'/', b'?', 0x35),
    (b' ', b' ', 0x39),
];

/// Function, editing and modifier keysyms (X11 `keysymdef.h`) with their qnum.
const SPECIAL_KEYS: &[(u32, u16)] = &[
    (0xff1b, 0x01), // Escape
    (0xff13, 0xc6), // Pause (QEMU's number for it)
    (0xff61, 0xb7), // Print
    (0xffaa, 0x37), // KP_Multiply
    (0xffab, 0x4e), // KP_Add
    (0xffad, 0x4a), // KP_Subtract
    (0xffae, 0x53), // KP_Decimal
    (0xffaf, 0xb5), // KP_Divide
    (0xffb0, 0x52), // KP_0
    (0xffb1, 0x4f), // KP_1
    (0xffb2, 0x50), // KP_2
    (0xffb3, 0x51), // KP_3
    (0xffb4, 0x4b), // KP_4
    (0xffb5, 0x4c), // KP_5
    (0xffb6, 0x4d), // KP_6
    (0xffb7, 0x47), // KP_7
    (0xffb8, 0x48), // KP_8
    (0xffb9, 0x49), // KP_9
    (0xffe8, 0xb8), // Meta_R
    (0xff08, 0x0e), // BackSpace
    (0xff09, 0x0f), // Tab
    (0xff0d, 0x1c), // Return
    (0xffe3, 0x1d), // Control_L
    (0xffe1, 0x2a), // Shift_L
    (0xffe2, 0x36), // Shift_R
    (0xffe9, 0x38), // Alt_L
    (0xffe7, 0x38), // Meta_L
    (0xffe5, 0x3a), // Caps_Lock
    (0xff7f, 0x45), // Num_Lock
    (0xff14, 0x46), // Scroll_Lock
    (0xff8d, 0x9c), // KP_Enter
    (0xffe4, 0x9d), // Control_R
    (0xffea, 0xb8), // Alt_R
    (0xfe03, 0xb8), // ISO_Level3_Shift (AltGr)
    (0xff50, 0xc7), // Home
    (0xff52, 0xc8), // Up
    (0xff55, 0xc9), // Page_Up
    (0xff51, 0xcb), // Left
    (0xff53, 0xcd), // Right
    (0xff57, 0xcf), // End
    (0xff54, 0xd0), // Down
    (0xff56, 0xd1), // Page_Down
    (0xff63, 0xd2), // Insert
    (0xffff, 0xd3), // Delete
    (0xffeb, 0xdb), // Super_L
    (0xffec, 0xdc), // Super_R
    (0xff67, 0xdd), // Menu
];

/// The QEMU key number for `keysym` on a US keyboard, and whether Shift must be held to
/// type it (`'A'` is key a with Shift). `None` for keysyms with no key on that layout.
pub fn keysym_to_qnum(keysym: u32) -> Option<(u16, bool)> {
    match keysym {
        // F1..F10 are consecutive make codes, F11 and F12 are not.
        0xffbe..=0xffc7 => {
            return u16::try_from(keysym - 0xffbe)
                .ok()
                .map(|i| (0x3b + i, false))
        }
        0xffc8 => return Some((0x57, false)),
        0xffc9 => return Some((0x58, false)),
        0xfe20 => return Some((0x0f, true)), // ISO_Left_Tab: Shift+Tab
        _ => {}
    }
    if let Some((_, q)) = SPECIAL_KEYS.iter().find(|(k, _)| *k == keysym) {
        return Some((*q, false));
    }
    // Latin-1 keysyms equal their character codes.
    let c = u8::try_from(keysym).ok()?;
    CHAR_KEYS.iter().find_map(|&(plain, shifted, q)| {
        if c == plain {
            Some((q, false))
        } else if c == shifted {
            Some((q, true))
        } else {
            None
        }
    })
}

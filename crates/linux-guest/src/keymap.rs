//! Linux input event codes and the PC scancode set 1 the tiny test guest reports: the mapping
//! that lets a test read either guest's keys as [`guest::report::Report`]s.

/// Evdev codes of the keys whose set-1 make code has an `E0` prefix, with that code.
const EXTENDED: &[(u16, u16)] = &[
    (96, 0xe01c),  // KEY_KPENTER
    (97, 0xe01d),  // KEY_RIGHTCTRL
    (98, 0xe035),  // KEY_KPSLASH
    (99, 0xe037),  // KEY_SYSRQ (Print Screen)
    (100, 0xe038), // KEY_RIGHTALT
    (102, 0xe047), // KEY_HOME
    (103, 0xe048), // KEY_UP
    (104, 0xe049), // KEY_PAGEUP
    (105, 0xe04b), // KEY_LEFT
    (106, 0xe04d), // KEY_RIGHT
    (107, 0xe04f), // KEY_END
    (108, 0xe050), // KEY_DOWN
    (109, 0xe051), // KEY_PAGEDOWN
    (110, 0xe052), // KEY_INSERT
    (111, 0xe053), // KEY_DELETE
    (125, 0xe05b), // KEY_LEFTMETA
    (126, 0xe05c), // KEY_RIGHTMETA
    (127, 0xe05d), // KEY_COMPOSE (Menu)
];

/// `BTN_LEFT`, `BTN_RIGHT`, `BTN_MIDDLE`.
pub const BTN_LEFT: u16 = 0x110;
/// `BTN_RIGHT`.
pub const BTN_RIGHT: u16 = 0x111;
/// `BTN_MIDDLE`.
pub const BTN_MIDDLE: u16 = 0x112;

/// The set-1 make code (`0xe0xx` for extended keys) of the key with evdev code `code`, for
/// the keys of a US PC keyboard. Evdev codes 1 to 88 are the set-1 codes themselves (Linux
/// took its numbering from them), except 84 and 85.
pub fn set1_from_evdev(code: u16) -> Option<u16> {
    match code {
        1..=83 | 86..=88 => Some(code),
        _ => EXTENDED.iter().find(|(e, _)| *e == code).map(|(_, s)| *s),
    }
}

/// The evdev code of the key with set-1 make code `set1`; the inverse of
/// [`set1_from_evdev`].
pub fn evdev_from_set1(set1: u16) -> Option<u16> {
    match set1 {
        1..=83 | 86..=88 => Some(set1),
        _ => EXTENDED.iter().find(|(_, s)| *s == set1).map(|(e, _)| *e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_tiny_guests_keymap_has_an_evdev_code() {
        for key in guest::keymap::KEYS {
            let evdev = evdev_from_set1(u16::from(key.code))
                .unwrap_or_else(|| panic!("no evdev code for {}", key.qcode));
            assert_eq!(set1_from_evdev(evdev), Some(u16::from(key.code)));
        }
    }

    #[test]
    fn known_codes() {
        // KEY_A is 30, set-1 `a` is 0x1e; KEY_LEFTSHIFT 42 = 0x2a; KEY_UP 103 = e048.
        assert_eq!(set1_from_evdev(30), Some(0x1e));
        assert_eq!(set1_from_evdev(42), Some(0x2a));
        assert_eq!(set1_from_evdev(103), Some(0xe048));
        assert_eq!(set1_from_evdev(84), None);
        assert_eq!(set1_from_evdev(BTN_LEFT), None);
        assert_eq!(evdev_from_set1(0xe01d), Some(97));
    }

    #[test]
    fn the_mapping_is_one_to_one() {
        for code in 0..0x300u16 {
            if let Some(set1) = set1_from_evdev(code) {
                assert_eq!(evdev_from_set1(set1), Some(code), "{code}");
            }
        }
    }
}

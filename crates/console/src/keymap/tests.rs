use std::sync::Arc;

use super::{c_strtol, Keyboard, Keymap, Layout, ParseError, ALTGR, CTRL, SHIFT};

/// A small German-like keymap: `at` on AltGr+q, `less` on two keys, `Z`/`Y` swapped.
const DE: &str = "\
# comment
map 0x407
Shift_L 0x2a
Shift_R 0x36
ISO_Level3_Shift 0xb8
Control_L 0x1d
q 0x10
Q 0x10 shift
at 0x10 altgr
y 0x2c addupper
z 0x15 addupper
less 0x56
less 0x33 shift altgr
greater 0x56 shift
Tab 0x0f
bar 0x56 altgr
KP_Multiply 0x37
multiply 0x37 ctrl
";

fn keyboard(text: &str, given: bool) -> Keyboard {
    let keymap = Keymap::parse(text.as_bytes()).unwrap();
    Keyboard::new(Layout {
        keymap: Arc::new(keymap),
        given,
    })
}

/// Types keysym `sym` (press and release) as QEMU would take it, returning both numbers.
fn stroke(kb: &mut Keyboard, sym: u32) -> (Option<u16>, Option<u16>) {
    let press = kb.translate(true, sym, None);
    if let Some(n) = press {
        kb.apply(n, true);
    }
    let release = kb.translate(false, sym, None);
    if let Some(n) = release {
        kb.apply(n, false);
    }
    (press, release)
}

fn press(kb: &mut Keyboard, sym: u32) -> Option<u16> {
    let n = kb.translate(true, sym, None);
    if let Some(n) = n {
        kb.apply(n, true);
    }
    n
}

#[test]
fn parses_keycodes_with_modifier_flags_in_file_order() {
    let map = Keymap::parse(DE.as_bytes()).unwrap();
    assert_eq!(map.codes(0x40), &[0x10 | ALTGR]);
    assert_eq!(map.codes(0x51), &[0x10 | SHIFT]);
    assert_eq!(map.codes(0x3c), &[0x56, 0x33 | SHIFT | ALTGR]);
    // addupper adds the upper-case name with Shift.
    assert_eq!(map.codes(0x5a), &[0x15 | SHIFT]);
    assert_eq!(map.codes(0x59), &[0x2c | SHIFT]);
    assert_eq!(map.codes(0xd7), &[0x37 | CTRL]);
    assert_eq!(map.codes(0x20), &[] as &[u16]);
}

#[test]
fn parser_follows_qemus_reading_of_odd_lines() {
    let text = "\
a 0x1e
b 036
c 12 shiftlock
d
 e 0x12
f 0x21\0 shift
unknownname 0x22
ISO_Left_Tab 0x0f
U20AC 0x12 altgr
g 0x22
g 0x23
g 0x24
g 0x25
g 0x26
h -1
";
    let map = Keymap::parse(text.as_bytes()).unwrap();
    assert_eq!(map.codes(0x61), &[0x1e]);
    assert_eq!(
        map.codes(0x62),
        &[0o36],
        "a leading 0 is octal (strtol base 0)"
    );
    assert_eq!(
        map.codes(0x63),
        &[12 | SHIFT],
        "modifiers are found anywhere after the name"
    );
    assert_eq!(map.codes(0x64), &[0], "no keycode reads as 0");
    assert_eq!(
        map.codes(0x65),
        &[] as &[u16],
        "a line starting with a blank has no name"
    );
    assert_eq!(map.codes(0x66), &[0x21], "a NUL ends the line");
    assert_eq!(
        map.codes(0xfe20),
        &[] as &[u16],
        "QEMU does not know ISO_Left_Tab"
    );
    assert_eq!(map.codes(0x20ac), &[0x12 | ALTGR]);
    assert_eq!(
        map.codes(0x67),
        &[0x22, 0x23, 0x24, 0x25],
        "at most four keycodes"
    );
    assert_eq!(map.codes(0x68), &[0xffff]);
}

#[test]
fn include_lines_are_refused_as_qemu_7_2_does() {
    let err = Keymap::parse(b"a 0x1e\ninclude common\n").unwrap_err();
    assert_eq!(err, ParseError::Include { line: 2 });
}

#[test]
fn strtol_reads_as_c_does() {
    assert_eq!(c_strtol(b"0x2a shift"), 0x2a);
    assert_eq!(c_strtol(b"  42"), 42);
    assert_eq!(c_strtol(b"010"), 8);
    assert_eq!(c_strtol(b"0x"), 0);
    assert_eq!(c_strtol(b"-0x10"), -16);
    assert_eq!(c_strtol(b"+7z"), 7);
    assert_eq!(c_strtol(b"shift"), 0);
    assert_eq!(c_strtol(b"99999999999999999999999"), i64::MAX);
    assert_eq!(c_strtol(b"-99999999999999999999999"), i64::MIN);
}

#[test]
fn parser_never_panics_on_arbitrary_bytes() {
    let alphabet = b"ab U0x123 shift\n\0 #include ";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in 0..400 {
        let bytes: Vec<u8> = (0..len * 7)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[usize::try_from(seed).unwrap_or(0) % alphabet.len()]
            })
            .collect();
        let _ = Keymap::parse(&bytes);
    }
    let long = vec![b'a'; 5000];
    assert!(Keymap::parse(&long).is_ok());
}

#[test]
fn a_single_keycode_is_taken_whatever_the_modifiers() {
    let mut kb = keyboard(DE, true);
    assert_eq!(stroke(&mut kb, 0x40), (Some(0x10), Some(0x10)));
    // Upper case is looked up as lower case on a graphic console: y's key, not Shift+y's.
    assert_eq!(stroke(&mut kb, 0x5a), (Some(0x15), Some(0x15)));
    assert_eq!(stroke(&mut kb, 0x7a), (Some(0x15), Some(0x15)));
    assert_eq!(stroke(&mut kb, 0x59), (Some(0x2c), Some(0x2c)));
}

#[test]
fn a_press_takes_the_keycode_whose_modifiers_are_down() {
    let mut kb = keyboard(DE, true);
    assert_eq!(press(&mut kb, 0x3c), Some(0x56), "no modifier: the first");
    kb.apply(0x56, false);
    // Shift alone matches neither: the first again.
    press(&mut kb, 0xffe1);
    assert_eq!(press(&mut kb, 0x3c), Some(0x56));
    kb.apply(0x56, false);
    // Shift and AltGr: the second.
    press(&mut kb, 0xfe03);
    assert_eq!(press(&mut kb, 0x3c), Some(0x33));
    // The release looks for the key that is down, but QEMU looks a keycode with modifier
    // flags up as its "unmapped" key, never down: it releases the first keycode's key.
    kb.apply(0x2a, false);
    kb.apply(0xb8, false);
    assert_eq!(kb.translate(false, 0x3c, None), Some(0x56));
}

#[test]
fn a_release_takes_the_key_that_is_down() {
    let mut kb = keyboard("bar 0x56 altgr\nbar 0x2b\nbar 0x29\n", true);
    assert_eq!(
        press(&mut kb, 0x7c),
        Some(0x2b),
        "no modifier: the flag-less keycode"
    );
    assert_eq!(kb.translate(false, 0x7c, None), Some(0x2b));
    kb.apply(0x2b, false);
    assert_eq!(
        kb.translate(false, 0x7c, None),
        Some(0x56),
        "nothing down: the first"
    );
}

#[test]
fn ctrl_counts_as_a_modifier() {
    let mut kb = keyboard("multiply 0x37\nmultiply 0x09 ctrl\nControl_R 0x9d\n", true);
    assert_eq!(stroke(&mut kb, 0xd7).0, Some(0x37));
    press(&mut kb, 0xffe4);
    assert_eq!(press(&mut kb, 0xd7), Some(0x09));
}

#[test]
fn keysyms_are_cut_to_16_bits_and_iso_left_tab_is_tab() {
    let mut kb = keyboard(DE, true);
    assert_eq!(stroke(&mut kb, 0xfe20).0, Some(0x0f));
    assert_eq!(stroke(&mut kb, 0x0100_0040).0, Some(0x10));
}

#[test]
fn a_keysym_without_a_key_gives_nothing() {
    let kb = keyboard(DE, true);
    assert_eq!(kb.translate(true, 0x20, None), None);
    assert_eq!(kb.translate(true, 0x1234_5678, None), None);
    let kb = keyboard("a 0x100 shift\n", true);
    assert_eq!(
        kb.translate(true, 0x61, None),
        None,
        "keycode 0 after the mask"
    );
}

#[test]
fn raw_keycodes_count_only_without_a_layout() {
    let kb = keyboard(DE, false);
    assert_eq!(kb.translate(true, 0x40, Some(0x03)), Some(0x03));
    assert_eq!(kb.translate(true, 0x40, None), Some(0x10));
    assert_eq!(kb.translate(true, 0x40, Some(0)), None);
    assert_eq!(kb.translate(true, 0x40, Some(0x1ff)), None);
    let kb = keyboard(DE, true);
    assert_eq!(kb.translate(true, 0x40, Some(0x03)), Some(0x10));
}

#[test]
fn shipped_keymaps_parse_when_installed() {
    for layout in ["en-us", "de", "fr", "sv"] {
        let Ok(map) = Keymap::load(layout) else {
            continue;
        };
        assert!(map.codes(0x61).contains(&0x1e) || map.codes(0x61).contains(&0x10));
    }
}

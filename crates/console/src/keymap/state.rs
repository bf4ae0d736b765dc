//! The keyboard state QEMU's VNC server keeps for its display, and the key number it picks.

use super::{Layout, ALTGR, CTRL, MODIFIERS, SHIFT};

/// The modifier keys QEMU's VNC keyboard state watches to pick a keysym's key: Shift, AltGr
/// and Ctrl.
pub const MODIFIER_KEYS: [u16; 5] = [SHIFT_L, SHIFT_R, CTRL_L, CTRL_R, ALT_R];

/// Key numbers of the modifier keys QEMU's keyboard state watches.
const SHIFT_L: u16 = 0x2a;
const SHIFT_R: u16 = 0x36;
const CTRL_L: u16 = 0x1d;
const CTRL_R: u16 = 0x9d;
const ALT_R: u16 = 0xb8;
/// `XK_ISO_Left_Tab` and `XK_Tab`: QEMU looks the first up as the second.
const ISO_LEFT_TAB: u32 = 0xfe20;
const TAB: u32 = 0xff09;
/// QEMU knows key numbers below this; any other is its "unmapped" key.
const KNOWN_NUMBERS: u16 = 0xfe;
/// QEMU's two numbers of one key (SysRq/Print: 0x54 and 0xb7).
const SYSRQ: u16 = 0x54;
const SYSRQ_ALIAS: u16 = 0xb7;

/// The keys down as QEMU's VNC keyboard state (`QKbdState`) has them, with the layout that
/// turns a viewer's key into a QEMU key number. Pure: [`translate`](Self::translate) asks,
/// [`apply`](Self::apply) records what QEMU took, in the order QEMU took it.
#[derive(Debug, Clone)]
pub struct Keyboard {
    layout: Layout,
    /// Down, by QEMU key (see [`key`]).
    down: [bool; 256],
}

impl Keyboard {
    /// No key down, as QEMU's VNC server starts.
    pub fn new(layout: Layout) -> Keyboard {
        Keyboard {
            layout,
            down: [false; 256],
        }
    }

    /// The key number QEMU's VNC server gives the guest for this event, given the keys down
    /// now; `None` when it gives nothing (a keysym with no key on the layout, or a raw
    /// keycode QEMU does not know). `scancode` is the viewer's raw keycode (Extended Key
    /// Event), used as it is only when QEMU runs without `-k`.
    pub fn translate(&self, down: bool, keysym: u32, scancode: Option<u16>) -> Option<u16> {
        let number = match scancode {
            Some(raw) if !self.layout.given => raw,
            _ => self.code(down, keysym) & 0xff,
        };
        (key(number) != 0).then_some(number)
    }

    /// Records that QEMU took key `number` pressed (`down`) or released.
    pub fn apply(&mut self, number: u16, down: bool) {
        self.down[key(number)] = down;
    }

    /// QEMU's keycode for `keysym` (with modifier flags; 0: none).
    fn code(&self, down: bool, keysym: u32) -> u16 {
        let folded = match keysym {
            0x41..=0x5a => keysym + 0x20,
            other => other,
        };
        let keysym = match folded & 0xffff {
            ISO_LEFT_TAB => TAB,
            other => other,
        };
        let codes = self.layout.keymap.codes(keysym);
        let chosen = match codes {
            [] => return 0,
            [only] => Some(only),
            _ if down => {
                let mods = self.modifiers();
                codes.iter().find(|c| *c & MODIFIERS == mods)
            }
            _ => codes.iter().find(|c| self.down[key(**c)]),
        };
        chosen.or(codes.first()).copied().unwrap_or(0)
    }

    /// The Shift, AltGr and Ctrl flags of the keys down now.
    fn modifiers(&self) -> u16 {
        let held = |a: u16, b: u16| self.down[key(a)] || self.down[key(b)];
        let mut mods = 0;
        if held(SHIFT_L, SHIFT_R) {
            mods |= SHIFT;
        }
        if held(ALT_R, ALT_R) {
            mods |= ALTGR;
        }
        if held(CTRL_L, CTRL_R) {
            mods |= CTRL;
        }
        mods
    }
}

/// The key QEMU's keyboard state files `number` under (its QKeyCode): 0, QEMU's "unmapped",
/// for numbers it does not know (also keycodes with modifier flags); SysRq's two numbers are
/// one key.
fn key(number: u16) -> usize {
    match number {
        SYSRQ_ALIAS => usize::from(SYSRQ),
        n if n < KNOWN_NUMBERS => usize::from(n),
        _ => 0,
    }
}

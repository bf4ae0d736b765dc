//! The journal's events as wire messages: RFB messages for the fast lane, `input-send-event`
//! lists for the QMP lane. Pure, so each rule is unit-tested.

use rfb::ClientMessage;

use crate::journal::{Button, Entry, InputEvent, VncEvent};
use crate::keymap::keysym_to_qnum;

/// The RFB message for one fast-lane event. A key with a scancode goes as a QEMU extended key
/// event once QEMU acknowledged them (`ext_keys`), so the guest gets the viewer's physical key
/// whatever the layout; otherwise as a plain KeyEvent (QEMU maps the keysym).
pub fn vnc_message(event: &VncEvent, ext_keys: bool) -> ClientMessage {
    match *event {
        VncEvent::Key {
            down,
            keysym,
            scancode: Some(code),
            ..
        } if ext_keys => ClientMessage::QemuExtendedKeyEvent {
            down,
            keysym,
            keycode: u32::from(code),
        },
        VncEvent::Key { down, keysym, .. } => ClientMessage::KeyEvent { down, keysym },
        VncEvent::Pointer { x, y, mask, .. } => ClientMessage::PointerEvent {
            buttons: mask,
            x,
            y,
        },
    }
}

/// The `input-send-event` list for a QMP-lane batch, and how many key/button events could not
/// be expressed (keysyms the US table does not know; they are dropped, with a log line).
///
/// Keys go as QEMU key numbers (the viewer's scancode, else the keysym's US key); buttons as
/// `btn`; motion as `abs` x and y scaled to QEMU's 0..=0x7fff over the framebuffer `size` —
/// which reaches the guest only through an absolute device (`usb-tablet`), DESIGN.md.
pub fn qmp_events(entries: &[Entry], size: (u16, u16)) -> (Vec<qmp::InputEvent>, usize) {
    let mut out = Vec::with_capacity(entries.len() * 2);
    let mut unmapped = 0;
    for entry in entries {
        match entry.event {
            InputEvent::Key {
                down,
                keysym,
                scancode,
            } => match scancode.or_else(|| keysym_to_qnum(keysym).map(|(qnum, _shift)| qnum)) {
                Some(code) => out.push(qmp::InputEvent::number(u32::from(code), down)),
                None => {
                    tracing::debug!(keysym, "no QEMU key number for keysym; event dropped");
                    unmapped += 1;
                }
            },
            InputEvent::Button { down, button } => out.push(qmp::InputEvent::Btn {
                button: qmp_button(button),
                down,
            }),
            InputEvent::Motion { x, y } => {
                out.push(qmp::InputEvent::Abs {
                    axis: qmp::InputAxis::X,
                    value: scale(x, size.0),
                });
                out.push(qmp::InputEvent::Abs {
                    axis: qmp::InputAxis::Y,
                    value: scale(y, size.1),
                });
            }
        }
    }
    (out, unmapped)
}

fn qmp_button(button: Button) -> qmp::InputButton {
    match button {
        Button::Left => qmp::InputButton::Left,
        Button::Middle => qmp::InputButton::Middle,
        Button::Right => qmp::InputButton::Right,
        Button::WheelUp => qmp::InputButton::WheelUp,
        Button::WheelDown => qmp::InputButton::WheelDown,
        Button::WheelLeft => qmp::InputButton::WheelLeft,
        Button::WheelRight => qmp::InputButton::WheelRight,
    }
}

/// A framebuffer coordinate in QEMU's absolute range, 0..=0x7fff (as QEMU's VNC server
/// scales it: the last column is 0x7fff).
fn scale(pos: u16, extent: u16) -> i64 {
    let max = i64::from(extent.saturating_sub(1).max(1));
    (i64::from(pos).min(max) * 0x7fff) / max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Seq, ViewerId};

    fn key(keysym: u32, scancode: Option<u16>, down: bool) -> Entry {
        Entry {
            seq: Some(Seq(1)),
            viewer: ViewerId(0),
            event: InputEvent::Key {
                down,
                keysym,
                scancode,
            },
        }
    }

    #[test]
    fn fast_lane_uses_extended_keys_only_once_acknowledged() {
        let ev = VncEvent::Key {
            seq: Seq(1),
            down: true,
            keysym: 0x61,
            scancode: Some(0x1e),
        };
        assert_eq!(
            vnc_message(&ev, true),
            ClientMessage::QemuExtendedKeyEvent {
                down: true,
                keysym: 0x61,
                keycode: 0x1e
            }
        );
        assert_eq!(
            vnc_message(&ev, false),
            ClientMessage::KeyEvent {
                down: true,
                keysym: 0x61
            }
        );
        let plain = VncEvent::Key {
            seq: Seq(2),
            down: false,
            keysym: 0x62,
            scancode: None,
        };
        assert_eq!(
            vnc_message(&plain, true),
            ClientMessage::KeyEvent {
                down: false,
                keysym: 0x62
            }
        );
        let ptr = VncEvent::Pointer {
            seq: None,
            x: 3,
            y: 4,
            mask: 5,
        };
        assert_eq!(
            vnc_message(&ptr, true),
            ClientMessage::PointerEvent {
                buttons: 5,
                x: 3,
                y: 4
            }
        );
    }

    #[test]
    fn qmp_lane_prefers_the_scancode_then_the_keysym_table() {
        let entries = [
            key(0x61, Some(0x9c), true), // scancode wins over keysym
            key(0x41, None, false),      // 'A' -> the a key
            key(0x20ac, None, true),     // EuroSign: not in the table
        ];
        let (events, unmapped) = qmp_events(&entries, (720, 400));
        assert_eq!(unmapped, 1);
        assert_eq!(
            events,
            vec![
                qmp::InputEvent::number(0x9c, true),
                qmp::InputEvent::number(0x1e, false)
            ]
        );
    }

    #[test]
    fn qmp_lane_scales_motion_and_maps_buttons() {
        let entries = [
            Entry {
                seq: None,
                viewer: ViewerId(0),
                event: InputEvent::Motion { x: 719, y: 0 },
            },
            Entry {
                seq: Some(Seq(3)),
                viewer: ViewerId(0),
                event: InputEvent::Button {
                    down: true,
                    button: Button::WheelLeft,
                },
            },
        ];
        let (events, unmapped) = qmp_events(&entries, (720, 400));
        assert_eq!(unmapped, 0);
        assert_eq!(
            events,
            vec![
                qmp::InputEvent::Abs {
                    axis: qmp::InputAxis::X,
                    value: 0x7fff
                },
                qmp::InputEvent::Abs {
                    axis: qmp::InputAxis::Y,
                    value: 0
                },
                qmp::InputEvent::Btn {
                    button: qmp::InputButton::WheelLeft,
                    down: true
                },
            ]
        );
    }

    #[test]
    fn scaling_never_overflows_or_divides_by_zero() {
        assert_eq!(scale(0, 0), 0);
        assert_eq!(scale(u16::MAX, 0), 0x7fff);
        assert_eq!(scale(u16::MAX, 1), 0x7fff);
        assert_eq!(scale(u16::MAX, u16::MAX), 0x7fff);
        assert_eq!(scale(360, 721), 0x3fff);
    }
}

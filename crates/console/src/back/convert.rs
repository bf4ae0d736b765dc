//! The journal's events as wire messages: RFB messages for the fast lane, `input-send-event`
//! lists for the QMP lane. Pure, so each rule is unit-tested.

use rfb::ClientMessage;

use crate::journal::{Button, Entry, InputEvent, VncEvent};

/// The RFB message for one fast-lane event. A key goes as a QEMU extended key event once QEMU
/// acknowledged them (`ext_keys`), with the key number the link chose as QEMU would
/// ([`crate::keymap::Keyboard`]; QEMU uses it unless it runs with `-k`, when it translates the
/// keysym to the same number); otherwise as a plain KeyEvent (QEMU maps the keysym).
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

/// Where a fast-lane PointerEvent must put the pointer for QEMU's VNC server to move the
/// guest's pointer from `at` (where both lanes left it) to `to`. With a relative mouse QEMU
/// moves it by the difference to the last PointerEvent *its VNC server* read (`last_sent`),
/// which knows nothing of what the QMP lane moved since: the position is shifted by that
/// (clamped to RFB's range). Without the shift, the first fast-lane motion after QMP-lane
/// motion repeated it: the guest's pointer jumped, and the PS/2 mouse queue filled with
/// packets the journal's model did not count, so that a click right after was lost. An
/// absolute pointer goes where it is told; so does the first PointerEvent of a connection
/// (QEMU moves nothing for it).
pub fn vnc_position(
    mouse: Mouse,
    last_sent: Option<(u16, u16)>,
    at: (u16, u16),
    to: (u16, u16),
) -> (u16, u16) {
    match (mouse, last_sent) {
        (Mouse::Relative, Some(last)) => {
            let shift = |last: u16, at: u16, to: u16| {
                let moved = i32::from(last) + i32::from(to) - i32::from(at);
                u16::try_from(moved.clamp(0, i32::from(u16::MAX))).unwrap_or(u16::MAX)
            };
            (shift(last.0, at.0, to.0), shift(last.1, at.1, to.1))
        }
        _ => to,
    }
}

/// How the guest's current mouse takes motion, from QMP `query-mice`: the device QEMU routes
/// motion to first (the one its VNC server also decides absolute or relative by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mouse {
    /// An absolute device (`usb-tablet`, `virtio-tablet`): `abs` positions.
    Absolute,
    /// A relative device (the PS/2 mouse every PC machine has): `rel` deltas.
    Relative,
    /// No pointer device: motion cannot be expressed and is dropped.
    Missing,
}

impl Mouse {
    /// The mode of `query-mice`'s reply, `None` if the reply is not a list of mice (odd JSON
    /// is never a panic: the caller keeps what it knew).
    pub fn from_reply(value: serde_json::Value) -> Option<Mouse> {
        let mice: Vec<qmp::MouseInfo> = serde_json::from_value(value)
            .inspect_err(|e| tracing::warn!(error = %e, "unexpected query-mice reply"))
            .ok()?;
        Some(match mice.iter().find(|m| m.current) {
            Some(m) if m.absolute => Mouse::Absolute,
            Some(_) => Mouse::Relative,
            None => Mouse::Missing,
        })
    }
}

/// Whether a refused `input-send-event` names a missing input handler ("Input handler not
/// found for event type abs"): the guest's mice changed, or were never known.
pub fn names_input_handler(desc: &str) -> bool {
    desc.contains("Input handler")
}

/// One QMP-lane batch as `input-send-event` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpBatch {
    /// The list to send (may be empty).
    pub events: Vec<qmp::InputEvent>,
    /// Key events without a key number, dropped with a log line (none in a journal this link
    /// filled: it drops keys with no key on QEMU's layout before journaling them).
    pub unmapped: usize,
    /// Where the guest's pointer is once QEMU took the batch.
    pub pointer: (u16, u16),
}

/// The `input-send-event` list for a QMP-lane batch.
///
/// Keys go as the QEMU key numbers the link chose when it journaled them; buttons as
/// `btn`. Motion follows the guest's `mouse`: `abs` x and y scaled to QEMU's 0..=0x7fff over
/// the framebuffer `size` for an absolute device, `rel` deltas from `pointer` (the last
/// position written to QEMU on either lane) for a relative one — QEMU refuses the whole batch
/// if no device takes the type (DESIGN.md) — and nothing without a mouse. A
/// [`InputEvent::Resync`] is a zero motion in the same terms: `rel` x 0, or `abs` at `pointer`.
pub fn qmp_events(
    entries: &[Entry],
    size: (u16, u16),
    mouse: Mouse,
    pointer: (u16, u16),
) -> QmpBatch {
    let mut out = Vec::with_capacity(entries.len() * 2);
    let mut unmapped = 0;
    let mut pointer = pointer;
    for entry in entries {
        match entry.event {
            InputEvent::Key {
                down,
                keysym,
                scancode,
            } => match scancode {
                Some(code) => out.push(qmp::InputEvent::number(u32::from(code), down)),
                None => {
                    tracing::debug!(keysym, "key without a QEMU key number; event dropped");
                    unmapped += 1;
                }
            },
            InputEvent::Button { down, button } => out.push(qmp::InputEvent::Btn {
                button: qmp_button(button),
                down,
            }),
            InputEvent::Motion { x, y } => match mouse {
                Mouse::Absolute => {
                    out.push(qmp::InputEvent::Abs {
                        axis: qmp::InputAxis::X,
                        value: scale(x, size.0),
                    });
                    out.push(qmp::InputEvent::Abs {
                        axis: qmp::InputAxis::Y,
                        value: scale(y, size.1),
                    });
                    pointer = (x, y);
                }
                Mouse::Relative => {
                    for (axis, to, from) in [
                        (qmp::InputAxis::X, x, pointer.0),
                        (qmp::InputAxis::Y, y, pointer.1),
                    ] {
                        let value = i64::from(to) - i64::from(from);
                        if value != 0 {
                            out.push(qmp::InputEvent::Rel { axis, value });
                        }
                    }
                    pointer = (x, y);
                }
                Mouse::Missing => {}
            },
            // A zero motion, kept even though it moves nothing: QEMU syncs the mouse after
            // the command (only a device that took an event is synced), and the PS/2 mouse
            // then reports its buttons again (`Config::button_settle`).
            InputEvent::Resync => match mouse {
                Mouse::Absolute => {
                    out.push(qmp::InputEvent::Abs {
                        axis: qmp::InputAxis::X,
                        value: scale(pointer.0, size.0),
                    });
                    out.push(qmp::InputEvent::Abs {
                        axis: qmp::InputAxis::Y,
                        value: scale(pointer.1, size.1),
                    });
                }
                Mouse::Relative => out.push(qmp::InputEvent::Rel {
                    axis: qmp::InputAxis::X,
                    value: 0,
                }),
                Mouse::Missing => {}
            },
        }
    }
    QmpBatch {
        events: out,
        unmapped,
        pointer,
    }
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
    fn qmp_lane_sends_the_key_numbers_and_drops_keys_without_one() {
        let entries = [
            key(0x61, Some(0x9c), true), // the number, whatever the keysym
            key(0x41, Some(0x1e), false),
            key(0x20ac, None, true), // no number: not sent
        ];
        let QmpBatch {
            events, unmapped, ..
        } = qmp_events(&entries, (720, 400), Mouse::Relative, (0, 0));
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
        let batch = qmp_events(&entries, (720, 400), Mouse::Absolute, (3, 3));
        assert_eq!(batch.unmapped, 0);
        assert_eq!(batch.pointer, (719, 0));
        let events = batch.events;
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

    fn motion(x: u16, y: u16) -> Entry {
        Entry {
            seq: None,
            viewer: ViewerId(0),
            event: InputEvent::Motion { x, y },
        }
    }

    fn rel(axis: qmp::InputAxis, value: i64) -> qmp::InputEvent {
        qmp::InputEvent::Rel { axis, value }
    }

    #[test]
    fn relative_mouse_gets_deltas_from_the_last_position_sent() {
        let entries = [
            motion(110, 50),
            motion(110, 50),
            Entry {
                seq: Some(Seq(4)),
                viewer: ViewerId(0),
                event: InputEvent::Button {
                    down: false,
                    button: Button::Left,
                },
            },
            motion(0, 65535),
        ];
        let batch = qmp_events(&entries, (720, 400), Mouse::Relative, (100, 60));
        use qmp::InputAxis::{X, Y};
        assert_eq!(
            batch.events,
            vec![
                rel(X, 10),
                rel(Y, -10),
                // No motion: no events (a zero delta on an axis is left out).
                qmp::InputEvent::Btn {
                    button: qmp::InputButton::Left,
                    down: false
                },
                rel(X, -110),
                rel(Y, 65485),
            ]
        );
        assert_eq!(batch.pointer, (0, 65535));
    }

    #[test]
    fn a_resync_survives_as_a_zero_motion_in_the_mouse_s_terms() {
        let resync = Entry {
            seq: None,
            viewer: ViewerId(0),
            event: InputEvent::Resync,
        };
        use qmp::InputAxis::{X, Y};
        // After motion in the same batch: from where that motion left the pointer.
        let rel_batch = qmp_events(
            &[motion(110, 50), resync],
            (720, 400),
            Mouse::Relative,
            (100, 50),
        );
        assert_eq!(rel_batch.events, vec![rel(X, 10), rel(X, 0)]);
        assert_eq!(rel_batch.pointer, (110, 50));
        let abs = qmp_events(&[resync], (720, 400), Mouse::Absolute, (719, 0));
        assert_eq!(
            abs.events,
            vec![
                qmp::InputEvent::Abs {
                    axis: X,
                    value: 0x7fff
                },
                qmp::InputEvent::Abs { axis: Y, value: 0 },
            ]
        );
        assert_eq!(abs.pointer, (719, 0));
        let none = qmp_events(&[resync], (720, 400), Mouse::Missing, (1, 2));
        assert!(none.events.is_empty());
    }

    #[test]
    fn without_a_mouse_motion_is_left_out() {
        let batch = qmp_events(&[motion(5, 5)], (720, 400), Mouse::Missing, (1, 2));
        assert!(batch.events.is_empty());
        assert_eq!(batch.pointer, (1, 2));
    }

    #[test]
    fn query_mice_picks_the_current_mouse_and_never_panics() {
        use serde_json::json;
        let ps2 = json!({"name": "QEMU PS/2 Mouse", "index": 2, "current": true,
                         "absolute": false});
        assert_eq!(Mouse::from_reply(json!([ps2])), Some(Mouse::Relative));
        let both = json!([
            {"name": "QEMU HID Tablet", "index": 3, "current": true, "absolute": true},
            {"name": "QEMU PS/2 Mouse", "index": 2, "current": false, "absolute": false},
        ]);
        assert_eq!(Mouse::from_reply(both), Some(Mouse::Absolute));
        let none_current = json!([
            {"name": "QEMU PS/2 Mouse", "index": 2, "current": false, "absolute": false},
        ]);
        assert_eq!(Mouse::from_reply(none_current), Some(Mouse::Missing));
        assert_eq!(Mouse::from_reply(json!([])), Some(Mouse::Missing));
        for odd in [
            json!(null),
            json!({}),
            json!("mice"),
            json!([1, 2]),
            json!([{"name": "x", "current": "yes", "absolute": false, "index": 0}]),
            json!([{"current": true}]),
        ] {
            assert_eq!(Mouse::from_reply(odd.clone()), None, "{odd}");
        }
    }

    #[test]
    fn only_missing_handler_errors_call_for_a_new_query() {
        assert!(names_input_handler(
            "Input handler not found for event type abs"
        ));
        assert!(!names_input_handler("VM not running"));
        assert!(!names_input_handler("Invalid parameter 'events'"));
    }

    #[test]
    fn scaling_never_overflows_or_divides_by_zero() {
        assert_eq!(scale(0, 0), 0);
        assert_eq!(scale(u16::MAX, 0), 0x7fff);
        assert_eq!(scale(u16::MAX, 1), 0x7fff);
        assert_eq!(scale(u16::MAX, u16::MAX), 0x7fff);
        assert_eq!(scale(360, 721), 0x3fff);
    }

    #[test]
    fn a_relative_pointer_moved_on_qmp_is_not_moved_again_by_the_vnc_server() {
        // QEMU's VNC server last read (100, 100); QMP since moved the guest's pointer to
        // (300, 150): a motion to (310, 150) must reach QEMU as +10, 0.
        let sent = vnc_position(Mouse::Relative, Some((100, 100)), (300, 150), (310, 150));
        assert_eq!(sent, (110, 100));
        // Nothing moved on QMP: the position as given.
        assert_eq!(
            vnc_position(Mouse::Relative, Some((5, 6)), (5, 6), (9, 1)),
            (9, 1)
        );
        // Clamped to RFB's range rather than wrapped.
        assert_eq!(
            vnc_position(Mouse::Relative, Some((0, 0)), (500, 500), (10, 10)),
            (0, 0)
        );
        // An absolute pointer, or a connection's first PointerEvent: where it is told.
        for (mouse, last) in [
            (Mouse::Absolute, Some((100, 100))),
            (Mouse::Relative, None),
            (Mouse::Missing, Some((1, 1))),
        ] {
            assert_eq!(
                vnc_position(mouse, last, (300, 150), (310, 150)),
                (310, 150)
            );
        }
    }
}

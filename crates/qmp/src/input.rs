//! Typed events for `input-send-event` (QEMU's `InputEvent` union, as of 7.2).

use std::borrow::Cow;

use serde_json::{json, Value};

/// A key, as QEMU's `KeyValue`: a qcode name (`"a"`, `"ret"`, `"shift"`) or a QEMU key
/// number ("qnum": the PC scancode set 1 make code, extended `e0` keys as `0x80 | code`, e.g.
/// `0x9d` for right Ctrl). Short qcodes are no longer on the wire than numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A QEMU `QKeyCode` name.
    Qcode(Cow<'static, str>),
    /// A QEMU key number.
    Number(u32),
}

/// A pointer button (QEMU 7.2's `InputButton`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputButton {
    /// Left button.
    Left,
    /// Middle button.
    Middle,
    /// Right button.
    Right,
    /// Wheel up.
    WheelUp,
    /// Wheel down.
    WheelDown,
    /// Side button.
    Side,
    /// Extra button.
    Extra,
    /// Wheel left.
    WheelLeft,
    /// Wheel right.
    WheelRight,
}

impl InputButton {
    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            InputButton::Left => "left",
            InputButton::Middle => "middle",
            InputButton::Right => "right",
            InputButton::WheelUp => "wheel-up",
            InputButton::WheelDown => "wheel-down",
            InputButton::Side => "side",
            InputButton::Extra => "extra",
            InputButton::WheelLeft => "wheel-left",
            InputButton::WheelRight => "wheel-right",
        }
    }
}

/// A pointer axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputAxis {
    /// Horizontal.
    X,
    /// Vertical.
    Y,
}

impl InputAxis {
    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            InputAxis::X => "x",
            InputAxis::Y => "y",
        }
    }
}

/// One event of an `input-send-event` list. Absolute values are in QEMU's 0..=0x7fff range;
/// they reach the guest only through an absolute device (`usb-tablet`, `virtio-tablet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputEvent {
    /// Key press (`down`) or release.
    Key {
        /// Which key.
        key: KeyValue,
        /// Pressed or released.
        down: bool,
    },
    /// Button press or release.
    Btn {
        /// Which button.
        button: InputButton,
        /// Pressed or released.
        down: bool,
    },
    /// Absolute pointer position on one axis.
    Abs {
        /// Which axis.
        axis: InputAxis,
        /// Position, 0..=0x7fff.
        value: i64,
    },
    /// Relative pointer motion on one axis.
    Rel {
        /// Which axis.
        axis: InputAxis,
        /// Motion.
        value: i64,
    },
}

impl InputEvent {
    /// A qcode key event, e.g. `InputEvent::qcode("a", true)`.
    pub fn qcode(name: impl Into<Cow<'static, str>>, down: bool) -> Self {
        InputEvent::Key {
            key: KeyValue::Qcode(name.into()),
            down,
        }
    }

    /// A key-number key event.
    pub fn number(number: u32, down: bool) -> Self {
        InputEvent::Key {
            key: KeyValue::Number(number),
            down,
        }
    }

    /// The QAPI JSON form, e.g. `{"type":"key","data":{"down":true,"key":{"type":"qcode",
    /// "data":"a"}}}`.
    pub fn to_json(&self) -> Value {
        match self {
            InputEvent::Key { key, down } => {
                let key = match key {
                    KeyValue::Qcode(name) => json!({"type": "qcode", "data": name}),
                    KeyValue::Number(n) => json!({"type": "number", "data": n}),
                };
                json!({"type": "key", "data": {"down": down, "key": key}})
            }
            InputEvent::Btn { button, down } => {
                json!({"type": "btn", "data": {"down": down, "button": button.as_str()}})
            }
            InputEvent::Abs { axis, value } => {
                json!({"type": "abs", "data": {"axis": axis.as_str(), "value": value}})
            }
            InputEvent::Rel { axis, value } => {
                json!({"type": "rel", "data": {"axis": axis.as_str(), "value": value}})
            }
        }
    }

    /// `input-send-event`'s arguments for a list of events.
    pub fn arguments(events: &[InputEvent]) -> Value {
        json!({"events": events.iter().map(InputEvent::to_json).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms_match_qapi() {
        let events = [
            InputEvent::qcode("a", true),
            InputEvent::number(0x9d, false),
            InputEvent::Btn {
                button: InputButton::WheelUp,
                down: true,
            },
            InputEvent::Abs {
                axis: InputAxis::X,
                value: 0x7fff,
            },
            InputEvent::Rel {
                axis: InputAxis::Y,
                value: -3,
            },
        ];
        assert_eq!(
            serde_json::to_string(&InputEvent::arguments(&events)).unwrap(),
            concat!(
                r#"{"events":["#,
                r#"{"data":{"down":true,"key":{"data":"a","type":"qcode"}},"type":"key"},"#,
                r#"{"data":{"down":false,"key":{"data":157,"type":"number"}},"type":"key"},"#,
                r#"{"data":{"button":"wheel-up","down":true},"type":"btn"},"#,
                r#"{"data":{"axis":"x","value":32767},"type":"abs"},"#,
                r#"{"data":{"axis":"y","value":-3},"type":"rel"}"#,
                "]}"
            )
        );
    }
}

//! Inbound QMP messages: the greeting, replies and events, classified from one JSON line.

use serde_json::{Map, Value};
use std::sync::Arc;

use crate::error::{ProtocolError, QmpError};
use crate::Seq;

/// The server's greeting, `{"QMP":{"version":{...},"capabilities":[...]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version, `(major, minor, micro)`.
    pub version: (u64, u64, u64),
    /// The distribution's package string (e.g. `Debian 1:7.2+dfsg-7`).
    pub package: String,
    /// Capabilities the server offers (`oob`); this client enables none of them, so that
    /// every command runs in order and replies come back in order.
    pub capabilities: Vec<String>,
}

/// QEMU's timestamp on an event (host wall clock when the event was emitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// An asynchronous event (`STOP`, `RESUME`, `MIGRATION`, `SHUTDOWN`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the connection's inbound stream; compare with a reply's [`Seq`] to know
    /// whether this event came before it.
    pub seq: Seq,
    /// The event name, e.g. `STOP`.
    pub name: String,
    /// The event's `data` member (`Value::Null` when absent).
    pub data: Value,
    /// QEMU's timestamp, if present and well-formed.
    pub timestamp: Option<Timestamp>,
}

impl Event {
    /// For a `MIGRATION` event, its `status` (`setup`, `active`, `pre-switchover`, `device`,
    /// `completed`, `failed`, `cancelled`, ...). Only sent when the `events` migration
    /// capability is on.
    pub fn migration_status(&self) -> Option<&str> {
        if self.name != "MIGRATION" {
            return None;
        }
        self.data.get("status").and_then(Value::as_str)
    }
}

/// One classified inbound line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    Greeting(Greeting),
    Reply {
        /// The reply's numeric `id`, if any. `Some(None)`-like cases (a non-numeric id) are
        /// reported as `id_malformed`.
        id: Option<u64>,
        id_malformed: bool,
        result: Result<Value, QmpError>,
    },
    Event {
        name: String,
        data: Value,
        timestamp: Option<Timestamp>,
    },
}

/// Classifies one line (without its newline). Never panics on any input.
pub(crate) fn classify(line: &[u8]) -> Result<Inbound, ProtocolError> {
    let object: Map<String, Value> =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Json(Arc::new(e)))?;
    if let Some(qmp) = object.get("QMP") {
        return parse_greeting(qmp).map(Inbound::Greeting);
    }
    if let Some(name) = object.get("event") {
        let name = name.as_str().ok_or(ProtocolError::UnexpectedMessage {
            detail: "event name is not a string",
        })?;
        let timestamp = object.get("timestamp").and_then(|t| {
            Some(Timestamp {
                seconds: t.get("seconds")?.as_i64()?,
                microseconds: t.get("microseconds")?.as_i64()?,
            })
        });
        return Ok(Inbound::Event {
            name: name.to_owned(),
            data: object.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        });
    }
    let (id, id_malformed) = match object.get("id") {
        None => (None, false),
        Some(v) => match v.as_u64() {
            Some(n) => (Some(n), false),
            None => (None, true),
        },
    };
    let mut object = object;
    if let Some(value) = object.remove("return") {
        return Ok(Inbound::Reply {
            id,
            id_malformed,
            result: Ok(value),
        });
    }
    if let Some(error) = object.get("error") {
        let field = |name| error.get(name).and_then(Value::as_str).map(str::to_owned);
        let (Some(class), Some(desc)) = (field("class"), field("desc")) else {
            return Err(ProtocolError::UnexpectedMessage {
                detail: "error reply without string class and desc",
            });
        };
        return Ok(Inbound::Reply {
            id,
            id_malformed,
            result: Err(QmpError { class, desc }),
        });
    }
    Err(ProtocolError::UnexpectedMessage {
        detail: "neither greeting, reply nor event",
    })
}

fn parse_greeting(qmp: &Value) -> Result<Greeting, ProtocolError> {
    let bad = |detail| ProtocolError::MalformedGreeting { detail };
    let version = qmp.get("version").ok_or(bad("no version"))?;
    let qemu = version.get("qemu").ok_or(bad("no version.qemu"))?;
    let number = |name| {
        qemu.get(name)
            .and_then(Value::as_u64)
            .ok_or(bad("bad version number"))
    };
    let package = version
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let capabilities = qmp
        .get("capabilities")
        .and_then(Value::as_array)
        .ok_or(bad("no capabilities list"))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_owned)
                .ok_or(bad("capability is not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Greeting {
        version: (number("major")?, number("minor")?, number("micro")?),
        package,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Verbatim from QEMU 7.2.22 on this machine.
    const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

    #[test]
    fn classifies_qemu_72_greeting() {
        let Inbound::Greeting(g) = classify(GREETING).unwrap() else {
            panic!("not a greeting")
        };
        assert_eq!(g.version, (7, 2, 22));
        assert_eq!(g.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
        assert_eq!(g.capabilities, vec!["oob".to_owned()]);
    }

    #[test]
    fn greeting_without_version_is_malformed() {
        let r = classify(br#"{"QMP": {"capabilities": []}}"#);
        assert!(
            matches!(r, Err(ProtocolError::MalformedGreeting { .. })),
            "{r:?}"
        );
        let r = classify(br#"{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}"#);
        assert!(
            matches!(r, Err(ProtocolError::MalformedGreeting { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn classifies_replies_with_and_without_id() {
        assert_eq!(
            classify(br#"{"return": {"status": "prelaunch", "running": false}, "id": 7}"#).unwrap(),
            Inbound::Reply {
                id: Some(7),
                id_malformed: false,
                result: Ok(json!({"status": "prelaunch", "running": false}))
            }
        );
        assert_eq!(
            classify(br#"{"error": {"class": "GenericError", "desc": "VM not running"}}"#).unwrap(),
            Inbound::Reply {
                id: None,
                id_malformed: false,
                result: Err(QmpError {
                    class: "GenericError".into(),
                    desc: "VM not running".into()
                })
            }
        );
        let r = classify(br#"{"return": {}, "id": "x"}"#).unwrap();
        assert!(matches!(
            r,
            Inbound::Reply {
                id: None,
                id_malformed: true,
                ..
            }
        ));
    }

    #[test]
    fn classifies_events_with_timestamp() {
        let line = br#"{"timestamp": {"seconds": 1795779842, "microseconds": 157385}, "event": "MIGRATION", "data": {"status": "setup"}}"#;
        let Inbound::Event {
            name,
            data,
            timestamp,
        } = classify(line).unwrap()
        else {
            panic!("not an event")
        };
        let event = Event {
            seq: Seq(3),
            name,
            data,
            timestamp,
        };
        assert_eq!(event.migration_status(), Some("setup"));
        assert_eq!(
            event.timestamp,
            Some(Timestamp {
                seconds: 1795779842,
                microseconds: 157385
            })
        );
    }

    #[test]
    fn rejects_non_objects_and_unknown_shapes() {
        assert!(matches!(classify(b"[1,2]"), Err(ProtocolError::Json(_))));
        assert!(matches!(
            classify(b"{\"return\""),
            Err(ProtocolError::Json(_))
        ));
        assert!(matches!(
            classify(b"{}"),
            Err(ProtocolError::UnexpectedMessage { .. })
        ));
        assert!(matches!(
            classify(br#"{"error": {"desc": 1}}"#),
            Err(ProtocolError::UnexpectedMessage { .. })
        ));
        assert!(matches!(
            classify(br#"{"event": 5}"#),
            Err(ProtocolError::UnexpectedMessage { .. })
        ));
    }
}

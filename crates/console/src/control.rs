//! The console's control interface, version [`CONTROL_VERSION`]: how `dmore migrate` (or an
//! operator with `socat`) talks to a console through its unix control socket.
//!
//! One command per connection: a line in, one JSON line out. Every reply is an object with
//! `"ok": true|false`; a failure has `"error"` saying what went wrong and what to do.
//!
//! | command | reply | use |
//! |---|---|---|
//! | `version` | `{"ok":true,"control":"dmore-console","version":1}` | check before anything else |
//! | `status` | `{"ok":true, "role", "phase", "viewers", "vm_running", ..., "comigration"}` | read state |
//! | `prepare HOST:PORT` | `{"ok":true}` once connected to that destination console (input then moves to the exactly-once lane, as on `migration-started`); refused while a migration to another destination is under way | before a migration |
//! | `migration-started` | `{"ok":true}` | the orchestrator is about to `migrate`: input moves to the exactly-once lane now |
//! | `migration-ended` | `{"ok":true}` | the orchestrator's migration failed before the switchover |
//! | `wait PHASE MILLIS` | `{"ok":true,"phase":..}` when the co-migration phase is `PHASE`, else `"ok":false` after `MILLIS` | synchronise (e.g. `--hold-switchover` waits for `Ready`) |
//! | `freeze` | a binary hand-over (see [`crate::front::handover`]) | local hand-over to a new process |
//!
//! Phases: a source console goes `Serving → Precopying → Frozen/Sent → Done` (or back to
//! `Serving` through `Thawing`); a destination console (`--incoming`) goes
//! `Waiting → Connected → Ready → TakingOver → Serving`. `status` carries, under
//! `comigration`, the last migration's `snapshot_bytes`, `viewers_moved`, and `frozen_at_us` /
//! `taken_over_at_us` (microseconds since the Unix epoch, from each host's clock).
//!
//! Commands and replies are parsed here, without I/O; [`request`] is the client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The control interface's version, answered by `version`. Bump on any incompatible change.
pub const CONTROL_VERSION: u32 = 1;

/// Longest command line a console reads.
pub const MAX_COMMAND: usize = 256;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The interface's name and version.
    Version,
    /// The console's state as JSON.
    Status,
    /// Local hand-over to a new console process (binary reply).
    Freeze,
    /// Connect to the destination console listening (`--incoming`) at this address.
    Prepare(SocketAddr),
    /// A migration is about to start: fence the fast input lane now.
    MigrationStarted,
    /// The migration ended before the switchover: back to the fast lane.
    MigrationEnded,
    /// Reply when the co-migration phase is `phase`, or fail after `timeout`.
    Wait {
        /// A phase name (`Ready`, `Serving`, ...).
        phase: String,
        /// How long to wait.
        timeout: Duration,
    },
}

/// A command line that is not a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}; commands: version | status | freeze | prepare HOST:PORT | migration-started | \
     migration-ended | wait PHASE MILLIS"
)]
pub struct ParseError(String);

impl Command {
    /// Parses one command line (without its newline).
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let command = match name {
            "version" => Command::Version,
            "status" => Command::Status,
            "freeze" => Command::Freeze,
            "migration-started" => Command::MigrationStarted,
            "migration-ended" => Command::MigrationEnded,
            "prepare" => {
                let addr = words
                    .next()
                    .ok_or_else(|| ParseError("prepare needs the destination HOST:PORT".into()))?;
                Command::Prepare(
                    addr.parse()
                        .map_err(|_| ParseError(format!("{addr:?} is not HOST:PORT")))?,
                )
            }
            "wait" => {
                let (Some(phase), Some(millis)) = (words.next(), words.next()) else {
                    return Err(ParseError("wait needs PHASE MILLIS".into()));
                };
                let millis: u64 = millis
                    .parse()
                    .map_err(|_| ParseError(format!("{millis:?} is not a number of ms")))?;
                Command::Wait {
                    phase: phase.to_owned(),
                    timeout: Duration::from_millis(millis),
                }
            }
            other => return Err(ParseError(format!("unknown command {other:?}"))),
        };
        match words.next() {
            Some(extra) => Err(ParseError(format!("unexpected {extra:?} after {name}"))),
            None => Ok(command),
        }
    }

    /// The command as a line (with its newline), as [`Command::parse`] reads it.
    pub fn to_line(&self) -> String {
        match self {
            Command::Version => "version\n".into(),
            Command::Status => "status\n".into(),
            Command::Freeze => "freeze\n".into(),
            Command::MigrationStarted => "migration-started\n".into(),
            Command::MigrationEnded => "migration-ended\n".into(),
            Command::Prepare(addr) => format!("prepare {addr}\n"),
            Command::Wait { phase, timeout } => format!("wait {phase} {}\n", timeout.as_millis()),
        }
    }
}

/// The reply to a successful command: `{"ok":true}` plus `fields`.
pub fn ok(fields: serde_json::Value) -> String {
    let mut reply = serde_json::json!({ "ok": true });
    if let (Some(obj), serde_json::Value::Object(extra)) = (reply.as_object_mut(), fields) {
        obj.extend(extra);
    }
    reply.to_string()
}

/// The reply to a failed command.
pub fn failed(error: &str, fields: serde_json::Value) -> String {
    let mut reply = serde_json::json!({ "ok": false, "error": error });
    if let (Some(obj), serde_json::Value::Object(extra)) = (reply.as_object_mut(), fields) {
        obj.extend(extra);
    }
    reply.to_string()
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached or broke.
    #[error("control socket {path}: {source} (is the console running with --control {path}?)")]
    Io {
        /// The socket.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The console answered something that is not a JSON object.
    #[error("control socket {path}: unreadable reply {reply:?}")]
    BadReply {
        /// The socket.
        path: String,
        /// What came back.
        reply: String,
    },
    /// The console answered `"ok": false`.
    #[error("console at {path} refused {command:?}: {error}")]
    Refused {
        /// The socket.
        path: String,
        /// The command, as sent.
        command: String,
        /// The console's `error`.
        error: String,
        /// The whole reply.
        reply: serde_json::Value,
    },
}

/// Sends `command` to the console at `path` and returns its reply object (`"ok": true`).
/// `Freeze` is not for this client (its reply is binary).
pub async fn request(path: &Path, command: &Command) -> Result<serde_json::Value, ControlError> {
    let shown = path.display().to_string();
    let io = |source| ControlError::Io {
        path: shown.clone(),
        source,
    };
    let mut sock = UnixStream::connect(path).await.map_err(io)?;
    let line = command.to_line();
    sock.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reply = String::new();
    BufReader::new(sock)
        .read_line(&mut reply)
        .await
        .map_err(io)?;
    let value: serde_json::Value =
        serde_json::from_str(reply.trim()).map_err(|_| ControlError::BadReply {
            path: shown.clone(),
            reply: reply.clone(),
        })?;
    match value.get("ok").and_then(serde_json::Value::as_bool) {
        Some(true) => Ok(value),
        Some(false) => Err(ControlError::Refused {
            path: shown,
            command: line.trim().to_owned(),
            error: value
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no reason given")
                .to_owned(),
            reply: value,
        }),
        None => Err(ControlError::BadReply { path: shown, reply }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_back_from_its_line() {
        let commands = [
            Command::Version,
            Command::Status,
            Command::Freeze,
            Command::MigrationStarted,
            Command::MigrationEnded,
            Command::Prepare("10.0.0.2:4700".parse().unwrap()),
            Command::Wait {
                phase: "Ready".into(),
                timeout: Duration::from_millis(2500),
            },
        ];
        for c in commands {
            assert_eq!(Command::parse(c.to_line().trim()), Ok(c));
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("", "unknown command"),
            ("prepare", "needs the destination"),
            ("prepare nowhere", "not HOST:PORT"),
            ("wait Ready", "needs PHASE MILLIS"),
            ("wait Ready soon", "not a number"),
            ("status now", "unexpected"),
        ] {
            let err = Command::parse(line).unwrap_err().to_string();
            assert!(err.contains(says), "{line:?} → {err}");
            assert!(err.contains("commands:"), "{err}");
        }
    }

    #[test]
    fn replies_carry_ok_and_the_fields() {
        let r: serde_json::Value =
            serde_json::from_str(&ok(serde_json::json!({"phase": "Ready"}))).unwrap();
        assert_eq!(r, serde_json::json!({"ok": true, "phase": "Ready"}));
        let r: serde_json::Value =
            serde_json::from_str(&failed("timeout", serde_json::json!({"phase": "Sent"}))).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"ok": false, "error": "timeout", "phase": "Sent"})
        );
    }
}

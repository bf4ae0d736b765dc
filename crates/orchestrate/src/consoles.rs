//! The two consoles as the orchestrator talks to them: each control request bounded in time,
//! each failure turned into an [`OrchestrateError`] that says which console and what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use console::control::{self, Command, ControlError, CONTROL_VERSION};
use migrate::Side;
use serde_json::Value;

use crate::OrchestrateError;

/// How long a console may take to answer a command that does not wait for anything.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to a `wait` command's own limit before we stop listening for its answer.
const WAIT_SLACK: Duration = Duration::from_secs(5);

/// One console, reached through its control socket.
pub(crate) struct Console<'a> {
    side: Side,
    path: &'a Path,
}

impl<'a> Console<'a> {
    /// The console at `path` on `side`.
    pub(crate) fn new(side: Side, path: &'a Path) -> Self {
        Console { side, path }
    }

    /// Sends `command` and waits at most `limit` for the answer; a refusal (`"ok": false`
    /// or an unreadable reply) becomes [`OrchestrateError::ConsoleRefused`] with `fix`.
    pub(crate) async fn ask(
        &self,
        command: &Command,
        limit: Duration,
        fix: &'static str,
    ) -> Result<Value, OrchestrateError> {
        let shown = command.to_line().trim().to_owned();
        match tokio::time::timeout(limit, control::request(self.path, command)).await {
            Err(_) => Err(OrchestrateError::ConsoleTimeout {
                side: self.side,
                path: self.path.to_path_buf(),
                command: shown,
                after: limit,
                fix,
            }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source @ ControlError::Io { .. })) => Err(OrchestrateError::ConsoleDown {
                side: self.side,
                path: self.path.to_path_buf(),
                fix: start_hint(self.side, self.path),
                source: Box::new(source),
            }),
            Ok(Err(source)) => Err(OrchestrateError::ConsoleRefused {
                side: self.side,
                path: self.path.to_path_buf(),
                step: format!("`{shown}`"),
                fix,
                source: Box::new(source),
            }),
        }
    }

    /// `version`: refuses a console that speaks another control interface.
    pub(crate) async fn check_version(&self) -> Result<(), OrchestrateError> {
        let reply = self
            .ask(
                &Command::Version,
                CONTROL_TIMEOUT,
                "is this socket a dmore console's --control socket?",
            )
            .await?;
        if version_matches(&reply) {
            Ok(())
        } else {
            Err(OrchestrateError::ConsoleVersion {
                side: self.side,
                path: self.path.to_path_buf(),
                reply: reply.to_string(),
            })
        }
    }

    /// `status`: refuses a console whose `role` is not the one its side needs, or that is
    /// in the middle of a migration already (one migration of a VM at a time: a second one
    /// would re-`prepare` the source console and disturb the first). A console that does not
    /// report a role or phase is let through.
    pub(crate) async fn check_role(&self) -> Result<(), OrchestrateError> {
        let status = self
            .ask(&Command::Status, CONTROL_TIMEOUT, "see the console's log")
            .await?;
        if let Some((role, fix)) = role_problem(self.side, &status) {
            return Err(OrchestrateError::ConsoleRole {
                side: self.side,
                path: self.path.to_path_buf(),
                role,
                fix,
            });
        }
        match status.get("phase").and_then(Value::as_str) {
            Some(phase) if phase != idle_phase(self.side) => Err(OrchestrateError::Busy {
                side: self.side,
                path: self.path.to_path_buf(),
                phase: phase.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// `wait PHASE MILLIS`, listening a little longer than the console waits.
    pub(crate) async fn wait(
        &self,
        phase: &str,
        limit: Duration,
        fix: &'static str,
    ) -> Result<Value, OrchestrateError> {
        let command = Command::Wait {
            phase: phase.to_owned(),
            timeout: limit,
        };
        self.ask(&command, limit.saturating_add(WAIT_SLACK), fix)
            .await
    }

    /// The control socket.
    pub(crate) fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// The phase of a console on `side` that no migration is using.
fn idle_phase(side: Side) -> &'static str {
    match side {
        Side::Source => "Serving",
        Side::Destination => "Waiting",
    }
}

/// Whether a `version` reply is this dmore's control interface.
pub(crate) fn version_matches(reply: &Value) -> bool {
    reply.get("control").and_then(Value::as_str) == Some("dmore-console")
        && reply.get("version").and_then(Value::as_u64) == Some(u64::from(CONTROL_VERSION))
}

/// What is wrong with a console's role for `side`, if anything: the role it reported and
/// the fix.
pub(crate) fn role_problem(side: Side, status: &Value) -> Option<(String, &'static str)> {
    let role = status.get("role").and_then(Value::as_str)?;
    match (side, role) {
        (Side::Source, "source") | (Side::Destination, "destination") => None,
        (Side::Source, _) => Some((
            role.to_owned(),
            "give the console that serves the VM now (on the source host) as --source-console",
        )),
        (Side::Destination, _) => Some((
            role.to_owned(),
            "start a fresh console next to the destination QEMU with \
             `dmore console ... --incoming LISTEN_IP:PORT` and give its control socket as \
             --dest-console",
        )),
    }
}

/// How to start the console that did not answer.
fn start_hint(side: Side, path: &Path) -> String {
    match side {
        Side::Source => format!(
            "start the VM's console with `dmore console ... --control {}` (or give the \
             running console's control socket as --source-console)",
            path.display()
        ),
        Side::Destination => format!(
            "start it next to the destination QEMU with `dmore console ... --control {} \
             --incoming LISTEN_IP:PORT`",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_this_control_version_is_accepted() {
        assert!(version_matches(
            &json!({"ok": true, "control": "dmore-console", "version": CONTROL_VERSION})
        ));
        for reply in [
            json!({"ok": true, "control": "dmore-console", "version": CONTROL_VERSION + 1}),
            json!({"ok": true, "control": "something-else", "version": CONTROL_VERSION}),
            json!({"ok": true, "control": "dmore-console", "version": "1"}),
            json!({"ok": true}),
        ] {
            assert!(!version_matches(&reply), "{reply}");
        }
    }

    #[test]
    fn each_side_needs_its_role() {
        let status = |role: &str| json!({"ok": true, "role": role, "phase": "Serving"});
        assert_eq!(role_problem(Side::Source, &status("source")), None);
        assert_eq!(
            role_problem(Side::Destination, &status("destination")),
            None
        );
        let (role, fix) = role_problem(Side::Source, &status("destination")).unwrap();
        assert_eq!(role, "destination");
        assert!(fix.contains("--source-console"));
        let (role, fix) = role_problem(Side::Destination, &status("source")).unwrap();
        assert_eq!(role, "source");
        assert!(fix.contains("--incoming"));
        assert_eq!(role_problem(Side::Source, &json!({"ok": true})), None);
    }

    #[test]
    fn an_absent_console_is_named_with_how_to_start_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dest.ctl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(Console::new(Side::Destination, &path).check_version())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, OrchestrateError::ConsoleDown { .. }),
            "{err:?}"
        );
        assert!(text.contains("destination console at"), "{text}");
        assert!(text.contains("--incoming"), "{text}");
    }
}

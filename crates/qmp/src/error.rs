//! Errors, one enum per layer: [`ProtocolError`] for the sans-I/O core, [`Error`] for the
//! tokio shell that callers see; and [`QmpError`], QEMU's own refusal of a command, which
//! both carry.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Seq;

/// QEMU's error reply, `{"error":{"class":"GenericError","desc":"VM not running"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class (nearly always `GenericError` since QEMU 1.2).
    pub class: String,
    /// The human-readable description, the part callers match on (`VM not running`).
    pub desc: String,
}

/// A violation of the QMP wire protocol found by the sans-I/O core. Every one is fatal to the
/// connection: after it the core's position in the message stream can no longer be trusted
/// (a dropped line might have been a `STOP` event or a reply).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProtocolError {
    /// A line grew past the configured limit before its newline arrived.
    #[error("QMP line longer than {max} bytes")]
    LineTooLong {
        /// The limit in bytes.
        max: usize,
    },
    /// A line was not a JSON object.
    #[error("QMP line is not valid JSON")]
    Json(#[source] Arc<serde_json::Error>),
    /// The first message was not a well-formed `{"QMP":{...}}` greeting.
    #[error("malformed QMP greeting: {detail}")]
    MalformedGreeting {
        /// What was wrong with it.
        detail: &'static str,
    },
    /// QEMU refused `qmp_capabilities`.
    #[error("QEMU refused qmp_capabilities: {0}")]
    CapabilitiesRefused(#[source] QmpError),
    /// A JSON object that is neither a reply nor an event (or a second greeting).
    #[error("unexpected QMP message: {detail}")]
    UnexpectedMessage {
        /// What was wrong with it.
        detail: &'static str,
    },
    /// A reply arrived that matches no command in flight.
    #[error("QMP reply matches no command in flight (id {id:?})")]
    UnmatchedReply {
        /// The reply's `id`, if it had a numeric one.
        id: Option<u64>,
    },
    /// A command was submitted before the handshake finished.
    #[error("QMP command submitted before capabilities negotiation finished")]
    NotReady,
    /// A command could not be serialized (cannot happen for `serde_json::Value` arguments;
    /// kept so that no path panics).
    #[error("cannot serialize QMP command")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The session already failed; the first error is kept.
    #[error("QMP session already failed: {0}")]
    Failed(#[source] Box<ProtocolError>),
}

/// Why a connection ended. Cloned into every command still waiting for its reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseReason {
    /// QEMU closed its end (e.g. after `quit`, or it exited or crashed). A reset
    /// (`ECONNRESET`, `EPIPE`: QEMU exited with our unread command in its socket) counts as
    /// this too: either way QEMU is gone, after every message it had sent was read.
    #[error("QEMU closed the QMP connection")]
    Eof,
    /// This side closed it ([`crate::Connection::close`] or the connection was dropped).
    #[error("the QMP connection was closed by this client")]
    Shutdown,
    /// Reading or writing the socket failed.
    #[error("QMP socket I/O failed")]
    Io(#[source] Arc<std::io::Error>),
    /// QEMU sent something that breaks the protocol.
    #[error("QMP protocol violation")]
    Protocol(#[source] ProtocolError),
}

impl CloseReason {
    /// Classifies a socket error: resets and broken pipes mean QEMU went away.
    pub(crate) fn from_io(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                CloseReason::Eof
            }
            _ => CloseReason::Io(Arc::new(error)),
        }
    }
}

/// Errors returned to callers of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The unix socket could not be connected.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The greeting or `qmp_capabilities` exchange failed (malformed greeting, refused
    /// capabilities, EOF before the handshake finished, ...).
    #[error("QMP handshake on {path} failed")]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        reason: CloseReason,
    },
    /// The connection ended while this command waited for its reply (or before it was sent).
    #[error("QMP connection closed while waiting for the reply to {command}")]
    Closed {
        /// The pending command's name.
        command: String,
        /// Why the connection ended.
        #[source]
        reason: CloseReason,
    },
    /// QEMU answered the command with `{"error":{"class":...,"desc":...}}`.
    #[error("QMP command {command} failed (reply #{seq})")]
    Qmp {
        /// The command's name.
        command: String,
        /// Position of the error reply in the connection's inbound stream (see [`Seq`]).
        seq: Seq,
        /// QEMU's error class and description.
        #[source]
        source: QmpError,
    },
    /// The reply had a shape the typed helper did not expect.
    #[error("unexpected reply to QMP command {command}")]
    Decode {
        /// The command's name.
        command: String,
        /// The deserialization error.
        #[source]
        source: serde_json::Error,
    },
    /// The connection failed (reported by [`crate::Connection::close`]).
    #[error("QMP connection failed")]
    Connection(#[source] CloseReason),
    /// The connection task ended abnormally (panicked or was cancelled).
    #[error("QMP connection task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    /// QEMU's error if this is a QMP error reply, e.g. to match `desc == "VM not running"`.
    pub fn qmp_error(&self) -> Option<&QmpError> {
        match self {
            Error::Qmp { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True for QEMU's `VM not running` refusal (`input-send-event` on a paused, incoming,
    /// or migrating VM): input that got it was *not* delivered and must be held.
    pub fn is_vm_not_running(&self) -> bool {
        self.qmp_error().is_some_and(|e| e.desc == "VM not running")
    }
}

//! The sans-I/O QMP session: no socket, no clock, no tokio.
//!
//! ```text
//!   AwaitingGreeting --{"QMP":...}--> Negotiating --qmp_capabilities reply--> Ready
//!          |                              |                                     |
//!          +------------- any ProtocolError (fatal, kept) ---------------> Failed
//! ```
//!
//! Call order: feed every received chunk to [`Session::handle_input`], then drain
//! [`Session::poll_output`]; once [`Output::Ready`] came out, [`Session::submit`] commands;
//! after either, write [`Session::pending_transmit`] to the socket and report what was
//! written with [`Session::transmitted`].
//!
//! Every inbound message after the greeting (the greeting is #0) gets the next [`Seq`], in
//! arrival order: QEMU writes events and replies on one connection in the order they
//! happened, so `event.seq < reply.seq` means the event happened before the command was
//! answered.
//!
//! Replies are matched to commands by numeric `id` when ids are sent ([`IdMode::Numbered`]),
//! else in order: the session never enables the `oob` capability, and without it QEMU runs a
//! connection's commands one at a time, in order, and answers them in order.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{ProtocolError, QmpError};
use crate::framer::{LineFramer, DEFAULT_MAX_LINE};
use crate::message::{classify, Event, Greeting, Inbound};
use crate::Seq;

/// Whether commands carry an `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdMode {
    /// No `id`: replies are matched in order. Shortest on the wire, and QEMU 7.2's monitor
    /// reads commands one byte per main-loop iteration (~5 µs a byte), so every byte counts.
    #[default]
    Omit,
    /// `"id":N` with a counter: each reply is checked against the command it answers.
    Numbered,
}

/// Settings for a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Longest inbound line accepted (default 16 MiB).
    pub max_line: usize,
    /// Whether commands carry ids.
    pub ids: IdMode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_line: DEFAULT_MAX_LINE,
            ids: IdMode::default(),
        }
    }
}

/// Where the session is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for QEMU's `{"QMP":...}` greeting.
    AwaitingGreeting,
    /// `qmp_capabilities` sent, waiting for its reply.
    Negotiating,
    /// Commands may be submitted.
    Ready,
    /// A protocol error happened; the session is dead.
    Failed,
}

/// Identifies a submitted command to the caller of [`Session::submit`] (not the wire id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

/// What the session has for its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The handshake finished; commands may now be submitted.
    Ready(Greeting),
    /// The reply to a submitted command.
    Reply {
        /// The token [`Session::submit`] returned for the command.
        token: Token,
        /// The reply's position in the inbound stream.
        seq: Seq,
        /// `return` value or QEMU's error.
        result: Result<Value, QmpError>,
    },
    /// An asynchronous event.
    Event(Event),
}

#[derive(Debug)]
struct InFlight {
    /// `None` for the session's own `qmp_capabilities`.
    token: Option<Token>,
    wire_id: Option<u64>,
}

/// A QMP client session: framing, handshake, sequence numbers and reply matching.
#[derive(Debug)]
pub struct Session {
    config: Config,
    framer: LineFramer,
    state: SessionState,
    failure: Option<ProtocolError>,
    greeting: Option<Greeting>,
    in_flight: VecDeque<InFlight>,
    outputs: VecDeque<Output>,
    transmit: Vec<u8>,
    next_token: u64,
    next_wire_id: u64,
    next_seq: u64,
    /// Events and replies read before the greeting (see [`MAX_STALE_BEFORE_GREETING`]).
    stale: usize,
}

/// Most events or replies skipped before the greeting. QEMU 7.2's monitor keeps its output
/// buffer and its negotiated state across clients of one socket: what it emitted around the
/// previous client's close (e.g. a `RESUME` just after a console's watch connection closed) is
/// written to the next client before its greeting. Nothing is ours before the greeting, so it
/// is skipped; measured: "first message is not a greeting" ended a destination console's
/// takeover about once in 200 co-migrations (`dmore soak`) before this.
pub const MAX_STALE_BEFORE_GREETING: usize = 64;

impl Session {
    /// A session waiting for QEMU's greeting.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            framer: LineFramer::new(config.max_line),
            state: SessionState::AwaitingGreeting,
            failure: None,
            greeting: None,
            in_flight: VecDeque::new(),
            outputs: VecDeque::new(),
            transmit: Vec::new(),
            next_token: 0,
            next_wire_id: 0,
            next_seq: 0,
            stale: 0,
        }
    }

    /// Where the session is.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Commands sent (or queued) whose reply has not arrived, including `qmp_capabilities`.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Feeds bytes read from the socket. Any error is fatal and returned again by every
    /// later call.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        self.check_alive()?;
        let result = self.framer.push(data).and_then(|()| {
            while let Some(line) = self.framer.next_line() {
                self.handle_line(&line)?;
            }
            Ok(())
        });
        result.map_err(|e| self.fail(e))
    }

    /// The next output, in inbound order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Queues one command as a compact JSON line, e.g. `{"execute":"stop"}`. `args` that are
    /// `null` or `{}` are left out. Several submits before one write go out in one write.
    pub fn submit(&mut self, command: &str, args: &Value) -> Result<Token, ProtocolError> {
        self.check_alive()?;
        if self.state != SessionState::Ready {
            return Err(ProtocolError::NotReady);
        }
        let token = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1);
        self.queue_command(Some(token), command, args)?;
        Ok(token)
    }

    /// Bytes waiting to be written.
    pub fn pending_transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Reports that the first `n` bytes of [`pending_transmit`](Self::pending_transmit)
    /// were written.
    pub fn transmitted(&mut self, n: usize) {
        let n = n.min(self.transmit.len());
        self.transmit.drain(..n);
    }

    fn check_alive(&self) -> Result<(), ProtocolError> {
        match &self.failure {
            Some(e) => Err(ProtocolError::Failed(Box::new(e.clone()))),
            None => Ok(()),
        }
    }

    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        if self.failure.is_none() {
            self.failure = Some(error.clone());
        }
        self.state = SessionState::Failed;
        error
    }

    fn queue_command(
        &mut self,
        token: Option<Token>,
        command: &str,
        args: &Value,
    ) -> Result<(), ProtocolError> {
        let wire_id = match self.config.ids {
            IdMode::Omit => None,
            IdMode::Numbered => {
                let id = self.next_wire_id;
                self.next_wire_id = self.next_wire_id.wrapping_add(1);
                Some(id)
            }
        };
        encode_command(&mut self.transmit, command, args, wire_id)
            .map_err(|e| ProtocolError::Encode(Arc::new(e)))?;
        self.in_flight.push_back(InFlight { token, wire_id });
        Ok(())
    }

    fn take_seq(&mut self) -> Seq {
        let seq = Seq(self.next_seq);
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    fn handle_line(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        let inbound = match classify(line) {
            Ok(inbound) => inbound,
            Err(ProtocolError::Json(_) | ProtocolError::UnexpectedMessage { .. })
                if self.state == SessionState::AwaitingGreeting =>
            {
                return Err(ProtocolError::MalformedGreeting {
                    detail: "first message is not a greeting",
                })
            }
            Err(e) => return Err(e),
        };
        let seq = self.take_seq();
        match (self.state, inbound) {
            (SessionState::AwaitingGreeting, Inbound::Greeting(greeting)) => {
                self.greeting = Some(greeting);
                self.state = SessionState::Negotiating;
                self.queue_command(None, "qmp_capabilities", &Value::Null)
            }
            (SessionState::AwaitingGreeting, _) if self.stale < MAX_STALE_BEFORE_GREETING => {
                self.stale += 1;
                tracing::debug!(
                    skipped = self.stale,
                    "QMP: a previous client's message before the greeting, skipped"
                );
                Ok(())
            }
            (SessionState::AwaitingGreeting, _) => Err(ProtocolError::MalformedGreeting {
                detail: "only stale messages, no greeting",
            }),
            (_, Inbound::Greeting(_)) => Err(ProtocolError::UnexpectedMessage {
                detail: "second greeting",
            }),
            (
                _,
                Inbound::Event {
                    name,
                    data,
                    timestamp,
                },
            ) => {
                self.outputs.push_back(Output::Event(Event {
                    seq,
                    name,
                    data,
                    timestamp,
                }));
                Ok(())
            }
            (
                _,
                Inbound::Reply {
                    id,
                    id_malformed,
                    result,
                },
            ) => {
                let position = match (id, id_malformed) {
                    (_, true) => None,
                    (Some(id), false) => self.in_flight.iter().position(|c| c.wire_id == Some(id)),
                    (None, false) => (!self.in_flight.is_empty()).then_some(0),
                };
                let command = position
                    .and_then(|p| self.in_flight.remove(p))
                    .ok_or(ProtocolError::UnmatchedReply { id })?;
                match command.token {
                    Some(token) => {
                        self.outputs.push_back(Output::Reply { token, seq, result });
                        Ok(())
                    }
                    None => {
                        result.map_err(ProtocolError::CapabilitiesRefused)?;
                        self.state = SessionState::Ready;
                        let greeting =
                            self.greeting
                                .take()
                                .ok_or(ProtocolError::UnexpectedMessage {
                                    detail: "capabilities reply twice",
                                })?;
                        self.outputs.push_back(Output::Ready(greeting));
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Writes `{"execute":NAME[,"arguments":ARGS][,"id":N]}\n` with no spaces.
fn encode_command(
    out: &mut Vec<u8>,
    command: &str,
    args: &Value,
    id: Option<u64>,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    let result = (|| {
        out.extend_from_slice(b"{\"execute\":");
        serde_json::to_writer(&mut *out, command)?;
        let empty = match args {
            Value::Null => true,
            Value::Object(map) => map.is_empty(),
            _ => false,
        };
        if !empty {
            out.extend_from_slice(b",\"arguments\":");
            serde_json::to_writer(&mut *out, args)?;
        }
        if let Some(id) = id {
            out.extend_from_slice(b",\"id\":");
            out.extend_from_slice(id.to_string().as_bytes());
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[cfg(test)]
mod tests;

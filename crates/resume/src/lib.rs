//! The resumable stream between a stationary gateway and a console that moves with its VM.
//!
//! A viewer's bytes cross two hops: viewer ⇄ gateway (TCP or WebSocket, never interrupted)
//! and gateway ⇄ console (this stream). When the console moves, the gateway's connection to
//! the source console ends and the gateway reattaches to the destination console; both ends
//! then say how many bytes they have received and replay exactly the rest, so the byte stream
//! each application sees has no byte lost or repeated.
//!
//! Sans-I/O: a [`Stream`] owns no socket, reads no clock and draws no random numbers (the
//! caller supplies each connection's nonce from the OS's generator). The protocol is
//! described in `docs/gateway.md`; the frames in [`frame`].
//!
//! ```text
//!  gateway (Role::Gateway, connects)                 console (Role::Console, accepts)
//!  attach(nonce_g)                                   peek_session() -> session id
//!                                                    attach(nonce_c)
//!  Hello|Resume{session, nonce_g, window, received, acked}  ---->
//!                      <----  Hello|Resume{session, nonce_c, window, received, acked}
//!      (both: connection key = HMAC(psk, label | gateway opening | console opening))
//!  Ack{acked} (the first frame under the key: proves the opening fresh)  <--->  both ways
//!      (each applies the peer's opening only now, and replays from the peer's `received`)
//!  Data{offset, bytes} / Ack{acked} / Close{end}  <--->  both ways, each frame MAC'd
//!  -- connection cut (the console moved): detach(); attach(new nonce) to the new console --
//! ```
//!
//! # Versioning policy
//!
//! The opening frames start with the magic `DMRS` and a version number; this build speaks
//! [`VERSION`] only, and refuses any other with [`Error::Version`]. Any change to a frame's
//! layout is a new version. Version 2 added the Moved frame (kind 6).

#![warn(missing_docs)]

pub mod frame;
mod stream;
mod wire;

pub use stream::{State, Stream, StreamState};
pub use wire::{peek_session, Peeked};

/// The protocol version this build speaks.
pub const VERSION: u16 = 2;

/// Length of a connection nonce, bytes. Draw it from the OS's random generator.
pub const NONCE_LEN: usize = 32;

/// Length of a session id, bytes. The gateway draws it (random) when it opens a session.
pub const SESSION_LEN: usize = 16;

/// Length of a frame's HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;

/// Shortest pre-shared key accepted, bytes.
pub const MIN_PSK: usize = 16;

/// Most application bytes one Data frame carries.
pub const MAX_DATA: usize = 16 * 1024;

/// Default replay bound: the most bytes one end keeps unacknowledged (and so the receive
/// window it announces).
pub const DEFAULT_REPLAY_CAP: u32 = 1 << 20;

/// A session's id: the same across every connection (and every console) the stream uses.
pub type SessionId = [u8; SESSION_LEN];

/// Which end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// The stationary gateway: it opens the session and connects to the console.
    Gateway,
    /// The console: it accepts connections (and moves with its VM).
    Console,
}

impl Role {
    /// The direction byte MAC'd into the frames this role sends.
    fn direction(self) -> u8 {
        match self {
            Role::Gateway => 0,
            Role::Console => 1,
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Gateway => Role::Console,
            Role::Console => Role::Gateway,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Gateway => "gateway",
            Role::Console => "console",
        })
    }
}

/// What a [`Stream`] needs before its first connection.
#[derive(Clone)]
pub struct Config {
    /// Our end.
    pub role: Role,
    /// The key the gateway and the consoles share (at least [`MIN_PSK`] bytes; 32 random
    /// bytes is right).
    pub psk: Vec<u8>,
    /// The most bytes we keep unacknowledged for replay, and the receive window we announce:
    /// the peer may have at most this many bytes sent and not yet acknowledged by us.
    pub replay_cap: u32,
}

impl Config {
    /// A configuration with the default replay bound.
    pub fn new(role: Role, psk: impl Into<Vec<u8>>) -> Config {
        Config {
            role,
            psk: psk.into(),
            replay_cap: DEFAULT_REPLAY_CAP,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.psk.len() < MIN_PSK {
            return Err(Error::BadConfig("a pre-shared key shorter than 16 bytes"));
        }
        if self.replay_cap == 0 {
            return Err(Error::BadConfig("a replay bound of 0 bytes"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Config")
            .field("role", &self.role)
            .field("replay_cap", &self.replay_cap)
            .finish_non_exhaustive()
    }
}

/// Why a stream refused bytes or a request.
///
/// Errors from [`Stream::handle_input`] end the current connection (the caller closes its
/// socket and may attach a new one). Those for which [`Error::ends_session`] is true end the
/// whole session: every later call answers [`Error::Failed`], and bytes are never silently
/// lost or repeated instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame announced a length outside the bounds in force.
    #[error("frame of {len} bytes is outside the allowed {min}..={max} bytes")]
    FrameLength {
        /// The announced length.
        len: u32,
        /// The smallest frame.
        min: u32,
        /// The bound in force (small until the peer's opening authenticated).
        max: u32,
    },
    /// A frame's MAC does not match: corrupted, forged, wrongly keyed, reordered, or from
    /// another connection.
    #[error("frame {counter} of this connection failed authentication (wrong key, corrupted, reordered or replayed)")]
    BadMac {
        /// The frame's number in this connection.
        counter: u64,
    },
    /// A frame kind this version does not define.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame body does not parse as its kind.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// The frame kind being parsed.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks resumable-stream version {theirs}, we speak {ours}")]
    Version {
        /// Ours.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer's opening names another session.
    #[error("peer opened another session than this stream's")]
    WrongSession,
    /// A frame that is not legal at this point (data before the opening, a second opening).
    #[error("{0} is not allowed at this point of the connection")]
    Unexpected(&'static str),
    /// The peer asks for a replay from a byte we no longer hold (it acknowledged it before,
    /// e.g. it restarted from older state): the bytes in between are gone, so the session
    /// ends rather than lose them silently.
    #[error("peer resumes from byte {resume_from} but bytes before {oldest} were acknowledged and dropped: the session cannot continue without losing bytes")]
    ReplayGap {
        /// Where the peer asked to resume.
        resume_from: u64,
        /// The oldest byte we still hold.
        oldest: u64,
    },
    /// The peer claims to have received or acknowledged bytes we never sent.
    #[error("peer claims byte {claimed} but only {sent} were ever sent")]
    AheadOfSender {
        /// The peer's claim.
        claimed: u64,
        /// Bytes we sent.
        sent: u64,
    },
    /// The peer sent data that does not continue the stream where we stand.
    #[error("peer sent data at byte {got} where byte {expected} was due")]
    OutOfOrder {
        /// Our received count.
        expected: u64,
        /// The frame's offset.
        got: u64,
    },
    /// The peer sent more unacknowledged bytes than the window we announced: it would exceed
    /// our bound on buffered bytes.
    #[error(
        "peer exceeded our window: bytes up to {end} with only {limit} allowed (window {window})"
    )]
    WindowExceeded {
        /// Where the peer's data would end.
        end: u64,
        /// Where our window ends.
        limit: u64,
        /// Our announced window.
        window: u32,
    },
    /// The peer sent data past its own close, or closed twice at different ends.
    #[error("peer sent data or a close past its end at byte {end}")]
    PastEnd {
        /// Where the peer's stream ends.
        end: u64,
    },
    /// A write after [`Stream::close`].
    #[error("write after close")]
    WriteAfterClose,
    /// A call that needs a connection while the stream has none.
    #[error("no connection is attached")]
    Detached,
    /// The configuration or an imported state cannot be used.
    #[error("invalid configuration: {0}")]
    BadConfig(&'static str),
    /// An earlier error ended the session.
    #[error("the session ended earlier: {0}")]
    Failed(Box<Error>),
}

impl Error {
    /// Whether this error ends the session (not only the connection): the two ends' states
    /// disagree, and continuing would lose or repeat bytes.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            Error::ReplayGap { .. }
                | Error::AheadOfSender { .. }
                | Error::OutOfOrder { .. }
                | Error::WindowExceeded { .. }
                | Error::PastEnd { .. }
                | Error::Failed(_)
        )
    }
}

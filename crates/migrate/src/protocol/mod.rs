//! The console-to-console transfer protocol: how a source console hands its session to the
//! destination console over TCP between the two hosts.
//!
//! Sans-I/O: [`Codec`] is fed the bytes read from the connection and gives back messages; it
//! turns messages into bytes to write. It owns no socket, reads no clock and draws no random
//! numbers (the caller supplies the per-connection nonce from the OS's generator).
//!
//! # The exchange
//!
//! ```text
//!  source console                                     destination console (--incoming ADDR)
//!  --------------                                     -------------------
//!  connect ------------------------------------------> accept
//!  Hello{versions, nonce_s, vm_id}  ----->  <-----  Hello{versions, nonce_d, vm_id}
//!      (both sides: highest common version, or VersionMismatch naming both lists;
//!       session key = HMAC(psk, label | version | source Hello | destination Hello))
//!  -- source VM stops for the switchover: freeze, checkpoint --
//!  Snapshot{bytes} --------------------------------->  kept until its own VM runs
//!                                                      -- destination VM runs (RESUME) --
//!                   <--------------------------------  ResendSnapshot (only if it has none)
//!                   <--------------------------------  TakenOver (restored, serving)
//!  release checkpoint, exit
//!
//!  Abort{reason} either way: the sender gives up this migration (e.g. the source VM runs
//!  again); the source keeps serving or keeps its checkpoint (see `phase`).
//! ```
//!
//! # Frames
//!
//! ```text
//!  len: u32 BE | seq: u64 BE | kind: u8 | payload | mac: [u8; 32]
//!  len counts everything after itself (9 + payload + 32) and is at most Config::max_frame.
//!  mac = HMAC-SHA256(key, label | direction | len | seq | kind | payload)
//! ```
//!
//! Each direction numbers its frames from 0 (the Hello); a receiver accepts only the next
//! number, so a frame reordered, dropped or replayed within a connection fails with
//! [`ProtocolError::BadSequence`] (after its MAC was checked). The Hello is keyed with the
//! pre-shared key; every later frame with the session key, which depends on both sides'
//! nonces: a frame replayed from another connection fails with [`ProtocolError::BadMac`].
//! The direction byte stops a frame from being reflected back to its sender.
//!
//! # Versioning policy
//!
//! - The Hello frame's layout (magic `DMCM`, version list, nonce, VM id) and the frame header
//!   never change, in any version: any two releases can always negotiate.
//! - Each side lists every version it speaks; the highest common one is used. None in common
//!   is [`ProtocolError::VersionMismatch`], naming both lists: the migration must not start.
//! - Any change to a message after the Hello (a new kind, a new or changed field) is a new
//!   version number. A release keeps speaking the previous version, so that hosts running
//!   neighbouring releases can migrate in both directions during an upgrade.
//! - An unknown message kind or a payload with bytes left over is an error, never skipped:
//!   console state that one side cannot read must not be dropped silently.
//! - Version 1 is [`VERSION_1`], described by the types in this module; [`VERSION_2`] adds
//!   [`Message::Announce`] and [`Message::Announced`] ([`Message::since_version`]). A message
//!   of a later version than the connection's is refused both ways.

mod codec;
mod message;

pub use codec::{Codec, Config, Role};
pub use message::{AbortReason, Hello, Message};

/// Protocol version 1: the messages of [`Message`].
pub const VERSION_1: u16 = 1;

/// Protocol version 2: version 1 and the migration's announcement from the destination host
/// ([`Message::Announce`], [`Message::Announced`]).
pub const VERSION_2: u16 = 2;
/// The versions this build speaks, lowest first.
pub const SUPPORTED_VERSIONS: &[u16] = &[VERSION_1, VERSION_2];

/// Length of a connection nonce, bytes. Draw it from the OS's random generator.
pub const NONCE_LEN: usize = 32;

/// Length of a frame's HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;

/// Default bound on one frame: a console snapshot with a 4K screen cache and several viewers'
/// socket checkpoints fits well below it.
pub const DEFAULT_MAX_FRAME: u32 = 128 << 20;

/// Bound on a frame before the peer's Hello authenticated it: the largest Hello (every
/// version, the longest VM id) and no more, so an unauthenticated peer cannot make a console
/// buffer megabytes (the frame's HMAC is checked only once it is whole).
pub const MAX_HELLO_FRAME: u32 = 1024;

/// Most versions one Hello may list.
pub const MAX_VERSIONS: usize = 16;

/// Longest VM id, bytes of UTF-8.
pub const MAX_VM_ID: usize = 256;

/// Longest detail text of an [`AbortReason`], bytes of UTF-8.
pub const MAX_ABORT_DETAIL: usize = 1024;

/// Why the transfer protocol refused bytes or a request. After any error the connection is
/// unusable: every later call answers [`ProtocolError::Closed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame announced a length above the bound (or below the smallest frame).
    #[error("frame of {len} bytes is outside the allowed 41..={max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u32,
        /// The bound in force.
        max: u32,
    },
    /// The frame's MAC does not match: corrupted, forged, or from another connection.
    #[error("frame {seq} failed authentication (wrong key, corrupted or replayed from another connection)")]
    BadMac {
        /// The sequence number the frame claimed.
        seq: u64,
    },
    /// An authentic frame arrived out of order: reordered, dropped or replayed.
    #[error("frame numbered {got} where {expected} was due (reordered, dropped or replayed)")]
    BadSequence {
        /// The number expected next.
        expected: u64,
        /// The number the frame carries.
        got: u64,
    },
    /// The two sides speak no common version.
    #[error("no common protocol version: we speak {ours:?}, the peer speaks {theirs:?}")]
    VersionMismatch {
        /// Our list.
        ours: Vec<u16>,
        /// The peer's list.
        theirs: Vec<u16>,
    },
    /// The peer migrates another VM than ours.
    #[error("peer migrates VM {theirs:?}, we expect {ours:?}")]
    VmMismatch {
        /// Our VM id.
        ours: String,
        /// The peer's VM id.
        theirs: String,
    },
    /// A message kind this version does not define.
    #[error("unknown message kind {0}")]
    UnknownMessage(u8),
    /// A payload does not parse as its kind (short, bytes left over, bad UTF-8, bad magic).
    #[error("malformed {kind} payload: {why}")]
    Malformed {
        /// The message kind being parsed.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// A message that is not legal at this point of the exchange (e.g. a second Hello, or a
    /// message before the peer's Hello).
    #[error("{0} is not allowed at this point of the exchange")]
    Unexpected(&'static str),
    /// A message the connection's negotiated version does not have (the other side runs an
    /// older release).
    #[error("{message} needs a later protocol version than this connection's ({version})")]
    NotInVersion {
        /// The message.
        message: &'static str,
        /// The connection's version.
        version: u16,
    },
    /// The configuration cannot be used (no versions, too many, VM id too long...).
    #[error("invalid configuration: {0}")]
    BadConfig(&'static str),
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// An earlier error closed this codec.
    #[error("the codec failed earlier and is closed")]
    Closed,
}

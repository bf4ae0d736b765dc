//! Moving an established TCP connection between hosts with Linux `TCP_REPAIR`.
//!
//! The viewer talks TCP to a service address S that moves with the VM. The connection moves
//! with it, and the viewer's TCP never learns (no SYN, FIN or RST reaches it):
//!
//! ```text
//!  source host A                                destination host B
//!  -------------                                ------------------
//!  Relay::start (optional)
//!  ip addr del S           (A stops answering for S: no RST can come from A)
//!  checkpoint(&sock) ----- Checkpoint (serde) ---> restore(&cp)   (IP_TRANSPARENT: S not
//!  abandon(sock)           (repair mode:             ip addr add S   needed yet)
//!                           closing sends nothing)   announce(eth0, S)   (gratuitous ARP)
//!  relay.forward(B's MAC)  (segments the viewer sent meanwhile) --->
//! ```
//!
//! Order matters (measured, see DESIGN.md): B must own the socket *before* S is announced, or
//! B's kernel answers the viewer's retransmission with a RST; A must stop answering for S
//! *before* the checkpoint (or at least before closing the repaired socket), or a segment
//! arriving in between is acknowledged by A and lost, or answered with a RST.
//!
//! If the migration is aborted, the source restores its own checkpoint ([`restore`], after
//! [`abandon`]) or, if it kept the socket, just leaves repair mode ([`resume`]); then S comes
//! back.
//!
//! Needs `CAP_NET_ADMIN` in the socket's network namespace. Supports established sockets
//! with no FIN sent or received (a console's viewer connection); other states are refused.

mod announce;
mod repair;
mod sys;

use std::fmt;
use std::io;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use announce::{announce, hardware_address, MacAddr, Relay};
pub use repair::{abandon, checkpoint, restore, restore_with, resume, RestoreOptions};

/// Version of [`Checkpoint`]'s encoding, written first by [`Checkpoint::encode`]. Bump it on
/// any change of the struct; [`Checkpoint::decode`] refuses other versions.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Largest queue (receive, or send unacked + unsent) a checkpoint may carry: bigger than any
/// default socket buffer, small enough to refuse absurd input.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// Window scale options of a connection (RFC 7323), as negotiated at its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowScale {
    /// Shift applied to windows the peer advertises to us.
    pub snd: u8,
    /// Shift applied to windows we advertise to the peer.
    pub rcv: u8,
}

/// The window state `TCP_REPAIR_WINDOW` reads and writes (`struct tcp_repair_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The peer's receive window (our send window), unscaled bytes.
    pub snd_wnd: u32,
    /// Largest window the peer ever advertised.
    pub max_window: u32,
    /// Our receive window, bytes.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when our window was last advertised.
    pub rcv_wup: u32,
}

/// Everything needed to recreate one established TCP socket on another host. Crosses hosts:
/// encode with [`Checkpoint::encode`], decode with [`Checkpoint::decode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Our address (the service address and port).
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Sequence number after the last byte in the send queue (`write_seq`).
    pub send_seq: u32,
    /// Sequence number after the last byte received (`rcv_nxt`).
    pub recv_seq: u32,
    /// Bytes received but not yet read by the application.
    #[serde(with = "serde_bytes")]
    pub recv_queue: Vec<u8>,
    /// Bytes sent but not acknowledged: restored as already sent, so they are retransmitted.
    #[serde(with = "serde_bytes")]
    pub send_unacked: Vec<u8>,
    /// Bytes queued but never sent: written again normally after the restore.
    #[serde(with = "serde_bytes")]
    pub send_unsent: Vec<u8>,
    /// Maximum segment size clamp (`TCP_MAXSEG` in repair mode).
    pub mss: u32,
    /// Window scaling, if negotiated.
    pub window_scale: Option<WindowScale>,
    /// Selective acknowledgements negotiated.
    pub sack: bool,
    /// Timestamps negotiated (RFC 7323).
    pub timestamps: bool,
    /// Our timestamp clock (`TCP_TIMESTAMP`), so the peer sees it continue without a jump.
    pub timestamp: u32,
    /// Window state.
    pub window: RepairWindow,
}

impl Checkpoint {
    /// The checkpoint as bytes: the version (postcard varint) and then the fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(&CHECKPOINT_VERSION).unwrap_or_default();
        // Serialising plain integers, addresses and byte strings into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes and validates bytes from [`Checkpoint::encode`]. Refuses other versions,
    /// trailing bytes and values no kernel could have produced.
    pub fn decode(bytes: &[u8]) -> Result<Self, TcpRepairError> {
        let (version, rest) =
            postcard::take_from_bytes::<u32>(bytes).map_err(TcpRepairError::Decode)?;
        if version != CHECKPOINT_VERSION {
            return Err(TcpRepairError::Version {
                found: version,
                supported: CHECKPOINT_VERSION,
            });
        }
        let (cp, rest) =
            postcard::take_from_bytes::<Checkpoint>(rest).map_err(TcpRepairError::Decode)?;
        if !rest.is_empty() {
            return Err(TcpRepairError::Invalid(
                "trailing bytes after the checkpoint",
            ));
        }
        cp.validate()?;
        Ok(cp)
    }

    /// Checks what can be checked without a kernel: lengths, option ranges, address families.
    pub fn validate(&self) -> Result<(), TcpRepairError> {
        let invalid = |what| Err(TcpRepairError::Invalid(what));
        if self.local.is_ipv4() != self.remote.is_ipv4() {
            return invalid("local and remote addresses of different families");
        }
        if self.local.port() == 0 || self.remote.port() == 0 {
            return invalid("port 0");
        }
        if self.recv_queue.len() > MAX_QUEUE_BYTES {
            return invalid("receive queue larger than MAX_QUEUE_BYTES");
        }
        if self
            .send_unacked
            .len()
            .saturating_add(self.send_unsent.len())
            > MAX_QUEUE_BYTES
        {
            return invalid("send queue larger than MAX_QUEUE_BYTES");
        }
        if self.mss == 0 || self.mss > u32::from(u16::MAX) {
            return invalid("MSS out of range");
        }
        if let Some(ws) = self.window_scale {
            // RFC 7323 section 2.3: shifts above 14 are not allowed.
            if ws.snd > 14 || ws.rcv > 14 {
                return invalid("window scale above 14");
            }
        }
        Ok(())
    }

    /// Sequence number of the first byte not yet acknowledged by the peer (`snd_una`).
    pub fn send_una(&self) -> u32 {
        let queued = self
            .send_unacked
            .len()
            .saturating_add(self.send_unsent.len());
        self.send_seq
            .wrapping_sub(u32::try_from(queued).unwrap_or(u32::MAX))
    }
}

/// A step of checkpointing or restoring a socket, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading `TCP_INFO`.
    TcpInfo,
    /// Turning repair mode on.
    RepairOn,
    /// Turning repair mode off.
    RepairOff,
    /// Selecting a queue (`TCP_REPAIR_QUEUE`).
    SelectQueue,
    /// Reading a queue's sequence number (`TCP_QUEUE_SEQ`).
    GetQueueSeq,
    /// Setting a queue's sequence number (`TCP_QUEUE_SEQ`).
    SetQueueSeq,
    /// Measuring a queue (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
    QueueLength,
    /// Reading a queue's bytes (`MSG_PEEK`).
    PeekQueue,
    /// Growing the socket buffers so the queues fit (`SO_SNDBUFFORCE`, `SO_RCVBUFFORCE`).
    Buffers,
    /// Refilling the receive queue.
    RefillRecvQueue,
    /// Refilling the send queue's unacknowledged part (repair mode).
    RefillSendQueue,
    /// Writing the send queue's never-sent part (normal mode).
    SendUnsent,
    /// Reading `TCP_MAXSEG`.
    GetMss,
    /// Reading or setting `TCP_TIMESTAMP`.
    Timestamp,
    /// Reading `TCP_REPAIR_WINDOW`.
    GetWindow,
    /// Setting `TCP_REPAIR_WINDOW`.
    SetWindow,
    /// Setting `TCP_REPAIR_OPTIONS`.
    SetOptions,
    /// Reading the local or peer address.
    Addresses,
    /// Creating the socket.
    Socket,
    /// Setting `IP_TRANSPARENT`.
    Transparent,
    /// Binding the local address.
    Bind,
    /// Connecting (in repair mode: no SYN).
    Connect,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::TcpInfo => "reading TCP_INFO",
            Step::RepairOn => "turning TCP_REPAIR on",
            Step::RepairOff => "turning TCP_REPAIR off",
            Step::SelectQueue => "selecting a queue (TCP_REPAIR_QUEUE)",
            Step::GetQueueSeq => "reading a queue sequence number (TCP_QUEUE_SEQ)",
            Step::SetQueueSeq => "setting a queue sequence number (TCP_QUEUE_SEQ)",
            Step::QueueLength => "measuring a queue (SIOCINQ/SIOCOUTQ/SIOCOUTQNSD)",
            Step::PeekQueue => "reading a queue (MSG_PEEK)",
            Step::Buffers => "growing the socket buffers (SO_SNDBUFFORCE/SO_RCVBUFFORCE)",
            Step::RefillRecvQueue => "refilling the receive queue",
            Step::RefillSendQueue => "refilling the unacknowledged send queue",
            Step::SendUnsent => "sending the never-sent part of the send queue",
            Step::GetMss => "reading TCP_MAXSEG",
            Step::Timestamp => "reading or setting TCP_TIMESTAMP",
            Step::GetWindow => "reading TCP_REPAIR_WINDOW",
            Step::SetWindow => "setting TCP_REPAIR_WINDOW",
            Step::SetOptions => "setting TCP_REPAIR_OPTIONS",
            Step::Addresses => "reading the socket's addresses",
            Step::Socket => "creating the socket",
            Step::Transparent => "setting IP_TRANSPARENT",
            Step::Bind => "binding the local address",
            Step::Connect => "connecting in repair mode",
        })
    }
}

/// Errors of checkpointing, restoring and announcing a TCP connection.
#[derive(Debug, thiserror::Error)]
pub enum TcpRepairError {
    /// The caller lacks `CAP_NET_ADMIN` in the socket's network namespace.
    #[error(
        "{step}: TCP_REPAIR needs CAP_NET_ADMIN: run as root or in a user namespace that owns \
         the netns"
    )]
    NotPermitted {
        /// The step that was refused.
        step: Step,
        /// The kernel's error (EPERM).
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{step}: {source}")]
    Sys {
        /// The step that failed.
        step: Step,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The socket is not an established TCP connection (TCP state number from `TCP_INFO`).
    #[error("the socket is not an established TCP connection (TCP state {0})")]
    NotEstablished(u8),
    /// The checkpoint's version is not the one this build reads.
    #[error("checkpoint version {found} is not supported (this build reads {supported})")]
    Version {
        /// Version found in the bytes.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The checkpoint bytes do not decode.
    #[error("decoding a checkpoint: {0}")]
    Decode(#[source] postcard::Error),
    /// The checkpoint holds values no kernel could have produced.
    #[error("invalid checkpoint: {0}")]
    Invalid(&'static str),
    /// Sending a gratuitous ARP or relaying frames failed.
    #[error("{what}: {source}")]
    Link {
        /// What was being done.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl TcpRepairError {
    /// Wraps a failed step's error; EPERM becomes [`TcpRepairError::NotPermitted`].
    pub(crate) fn sys(step: Step) -> impl FnOnce(io::Error) -> Self {
        move |source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                TcpRepairError::NotPermitted { step, source }
            } else {
                TcpRepairError::Sys { step, source }
            }
        }
    }

    /// The step that failed, for errors of a system call.
    pub fn step(&self) -> Option<Step> {
        match self {
            TcpRepairError::NotPermitted { step, .. } | TcpRepairError::Sys { step, .. } => {
                Some(*step)
            }
            _ => None,
        }
    }
}

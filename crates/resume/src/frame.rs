//! The frames and their bodies (the layer under the MAC; see `wire` for the envelope).
//!
//! ```text
//!  envelope: len: u32 BE | kind: u8 | body | mac: [u8; 32]      (len counts kind, body, mac)
//!  kind 1 Hello : "DMRS" | version u16 | session [16] | nonce [32] | window u32
//!  kind 2 Resume: "DMRS" | version u16 | session [16] | nonce [32] | window u32
//!                 | received u64 | acked u64
//!  kind 3 Data  : offset u64 | bytes (1..=MAX_DATA)
//!  kind 4 Ack   : acked u64
//!  kind 5 Close : end u64
//!  kind 6 Moved : family u8 (4 or 6) | address (4 or 16) | port u16     (console → gateway)
//! ```
//!
//! All integers are big-endian. A body with bytes left over is malformed, never skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Error, SessionId, MAX_DATA, NONCE_LEN, SESSION_LEN, VERSION};

/// Magic at the start of both opening frames.
pub const MAGIC: [u8; 4] = *b"DMRS";

pub(crate) const KIND_HELLO: u8 = 1;
pub(crate) const KIND_RESUME: u8 = 2;
pub(crate) const KIND_DATA: u8 = 3;
pub(crate) const KIND_ACK: u8 = 4;
pub(crate) const KIND_CLOSE: u8 = 5;
pub(crate) const KIND_MOVED: u8 = 6;

/// Length of a Resume body, the longest opening.
pub(crate) const RESUME_BODY: usize = 4 + 2 + SESSION_LEN + NONCE_LEN + 4 + 8 + 8;

/// The first frame each end sends on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// The session the connection carries.
    pub session: SessionId,
    /// The sender's fresh per-connection nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The sender's receive window: the most bytes the receiver of this opening may have
    /// sent and not acknowledged by the sender.
    pub window: u32,
    /// Bytes of the peer's stream the sender has received: the peer replays from here.
    pub received: u64,
    /// Bytes of the peer's stream the sender has consumed: the peer may drop them.
    pub acked: u64,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first opening of a new session (received and acked are 0).
    Hello(Opening),
    /// The opening of a later connection of the session.
    Resume(Opening),
    /// Application bytes starting at byte `offset` of the sender's stream.
    Data {
        /// Index of the first byte in the sender's stream.
        offset: u64,
        /// The bytes, 1 to [`MAX_DATA`].
        bytes: Vec<u8>,
    },
    /// The receiver consumed the sender's bytes up to `acked` (exclusive).
    Ack {
        /// Bytes consumed.
        acked: u64,
    },
    /// The sender's stream ends after `end` bytes (sent after all of them). It counts as
    /// position `end` of the stream: holding it, an end says `received = end + 1`; having
    /// read up to it, `acked = end + 1`.
    Close {
        /// Length of the sender's whole stream.
        end: u64,
    },
    /// Console → gateway: the session now lives on the console at `to` (its VM moved there);
    /// the sender closes this connection next, and the gateway resumes there.
    Moved {
        /// Where the destination console accepts the gateway's streams.
        to: SocketAddr,
    },
}

impl Frame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => KIND_HELLO,
            Frame::Resume(_) => KIND_RESUME,
            Frame::Data { .. } => KIND_DATA,
            Frame::Ack { .. } => KIND_ACK,
            Frame::Close { .. } => KIND_CLOSE,
            Frame::Moved { .. } => KIND_MOVED,
        }
    }

    /// Appends the body to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello(o) | Frame::Resume(o) => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&VERSION.to_be_bytes());
                out.extend_from_slice(&o.session);
                out.extend_from_slice(&o.nonce);
                out.extend_from_slice(&o.window.to_be_bytes());
                if let Frame::Resume(_) = self {
                    out.extend_from_slice(&o.received.to_be_bytes());
                    out.extend_from_slice(&o.acked.to_be_bytes());
                }
            }
            Frame::Data { offset, bytes } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Ack { acked: n } | Frame::Close { end: n } => {
                out.extend_from_slice(&n.to_be_bytes())
            }
            Frame::Moved { to } => {
                match to.ip() {
                    IpAddr::V4(a) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
                out.extend_from_slice(&to.port().to_be_bytes());
            }
        }
    }

    /// Parses a body of the given kind. Never panics; refuses bytes left over.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Frame, Error> {
        let mut r = Reader {
            kind: kind_name(kind)?,
            rest: body,
        };
        let frame = match kind {
            KIND_HELLO | KIND_RESUME => {
                if r.take::<4>()? != MAGIC {
                    return Err(r.malformed("bad magic"));
                }
                let version = u16::from_be_bytes(r.take()?);
                if version != VERSION {
                    return Err(Error::Version {
                        ours: VERSION,
                        theirs: version,
                    });
                }
                let session = r.take()?;
                let nonce = r.take()?;
                let window = u32::from_be_bytes(r.take()?);
                if window == 0 {
                    return Err(r.malformed("a window of 0 bytes"));
                }
                if kind == KIND_HELLO {
                    Frame::Hello(Opening {
                        session,
                        nonce,
                        window,
                        received: 0,
                        acked: 0,
                    })
                } else {
                    let received = u64::from_be_bytes(r.take()?);
                    let acked = u64::from_be_bytes(r.take()?);
                    if acked > received {
                        return Err(r.malformed("acknowledges more than it received"));
                    }
                    Frame::Resume(Opening {
                        session,
                        nonce,
                        window,
                        received,
                        acked,
                    })
                }
            }
            KIND_DATA => {
                let offset = u64::from_be_bytes(r.take()?);
                let bytes = std::mem::take(&mut r.rest);
                if bytes.is_empty() || bytes.len() > MAX_DATA {
                    return Err(r.malformed("carries 0 or more than MAX_DATA bytes"));
                }
                // At most MAX_DATA bytes: the length always fits a u64.
                let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                if offset.checked_add(len).is_none() {
                    return Err(r.malformed("ends past byte 2^64"));
                }
                Frame::Data {
                    offset,
                    bytes: bytes.to_vec(),
                }
            }
            KIND_ACK => Frame::Ack {
                acked: u64::from_be_bytes(r.take()?),
            },
            KIND_MOVED => {
                let ip = match r.take::<1>()? {
                    [4] => IpAddr::V4(Ipv4Addr::from(r.take::<4>()?)),
                    [6] => IpAddr::V6(Ipv6Addr::from(r.take::<16>()?)),
                    _ => return Err(r.malformed("an address family other than 4 or 6")),
                };
                let port = u16::from_be_bytes(r.take()?);
                Frame::Moved {
                    to: SocketAddr::new(ip, port),
                }
            }
            _ => Frame::Close {
                end: u64::from_be_bytes(r.take()?),
            },
        };
        if !r.rest.is_empty() {
            return Err(r.malformed("bytes left over"));
        }
        Ok(frame)
    }
}

/// The name of a kind, for errors; unknown kinds are refused.
fn kind_name(kind: u8) -> Result<&'static str, Error> {
    Ok(match kind {
        KIND_HELLO => "Hello",
        KIND_RESUME => "Resume",
        KIND_DATA => "Data",
        KIND_ACK => "Ack",
        KIND_CLOSE => "Close",
        KIND_MOVED => "Moved",
        k => return Err(Error::UnknownKind(k)),
    })
}

/// Reads fixed-size fields off the front of a body.
struct Reader<'a> {
    kind: &'static str,
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(self.malformed("too short"))?;
        self.rest = tail;
        Ok(*head)
    }

    fn malformed(&self, why: &'static str) -> Error {
        Error::Malformed {
            kind: self.kind,
            why,
        }
    }
}

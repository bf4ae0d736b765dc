//! The messages of protocol version 1 and their payload encodings.

use super::{ProtocolError, MAX_ABORT_DETAIL, MAX_VERSIONS, MAX_VM_ID, NONCE_LEN};

/// First bytes of every Hello payload, in every version.
const HELLO_MAGIC: &[u8; 4] = b"DMCM";

pub(crate) const KIND_HELLO: u8 = 0;
// Kind 1 was a screen pre-copy that nothing ever sent; reserved, refused as unknown.
const KIND_SNAPSHOT: u8 = 2;
const KIND_TAKEN_OVER: u8 = 3;
const KIND_ABORT: u8 = 4;
const KIND_RESEND_SNAPSHOT: u8 = 5;
const KIND_ANNOUNCE: u8 = 6;
const KIND_ANNOUNCED: u8 = 7;

/// The first message of each side: what it speaks and which VM it migrates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol versions the sender speaks.
    pub versions: Vec<u16>,
    /// The sender's fresh per-connection nonce; both nonces key the rest of the connection.
    pub nonce: [u8; NONCE_LEN],
    /// The VM whose console moves; both sides must agree.
    pub vm_id: String,
}

/// Why a side gives up the migration, as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The source VM runs again (the migration failed or was cancelled): the source serves.
    SourceResumed,
    /// QEMU reported the migration failed before the switchover.
    MigrationFailed,
    /// The destination console cannot take the session (says why).
    DestinationFailed(String),
    /// A code this build does not know, kept as received.
    Unknown(u8),
}

/// One message of the transfer protocol (version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Both ways, first: versions, nonce, VM id. Sent by [`super::Codec::start`] only.
    Hello(Hello),
    /// Source → destination: the final console snapshot taken at the freeze (a hand-over
    /// minus the sockets, plus the viewers' TCP checkpoints).
    Snapshot {
        /// The encoded snapshot.
        bytes: Vec<u8>,
    },
    /// Destination → source: its VM runs and it serves the session; the source may release
    /// its checkpoint and exit.
    TakenOver {
        /// The destination host's hardware address on the service address's link, when the
        /// viewers' connections moved with the address: the source hands it the segments it
        /// caught for the address during the move (see `tcp::Relay`). Six bytes, or none.
        relay_to: Option<[u8; 6]>,
    },
    /// Destination → source: its VM runs and it has no snapshot (e.g. it was restarted);
    /// send the one kept since the freeze.
    ResendSnapshot,
    /// Either way: the sender gives up this migration.
    Abort {
        /// Why.
        reason: AbortReason,
    },
    /// To the console serving the VM, from its destination host before the migration starts
    /// (libvirt's hook there): a migration of this VM is being prepared. The serving console
    /// moves input to the exactly-once lane and answers [`Message::Announced`] once nothing it
    /// sent on the fast lane is unconfirmed. Version 2.
    Announce,
    /// The answer to [`Message::Announce`]: from now until the migration ends, a switchover
    /// `STOP` leaves no input uncertain. Version 2.
    Announced,
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Snapshot { .. } => "Snapshot",
            Message::TakenOver { .. } => "TakenOver",
            Message::ResendSnapshot => "ResendSnapshot",
            Message::Abort { .. } => "Abort",
            Message::Announce => "Announce",
            Message::Announced => "Announced",
        }
    }

    /// The first protocol version that has this message.
    pub fn since_version(&self) -> u16 {
        match self {
            Message::Announce | Message::Announced => super::VERSION_2,
            _ => super::VERSION_1,
        }
    }

    /// Appends the payload to `out` and returns the kind byte.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<u8, ProtocolError> {
        Ok(match self {
            Message::Hello(h) => {
                h.validate()?;
                out.extend_from_slice(HELLO_MAGIC);
                // Lengths were checked against their (small) bounds by `validate`.
                out.push(u8::try_from(h.versions.len()).map_err(|_| bad_hello())?);
                for v in &h.versions {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&h.nonce);
                put_str(out, &h.vm_id)?;
                KIND_HELLO
            }
            Message::Snapshot { bytes } => {
                out.extend_from_slice(bytes);
                KIND_SNAPSHOT
            }
            Message::TakenOver { relay_to } => {
                if let Some(mac) = relay_to {
                    out.extend_from_slice(mac);
                }
                KIND_TAKEN_OVER
            }
            Message::ResendSnapshot => KIND_RESEND_SNAPSHOT,
            Message::Announce => KIND_ANNOUNCE,
            Message::Announced => KIND_ANNOUNCED,
            Message::Abort { reason } => {
                let (code, detail) = match reason {
                    AbortReason::SourceResumed => (1, ""),
                    AbortReason::MigrationFailed => (2, ""),
                    AbortReason::DestinationFailed(d) => (3, d.as_str()),
                    AbortReason::Unknown(c) => (*c, ""),
                };
                if detail.len() > MAX_ABORT_DETAIL {
                    return Err(ProtocolError::BadConfig(
                        "abort detail longer than MAX_ABORT_DETAIL",
                    ));
                }
                out.push(code);
                put_str(out, detail)?;
                KIND_ABORT
            }
        })
    }

    /// Parses a payload of `kind`; every byte must be consumed.
    pub(crate) fn decode(kind: u8, payload: &[u8]) -> Result<Message, ProtocolError> {
        let mut r = Reader {
            rest: payload,
            kind: kind_name(kind)?,
        };
        let msg = match kind {
            KIND_HELLO => {
                if r.take(4)? != HELLO_MAGIC {
                    return Err(r.malformed("bad magic"));
                }
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_VERSIONS {
                    return Err(r.malformed("version count outside 1..=16"));
                }
                let mut versions = Vec::with_capacity(n);
                for _ in 0..n {
                    versions.push(r.u16()?);
                }
                let mut nonce = [0; NONCE_LEN];
                nonce.copy_from_slice(r.take(NONCE_LEN)?);
                let vm_id = r.string(MAX_VM_ID)?;
                Message::Hello(Hello {
                    versions,
                    nonce,
                    vm_id,
                })
            }
            KIND_SNAPSHOT => Message::Snapshot {
                bytes: r.rest().to_vec(),
            },
            KIND_TAKEN_OVER => {
                let relay_to = match r.rest.len() {
                    0 => None,
                    6 => {
                        let mut mac = [0; 6];
                        mac.copy_from_slice(r.take(6)?);
                        Some(mac)
                    }
                    _ => return Err(r.malformed("a hardware address is 6 bytes")),
                };
                Message::TakenOver { relay_to }
            }
            KIND_RESEND_SNAPSHOT => Message::ResendSnapshot,
            KIND_ANNOUNCE => Message::Announce,
            KIND_ANNOUNCED => Message::Announced,
            _ => {
                // KIND_ABORT: `kind_name` refused every other value.
                let code = r.u8()?;
                let detail = r.string(MAX_ABORT_DETAIL)?;
                let reason = match code {
                    1 => AbortReason::SourceResumed,
                    2 => AbortReason::MigrationFailed,
                    3 => AbortReason::DestinationFailed(detail),
                    c => AbortReason::Unknown(c),
                };
                Message::Abort { reason }
            }
        };
        if !r.rest.is_empty() {
            return Err(r.malformed("bytes left over"));
        }
        Ok(msg)
    }
}

impl Hello {
    /// Checks the bounds every Hello must respect.
    pub(crate) fn validate(&self) -> Result<(), ProtocolError> {
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(ProtocolError::BadConfig(
                "between 1 and MAX_VERSIONS versions required",
            ));
        }
        if self.vm_id.len() > MAX_VM_ID {
            return Err(ProtocolError::BadConfig(
                "VM id longer than MAX_VM_ID bytes",
            ));
        }
        Ok(())
    }
}

fn bad_hello() -> ProtocolError {
    ProtocolError::BadConfig("between 1 and MAX_VERSIONS versions required")
}

fn kind_name(kind: u8) -> Result<&'static str, ProtocolError> {
    Ok(match kind {
        KIND_HELLO => "Hello",
        KIND_SNAPSHOT => "Snapshot",
        KIND_TAKEN_OVER => "TakenOver",
        KIND_ABORT => "Abort",
        KIND_RESEND_SNAPSHOT => "ResendSnapshot",
        KIND_ANNOUNCE => "Announce",
        KIND_ANNOUNCED => "Announced",
        other => return Err(ProtocolError::UnknownMessage(other)),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), ProtocolError> {
    let len = u16::try_from(s.len()).map_err(|_| ProtocolError::BadConfig("string too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    rest: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn malformed(&self, why: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            kind: self.kind,
            why,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(self.malformed("payload too short"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let mut b = [0; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(b))
    }

    fn string(&mut self, max: usize) -> Result<String, ProtocolError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(self.malformed("string longer than its bound"));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed("string is not UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

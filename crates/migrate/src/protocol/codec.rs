//! Framing, authentication and version negotiation: the sans-I/O [`Codec`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::KIND_HELLO;
use super::{
    Hello, Message, ProtocolError, DEFAULT_MAX_FRAME, MAC_LEN, MAX_HELLO_FRAME, NONCE_LEN,
    SUPPORTED_VERSIONS,
};

type HmacSha256 = Hmac<Sha256>;

/// Domain label of every frame MAC.
const FRAME_LABEL: &[u8] = b"dmore-comigrate frame";
/// Domain label of the session key derivation.
const SESSION_LABEL: &[u8] = b"dmore-comigrate session";
/// Bytes of a frame after its length field and before its payload: seq (8) + kind (1).
const HEADER: usize = 9;
/// Smallest value of a frame's length field: header and MAC, empty payload.
const MIN_FRAME: u32 = 41;

/// Which end of the transfer this codec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The console whose VM leaves (it connects).
    Source,
    /// The console whose VM arrives (it listens).
    Destination,
}

impl Role {
    /// The direction byte MAC'd into the frames this role sends.
    fn direction(self) -> u8 {
        match self {
            Role::Source => 0,
            Role::Destination => 1,
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        }
    }
}

/// What a [`Codec`] needs to know before the first byte.
#[derive(Clone)]
pub struct Config {
    /// Our end.
    pub role: Role,
    /// The pre-shared key both consoles were given (any length; 32 random bytes is right).
    pub psk: Vec<u8>,
    /// The VM whose console moves; the peer's Hello must name the same one.
    pub vm_id: String,
    /// Versions we offer, each one in [`SUPPORTED_VERSIONS`] (default: all of them).
    pub versions: Vec<u16>,
    /// Largest frame accepted or sent (the length field's value).
    pub max_frame: u32,
}

impl Config {
    /// A configuration with every supported version and the default frame bound.
    pub fn new(role: Role, psk: impl Into<Vec<u8>>, vm_id: impl Into<String>) -> Self {
        Config {
            role,
            psk: psk.into(),
            vm_id: vm_id.into(),
            versions: SUPPORTED_VERSIONS.to_vec(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Config")
            .field("role", &self.role)
            .field("vm_id", &self.vm_id)
            .field("versions", &self.versions)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

/// One connection's protocol state: frames bytes out, checks and parses bytes in.
///
/// Call order: [`Codec::start`] once and write its bytes; then, for every read,
/// [`Codec::feed`] the bytes and call [`Codec::poll_message`] until it answers `Ok(None)`.
/// The first message is always the peer's [`Message::Hello`] (already checked: VM id,
/// versions); [`Codec::encode`] works from then on. At end of stream, [`Codec::end_of_stream`]
/// says whether a frame was cut. Any error closes the codec.
pub struct Codec {
    config: Config,
    nonce: [u8; NONCE_LEN],
    /// Our Hello payload, once started (part of the session key derivation).
    own_hello: Option<Vec<u8>>,
    /// Negotiated version and session key, once the peer's Hello is in.
    session: Option<(u16, [u8; 32])>,
    send_seq: u64,
    recv_seq: u64,
    buf: Vec<u8>,
    closed: bool,
}

impl Codec {
    /// A codec for one connection. `nonce` must be fresh for every connection (from the OS's
    /// random generator): it is what makes frames of another connection fail.
    pub fn new(config: Config, nonce: [u8; NONCE_LEN]) -> Result<Codec, ProtocolError> {
        if config
            .versions
            .iter()
            .any(|v| !SUPPORTED_VERSIONS.contains(v))
        {
            return Err(ProtocolError::BadConfig(
                "a version this build does not speak",
            ));
        }
        if config.max_frame < MIN_FRAME {
            return Err(ProtocolError::BadConfig(
                "max_frame below the smallest frame",
            ));
        }
        Hello {
            versions: config.versions.clone(),
            nonce,
            vm_id: config.vm_id.clone(),
        }
        .validate()?;
        Ok(Codec {
            config,
            nonce,
            own_hello: None,
            session: None,
            send_seq: 0,
            recv_seq: 0,
            buf: Vec::new(),
            closed: false,
        })
    }

    /// Our Hello frame: the first bytes to write, once.
    pub fn start(&mut self) -> Result<Vec<u8>, ProtocolError> {
        if self.own_hello.is_some() {
            return Err(ProtocolError::Unexpected("a second start"));
        }
        let hello = Message::Hello(Hello {
            versions: self.config.versions.clone(),
            nonce: self.nonce,
            vm_id: self.config.vm_id.clone(),
        });
        let mut payload = Vec::new();
        hello.encode_payload(&mut payload)?;
        let key = self.config.psk.clone();
        let frame = self.frame(&key, KIND_HELLO, &payload)?;
        self.own_hello = Some(payload);
        Ok(frame)
    }

    /// The negotiated version, once the peer's Hello is in.
    pub fn version(&self) -> Option<u16> {
        self.session.map(|(v, _)| v)
    }

    /// Appends bytes read from the connection. Call [`Codec::poll_message`] until it answers
    /// `Ok(None)` after each feed: the buffer holds at most what was fed and not yet parsed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete, authentic, in-order message, or `Ok(None)` until more bytes come.
    pub fn poll_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.closed {
            return Err(ProtocolError::Closed);
        }
        let res = self.parse();
        if res.is_err() {
            self.closed = true;
            self.buf = Vec::new();
        }
        res
    }

    /// Frames `msg` for writing. Not for [`Message::Hello`] (see [`Codec::start`]); only
    /// after the peer's Hello. A message over the frame bound is refused and the codec stays
    /// usable.
    pub fn encode(&mut self, msg: &Message) -> Result<Vec<u8>, ProtocolError> {
        if self.closed {
            return Err(ProtocolError::Closed);
        }
        if matches!(msg, Message::Hello(_)) {
            return Err(ProtocolError::Unexpected("Hello outside start"));
        }
        let Some((version, key)) = self.session else {
            return Err(ProtocolError::Unexpected(
                "a message before the Hello exchange",
            ));
        };
        if msg.since_version() > version {
            return Err(ProtocolError::NotInVersion {
                message: msg.name(),
                version,
            });
        }
        let mut payload = Vec::new();
        let kind = msg.encode_payload(&mut payload)?;
        self.frame(&key, kind, &payload)
    }

    /// Frames any `kind` and `payload`, signed as [`Codec::encode`] signs: how a fuzzer plays
    /// an authenticated peer that sends malformed messages. Only with the `fuzzing` feature.
    #[cfg(feature = "fuzzing")]
    pub fn encode_raw(&mut self, kind: u8, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let Some((_, key)) = self.session else {
            return Err(ProtocolError::Unexpected(
                "a message before the Hello exchange",
            ));
        };
        self.frame(&key, kind, payload)
    }

    /// At end of stream: an error if a frame was cut short.
    pub fn end_of_stream(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Truncated(self.buf.len()))
        }
    }

    fn frame(&mut self, key: &[u8], kind: u8, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let len = HEADER
            .checked_add(payload.len())
            .and_then(|n| n.checked_add(MAC_LEN))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= self.config.max_frame)
            .ok_or(ProtocolError::FrameTooLarge {
                len: u32::MAX,
                max: self.config.max_frame,
            })?;
        let seq = self.send_seq;
        let mut m = mac_start(key, self.config.role, len, seq, kind)?;
        m.update(payload);
        let mac = m.finalize().into_bytes();
        let mut out = Vec::with_capacity(4 + HEADER + payload.len() + MAC_LEN);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out.extend_from_slice(&mac);
        self.send_seq = seq.wrapping_add(1);
        Ok(out)
    }

    fn parse(&mut self) -> Result<Option<Message>, ProtocolError> {
        let Some(len_bytes) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut lb = [0; 4];
        lb.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(lb);
        let max = match self.session {
            None => self.config.max_frame.min(MAX_HELLO_FRAME),
            Some(_) => self.config.max_frame,
        };
        if !(MIN_FRAME..=max).contains(&len) {
            return Err(ProtocolError::FrameTooLarge { len, max });
        }
        let total = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_add(4))
            .ok_or(ProtocolError::FrameTooLarge { len, max })?;
        let Some(frame) = self.buf.get(4..total) else {
            return Ok(None);
        };
        // `len >= MIN_FRAME` guarantees both splits; a short frame is refused, not a panic.
        let short = ProtocolError::FrameTooLarge { len, max };
        let (head, rest) = frame.split_at_checked(HEADER).ok_or(short.clone())?;
        let (payload, mac) = rest
            .split_at_checked(rest.len().saturating_sub(MAC_LEN))
            .ok_or(short)?;
        let (seq_bytes, kind) = head.split_at(8);
        let mut sb = [0; 8];
        sb.copy_from_slice(seq_bytes);
        let seq = u64::from_be_bytes(sb);
        let kind = kind.first().copied().unwrap_or_default();

        // The key is chosen by where we are, never by the (untrusted) kind byte.
        let key: Vec<u8> = match self.session {
            None => self.config.psk.clone(),
            Some((_, k)) => k.to_vec(),
        };
        let mut m = mac_start(&key, self.config.role.peer(), len, seq, kind)?;
        m.update(payload);
        m.verify_slice(mac)
            .map_err(|_| ProtocolError::BadMac { seq })?;
        if seq != self.recv_seq {
            return Err(ProtocolError::BadSequence {
                expected: self.recv_seq,
                got: seq,
            });
        }
        let msg = Message::decode(kind, payload)?;
        let payload = payload.to_vec();
        self.buf.drain(..total);
        self.recv_seq = self.recv_seq.wrapping_add(1);

        match (&msg, self.session) {
            (Message::Hello(h), None) => self.accept_hello(h, &payload)?,
            (_, None) => {
                return Err(ProtocolError::Unexpected(
                    "a message before the peer's Hello",
                ))
            }
            (Message::Hello(_), Some(_)) => {
                return Err(ProtocolError::Unexpected("a second Hello"))
            }
            (m, Some((version, _))) if m.since_version() > version => {
                return Err(ProtocolError::NotInVersion {
                    message: m.name(),
                    version,
                })
            }
            (_, Some(_)) => {}
        }
        Ok(Some(msg))
    }

    /// Checks the peer's Hello, negotiates the version and derives the session key.
    fn accept_hello(&mut self, h: &Hello, peer_payload: &[u8]) -> Result<(), ProtocolError> {
        let Some(own) = self.own_hello.as_deref() else {
            return Err(ProtocolError::Unexpected("receiving before start"));
        };
        if h.vm_id != self.config.vm_id {
            return Err(ProtocolError::VmMismatch {
                ours: self.config.vm_id.clone(),
                theirs: h.vm_id.clone(),
            });
        }
        let Some(version) = self
            .config
            .versions
            .iter()
            .filter(|v| h.versions.contains(v))
            .max()
            .copied()
        else {
            return Err(ProtocolError::VersionMismatch {
                ours: self.config.versions.clone(),
                theirs: h.versions.clone(),
            });
        };
        let (src, dst) = match self.config.role {
            Role::Source => (own, peer_payload),
            Role::Destination => (peer_payload, own),
        };
        let mut m = HmacSha256::new_from_slice(&self.config.psk)
            .map_err(|_| ProtocolError::BadConfig("unusable key"))?;
        m.update(SESSION_LABEL);
        m.update(&version.to_be_bytes());
        for part in [src, dst] {
            // Hello payloads are bounded well below u32::MAX by MAX_VERSIONS and MAX_VM_ID.
            m.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            m.update(part);
        }
        let mut key = [0; 32];
        key.copy_from_slice(&m.finalize().into_bytes());
        self.session = Some((version, key));
        Ok(())
    }
}

/// A MAC over a frame's header, ready for its payload.
fn mac_start(
    key: &[u8],
    sender: Role,
    len: u32,
    seq: u64,
    kind: u8,
) -> Result<HmacSha256, ProtocolError> {
    // HMAC takes keys of any length; the error exists only in the generic interface.
    let mut m =
        HmacSha256::new_from_slice(key).map_err(|_| ProtocolError::BadConfig("unusable key"))?;
    m.update(FRAME_LABEL);
    m.update(&[sender.direction()]);
    m.update(&len.to_be_bytes());
    m.update(&seq.to_be_bytes());
    m.update(&[kind]);
    Ok(m)
}

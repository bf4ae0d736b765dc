//! The authenticated envelope around every frame, and the per-connection key.
//!
//! ```text
//!  len: u32 BE | kind: u8 | body | mac: [u8; 32]
//!  mac = HMAC-SHA256(key, "dmore-resume frame" | direction u8 | counter u64 | len | kind | body)
//! ```
//!
//! `counter` is the frame's number in its direction of its connection, from 0 (the opening);
//! it is not sent, so a frame dropped, reordered or replayed within a connection fails its MAC.
//! The openings are keyed with the pre-shared key; every later frame with the connection key,
//! `HMAC(psk, "dmore-resume connection" | gateway opening | console opening)`, which depends
//! on both ends' fresh nonces: a frame from another connection fails too. `direction` stops a
//! frame from being reflected back to its sender.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{Frame, RESUME_BODY};
use crate::{Config, Error, Role, SessionId, MAC_LEN, MAX_DATA};

type HmacSha256 = Hmac<Sha256>;

const FRAME_LABEL: &[u8] = b"dmore-resume frame";
const CONNECTION_LABEL: &[u8] = b"dmore-resume connection";

/// Smallest value of the length field: a kind byte and the MAC.
pub(crate) const MIN_FRAME: u32 = 1 + MAC_LEN as u32;
/// Largest frame before the peer's opening authenticated: a Resume.
pub(crate) const MAX_OPENING_FRAME: u32 = MIN_FRAME + RESUME_BODY as u32;
/// Largest frame: a full Data frame.
pub(crate) const MAX_FRAME: u32 = MIN_FRAME + 8 + MAX_DATA as u32;

/// A frame authenticated and split off the front of a buffer.
pub(crate) struct Unsealed<'a> {
    /// Bytes of the buffer the frame took.
    pub consumed: usize,
    /// Its kind byte.
    pub kind: u8,
    /// Its body.
    pub body: &'a [u8],
}

fn mac_start(key: &[u8], sender: Role, counter: u64, len: u32, kind: u8) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(FRAME_LABEL);
    m.update(&[sender.direction()]);
    m.update(&counter.to_be_bytes());
    m.update(&len.to_be_bytes());
    m.update(&[kind]);
    m
}

/// Frames and signs a kind and body. Bodies are at most a Data frame's, so `len` fits.
pub(crate) fn seal_raw(key: &[u8], sender: Role, counter: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(1 + body.len() + MAC_LEN).unwrap_or(u32::MAX);
    let mut m = mac_start(key, sender, counter, len, kind);
    m.update(body);
    let mut out = Vec::with_capacity(5 + body.len() + MAC_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

/// Frames and signs a frame.
pub(crate) fn seal(key: &[u8], sender: Role, counter: u64, frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    frame.encode_body(&mut body);
    seal_raw(key, sender, counter, frame.kind(), &body)
}

/// The first frame in `buf`, authenticated: `Ok(None)` while it is incomplete. The length is
/// checked against `max` before anything is buffered beyond it.
pub(crate) fn unseal<'a>(
    buf: &'a [u8],
    key: &[u8],
    sender: Role,
    counter: u64,
    max: u32,
) -> Result<Option<Unsealed<'a>>, Error> {
    let Some((len_bytes, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*len_bytes);
    let bad_len = Error::FrameLength {
        len,
        min: MIN_FRAME,
        max,
    };
    if !(MIN_FRAME..=max).contains(&len) {
        return Err(bad_len);
    }
    let Some(frame) = usize::try_from(len).ok().and_then(|n| rest.get(..n)) else {
        return Ok(None);
    };
    let (kind, rest) = frame.split_first().ok_or(bad_len.clone())?;
    let (body, mac) = rest
        .split_at_checked(rest.len().saturating_sub(MAC_LEN))
        .ok_or(bad_len)?;
    let mut m = mac_start(key, sender, counter, len, *kind);
    m.update(body);
    m.verify_slice(mac).map_err(|_| Error::BadMac { counter })?;
    Ok(Some(Unsealed {
        consumed: 4 + frame.len(),
        kind: *kind,
        body,
    }))
}

/// The connection key, from both openings (kind byte and body each).
pub(crate) fn connection_key(psk: &[u8], gateway: &[u8], console: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(psk).expect("HMAC takes keys of any length");
    m.update(CONNECTION_LABEL);
    for part in [gateway, console] {
        // Openings are at most RESUME_BODY + 1 bytes.
        m.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// What a new connection's opening asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked {
    /// The session.
    pub session: SessionId,
    /// Whether it is a Resume (an existing session), not a Hello (a new one). A console
    /// that does not know the session refuses a Resume rather than start a session with
    /// none of its bytes.
    pub resume: bool,
}

/// The session a new connection's first bytes open, once its opening frame is complete and
/// authentic (`Ok(None)` until then): how an accepting console finds the [`crate::Stream`]
/// to attach the connection to. The bytes stay the caller's: feed them to that stream's
/// [`crate::Stream::handle_input`] afterwards.
pub fn peek_session(config: &Config, bytes: &[u8]) -> Result<Option<Peeked>, Error> {
    config.validate()?;
    let Some(u) = unseal(bytes, &config.psk, config.role.peer(), 0, MAX_OPENING_FRAME)? else {
        return Ok(None);
    };
    match Frame::decode(u.kind, u.body)? {
        Frame::Hello(o) => Ok(Some(Peeked {
            session: o.session,
            resume: false,
        })),
        Frame::Resume(o) => Ok(Some(Peeked {
            session: o.session,
            resume: true,
        })),
        _ => Err(Error::Unexpected("a frame before the opening")),
    }
}

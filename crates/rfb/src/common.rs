//! Pieces shared by client and server messages: screens, fences, colours.

use crate::error::MessageError;
use crate::limits::Limits;
use crate::wire::{Parse, Reader};

/// One screen of a multi-screen layout (rfbproto SetDesktopSize and ExtendedDesktopSize).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Screen {
    /// Screen id, chosen by the server.
    pub id: u32,
    /// Left edge within the framebuffer.
    pub x: u16,
    /// Top edge within the framebuffer.
    pub y: u16,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Flags (none are defined yet).
    pub flags: u32,
}

/// Bytes one screen takes on the wire.
pub(crate) const SCREEN_LEN: usize = 16;

impl Screen {
    pub(crate) fn parse(r: &mut Reader<'_>, limits: &Limits) -> Parse<Screen> {
        let s = Screen {
            id: r.u32()?,
            x: r.u16()?,
            y: r.u16()?,
            width: r.u16()?,
            height: r.u16()?,
            flags: r.u32()?,
        };
        check_dimensions(s.width, s.height, limits)?;
        Ok(s)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        for v in [self.x, self.y, self.width, self.height] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.flags.to_be_bytes());
    }
}

/// Reads `count` screens, checking each against the limits.
pub(crate) fn parse_screens(r: &mut Reader<'_>, count: u8, limits: &Limits) -> Parse<Vec<Screen>> {
    // Takes the whole list first, so a short buffer reports the full size it needs.
    let mut list = Reader::new(r.take(usize::from(count) * SCREEN_LEN)?);
    (0..count)
        .map(|_| Screen::parse(&mut list, limits))
        .collect()
}

/// Rejects sizes above [`Limits::max_dimension`].
pub(crate) fn check_dimensions(
    width: u16,
    height: u16,
    limits: &Limits,
) -> Result<(), MessageError> {
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(MessageError::DimensionTooLarge {
            width,
            height,
            limit: limits.max_dimension,
        });
    }
    Ok(())
}

/// The largest Fence payload rfbproto allows.
pub const MAX_FENCE_PAYLOAD: usize = 64;

/// A Fence message (rfbproto, type 248, both directions): a barrier the peer answers in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// Flags: bit 0 BlockBefore, 1 BlockAfter, 2 SyncNext, 31 Request.
    pub flags: u32,
    /// Opaque data echoed back, at most [`MAX_FENCE_PAYLOAD`] bytes (longer is truncated when
    /// encoding).
    pub payload: Vec<u8>,
}

impl Fence {
    /// Parses what follows the message type byte.
    pub(crate) fn parse_body(r: &mut Reader<'_>) -> Parse<Fence> {
        r.skip(3)?;
        let flags = r.u32()?;
        let len = r.u8()?;
        if usize::from(len) > MAX_FENCE_PAYLOAD {
            return Err(MessageError::FencePayloadTooLong(len).into());
        }
        let payload = r.take(usize::from(len))?.to_vec();
        Ok(Fence { flags, payload })
    }

    /// Encodes the whole message, type byte included.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let payload = self
            .payload
            .get(..MAX_FENCE_PAYLOAD)
            .unwrap_or(&self.payload);
        out.extend_from_slice(&[248, 0, 0, 0]);
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.push(u8::try_from(payload.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(payload);
    }
}

/// One colour-map entry (RFC 6143 §7.6.2), 16 bits per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Colour {
    /// Red intensity.
    pub red: u16,
    /// Green intensity.
    pub green: u16,
    /// Blue intensity.
    pub blue: u16,
}

/// Cut text (RFC 6143 §7.5.6, §7.6.4): u32 length then Latin-1 bytes, checked against the limit.
pub(crate) fn parse_cut_text(r: &mut Reader<'_>, limits: &Limits) -> Parse<Vec<u8>> {
    r.skip(3)?;
    let len = r.u32()?;
    let n = crate::wire::len_usize(len);
    if n > limits.max_cut_text {
        return Err(MessageError::CutTextTooLong {
            len,
            limit: limits.max_cut_text,
        }
        .into());
    }
    Ok(r.take(n)?.to_vec())
}

/// Encodes cut text with its type byte; text beyond `u32::MAX` bytes is cut off.
pub(crate) fn encode_cut_text(kind: u8, text: &[u8], out: &mut Vec<u8>) {
    let text = text.get(..crate::wire::len_usize(u32::MAX)).unwrap_or(text);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    crate::wire::put_len_u32(out, text.len());
    out.extend_from_slice(text);
}

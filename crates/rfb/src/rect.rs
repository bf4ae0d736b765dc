//! Rectangles of a FramebufferUpdate (RFC 6143 §7.6.1) and how long each payload is.
//!
//! A rectangle's payload length depends on its encoding and on the pixel format the client
//! set, so only encodings whose length can be worked out are accepted (Hextile's and Tight's
//! by reading them through); anything else is [`MessageError::UnsupportedEncoding`]. Payloads stay as owned wire bytes: Raw pixels in the
//! wire pixel format, ZRLE still compressed (the `encoding` module decodes them).

use crate::common::{check_dimensions, parse_screens, Screen};
use crate::encoding::{self, hextile, tight};
use crate::error::MessageError;
use crate::limits::Limits;
use crate::wire::{len_usize, put_len_u32, Parse, Reader, Stop};
use crate::{Encoding, PixelFormat};

/// One rectangle: where it is and what it carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rectangle {
    /// Left edge (for ExtendedDesktopSize: the reason of the change).
    pub x: u16,
    /// Top edge (for ExtendedDesktopSize: the status of the change).
    pub y: u16,
    /// Width (for DesktopSize and ExtendedDesktopSize: the new framebuffer width).
    pub width: u16,
    /// Height (for DesktopSize and ExtendedDesktopSize: the new framebuffer height).
    pub height: u16,
    /// The encoding-specific payload; it also decides the encoding number on the wire.
    pub payload: RectPayload,
}

/// What a rectangle carries, by encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RectPayload {
    /// Raw: `width * height` pixels in the wire pixel format, row by row.
    Raw(Vec<u8>),
    /// CopyRect: copy the rectangle from this source position.
    CopyRect {
        /// Source left edge.
        src_x: u16,
        /// Source top edge.
        src_y: u16,
    },
    /// ZRLE: the compressed bytes, without their u32 length prefix.
    Zrle(Vec<u8>),
    /// Hextile: the tiles as sent (no length prefix: the codec reads them to find the end).
    Hextile(Vec<u8>),
    /// Zlib: the compressed bytes, without their u32 length prefix.
    Zlib(Vec<u8>),
    /// Tight: the payload as sent (no length prefix: the codec reads it to find the end).
    Tight(Vec<u8>),
    /// Cursor: the cursor image (hotspot in x, y) and its bit mask, `ceil(width / 8)` bytes
    /// per row.
    Cursor {
        /// `width * height` pixels in the wire pixel format.
        pixels: Vec<u8>,
        /// Bit mask, most significant bit first, one bit per pixel.
        mask: Vec<u8>,
    },
    /// DesktopSize: the framebuffer is now `width x height`.
    DesktopSize,
    /// LastRect: no more rectangles in this update.
    LastRect,
    /// QEMU pointer motion change: `x` is 1 for absolute, 0 for relative motion.
    QemuPointerMotionChange,
    /// QEMU extended key event: the server accepts client message 255/0.
    QemuExtendedKeyEvent,
    /// QEMU LED state: bit 0 scroll lock, 1 num lock, 2 caps lock.
    QemuLedState(u8),
    /// ExtendedDesktopSize: the screen layout (at most 255; more are cut off when encoding).
    ExtendedDesktopSize(Vec<Screen>),
    /// VMware LED state: bit 0 scroll lock, 1 num lock, 2 caps lock.
    VmwareLedState(u32),
    /// DesktopName: the desktop's new name (UTF-8 by rfbproto; the bytes as sent).
    DesktopName(Vec<u8>),
}

impl RectPayload {
    /// The encoding number this payload is sent with.
    pub fn encoding(&self) -> Encoding {
        match self {
            RectPayload::Raw(_) => Encoding::Raw,
            RectPayload::CopyRect { .. } => Encoding::CopyRect,
            RectPayload::Zrle(_) => Encoding::Zrle,
            RectPayload::Hextile(_) => Encoding::Hextile,
            RectPayload::Zlib(_) => Encoding::Zlib,
            RectPayload::Tight(_) => Encoding::Tight,
            RectPayload::Cursor { .. } => Encoding::Cursor,
            RectPayload::DesktopSize => Encoding::DesktopSize,
            RectPayload::LastRect => Encoding::LastRect,
            RectPayload::QemuPointerMotionChange => Encoding::QemuPointerMotionChange,
            RectPayload::QemuExtendedKeyEvent => Encoding::QemuExtendedKeyEvent,
            RectPayload::QemuLedState(_) => Encoding::QemuLedState,
            RectPayload::ExtendedDesktopSize(_) => Encoding::ExtendedDesktopSize,
            RectPayload::VmwareLedState(_) => Encoding::VmwareLedState,
            RectPayload::DesktopName(_) => Encoding::DesktopName,
        }
    }
}

/// Bytes of `width * height` pixels (plus nothing else), in u64 so it cannot overflow.
fn pixel_bytes(width: u16, height: u16, pf: &PixelFormat) -> u64 {
    u64::from(width) * u64::from(height) * u64::from(pf.bits_per_pixel / 8)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Takes a payload of `len` bytes after checking it against both limits.
fn payload<'a>(r: &mut Reader<'a>, len: u64, limits: &Limits) -> Parse<&'a [u8]> {
    if len > to_u64(limits.max_rect_payload) {
        return Err(MessageError::RectPayloadTooLarge {
            len,
            limit: limits.max_rect_payload,
        }
        .into());
    }
    let end = to_u64(r.pos()).saturating_add(len);
    if end > to_u64(limits.max_message) {
        return Err(MessageError::MessageTooLarge {
            len: end,
            limit: limits.max_message,
        }
        .into());
    }
    // Within max_rect_payload, which is a usize.
    r.take(usize::try_from(len).unwrap_or(usize::MAX))
}

impl Rectangle {
    /// Parses one rectangle header and payload; the reader counts from the message start.
    pub(crate) fn parse(r: &mut Reader<'_>, pf: &PixelFormat, limits: &Limits) -> Parse<Rectangle> {
        let (x, y, width, height) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
        let encoding = Encoding::from(r.i32()?);
        check_dimensions(width, height, limits)?;
        let payload = match encoding {
            Encoding::Raw => {
                RectPayload::Raw(payload(r, pixel_bytes(width, height, pf), limits)?.to_vec())
            }
            Encoding::CopyRect => RectPayload::CopyRect {
                src_x: r.u16()?,
                src_y: r.u16()?,
            },
            Encoding::Zrle => {
                let len = r.u32()?;
                RectPayload::Zrle(payload(r, u64::from(len), limits)?.to_vec())
            }
            Encoding::Zlib => {
                let len = r.u32()?;
                RectPayload::Zlib(payload(r, u64::from(len), limits)?.to_vec())
            }
            Encoding::Hextile | Encoding::Tight => {
                let (w, h) = (usize::from(width), usize::from(height));
                let rest = r.rest();
                let len = if encoding == Encoding::Hextile {
                    hextile::payload_len(pf.bytes_per_pixel(), w, h, rest)
                } else {
                    tight::payload_len(pf, w, h, rest)
                };
                let len = match len {
                    Ok(len) => len,
                    Err(encoding::Error::Truncated(_)) => {
                        let have = r.pos().saturating_add(rest.len());
                        // At least one more byte; the walk starts over when it comes.
                        return Err(Stop::Incomplete(have.saturating_add(1)));
                    }
                    Err(encoding::Error::Malformed { reason, .. }) => {
                        return Err(MessageError::MalformedPayload { encoding, reason }.into())
                    }
                    Err(_) => {
                        return Err(MessageError::MalformedPayload {
                            encoding,
                            reason: "unreadable",
                        }
                        .into())
                    }
                };
                let data = payload(r, to_u64(len), limits)?.to_vec();
                if encoding == Encoding::Hextile {
                    RectPayload::Hextile(data)
                } else {
                    RectPayload::Tight(data)
                }
            }
            Encoding::Cursor => {
                let pixels = pixel_bytes(width, height, pf);
                let mask = u64::from(width).div_ceil(8) * u64::from(height);
                let both = payload(r, pixels + mask, limits)?;
                // pixels <= both.len() since both was taken whole.
                let (p, m) = both.split_at(usize::try_from(pixels).unwrap_or(0).min(both.len()));
                RectPayload::Cursor {
                    pixels: p.to_vec(),
                    mask: m.to_vec(),
                }
            }
            Encoding::DesktopSize => RectPayload::DesktopSize,
            Encoding::LastRect => RectPayload::LastRect,
            Encoding::QemuPointerMotionChange => RectPayload::QemuPointerMotionChange,
            Encoding::QemuExtendedKeyEvent => RectPayload::QemuExtendedKeyEvent,
            Encoding::QemuLedState => RectPayload::QemuLedState(r.u8()?),
            Encoding::VmwareLedState => RectPayload::VmwareLedState(r.u32()?),
            Encoding::DesktopName => {
                let len = r.u32()?;
                RectPayload::DesktopName(payload(r, u64::from(len), limits)?.to_vec())
            }
            Encoding::ExtendedDesktopSize => {
                let count = r.u8()?;
                r.skip(3)?;
                RectPayload::ExtendedDesktopSize(parse_screens(r, count, limits)?)
            }
            other => return Err(MessageError::UnsupportedEncoding(other).into()),
        };
        Ok(Rectangle {
            x,
            y,
            width,
            height,
            payload,
        })
    }

    /// Appends the rectangle's wire bytes. Raw and Cursor payloads are written as given: they
    /// must match the pixel format the client set.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.x, self.y, self.width, self.height] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&i32::from(self.payload.encoding()).to_be_bytes());
        match &self.payload {
            RectPayload::Raw(p) | RectPayload::Hextile(p) | RectPayload::Tight(p) => {
                out.extend_from_slice(p)
            }
            RectPayload::CopyRect { src_x, src_y } => {
                out.extend_from_slice(&src_x.to_be_bytes());
                out.extend_from_slice(&src_y.to_be_bytes());
            }
            RectPayload::Zrle(data) | RectPayload::Zlib(data) | RectPayload::DesktopName(data) => {
                let data = data.get(..len_usize(u32::MAX)).unwrap_or(data);
                put_len_u32(out, data.len());
                out.extend_from_slice(data);
            }
            RectPayload::Cursor { pixels, mask } => {
                out.extend_from_slice(pixels);
                out.extend_from_slice(mask);
            }
            RectPayload::DesktopSize
            | RectPayload::LastRect
            | RectPayload::QemuPointerMotionChange
            | RectPayload::QemuExtendedKeyEvent => {}
            RectPayload::QemuLedState(s) => out.push(*s),
            RectPayload::VmwareLedState(s) => out.extend_from_slice(&s.to_be_bytes()),
            RectPayload::ExtendedDesktopSize(screens) => {
                let screens = screens.get(..usize::from(u8::MAX)).unwrap_or(screens);
                out.extend_from_slice(&[u8::try_from(screens.len()).unwrap_or(u8::MAX), 0, 0, 0]);
                screens.iter().for_each(|s| s.encode(out));
            }
        }
    }
}

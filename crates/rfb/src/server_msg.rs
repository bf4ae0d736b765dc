//! Server-to-client messages (RFC 6143 §7.6, plus rfbproto's extensions).

use crate::common::{encode_cut_text, parse_cut_text, Colour, Fence};
use crate::error::MessageError;
use crate::limits::Limits;
use crate::rect::{RectPayload, Rectangle};
use crate::wire::{Parse, Reader, Stop};
use crate::PixelFormat;

/// A message from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerMessage {
    /// §7.6.1 (type 0): rectangles of new screen content and pseudo-rectangles.
    ///
    /// Decoding stops at a LastRect rectangle (rfbproto: servers send the count 0xFFFF and end
    /// with one), which is kept in the list. Encoding writes the exact count, sends nothing
    /// after a LastRect, and splits more than 65535 rectangles into several updates.
    FramebufferUpdate(Vec<Rectangle>),
    /// §7.6.2 (type 1): colour-map entries from `first_colour` on.
    SetColourMapEntries {
        /// Index of the first entry set.
        first_colour: u16,
        /// The entries (at most 65535; more are cut off when encoding).
        colours: Vec<Colour>,
    },
    /// §7.6.3 (type 2): ring the bell.
    Bell,
    /// §7.6.4 (type 3): the server's clipboard, Latin-1.
    ServerCutText(Vec<u8>),
    /// rfbproto (type 150): continuous updates are off now (also sent once to say the
    /// server supports them).
    EndOfContinuousUpdates,
    /// rfbproto (type 248): a fence.
    Fence(Fence),
}

impl ServerMessage {
    /// Decodes one message from the front of `buf`; `pf` is the pixel format the client set
    /// (it decides Raw and Cursor payload lengths). `Ok(None)` means `buf` holds only part of a
    /// message (nothing is consumed); `Ok(Some((msg, n)))` means the first `n` bytes were it.
    pub fn decode(
        buf: &[u8],
        pf: &PixelFormat,
        limits: &Limits,
    ) -> Result<Option<(ServerMessage, usize)>, MessageError> {
        let mut r = Reader::new(buf);
        match Self::parse(&mut r, pf, limits) {
            Ok(m) => Ok(Some((m, r.pos()))),
            Err(Stop::Incomplete(_)) => Ok(None),
            Err(Stop::Invalid(e)) => Err(e),
        }
    }

    pub(crate) fn parse(
        r: &mut Reader<'_>,
        pf: &PixelFormat,
        limits: &Limits,
    ) -> Parse<ServerMessage> {
        Ok(match r.u8()? {
            0 => {
                r.skip(1)?;
                let count = r.u16()?;
                let mut rects = Vec::with_capacity(usize::from(count).min(64));
                for _ in 0..count {
                    let rect = Rectangle::parse(r, pf, limits)?;
                    let last = rect.payload == RectPayload::LastRect;
                    rects.push(rect);
                    if last {
                        break;
                    }
                }
                ServerMessage::FramebufferUpdate(rects)
            }
            1 => {
                r.skip(1)?;
                let first_colour = r.u16()?;
                let n = r.u16()?;
                let mut list = Reader::new(r.take(usize::from(n) * 6)?);
                let colours = (0..n)
                    .map(|_| {
                        Ok(Colour {
                            red: list.u16()?,
                            green: list.u16()?,
                            blue: list.u16()?,
                        })
                    })
                    .collect::<Parse<_>>()?;
                ServerMessage::SetColourMapEntries {
                    first_colour,
                    colours,
                }
            }
            2 => ServerMessage::Bell,
            3 => ServerMessage::ServerCutText(parse_cut_text(r, limits)?),
            150 => ServerMessage::EndOfContinuousUpdates,
            248 => ServerMessage::Fence(Fence::parse_body(r)?),
            other => return Err(MessageError::UnknownServerMessage(other).into()),
        })
    }

    /// Appends the message's wire bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerMessage::FramebufferUpdate(rects) => {
                // A LastRect ends the update on the wire, so nothing after one is sent.
                let end = rects
                    .iter()
                    .position(|r| r.payload == RectPayload::LastRect)
                    .map_or(rects.len(), |i| i + 1);
                let rects = rects.get(..end).unwrap_or(rects);
                // More rectangles than the count field holds go out as several updates.
                let mut chunks = rects.chunks(usize::from(u16::MAX)).peekable();
                if chunks.peek().is_none() {
                    out.extend_from_slice(&[0, 0, 0, 0]);
                }
                for chunk in chunks {
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(
                        &u16::try_from(chunk.len()).unwrap_or(u16::MAX).to_be_bytes(),
                    );
                    chunk.iter().for_each(|r| r.encode(out));
                }
            }
            ServerMessage::SetColourMapEntries {
                first_colour,
                colours,
            } => {
                let colours = colours.get(..usize::from(u16::MAX)).unwrap_or(colours);
                out.extend_from_slice(&[1, 0]);
                out.extend_from_slice(&first_colour.to_be_bytes());
                out.extend_from_slice(
                    &u16::try_from(colours.len())
                        .unwrap_or(u16::MAX)
                        .to_be_bytes(),
                );
                for c in colours {
                    for v in [c.red, c.green, c.blue] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            ServerMessage::Bell => out.push(2),
            ServerMessage::ServerCutText(text) => encode_cut_text(3, text, out),
            ServerMessage::EndOfContinuousUpdates => out.push(150),
            ServerMessage::Fence(f) => f.encode(out),
        }
    }

    /// The message's wire bytes in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

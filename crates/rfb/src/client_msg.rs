//! Client-to-server messages (RFC 6143 §7.5, plus QEMU's and rfbproto's extensions).

use crate::common::{self, check_dimensions, encode_cut_text, parse_cut_text, Fence, Screen};
use crate::error::MessageError;
use crate::limits::Limits;
use crate::wire::{Parse, Reader, Stop};
use crate::{Encoding, PixelFormat};

/// QEMU's audio control submessage (client message 255, submessage 1). dmore never enables
/// audio but decodes these so a viewer that sends them does not desynchronise the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QemuAudio {
    /// Operation 0: start sending audio.
    Enable,
    /// Operation 1: stop sending audio.
    Disable,
    /// Operation 2: sample format (0 U8, 1 S8, 2 U16, 3 S16, 4 U32, 5 S32), channels, Hz.
    SetFormat {
        /// Sample format number.
        format: u8,
        /// Channel count.
        channels: u8,
        /// Sample rate in Hz.
        frequency: u32,
    },
}

/// A message from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientMessage {
    /// §7.5.1 (type 0): pixels the client wants from now on.
    SetPixelFormat(PixelFormat),
    /// §7.5.2 (type 2): encodings the client accepts, most preferred first.
    SetEncodings(Vec<Encoding>),
    /// §7.5.3 (type 3): asks for an update of an area.
    FramebufferUpdateRequest {
        /// Only changes are wanted (true), or the whole area (false).
        incremental: bool,
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// §7.5.4 (type 4): a key pressed or released, as an X keysym.
    KeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X keysym.
        keysym: u32,
    },
    /// §7.5.5 (type 5): pointer position and buttons (bit 0 left, 1 middle, 2 right, 3–4 wheel).
    PointerEvent {
        /// Button mask.
        buttons: u8,
        /// X position.
        x: u16,
        /// Y position.
        y: u16,
    },
    /// §7.5.6 (type 6): the client's clipboard, Latin-1.
    ClientCutText(Vec<u8>),
    /// rfbproto (type 150): turn continuous updates of an area on or off.
    EnableContinuousUpdates {
        /// On (true) or off.
        enable: bool,
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// rfbproto (type 248): a fence.
    Fence(Fence),
    /// rfbproto (type 251): asks the server to resize the desktop to this layout.
    SetDesktopSize {
        /// Requested width.
        width: u16,
        /// Requested height.
        height: u16,
        /// Requested screen layout (at most 255; more are cut off when encoding).
        screens: Vec<Screen>,
    },
    /// QEMU (type 255, submessage 0): a key with both its keysym and its XT scancode.
    QemuExtendedKeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X keysym (may be 0).
        keysym: u32,
        /// XT scancode as QEMU numbers it (0xe0 prefixes folded into bit 7 of the high byte).
        keycode: u32,
    },
    /// QEMU (type 255, submessage 1): audio control.
    QemuAudio(QemuAudio),
}

impl ClientMessage {
    /// Decodes one message from the front of `buf`. `Ok(None)` means `buf` holds only part of a
    /// message (nothing is consumed); `Ok(Some((msg, n)))` means the first `n` bytes were it.
    pub fn decode(
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(ClientMessage, usize)>, MessageError> {
        let mut r = Reader::new(buf);
        match Self::parse(&mut r, limits) {
            Ok(m) => Ok(Some((m, r.pos()))),
            Err(Stop::Incomplete(_)) => Ok(None),
            Err(Stop::Invalid(e)) => Err(e),
        }
    }

    pub(crate) fn parse(r: &mut Reader<'_>, limits: &Limits) -> Parse<ClientMessage> {
        let kind = r.u8()?;
        Ok(match kind {
            0 => {
                r.skip(3)?;
                ClientMessage::SetPixelFormat(PixelFormat::from_bytes(&r.array()?))
            }
            2 => {
                r.skip(1)?;
                let n = r.u16()?;
                let mut list = Reader::new(r.take(usize::from(n) * 4)?);
                let encodings = (0..n)
                    .map(|_| list.i32().map(Encoding::from))
                    .collect::<Parse<_>>()?;
                ClientMessage::SetEncodings(encodings)
            }
            3 | 150 => {
                let flag = r.u8()? != 0;
                let (x, y, width, height) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
                if kind == 3 {
                    ClientMessage::FramebufferUpdateRequest {
                        incremental: flag,
                        x,
                        y,
                        width,
                        height,
                    }
                } else {
                    ClientMessage::EnableContinuousUpdates {
                        enable: flag,
                        x,
                        y,
                        width,
                        height,
                    }
                }
            }
            4 => {
                let down = r.u8()? != 0;
                r.skip(2)?;
                ClientMessage::KeyEvent {
                    down,
                    keysym: r.u32()?,
                }
            }
            5 => ClientMessage::PointerEvent {
                buttons: r.u8()?,
                x: r.u16()?,
                y: r.u16()?,
            },
            6 => ClientMessage::ClientCutText(parse_cut_text(r, limits)?),
            248 => ClientMessage::Fence(Fence::parse_body(r)?),
            251 => {
                r.skip(1)?;
                let (width, height) = (r.u16()?, r.u16()?);
                check_dimensions(width, height, limits)?;
                let count = r.u8()?;
                r.skip(1)?;
                let screens = common::parse_screens(r, count, limits)?;
                ClientMessage::SetDesktopSize {
                    width,
                    height,
                    screens,
                }
            }
            255 => Self::parse_qemu(r)?,
            other => return Err(MessageError::UnknownClientMessage(other).into()),
        })
    }

    fn parse_qemu(r: &mut Reader<'_>) -> Parse<ClientMessage> {
        match r.u8()? {
            0 => Ok(ClientMessage::QemuExtendedKeyEvent {
                down: r.u16()? != 0,
                keysym: r.u32()?,
                keycode: r.u32()?,
            }),
            1 => Ok(ClientMessage::QemuAudio(match r.u16()? {
                0 => QemuAudio::Enable,
                1 => QemuAudio::Disable,
                2 => QemuAudio::SetFormat {
                    format: r.u8()?,
                    channels: r.u8()?,
                    frequency: r.u32()?,
                },
                op => return Err(MessageError::UnknownQemuAudioOperation(op).into()),
            })),
            sub => Err(MessageError::UnknownQemuSubmessage(sub).into()),
        }
    }

    /// Appends the message's wire bytes to `out`. Lists longer than their count field allows
    /// (65535 encodings, 255 screens, 64 fence bytes) are cut off.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientMessage::SetPixelFormat(pf) => {
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&pf.to_bytes());
            }
            ClientMessage::SetEncodings(list) => {
                let list = list.get(..usize::from(u16::MAX)).unwrap_or(list);
                out.extend_from_slice(&[2, 0]);
                out.extend_from_slice(&u16::try_from(list.len()).unwrap_or(u16::MAX).to_be_bytes());
                for e in list {
                    out.extend_from_slice(&i32::from(*e).to_be_bytes());
                }
            }
            ClientMessage::FramebufferUpdateRequest {
                incremental: flag,
                x,
                y,
                width,
                height,
            }
            | ClientMessage::EnableContinuousUpdates {
                enable: flag,
                x,
                y,
                width,
                height,
            } => {
                let kind = if matches!(self, ClientMessage::FramebufferUpdateRequest { .. }) {
                    3
                } else {
                    150
                };
                out.extend_from_slice(&[kind, u8::from(*flag)]);
                for v in [x, y, width, height] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            ClientMessage::KeyEvent { down, keysym } => {
                out.extend_from_slice(&[4, u8::from(*down), 0, 0]);
                out.extend_from_slice(&keysym.to_be_bytes());
            }
            ClientMessage::PointerEvent { buttons, x, y } => {
                out.extend_from_slice(&[5, *buttons]);
                out.extend_from_slice(&x.to_be_bytes());
                out.extend_from_slice(&y.to_be_bytes());
            }
            ClientMessage::ClientCutText(text) => encode_cut_text(6, text, out),
            ClientMessage::Fence(f) => f.encode(out),
            ClientMessage::SetDesktopSize {
                width,
                height,
                screens,
            } => {
                let screens = screens.get(..usize::from(u8::MAX)).unwrap_or(screens);
                out.extend_from_slice(&[251, 0]);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
                out.extend_from_slice(&[u8::try_from(screens.len()).unwrap_or(u8::MAX), 0]);
                screens.iter().for_each(|s| s.encode(out));
            }
            ClientMessage::QemuExtendedKeyEvent {
                down,
                keysym,
                keycode,
            } => {
                out.extend_from_slice(&[255, 0]);
                out.extend_from_slice(&u16::from(*down).to_be_bytes());
                out.extend_from_slice(&keysym.to_be_bytes());
                out.extend_from_slice(&keycode.to_be_bytes());
            }
            ClientMessage::QemuAudio(op) => {
                out.extend_from_slice(&[255, 1]);
                match op {
                    QemuAudio::Enable => out.extend_from_slice(&[0, 0]),
                    QemuAudio::Disable => out.extend_from_slice(&[0, 1]),
                    QemuAudio::SetFormat {
                        format,
                        channels,
                        frequency,
                    } => {
                        out.extend_from_slice(&[0, 2, *format, *channels]);
                        out.extend_from_slice(&frequency.to_be_bytes());
                    }
                }
            }
        }
    }

    /// The message's wire bytes in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

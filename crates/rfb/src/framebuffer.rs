//! A framebuffer of `0x00RRGGBB` pixels, and the two ends that move it over RFB:
//! [`UpdateDecoder`] applies a server's rectangles to it (client role), [`UpdateEncoder`]
//! turns parts of it into rectangles for one viewer (server role).
//!
//! ```text
//!  QEMU ──FramebufferUpdate──> UpdateDecoder ──> Framebuffer ──> UpdateEncoder ──> viewer
//!                              (QEMU's format)                   (the viewer's format and
//!                                                                 encodings, its own zlib)
//! ```

use crate::encoding::cursor::{self, Cursor};
use crate::encoding::hextile::{self, HextileEncoder};
use crate::encoding::tight::{self, TightDecoder, TightEncoder, TightStreams};
use crate::encoding::zlib::{ZlibDecoder, ZlibEncoder};
use crate::encoding::zrle::{ZrleDecoder, ZrleEncoder};
use crate::encoding::zstream::StreamState;
use crate::encoding::{self, raw};
use crate::translate::{Pixels, PixelsMut, Translator};
use crate::{Encoding, PixelFormat, RectPayload, Rectangle};

/// A framebuffer: `width * height` pixels, `0x00RRGGBB`, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
}

impl Framebuffer {
    /// A black framebuffer of this size.
    pub fn new(width: u16, height: u16) -> Self {
        Framebuffer {
            width,
            height,
            pixels: vec![0; usize::from(width) * usize::from(height)],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// All pixels, row by row.
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// Changes the size; the content becomes black (a server sends it anew after a resize).
    pub fn resize(&mut self, width: u16, height: u16) {
        *self = Framebuffer::new(width, height);
    }

    /// Whether the rectangle lies inside the framebuffer.
    pub fn contains(&self, x: u16, y: u16, width: u16, height: u16) -> bool {
        u32::from(x) + u32::from(width) <= u32::from(self.width)
            && u32::from(y) + u32::from(height) <= u32::from(self.height)
    }

    /// A read-only view of a rectangle, if it lies inside.
    pub fn view(&self, x: u16, y: u16, width: u16, height: u16) -> Option<Pixels<'_>> {
        Pixels::packed(&self.pixels, self.width.into(), self.height.into())?.sub(
            x.into(),
            y.into(),
            width.into(),
            height.into(),
        )
    }

    /// A writable view of a rectangle, if it lies inside.
    pub fn view_mut(&mut self, x: u16, y: u16, width: u16, height: u16) -> Option<PixelsMut<'_>> {
        if !self.contains(x, y, width, height) || width == 0 || height == 0 {
            return None;
        }
        let stride = usize::from(self.width);
        let start = usize::from(y) * stride + usize::from(x);
        PixelsMut::new(
            self.pixels.get_mut(start..)?,
            stride,
            width.into(),
            height.into(),
        )
    }

    /// Copies the `width x height` rectangle at (`src_x`, `src_y`) to (`x`, `y`) — CopyRect.
    /// Overlapping areas copy as if through a temporary buffer.
    pub fn copy_rect(
        &mut self,
        src_x: u16,
        src_y: u16,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> bool {
        if !self.contains(src_x, src_y, width, height) || !self.contains(x, y, width, height) {
            return false;
        }
        let stride = usize::from(self.width);
        let rows: Vec<usize> = if y > src_y {
            (0..usize::from(height)).rev().collect()
        } else {
            (0..usize::from(height)).collect()
        };
        for row in rows {
            let from = (usize::from(src_y) + row) * stride + usize::from(src_x);
            let to = (usize::from(y) + row) * stride + usize::from(x);
            self.pixels.copy_within(from..from + usize::from(width), to);
        }
        true
    }
}

/// Why a server's rectangle could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The rectangle (or CopyRect's source) lies outside the framebuffer.
    #[error("rectangle {width}x{height} at ({x},{y}) lies outside the {fb_width}x{fb_height} framebuffer")]
    OutOfBounds {
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Framebuffer width.
        fb_width: u16,
        /// Framebuffer height.
        fb_height: u16,
    },
    /// The pixel data did not decode.
    #[error("bad {encoding:?} rectangle")]
    Encoding {
        /// The rectangle's encoding.
        encoding: Encoding,
        /// What was wrong.
        #[source]
        source: encoding::Error,
    },
    /// The pixel format cannot be decoded.
    #[error("unusable pixel format")]
    PixelFormat(#[from] crate::pixel_format::PixelFormatError),
}

/// What applying a rectangle did, for the caller's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// These pixels changed.
    Pixels {
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// The framebuffer was resized (and is black until the server sends it anew).
    Resized,
    /// The cursor shape changed.
    Cursor,
    /// The server says no more rectangles follow in this update.
    LastRect,
    /// A pseudo-rectangle that carries state, not pixels (its payload is returned as is).
    State(RectPayload),
}

/// The client role's decoder of FramebufferUpdate rectangles: QEMU's pixels into a
/// [`Framebuffer`]. One per connection, since ZRLE's, Zlib's and Tight's zlib streams span
/// the connection.
#[derive(Debug)]
pub struct UpdateDecoder {
    translator: Translator,
    zrle: ZrleDecoder,
    zlib: ZlibDecoder,
    tight: TightDecoder,
    cursor: Option<Cursor>,
}

impl UpdateDecoder {
    /// A decoder for rectangles in `pixel_format`.
    pub fn new(pixel_format: PixelFormat) -> Result<Self, ApplyError> {
        Ok(UpdateDecoder {
            translator: Translator::new(pixel_format)?,
            zrle: ZrleDecoder::new(),
            zlib: ZlibDecoder::new(),
            tight: TightDecoder::new(),
            cursor: None,
        })
    }

    /// Changes the pixel format, as the client just asked the server with SetPixelFormat.
    pub fn set_pixel_format(&mut self, pixel_format: PixelFormat) -> Result<(), ApplyError> {
        self.translator = Translator::new(pixel_format)?;
        Ok(())
    }

    /// The last cursor shape the server sent.
    pub fn cursor(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }

    /// Applies one rectangle to `fb`.
    pub fn apply(&mut self, fb: &mut Framebuffer, rect: &Rectangle) -> Result<Applied, ApplyError> {
        let Rectangle {
            x,
            y,
            width,
            height,
            ref payload,
        } = *rect;
        let out_of_bounds = ApplyError::OutOfBounds {
            x,
            y,
            width,
            height,
            fb_width: fb.width(),
            fb_height: fb.height(),
        };
        let bad = |source| ApplyError::Encoding {
            encoding: payload.encoding(),
            source,
        };
        let changed = Applied::Pixels {
            x,
            y,
            width,
            height,
        };
        match payload {
            RectPayload::Raw(data)
            | RectPayload::Zrle(data)
            | RectPayload::Hextile(data)
            | RectPayload::Zlib(data)
            | RectPayload::Tight(data) => {
                if width == 0 || height == 0 {
                    return Ok(changed);
                }
                let translator = &self.translator;
                let mut view = fb.view_mut(x, y, width, height).ok_or(out_of_bounds)?;
                match payload {
                    RectPayload::Raw(_) => raw::decode(translator, data, &mut view),
                    RectPayload::Zrle(_) => self.zrle.decode(translator, data, &mut view),
                    RectPayload::Zlib(_) => self.zlib.decode(translator, data, &mut view),
                    RectPayload::Tight(_) => self
                        .tight
                        .decode(translator, data, &mut view)
                        .and_then(|used| all_used(data, used)),
                    _ => hextile::decode(translator, data, &mut view)
                        .and_then(|used| all_used(data, used)),
                }
                .map_err(bad)?;
                Ok(changed)
            }
            RectPayload::CopyRect { src_x, src_y } => {
                if fb.copy_rect(*src_x, *src_y, x, y, width, height) {
                    Ok(changed)
                } else {
                    Err(out_of_bounds)
                }
            }
            RectPayload::Cursor { pixels, mask } => {
                self.cursor = Some(
                    cursor::decode(&self.translator, width.into(), height.into(), pixels, mask)
                        .map_err(bad)?,
                );
                Ok(Applied::Cursor)
            }
            RectPayload::DesktopSize | RectPayload::ExtendedDesktopSize(_) => {
                fb.resize(width, height);
                Ok(Applied::Resized)
            }
            RectPayload::LastRect => Ok(Applied::LastRect),
            other => Ok(Applied::State(other.clone())),
        }
    }
}

/// The pixel encodings [`UpdateEncoder`] can send, in no particular order: a viewer's
/// SetEncodings order decides.
pub const PIXEL_ENCODINGS: [Encoding; 5] = [
    Encoding::Raw,
    Encoding::Hextile,
    Encoding::Zlib,
    Encoding::Tight,
    Encoding::Zrle,
];

/// An error unless a payload's reader took all of `data`.
fn all_used(data: &[u8], used: usize) -> Result<(), encoding::Error> {
    match data.len().saturating_sub(used) {
        0 => Ok(()),
        n => Err(encoding::Error::TrailingData(n)),
    }
}

/// Where an [`UpdateEncoder`]'s zlib streams stand: what a snapshot keeps so that another
/// process continues them (see [`zstream`](crate::encoding::zstream)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncoderStreams {
    /// ZRLE's stream.
    pub zrle: StreamState,
    /// Zlib's stream.
    pub zlib: StreamState,
    /// Tight's four streams.
    pub tight: TightStreams,
}

/// The server role's encoder for one viewer: parts of a [`Framebuffer`] in the viewer's pixel
/// format, with the first encoding of the viewer's list that dmore implements. Owns the
/// viewer's zlib streams (ZRLE's, Zlib's, Tight's), which live as long as the connection.
#[derive(Debug)]
pub struct UpdateEncoder {
    translator: Translator,
    encodings: Vec<Encoding>,
    zrle: ZrleEncoder,
    zlib: ZlibEncoder,
    tight: TightEncoder,
    hextile: HextileEncoder,
    frozen: bool,
    /// The server allows lossy (JPEG) rectangles to viewers that ask with a quality level.
    lossy: bool,
}

impl UpdateEncoder {
    /// An encoder for a viewer that has not asked for anything yet: dmore's own pixel format
    /// (which ServerInit announced) and Raw only.
    pub fn new() -> Self {
        UpdateEncoder {
            translator: Translator::new(PixelFormat::RGBX32_LE)
                .unwrap_or_else(|_| unreachable!("RGBX32_LE is a valid true-colour format")),
            encodings: Vec::new(),
            zrle: ZrleEncoder::new(ZrleEncoder::DEFAULT_LEVEL),
            zlib: ZlibEncoder::new(ZrleEncoder::DEFAULT_LEVEL),
            tight: TightEncoder::new(ZrleEncoder::DEFAULT_LEVEL),
            hextile: HextileEncoder::new(),
            frozen: false,
            lossy: false,
        }
    }

    /// The viewer's SetPixelFormat; a format dmore cannot serve is an error for the caller
    /// to close the viewer with.
    pub fn set_pixel_format(&mut self, pixel_format: PixelFormat) -> Result<(), ApplyError> {
        self.translator = Translator::new(pixel_format)?;
        Ok(())
    }

    /// The viewer's SetEncodings. A compression level it lists (its first) applies to the
    /// zlib streams that have not started yet, and to Tight's, which are reset by the
    /// protocol's own means when the level changes; a started ZRLE or Zlib stream keeps its
    /// level, since the compressor cannot change it in flight and the viewer cannot be told.
    pub fn set_encodings(&mut self, encodings: &[Encoding]) {
        self.encodings = encodings.to_vec();
        let level = self.compress_level();
        if !self.zlib.state().header_sent {
            let asked = self.requested_level();
            self.zlib = ZlibEncoder::new(asked.unwrap_or(ZlibEncoder::DEFAULT_LEVEL));
        }
        if !self.zrle.state().header_sent {
            self.zrle = ZrleEncoder::new(level);
        }
        if self.tight.level() != level {
            self.tight.reset(level);
        }
        self.set_tight_quality();
    }

    /// Allows Tight JPEG to viewers that list a quality level (off by default, as QEMU's
    /// `lossy` option is: a viewer's defaults then show the screen exactly).
    pub fn set_lossy(&mut self, lossy: bool) {
        self.lossy = lossy;
        self.set_tight_quality();
    }

    /// Tight's JPEG quality: the viewer's first quality level, when lossy is allowed.
    fn set_tight_quality(&mut self) {
        let level = self.encodings.iter().find_map(|e| match e {
            Encoding::QualityLevel(q) => Some(*q),
            _ => None,
        });
        self.tight.set_quality(level.filter(|_| self.lossy));
    }

    /// The zlib level the viewer asked for (its first compression-level pseudo-encoding),
    /// else [`ZrleEncoder::DEFAULT_LEVEL`] (Zlib's own default is
    /// [`ZlibEncoder::DEFAULT_LEVEL`]).
    pub fn compress_level(&self) -> u32 {
        self.requested_level().unwrap_or(ZrleEncoder::DEFAULT_LEVEL)
    }

    /// The viewer's first compression-level pseudo-encoding, if any.
    fn requested_level(&self) -> Option<u32> {
        self.encodings.iter().find_map(|e| match e {
            Encoding::CompressLevel(l) => Some(u32::from(*l)),
            _ => None,
        })
    }

    /// Whether the viewer listed this (pseudo-)encoding.
    pub fn accepts(&self, encoding: Encoding) -> bool {
        self.encodings.contains(&encoding)
    }

    /// The encoding used for pixels: the first of [`PIXEL_ENCODINGS`] the viewer listed,
    /// else Raw (every viewer must accept Raw, RFC 6143 §7.7.1).
    pub fn pixel_encoding(&self) -> Encoding {
        self.pixel_encoding_for(0)
    }

    /// [`UpdateEncoder::pixel_encoding`] for a rectangle `width` pixels wide: Tight is
    /// passed over past [`tight::MAX_WIDTH`].
    fn pixel_encoding_for(&self, width: usize) -> Encoding {
        self.encodings
            .iter()
            .copied()
            .filter(|e| *e != Encoding::Tight || width <= tight::MAX_WIDTH)
            .find(|e| PIXEL_ENCODINGS.contains(e))
            .unwrap_or(Encoding::Raw)
    }

    /// Freezes the encoder for a snapshot: from here on [`UpdateEncoder::encode`] fails with
    /// [`encoding::Error::Frozen`] until [`UpdateEncoder::thaw`], so the states returned stay
    /// the streams' true ends. Nothing needs flushing: every rectangle ended at a sync flush.
    pub fn freeze(&mut self) -> EncoderStreams {
        self.frozen = true;
        EncoderStreams {
            zrle: self.zrle.freeze(),
            zlib: self.zlib.state(),
            tight: self.tight.states(),
        }
    }

    /// Lets a frozen encoder go on with its own streams (the migration did not happen).
    pub fn thaw(&mut self) {
        self.frozen = false;
        self.zrle.thaw();
    }

    /// Continues streams another encoder froze (on the destination of a migration), with the
    /// pixel format and encodings already set.
    pub fn resume(&mut self, streams: &EncoderStreams) {
        self.zrle = ZrleEncoder::resume_after_freeze(&streams.zrle);
        self.zlib = ZlibEncoder::resume(&streams.zlib);
        self.tight = TightEncoder::resume(&streams.tight);
    }

    /// Encodes the `width x height` rectangle at (`x`, `y`) of `fb` for this viewer.
    pub fn encode(
        &mut self,
        fb: &Framebuffer,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> Result<Rectangle, ApplyError> {
        let view = fb
            .view(x, y, width, height)
            .ok_or(ApplyError::OutOfBounds {
                x,
                y,
                width,
                height,
                fb_width: fb.width(),
                fb_height: fb.height(),
            })?;
        let encoding = self.pixel_encoding_for(view.width());
        let failed = |source| ApplyError::Encoding { encoding, source };
        if self.frozen {
            return Err(failed(encoding::Error::Frozen));
        }
        let mut data = Vec::new();
        let tr = &self.translator;
        let payload = match encoding {
            Encoding::Zrle => {
                self.zrle.encode(tr, view, &mut data).map_err(failed)?;
                RectPayload::Zrle(data)
            }
            Encoding::Zlib => {
                self.zlib.encode(tr, view, &mut data).map_err(failed)?;
                RectPayload::Zlib(data)
            }
            Encoding::Hextile => {
                self.hextile.encode(tr, view, &mut data);
                RectPayload::Hextile(data)
            }
            Encoding::Tight => {
                self.tight.encode(tr, view, &mut data).map_err(failed)?;
                RectPayload::Tight(data)
            }
            _ => {
                raw::encode(tr, view, &mut data);
                RectPayload::Raw(data)
            }
        };
        Ok(Rectangle {
            x,
            y,
            width,
            height,
            payload,
        })
    }
}

impl Default for UpdateEncoder {
    fn default() -> Self {
        UpdateEncoder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: u16, height: u16) -> Framebuffer {
        let mut fb = Framebuffer::new(width, height);
        for (i, p) in fb.pixels.iter_mut().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            *p = i.wrapping_mul(2_654_435_761) & 0x00ff_ffff;
        }
        fb
    }

    #[test]
    fn encoder_output_applied_by_decoder_reproduces_the_framebuffer() {
        let source = pattern(100, 70);
        let formats = [
            PixelFormat::RGBX32_LE,
            PixelFormat {
                big_endian: true,
                ..PixelFormat::RGB565_LE
            },
        ];
        for pf in formats {
            let lists = [
                vec![Encoding::Raw],
                vec![Encoding::Zrle, Encoding::Raw],
                vec![Encoding::Other(99), Encoding::Hextile, Encoding::Zrle],
                vec![Encoding::CompressLevel(1), Encoding::Zlib, Encoding::Raw],
                vec![
                    Encoding::Tight,
                    Encoding::CompressLevel(9),
                    Encoding::QualityLevel(9),
                    Encoding::Zrle,
                ],
            ];
            for encodings in lists {
                let mut encoder = UpdateEncoder::new();
                encoder.set_pixel_format(pf).expect("valid format");
                encoder.set_encodings(&encodings);
                let mut decoder = UpdateDecoder::new(pf).expect("valid format");
                let mut copy = Framebuffer::new(100, 70);
                for (x, y, w, h) in [(0, 0, 100, 70), (10, 5, 20, 30), (99, 69, 1, 1)] {
                    let rect = encoder.encode(&source, x, y, w, h).expect("inside");
                    let first = encodings.iter().find(|e| PIXEL_ENCODINGS.contains(e));
                    assert_eq!(Some(&rect.payload.encoding()), first);
                    decoder.apply(&mut copy, &rect).expect("decodes");
                }
                let translator = Translator::new(pf).expect("valid");
                let reduced: Vec<u32> = source
                    .pixels()
                    .iter()
                    .map(|&p| translator.rgbx(translator.pixel_value(p)))
                    .collect();
                assert_eq!(copy.pixels(), &reduced[..], "format {pf:?}, {encodings:?}");
            }
        }
    }

    #[test]
    fn tight_jpeg_only_when_lossy_is_allowed_and_the_viewer_gives_a_quality() {
        // A smooth picture of many colours, large enough for JPEG.
        let mut fb = Framebuffer::new(128, 64);
        for (i, p) in fb.pixels.iter_mut().enumerate() {
            let (x, y) = (i % 128, i / 128);
            *p = u32::try_from(((x * 2) << 16) | ((y * 4) << 8) | (x + y)).unwrap_or(0);
        }
        let control = |lossy: bool, encodings: &[Encoding]| {
            let mut encoder = UpdateEncoder::new();
            encoder.set_lossy(lossy);
            encoder.set_encodings(encodings);
            match encoder.encode(&fb, 0, 0, 128, 64).expect("encodes").payload {
                RectPayload::Tight(data) => data[0] & 0xf0,
                other => panic!("{other:?}"),
            }
        };
        let with_quality = [Encoding::Tight, Encoding::QualityLevel(6)];
        assert_eq!(control(true, &with_quality), 0x90, "JPEG");
        assert_ne!(control(false, &with_quality), 0x90, "lossless by default");
        assert_ne!(control(true, &[Encoding::Tight]), 0x90, "no quality level");
    }

    #[test]
    fn copy_rect_handles_overlap_in_both_directions() {
        let mut fb = pattern(8, 8);
        let before = fb.clone();
        assert!(fb.copy_rect(0, 0, 1, 1, 6, 6));
        for y in 0..6usize {
            for x in 0..6usize {
                assert_eq!(fb.pixels[(y + 1) * 8 + x + 1], before.pixels[y * 8 + x]);
            }
        }
        let mut fb = before.clone();
        assert!(fb.copy_rect(1, 1, 0, 0, 6, 6));
        for y in 0..6usize {
            for x in 0..6usize {
                assert_eq!(fb.pixels[y * 8 + x], before.pixels[(y + 1) * 8 + x + 1]);
            }
        }
        assert!(!fb.copy_rect(4, 4, 0, 0, 5, 5), "source outside is refused");
    }

    #[test]
    fn rectangles_outside_the_framebuffer_are_refused() {
        let mut fb = Framebuffer::new(10, 10);
        let mut decoder = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("valid");
        let rect = Rectangle {
            x: 8,
            y: 0,
            width: 4,
            height: 1,
            payload: RectPayload::Raw(vec![0; 16]),
        };
        assert!(matches!(
            decoder.apply(&mut fb, &rect),
            Err(ApplyError::OutOfBounds { .. })
        ));
        let mut encoder = UpdateEncoder::new();
        assert!(encoder.encode(&fb, 8, 0, 4, 1).is_err());
    }

    #[test]
    fn desktop_size_resizes() {
        let mut fb = Framebuffer::new(10, 10);
        let mut decoder = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("valid");
        let rect = Rectangle {
            x: 0,
            y: 0,
            width: 640,
            height: 480,
            payload: RectPayload::DesktopSize,
        };
        assert_eq!(
            decoder.apply(&mut fb, &rect).expect("applies"),
            Applied::Resized
        );
        assert_eq!(
            (fb.width(), fb.height(), fb.pixels().len()),
            (640, 480, 640 * 480)
        );
    }
}

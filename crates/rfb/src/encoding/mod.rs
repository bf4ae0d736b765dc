//! Pixel encodings of FramebufferUpdate rectangles (RFC 6143 §7.7): Raw, ZRLE and the Cursor
//! pseudo-encoding, in both directions.
//!
//! Everything here is pure: encoders append wire bytes to a `Vec<u8>`, decoders read a
//! rectangle's payload (framed by the message codec) and write `0x00RRGGBB` pixels into a
//! [`PixelsMut`](crate::translate::PixelsMut) view of the framebuffer. Pixel formats go
//! through a [`Translator`](crate::translate::Translator), built once per format.
//!
//! Decoders treat their input as hostile: every malformed payload is an [`Error`], never a
//! panic, and nothing is allocated beyond what the rectangle's size can need.

pub mod cursor;
pub mod hextile;
pub mod raw;
pub mod tight;
pub mod zlib;
pub mod zrle;
pub mod zstream;

use crate::pixel_format::PixelFormatError;

/// Why a rectangle could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pixel format cannot be served.
    #[error("unusable pixel format")]
    Format(#[from] PixelFormatError),
    /// A payload (or an input buffer) has the wrong length for the rectangle.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// What was being read.
        what: &'static str,
        /// Bytes the rectangle needs.
        expected: usize,
        /// Bytes there were.
        got: usize,
    },
    /// The rectangle is too large to describe (its byte size overflows).
    #[error("a {width}x{height} rectangle is too large")]
    TooLarge {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// The zlib data would inflate to more than the rectangle can need: a hostile or broken
    /// peer.
    #[error("zlib data inflates past {limit} bytes, the most a {width}x{height} rectangle needs")]
    InflateLimit {
        /// The bound.
        limit: usize,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// The peer's zlib stream ended; RFB never ends it, and nothing more could be decoded.
    #[error("the zlib stream ended")]
    StreamEnded,
    /// The inflater made no progress on the remaining input.
    #[error("the zlib stream stalled with {0} bytes unread")]
    InflateStalled(usize),
    /// The zlib data is corrupt.
    #[error("inflating zlib data")]
    Inflate(#[source] flate2::DecompressError),
    /// The compressor failed (the connection's stream is then unusable).
    #[error("deflating zlib data")]
    Deflate(#[source] flate2::CompressError),
    /// A ZRLE tile is malformed.
    #[error("ZRLE tile at ({x}, {y})")]
    Tile {
        /// Tile's left edge within the rectangle.
        x: usize,
        /// Tile's top edge within the rectangle.
        y: usize,
        /// What is wrong with it.
        #[source]
        error: TileError,
    },
    /// Inflated ZRLE data continues after the rectangle's last tile.
    #[error("{0} bytes of ZRLE data after the last tile")]
    TrailingData(usize),
    /// The encoder was frozen for a snapshot and must not emit more (see
    /// [`zrle::ZrleEncoder::freeze`]).
    #[error("the encoder is frozen")]
    Frozen,
    /// A Hextile or Tight payload ends before the rectangle does.
    #[error("{0} data ends before the rectangle does")]
    Truncated(&'static str),
    /// A Hextile or Tight payload is malformed.
    #[error("{encoding} data: {reason}")]
    Malformed {
        /// The encoding.
        encoding: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What is wrong with one ZRLE tile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The data ends inside the tile.
    #[error("data ends inside the tile")]
    Truncated,
    /// Sub-encodings 17..=127 and 129 are not defined.
    #[error("undefined sub-encoding {0}")]
    Subencoding(u8),
    /// A palette index past the palette.
    #[error("palette index {index} past a palette of {size}")]
    PaletteIndex {
        /// The index read.
        index: u8,
        /// The palette's size.
        size: u8,
    },
    /// A run reaches past the tile's last pixel.
    #[error("run of {run} pixels with {left} left in the tile")]
    RunTooLong {
        /// The run's length (as far as it was read).
        run: usize,
        /// Pixels left in the tile.
        left: usize,
    },
}

/// Reads an encoding's payload from the front of a slice; a payload that ends early is
/// [`Error::Truncated`], named after the encoding. Each decoder adds readers of its own wire
/// types (an `impl Input` in its module).
pub(crate) struct Input<'a> {
    data: &'a [u8],
    pos: usize,
    name: &'static str,
}

impl<'a> Input<'a> {
    /// Reading `data` of encoding `name` from its start.
    pub(crate) fn new(data: &'a [u8], name: &'static str) -> Self {
        Input { data, pos: 0, name }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.saturating_add(n);
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(Error::Truncated(self.name))?;
        self.pos = end;
        Ok(s)
    }

    /// The next byte.
    pub(crate) fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
}

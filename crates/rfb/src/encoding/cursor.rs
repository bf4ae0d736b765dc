//! The Cursor pseudo-encoding (RFC 6143 §7.8.1): the cursor's image as PIXELs in the
//! connection's format, then a 1-bit transparency mask, each row padded to a whole byte, most
//! significant bit first, 1 meaning visible. The message codec carries the two parts
//! separately (`RectPayload::Cursor { pixels, mask }`), and so does this module.

use super::Error;
use crate::translate::{Pixels, PixelsMut, Translator};

/// Encoding number of the Cursor pseudo-encoding.
pub const ENCODING: i32 = -239;

/// Bytes of one mask row for a cursor `width` pixels wide.
pub fn mask_row_len(width: usize) -> usize {
    width.div_ceil(8)
}

/// Bytes of the whole mask of a `width`×`height` cursor, `None` on overflow.
pub fn mask_len(width: usize, height: usize) -> Option<usize> {
    mask_row_len(width).checked_mul(height)
}

/// Builds a mask in the wire layout from `visible(x, y)`.
pub fn mask_from_fn(
    width: usize,
    height: usize,
    visible: impl Fn(usize, usize) -> bool,
) -> Vec<u8> {
    let row_len = mask_row_len(width);
    let mut mask = vec![0u8; row_len * height];
    for (y, row) in mask
        .chunks_exact_mut(row_len.max(1))
        .enumerate()
        .take(height)
    {
        for x in (0..width).filter(|&x| visible(x, y)) {
            if let Some(b) = row.get_mut(x / 8) {
                *b |= 0x80 >> (x % 8);
            }
        }
    }
    mask
}

/// A decoded cursor: its image as `0x00RRGGBB` pixels, row by row, and its mask in the wire
/// layout (see [`Cursor::visible`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` pixels, rows in order.
    pub pixels: Vec<u32>,
    /// [`mask_len`] bytes: rows of [`mask_row_len`] bytes, MSB first, 1 = visible.
    pub mask: Vec<u8>,
}

impl Cursor {
    /// Whether the pixel at (`x`, `y`) is part of the cursor (false outside it).
    pub fn visible(&self, x: usize, y: usize) -> bool {
        if x >= self.width || y >= self.height {
            return false;
        }
        let byte = self.mask.get(y * mask_row_len(self.width) + x / 8);
        byte.is_some_and(|b| b & (0x80 >> (x % 8)) != 0)
    }

    /// The cursor's image as a view.
    pub fn image(&self) -> Option<Pixels<'_>> {
        Pixels::packed(&self.pixels, self.width, self.height)
    }
}

/// The wire parts `(pixels, mask)` of a cursor with image `src` and `mask` ([`mask_len`]
/// bytes in the wire layout), pixels in `tr`'s format.
pub fn encode(tr: &Translator, src: Pixels<'_>, mask: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let (width, height) = (src.width(), src.height());
    let expected = mask_len(width, height).ok_or(Error::TooLarge { width, height })?;
    if mask.len() != expected {
        return Err(Error::Length {
            what: "cursor mask",
            expected,
            got: mask.len(),
        });
    }
    let mut pixels = Vec::new();
    tr.encode_rect(src, &mut pixels);
    Ok((pixels, mask.to_vec()))
}

/// Decodes a `width`×`height` cursor from its wire parts, which must have exactly the
/// rectangle's lengths.
pub fn decode(
    tr: &Translator,
    width: usize,
    height: usize,
    pixels: &[u8],
    mask: &[u8],
) -> Result<Cursor, Error> {
    let too_large = Error::TooLarge { width, height };
    let count = width
        .checked_mul(height)
        .ok_or(Error::TooLarge { width, height })?;
    let expected = count.checked_mul(tr.bytes_per_pixel()).ok_or(too_large)?;
    if pixels.len() != expected {
        return Err(Error::Length {
            what: "cursor pixels",
            expected,
            got: pixels.len(),
        });
    }
    let expected = mask_len(width, height).ok_or(Error::TooLarge { width, height })?;
    if mask.len() != expected {
        return Err(Error::Length {
            what: "cursor mask",
            expected,
            got: mask.len(),
        });
    }
    // pixels.len() == count * bpp bounds this allocation by what the peer actually sent.
    let mut image = vec![0u32; count];
    if let Some(mut dst) = PixelsMut::packed(&mut image, width, height) {
        tr.decode_rect(pixels, &mut dst);
    }
    Ok(Cursor {
        width,
        height,
        pixels: image,
        mask: mask.to_vec(),
    })
}

//! The Raw encoding (RFC 6143 §7.7.1): the rectangle's pixels, rows in order, in the
//! connection's pixel format.

use super::Error;
use crate::translate::{Pixels, PixelsMut, Translator};

/// Encoding number of Raw.
pub const ENCODING: i32 = 0;

/// Bytes of a Raw payload for a `width`×`height` rectangle, `None` on overflow.
pub fn payload_len(tr: &Translator, width: usize, height: usize) -> Option<usize> {
    width.checked_mul(height)?.checked_mul(tr.bytes_per_pixel())
}

/// Appends the Raw payload of `src` in `tr`'s format.
pub fn encode(tr: &Translator, src: Pixels<'_>, out: &mut Vec<u8>) {
    tr.encode_rect(src, out);
}

/// Decodes a Raw payload into `dst`, whose size is the rectangle's. `data` must be exactly
/// [`payload_len`] bytes; nothing is written otherwise.
pub fn decode(tr: &Translator, data: &[u8], dst: &mut PixelsMut<'_>) -> Result<(), Error> {
    let (width, height) = (dst.width(), dst.height());
    let expected = payload_len(tr, width, height).ok_or(Error::TooLarge { width, height })?;
    if !tr.decode_rect(data, dst) {
        return Err(Error::Length {
            what: "Raw payload",
            expected,
            got: data.len(),
        });
    }
    Ok(())
}

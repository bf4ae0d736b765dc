//! Shared set-up for the fuzz targets: input layout and small limits.
//!
//! Every target reads its first input byte as a selector (pixel format or handshake
//! configuration, and the chunk size the rest is fed in), so recorded byte streams make
//! seeds by prepending one byte. Limits are small so a run spends its time parsing, not
//! allocating.

use rfb::translate::{PixelsMut, Translator};
use rfb::{Limits, PixelFormat};

/// Limits for fuzzing: real checks, small numbers.
pub const LIMITS: Limits = Limits {
    max_cut_text: 1 << 16,
    max_dimension: 2048,
    max_rect_payload: 1 << 20,
    max_message: 4 << 20,
    max_name: 256,
};

/// Splits an input into (selector, stream); `None` for an empty input.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(s, rest)| (*s, rest))
}

/// Chunk size chosen by the selector's high bits: 1, 2, 4, ... 128 bytes.
pub fn chunk_size(sel: u8) -> usize {
    1usize << (sel >> 5)
}

/// One of four pixel formats, chosen by the selector's low two bits.
pub fn pixel_format(sel: u8) -> PixelFormat {
    let rgb565 = PixelFormat::RGB565_LE;
    let bgr233 = PixelFormat {
        bits_per_pixel: 8,
        depth: 8,
        red_max: 7,
        green_max: 7,
        blue_max: 3,
        red_shift: 0,
        green_shift: 3,
        blue_shift: 6,
        ..PixelFormat::RGBX32_LE
    };
    match sel & 3 {
        0 => PixelFormat::RGBX32_LE,
        1 => rgb565,
        2 => bgr233,
        _ => PixelFormat {
            big_endian: true,
            ..PixelFormat::RGBX32_LE
        },
    }
}

/// Rectangles for a decoder fed directly, no message framing: records of width (u8), height
/// (u8), a big-endian u16 length and that many payload bytes; a short last record is cut.
pub fn records(mut stream: &[u8]) -> impl Iterator<Item = (usize, usize, &[u8])> {
    std::iter::from_fn(move || {
        let (&[w, h, l0, l1], rest) = stream.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_be_bytes([l0, l1])).min(rest.len());
        let (data, rest) = rest.split_at(len);
        stream = rest;
        Some((usize::from(w), usize::from(h), data))
    })
}

/// Feeds each of [`records`] to `decode` (one decoder for the whole input, as a client keeps
/// one per connection) in the pixel format the selector picks, into a zeroed buffer of the
/// record's size: a decoder that says how much it took must not claim more than the record,
/// and the first error ends the input (a stream decoder is out of step after one).
pub fn decode_records<E>(
    data: &[u8],
    mut decode: impl FnMut(&Translator, &[u8], &mut PixelsMut<'_>) -> Result<Option<usize>, E>,
) {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let Ok(tr) = Translator::new(pixel_format(sel)) else {
        return;
    };
    let mut pixels = Vec::new();
    for (w, h, bytes) in records(stream) {
        pixels.clear();
        pixels.resize(w * h, 0u32);
        let Some(mut dst) = PixelsMut::packed(&mut pixels, w, h) else {
            return;
        };
        match decode(&tr, bytes, &mut dst) {
            Ok(Some(used)) => assert!(used <= bytes.len()),
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

//! Hextile (RFC 6143 §7.7.4): 16×16 tiles, left to right then top to bottom, each a
//! sub-encoding mask and then its body:
//!
//! ```text
//! mask bit            body
//! 1  Raw              w·h PIXELs (the other bits are ignored)
//! 2  BackgroundSpec.  PIXEL: the background, kept for the following tiles
//! 4  ForegroundSpec.  PIXEL: the foreground, kept for the following tiles
//! 8  AnySubrects      u8 count, then count × ([PIXEL if SubrectsColoured] u8 x<<4|y,
//!                     u8 (w-1)<<4|(h-1))
//! 16 SubrectsColoured each subrectangle carries its own colour
//! ```
//!
//! The payload has no length prefix: its end is found by reading it. The encoder re-specifies
//! the background after a Raw tile and the foreground after a Raw or coloured tile, as
//! libvncserver does, since RFC 6143 leaves them undefined there and decoders differ; the
//! decoder refuses a tile that relies on a colour never specified.

use super::{Error, Input};
use crate::translate::{Pixels, PixelsMut, Translator};

/// Encoding number of Hextile.
pub const ENCODING: i32 = 5;

/// Side of a Hextile tile.
pub const TILE: usize = 16;

const RAW: u8 = 1;
const BACKGROUND: u8 = 2;
const FOREGROUND: u8 = 4;
const ANY_SUBRECTS: u8 = 8;
const COLOURED: u8 = 16;

const NAME: &str = "Hextile";

/// Tiles of a `width`×`height` rectangle as (x, y, w, h), left to right, top to bottom.
fn tiles(width: usize, height: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..height).step_by(TILE).flat_map(move |y| {
        (0..width)
            .step_by(TILE)
            .map(move |x| (x, y, TILE.min(width - x), TILE.min(height - y)))
    })
}

/// A subrectangle of a tile: colour (pixel value), x, y, w, h.
type Subrect = (u32, usize, usize, usize, usize);

/// The server side: stateless across rectangles (each starts with no colours known).
#[derive(Debug, Default)]
pub struct HextileEncoder {
    values: Vec<u32>,
    subrects: Vec<Subrect>,
}

impl HextileEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the Hextile payload of `src` in `tr`'s format.
    pub fn encode(&mut self, tr: &Translator, src: Pixels<'_>, out: &mut Vec<u8>) {
        let mut bg: Option<u32> = None;
        let mut fg: Option<u32> = None;
        for (x, y, w, h) in tiles(src.width(), src.height()) {
            let Some(tile) = src.sub(x, y, w, h) else {
                continue;
            };
            self.values.clear();
            for row in 0..h {
                self.values
                    .extend(tile.row(row).iter().map(|&p| tr.pixel_value(p)));
            }
            self.tile(tr, w, h, &mut bg, &mut fg, out);
        }
    }

    /// Appends one tile (its values in `self.values`), updating the colours the decoder holds.
    fn tile(
        &mut self,
        tr: &Translator,
        w: usize,
        h: usize,
        bg: &mut Option<u32>,
        fg: &mut Option<u32>,
        out: &mut Vec<u8>,
    ) {
        let bpp = tr.bytes_per_pixel();
        let raw_len = 1 + w * h * bpp;
        let Some((back, colours)) = background(&self.values) else {
            return;
        };
        let mut mask = 0u8;
        let mut body = Vec::new();
        if *bg != Some(back) {
            mask |= BACKGROUND;
            tr.put_pixel(back, &mut body);
        }
        if colours > 1 {
            subrects(&self.values, w, h, back, &mut self.subrects);
            mask |= ANY_SUBRECTS;
            let single = (colours == 2).then(|| self.subrects.first().map(|s| s.0));
            let fore = single.flatten();
            let coloured = fore.is_none();
            let len = body.len()
                + 2
                + match fore {
                    Some(f) if *fg != Some(f) => bpp,
                    _ => 0,
                }
                + self.subrects.len() * (2 + if coloured { bpp } else { 0 });
            if self.subrects.len() > 255 || len >= raw_len {
                out.push(RAW);
                for &v in &self.values {
                    tr.put_pixel(v, out);
                }
                *bg = None;
                *fg = None;
                return;
            }
            match fore {
                Some(f) => {
                    if *fg != Some(f) {
                        mask |= FOREGROUND;
                        tr.put_pixel(f, &mut body);
                    }
                    *fg = Some(f);
                }
                None => {
                    mask |= COLOURED;
                    *fg = None;
                }
            }
            body.push(u8::try_from(self.subrects.len()).unwrap_or(u8::MAX));
            for &(c, sx, sy, sw, sh) in &self.subrects {
                if coloured {
                    tr.put_pixel(c, &mut body);
                }
                body.push(nibbles(sx, sy));
                body.push(nibbles(sw - 1, sh - 1));
            }
        }
        *bg = Some(back);
        out.push(mask);
        out.extend_from_slice(&body);
    }
}

/// Two 4-bit values (each < 16) in one byte, the first high.
fn nibbles(hi: usize, lo: usize) -> u8 {
    ((hi as u8 & 0xf) << 4) | (lo as u8 & 0xf)
}

/// The tile's most frequent value and how many distinct values it has (counted up to 3:
/// 1, 2 or "3 or more").
fn background(values: &[u32]) -> Option<(u32, usize)> {
    let first = *values.first()?;
    let mut counts: Vec<(u32, usize)> = vec![(first, 0)];
    for &v in values {
        match counts.iter_mut().find(|(c, _)| *c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let back = counts.iter().max_by_key(|(_, n)| *n).map_or(first, |c| c.0);
    Some((back, counts.len().min(3)))
}

/// Covers every pixel that is not `back` with same-coloured rectangles: from each uncovered
/// pixel, as far right as the colour goes, then as far down as whole rows of it go.
fn subrects(values: &[u32], w: usize, h: usize, back: u32, out: &mut Vec<Subrect>) {
    out.clear();
    let mut covered = [false; TILE * TILE];
    let at = |x: usize, y: usize| values.get(y * w + x).copied();
    for y in 0..h {
        for x in 0..w {
            let c = match at(x, y) {
                Some(c) if c != back && !covered[y * w + x] => c,
                _ => continue,
            };
            let mut x2 = x + 1;
            while x2 < w && at(x2, y) == Some(c) && !covered[y * w + x2] {
                x2 += 1;
            }
            let mut y2 = y + 1;
            while y2 < h && (x..x2).all(|xx| at(xx, y2) == Some(c) && !covered[y2 * w + xx]) {
                y2 += 1;
            }
            for yy in y..y2 {
                for xx in x..x2 {
                    covered[yy * w + xx] = true;
                }
            }
            out.push((c, x, y, x2 - x, y2 - y));
        }
    }
}

impl Input<'_> {
    fn pixel(&mut self, tr: &Translator) -> Result<u32, Error> {
        Ok(tr.rgbx(tr.read_pixel(self.take(tr.bytes_per_pixel())?)))
    }
}

fn malformed(reason: &'static str) -> Error {
    Error::Malformed {
        encoding: NAME,
        reason,
    }
}

/// The length of the Hextile payload of a `width`×`height` rectangle of `bpp`-byte pixels at
/// the front of `data`, read without decoding it (for the message codec, which must find the
/// rectangle's end); [`Error::Truncated`] if `data` ends first.
pub fn payload_len(bpp: usize, width: usize, height: usize, data: &[u8]) -> Result<usize, Error> {
    let mut input = Input::new(data, NAME);
    for (_, _, w, h) in tiles(width, height) {
        let mask = input.byte()?;
        if mask & RAW != 0 {
            input.take(w * h * bpp)?;
            continue;
        }
        let colours = usize::from(mask & BACKGROUND != 0) + usize::from(mask & FOREGROUND != 0);
        input.take(colours * bpp)?;
        if mask & ANY_SUBRECTS != 0 {
            let each = 2 + if mask & COLOURED != 0 { bpp } else { 0 };
            let count = usize::from(input.byte()?);
            input.take(count * each)?;
        }
    }
    Ok(input.pos())
}

/// Decodes the Hextile payload at the front of `data` into `dst` (the rectangle's size) and
/// returns how many bytes it took; `dst` may be partly written on an error.
pub fn decode(tr: &Translator, data: &[u8], dst: &mut PixelsMut<'_>) -> Result<usize, Error> {
    let bpp = tr.bytes_per_pixel();
    let mut input = Input::new(data, NAME);
    let (mut bg, mut fg): (Option<u32>, Option<u32>) = (None, None);
    let mut tile = [0u32; TILE * TILE];
    for (x, y, w, h) in tiles(dst.width(), dst.height()) {
        let mask = input.byte()?;
        if mask & RAW != 0 {
            let bytes = input.take(w * h * bpp)?;
            for (row, src) in bytes.chunks_exact(w * bpp).enumerate() {
                if let Some(d) = dst.row_mut(y + row).get_mut(x..x + w) {
                    tr.decode_row(src, d);
                }
            }
            continue;
        }
        if mask & BACKGROUND != 0 {
            bg = Some(input.pixel(tr)?);
        }
        if mask & FOREGROUND != 0 {
            fg = Some(input.pixel(tr)?);
        }
        let back = bg.ok_or_else(|| malformed("a tile without a background"))?;
        let cells = tile.get_mut(..w * h).unwrap_or(&mut []);
        cells.fill(back);
        if mask & ANY_SUBRECTS != 0 {
            let count = input.byte()?;
            let coloured = mask & COLOURED != 0;
            for _ in 0..count {
                let colour = if coloured {
                    input.pixel(tr)?
                } else {
                    fg.ok_or_else(|| malformed("subrectangles without a foreground"))?
                };
                let (xy, wh) = (input.byte()?, input.byte()?);
                let (sx, sy) = (usize::from(xy >> 4), usize::from(xy & 0xf));
                let (sw, sh) = (usize::from(wh >> 4) + 1, usize::from(wh & 0xf) + 1);
                if sx + sw > w || sy + sh > h {
                    return Err(malformed("a subrectangle outside its tile"));
                }
                for row in sy..sy + sh {
                    if let Some(c) = cells.get_mut(row * w + sx..row * w + sx + sw) {
                        c.fill(colour);
                    }
                }
            }
            if coloured {
                // RFC 6143 leaves the foreground undefined after coloured subrectangles.
                fg = None;
            }
        }
        for (row, src) in cells.chunks_exact(w).enumerate() {
            if let Some(d) = dst.row_mut(y + row).get_mut(x..x + w) {
                d.copy_from_slice(src);
            }
        }
    }
    Ok(input.pos())
}

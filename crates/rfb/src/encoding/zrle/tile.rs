//! One ZRLE tile (RFC 6143 §7.7.6): choosing and writing a sub-encoding, and reading one back.
//!
//! ```text
//! sub-encoding  body
//! 0             raw: w·h CPIXELs
//! 1             solid: 1 CPIXEL
//! 2..=16        packed palette: n CPIXELs, then rows of 1/2/4-bit indices, MSB first,
//!               each row padded to a byte
//! 128           plain RLE: (CPIXEL, run length)*
//! 130..=255     palette RLE: n-128 CPIXELs, then (index) for a single pixel or
//!               (index | 0x80, run length) for a run
//! run length    bytes summed, each 255 but the last; length = sum + 1
//! ```
//! Runs follow the tile's pixels left to right, top to bottom, across row ends.

use super::super::TileError;
use crate::translate::{Pixels, Translator};

/// Side of a ZRLE tile.
pub const TILE: usize = 64;

/// Largest palette a tile may have (palette RLE).
const MAX_PALETTE: usize = 127;

/// Sub-encoding numbers.
const RAW: u8 = 0;
const SOLID: u8 = 1;
const PLAIN_RLE: u8 = 128;

/// A small hash map from pixel value to palette index, for one tile at a time.
pub struct Palette {
    /// Slot → (value, index + 1); index 0 marks an empty slot.
    slots: [(u32, u8); 256],
    entries: Vec<u32>,
}

impl Default for Palette {
    fn default() -> Self {
        Palette {
            slots: [(0, 0); 256],
            entries: Vec::with_capacity(MAX_PALETTE),
        }
    }
}

impl Palette {
    fn clear(&mut self) {
        self.slots.fill((0, 0));
        self.entries.clear();
    }

    fn slot(value: u32) -> usize {
        (value.wrapping_mul(0x9e37_79b1) >> 24) as usize
    }

    /// The index of `value`, if it is in the palette.
    fn get(&self, value: u32) -> Option<u8> {
        let mut s = Self::slot(value);
        loop {
            let (v, i) = *self.slots.get(s)?;
            if i == 0 {
                return None;
            }
            if v == value {
                return Some(i - 1);
            }
            s = (s + 1) & 0xff;
        }
    }

    /// Adds `value` unless present; false once the palette would exceed [`MAX_PALETTE`].
    fn insert(&mut self, value: u32) -> bool {
        let mut s = Self::slot(value);
        loop {
            let Some(&(v, i)) = self.slots.get(s) else {
                return false;
            };
            if i == 0 {
                break;
            }
            if v == value {
                return true;
            }
            s = (s + 1) & 0xff;
        }
        if self.entries.len() >= MAX_PALETTE {
            return false;
        }
        self.entries.push(value);
        // entries.len() <= 127, and the table is at most half full, so a free slot exists.
        let index = u8::try_from(self.entries.len()).unwrap_or(u8::MAX);
        if let Some(slot) = self.slots.get_mut(s) {
            *slot = (value, index);
        }
        true
    }
}

/// Scratch space reused across tiles.
#[derive(Default)]
pub struct Scratch {
    values: Vec<u32>,
    palette: Palette,
}

/// Bytes of a run length of `run` (≥ 1) pixels.
fn run_len_bytes(run: usize) -> usize {
    (run - 1) / 255 + 1
}

/// Appends the run-length bytes of `run` (≥ 1) pixels.
fn put_run(run: usize, out: &mut Vec<u8>) {
    let mut rest = run - 1;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
}

/// Bits per packed index for a palette of `size` (2..=16) colours.
fn packed_bits(size: usize) -> usize {
    match size {
        0..=2 => 1,
        3..=4 => 2,
        _ => 4,
    }
}

/// Appends one tile in the cheapest sub-encoding for its content.
pub fn encode(tr: &Translator, src: Pixels<'_>, scratch: &mut Scratch, out: &mut Vec<u8>) {
    let (w, h) = (src.width(), src.height());
    let n = w * h;
    let values = &mut scratch.values;
    values.clear();
    for y in 0..h {
        values.extend(src.row(y).iter().map(|&p| tr.pixel_value(p)));
    }
    let palette = &mut scratch.palette;
    palette.clear();
    let cpix = tr.bytes_per_cpixel();

    // One pass: runs, and the palette while it stays small.
    let mut palette_ok = true;
    let (mut plain_rle, mut palette_rle) = (0usize, 0usize);
    let mut i = 0;
    while let Some(&v) = values.get(i) {
        let run = values
            .get(i..)
            .map_or(1, |rest| rest.iter().take_while(|&&x| x == v).count());
        palette_ok = palette_ok && palette.insert(v);
        let rl = run_len_bytes(run);
        plain_rle += cpix + rl;
        palette_rle += if run == 1 { 1 } else { 1 + rl };
        i += run;
    }
    let entries = palette.entries.len();
    if palette_ok && entries == 1 {
        out.push(SOLID);
        tr.put_cpixel(values.first().copied().unwrap_or(0), out);
        return;
    }

    let raw = n * cpix;
    let mut best = (raw, RAW);
    if plain_rle < best.0 {
        best = (plain_rle, PLAIN_RLE);
    }
    if palette_ok {
        let size = palette_rle + entries * cpix;
        if size < best.0 {
            best = (size, 128 + entries as u8);
        }
        if entries <= 16 {
            let size = entries * cpix + h * (w * packed_bits(entries)).div_ceil(8);
            if size <= best.0 {
                best = (size, entries as u8);
            }
        }
    }
    out.reserve(best.0 + 1);
    let sub = best.1;
    out.push(sub);
    match sub {
        RAW => {
            for &v in values.iter() {
                tr.put_cpixel(v, out);
            }
        }
        PLAIN_RLE => {
            for_each_run(values, |v, run| {
                tr.put_cpixel(v, out);
                put_run(run, out);
            });
        }
        2..=16 => {
            for &v in &palette.entries {
                tr.put_cpixel(v, out);
            }
            let bits = packed_bits(palette.entries.len());
            for row in values.chunks(w.max(1)) {
                let (mut byte, mut used) = (0u8, 0);
                for &v in row {
                    let index = palette.get(v).unwrap_or(0);
                    byte |= index << (8 - bits - used);
                    used += bits;
                    if used == 8 {
                        out.push(byte);
                        (byte, used) = (0, 0);
                    }
                }
                if used > 0 {
                    out.push(byte);
                }
            }
        }
        _ => {
            for &v in &palette.entries {
                tr.put_cpixel(v, out);
            }
            for_each_run(values, |v, run| {
                let index = palette.get(v).unwrap_or(0);
                if run == 1 {
                    out.push(index);
                } else {
                    out.push(index | 0x80);
                    put_run(run, out);
                }
            });
        }
    }
}

/// Calls `f(value, run)` for each run of equal values.
fn for_each_run(values: &[u32], mut f: impl FnMut(u32, usize)) {
    let mut rest = values;
    while let Some(&v) = rest.first() {
        let run = rest.iter().take_while(|&&x| x == v).count();
        f(v, run);
        rest = rest.get(run..).unwrap_or(&[]);
    }
}

/// Most bytes a `w`×`h` tile can take, whatever the sub-encoding: plain RLE of single pixels
/// (CPIXEL + 1 byte each) or palette RLE of 127 colours with 2 bytes a pixel.
pub fn max_len(w: usize, h: usize, cpix: usize) -> usize {
    let n = w * h;
    1 + (n * (cpix + 1)).max(MAX_PALETTE * cpix + 2 * n)
}

/// A cursor over inflated tile data.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TileError> {
        let end = self.pos.checked_add(n).ok_or(TileError::Truncated)?;
        let b = self.data.get(self.pos..end).ok_or(TileError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, TileError> {
        let b = self
            .data
            .get(self.pos)
            .copied()
            .ok_or(TileError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a run length, failing as soon as it exceeds `left`.
    fn run(&mut self, left: usize) -> Result<usize, TileError> {
        let mut run = 1usize;
        loop {
            let b = self.byte()?;
            run += usize::from(b);
            if run > left {
                return Err(TileError::RunTooLong { run, left });
            }
            if b != 255 {
                return Ok(run);
            }
        }
    }

    fn cpixel(&mut self, tr: &Translator) -> Result<u32, TileError> {
        Ok(tr.rgbx(tr.read_cpixel(self.take(tr.bytes_per_cpixel())?)))
    }
}

/// Reads one `w`×`h` tile into `dst` (`w * h` framebuffer pixels, rows in order).
pub fn decode(
    tr: &Translator,
    input: &mut Reader<'_>,
    w: usize,
    dst: &mut [u32],
) -> Result<(), TileError> {
    let sub = input.byte()?;
    match sub {
        RAW => {
            for d in dst.iter_mut() {
                *d = input.cpixel(tr)?;
            }
        }
        SOLID => {
            let p = input.cpixel(tr)?;
            dst.fill(p);
        }
        2..=16 => {
            let palette = read_palette(tr, input, sub)?;
            let bits = packed_bits(usize::from(sub));
            let row_len = (w * bits).div_ceil(8);
            for row in dst.chunks_mut(w.max(1)) {
                let packed = input.take(row_len)?;
                for (x, d) in row.iter_mut().enumerate() {
                    let byte = packed.get(x * bits / 8).copied().unwrap_or(0);
                    let shift = 8 - bits - (x * bits) % 8;
                    let index = (byte >> shift) & ((1 << bits) - 1);
                    *d = palette_colour(&palette, index)?;
                }
            }
        }
        PLAIN_RLE => {
            let mut at = 0;
            while at < dst.len() {
                let p = input.cpixel(tr)?;
                let run = input.run(dst.len() - at)?;
                dst.get_mut(at..at + run)
                    .ok_or(TileError::Truncated)?
                    .fill(p);
                at += run;
            }
        }
        130..=255 => {
            let palette = read_palette(tr, input, sub - 128)?;
            let mut at = 0;
            while at < dst.len() {
                let b = input.byte()?;
                let p = palette_colour(&palette, b & 0x7f)?;
                let run = if b & 0x80 != 0 {
                    input.run(dst.len() - at)?
                } else {
                    1
                };
                dst.get_mut(at..at + run)
                    .ok_or(TileError::Truncated)?
                    .fill(p);
                at += run;
            }
        }
        _ => return Err(TileError::Subencoding(sub)),
    }
    Ok(())
}

/// Reads a palette of `size` CPIXELs, as framebuffer pixels.
fn read_palette(tr: &Translator, input: &mut Reader<'_>, size: u8) -> Result<Vec<u32>, TileError> {
    (0..size).map(|_| input.cpixel(tr)).collect()
}

fn palette_colour(palette: &[u32], index: u8) -> Result<u32, TileError> {
    palette
        .get(usize::from(index))
        .copied()
        .ok_or(TileError::PaletteIndex {
            index,
            size: u8::try_from(palette.len()).unwrap_or(u8::MAX),
        })
}

//! What one viewer has not received yet, in bounded memory whatever the viewer does.
//!
//! ```text
//!   screen 720x400  ->  45 runs of 16 pixels per line x 400 lines = one u64 per line
//!
//!   line 32..46   . . . . . . . . . . . X . . .      rects: (176, 32, 16x14)
//!   line 46..48   . . . . . . . . . . . X X . .             (176, 46, 32x2)
//! ```
//!
//! The granularity is QEMU's own VNC server's (`VNC_DIRTY_PIXELS_PER_BIT` in ui/vnc.h: 16
//! pixels of one line), which is also the granularity of the rectangles QEMU sends the
//! console: so a viewer is sent what changed and no more than QEMU's VNC would send it. A
//! dirty run stays one bit however often it changes, so a viewer that never reads costs at
//! most one bit per 16 pixels of each line (one u64 per line up to 1024 pixels wide) plus
//! [`MAX_COPIES`] queued CopyRects.

use serde::{Deserialize, Serialize};

/// Width of a damage tile in pixels; a tile is one line high (QEMU's VNC granularity).
pub const TILE_WIDTH: u16 = 16;

/// Most CopyRects queued for one viewer; beyond it a copy's destination is marked dirty.
pub const MAX_COPIES: usize = 16;

/// A pixel rectangle of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Area {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
}

impl Area {
    /// The rectangle `(x, y, width, height)`.
    pub fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Area {
            x,
            y,
            width,
            height,
        }
    }

    /// This area cut to a `width x height` screen (`None` if nothing is left).
    pub fn clip(&self, width: u16, height: u16) -> Option<Area> {
        let x1 = (u32::from(self.x) + u32::from(self.width)).min(u32::from(width));
        let y1 = (u32::from(self.y) + u32::from(self.height)).min(u32::from(height));
        let w = u16::try_from(x1.checked_sub(u32::from(self.x))?).ok()?;
        let h = u16::try_from(y1.checked_sub(u32::from(self.y))?).ok()?;
        (w > 0 && h > 0).then_some(Area::new(self.x, self.y, w, h))
    }

    /// Whether it lies wholly inside a `width x height` screen.
    pub fn inside(&self, width: u16, height: u16) -> bool {
        u32::from(self.x) + u32::from(self.width) <= u32::from(width)
            && u32::from(self.y) + u32::from(self.height) <= u32::from(height)
    }
}

/// A CopyRect queued for a viewer: copy `width x height` from (`src_x`, `src_y`) to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Source left edge.
    pub src_x: u16,
    /// Source top edge.
    pub src_y: u16,
    /// Destination (and size).
    pub dst: Area,
}

/// How [`Damage::take`] covers the dirty tiles with rectangles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// Exactly the dirty tiles: runs of tiles in a line, equal runs in consecutive lines
    /// merged. The fewest pixels, for Raw, where every pixel costs the same.
    Exact,
    /// Every [`BLOCK`]x[`BLOCK`] block holding a dirty tile, whole: runs of blocks in a row of
    /// blocks, equal runs in consecutive rows merged. Few, large rectangles for the
    /// compressing encodings, whose cost per rectangle (header, zlib flush, tile grid)
    /// outweighs the clean pixels sent along, which compress to little.
    Blocks,
}

/// Side of a [`Cover::Blocks`] block in pixels (ZRLE's tile).
pub const BLOCK: u16 = 64;

/// One viewer's pending damage on a screen of a given size: a bitmap of dirty tiles (16
/// pixels of one line each; every line starts a new u64) and a short queue of CopyRects to
/// replay before the dirty tiles.
///
/// Invariant: the viewer's framebuffer, once the queued copies are applied in order, equals
/// the screen cache in every clean tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    width: u16,
    height: u16,
    /// Tiles per line.
    cols: u16,
    /// Lines (the height).
    rows: u16,
    bits: Vec<u64>,
    copies: Vec<CopyOp>,
}

impl Damage {
    /// Damage for a `width x height` screen, all dirty or all clean.
    pub fn new(width: u16, height: u16, dirty: bool) -> Self {
        let cols = width.div_ceil(TILE_WIDTH);
        let mut d = Damage {
            width,
            height,
            cols,
            rows: height,
            bits: vec![0; words_per_line(cols) * usize::from(height)],
            copies: Vec::new(),
        };
        if dirty {
            d.mark_all();
        }
        d
    }

    /// The screen size this damage covers.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// The screen changed size: everything is dirty, queued copies are void.
    pub fn resize(&mut self, width: u16, height: u16) {
        *self = Damage::new(width, height, true);
    }

    /// Marks every tile dirty (the copies stay valid: the tiles will be sent after them).
    pub fn mark_all(&mut self) {
        self.mark(Area::new(0, 0, self.width, self.height));
    }

    /// Marks the tiles `area` touches dirty (the part outside the screen is ignored).
    pub fn mark(&mut self, area: Area) {
        let Some(a) = area.clip(self.width, self.height) else {
            return;
        };
        let (c0, c1) = col_span(a);
        for r in a.y..a.y + a.height {
            let line = self.line_mut(r);
            for (w, mask) in masks(c0, c1) {
                if let Some(word) = line.get_mut(w) {
                    *word |= mask;
                }
            }
        }
    }

    /// The screen copied `dst.width x dst.height` from (`src_x`, `src_y`) to `dst`. Queued as
    /// a CopyRect when `allowed` (the viewer accepts CopyRect and sees this screen size), the
    /// whole source is clean (the viewer holds it), and the queue has room; otherwise the
    /// destination is marked dirty. Returns whether it was queued.
    pub fn copy(&mut self, src_x: u16, src_y: u16, dst: Area, allowed: bool) -> bool {
        let src = Area::new(src_x, src_y, dst.width, dst.height);
        let ok = allowed
            && self.copies.len() < MAX_COPIES
            && src.inside(self.width, self.height)
            && dst.inside(self.width, self.height)
            && !self.any_dirty(src);
        if ok {
            self.copies.push(CopyOp { src_x, src_y, dst });
        } else {
            self.mark(dst);
        }
        ok
    }

    /// Whether nothing is pending.
    pub fn is_clean(&self) -> bool {
        self.copies.is_empty() && self.bits.iter().all(|w| *w == 0)
    }

    /// How many tiles (16 pixels of a line) are dirty.
    pub fn dirty_tiles(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Bytes of heap this damage holds (for the bounded-memory tests).
    pub fn heap_bytes(&self) -> usize {
        self.bits.capacity() * 8 + self.copies.capacity() * std::mem::size_of::<CopyOp>()
    }

    /// Takes everything pending: the queued copies in order, then the dirty tiles as
    /// rectangles made as `cover` says, cut to the `clip_w x clip_h` framebuffer the viewer
    /// has. Leaves the damage clean.
    pub fn take(&mut self, clip_w: u16, clip_h: u16, cover: Cover) -> (Vec<CopyOp>, Vec<Area>) {
        let copies = std::mem::take(&mut self.copies);
        let (w, h) = (self.width.min(clip_w), self.height.min(clip_h));
        let (col_px, row_px, rows) = match cover {
            Cover::Exact => (TILE_WIDTH, 1, self.rows),
            Cover::Blocks => (BLOCK, BLOCK, self.rows.div_ceil(BLOCK)),
        };
        let rects = merge_runs(rows, col_px, row_px, |r, runs| match cover {
            Cover::Exact => self.runs(r, runs),
            Cover::Blocks => self.block_runs(r, runs),
        });
        self.bits.iter_mut().for_each(|b| *b = 0);
        let areas = rects
            .into_iter()
            .filter_map(|(c0, c1, r0, r1)| {
                let area = Area::new(
                    c0.saturating_mul(col_px),
                    r0.saturating_mul(row_px),
                    (c1 - c0).saturating_mul(col_px),
                    (r1 - r0).saturating_mul(row_px),
                );
                area.clip(w, h)
            })
            .collect();
        (copies, areas)
    }

    /// Checks a restored damage for the invariants `new` establishes.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let fresh = Damage::new(self.width, self.height, false);
        if (fresh.cols, fresh.rows, fresh.bits.len()) != (self.cols, self.rows, self.bits.len()) {
            return Err("damage bitmap does not match the screen size");
        }
        if self.copies.len() > MAX_COPIES {
            return Err("too many queued copies");
        }
        let fits = |c: &CopyOp| {
            c.dst.inside(self.width, self.height)
                && Area::new(c.src_x, c.src_y, c.dst.width, c.dst.height)
                    .inside(self.width, self.height)
        };
        if !self.copies.iter().all(fits) {
            return Err("queued copy outside the screen");
        }
        Ok(())
    }

    fn line(&self, r: u16) -> &[u64] {
        let n = words_per_line(self.cols);
        let start = usize::from(r) * n;
        self.bits.get(start..start + n).unwrap_or(&[])
    }

    fn line_mut(&mut self, r: u16) -> &mut [u64] {
        let n = words_per_line(self.cols);
        let start = usize::from(r) * n;
        self.bits.get_mut(start..start + n).unwrap_or(&mut [])
    }

    fn any_dirty(&self, area: Area) -> bool {
        let Some(a) = area.clip(self.width, self.height) else {
            return false;
        };
        let (c0, c1) = col_span(a);
        (a.y..a.y + a.height).any(|r| {
            let line = self.line(r);
            masks(c0, c1).any(|(w, mask)| line.get(w).is_some_and(|word| word & mask != 0))
        })
    }

    /// Appends the runs of dirty blocks in row of blocks `r`, as (first block, end block).
    fn block_runs(&self, r: u16, out: &mut Vec<(u16, u16)>) {
        let per_block = usize::from(BLOCK / TILE_WIDTH);
        let first = r.saturating_mul(BLOCK);
        let end = first.saturating_add(BLOCK).min(self.rows);
        let mut any = vec![0u64; words_per_line(self.cols)];
        for line in first..end {
            for (a, w) in any.iter_mut().zip(self.line(line)) {
                *a |= w;
            }
        }
        let cols = usize::from(self.cols);
        let mut c = 0;
        while let Some(start) = next_bit(&any, c, true).filter(|s| *s < cols) {
            let block = start / per_block;
            // Both at most `cols / per_block + 1`, within u16.
            let b = u16::try_from(block).unwrap_or(u16::MAX);
            match out.last_mut() {
                Some(last) if last.1 == b => last.1 = b + 1,
                _ => out.push((b, b + 1)),
            }
            c = (block + 1) * per_block;
        }
    }

    /// Appends the runs of dirty tiles in line `r`, as (first col, end col).
    fn runs(&self, r: u16, out: &mut Vec<(u16, u16)>) {
        let line = self.line(r);
        let cols = usize::from(self.cols);
        let mut c = 0;
        while let Some(start) = next_bit(line, c, true) {
            if start >= cols {
                break;
            }
            let end = next_bit(line, start, false).unwrap_or(cols).min(cols);
            // Both fit: they are at most `cols`, a u16.
            out.push((
                u16::try_from(start).unwrap_or(u16::MAX),
                u16::try_from(end).unwrap_or(u16::MAX),
            ));
            c = end;
        }
    }
}

/// Rectangles over the runs `runs_of` gives for each of `rows` rows (columns `col_px`
/// pixels wide, rows `row_px` tall): equal runs of consecutive rows merged, as (first col,
/// end col, first row, end row).
fn merge_runs(
    rows: u16,
    col_px: u16,
    row_px: u16,
    mut runs_of: impl FnMut(u16, &mut Vec<(u16, u16)>),
) -> Vec<(u16, u16, u16, u16)> {
    let mut rects = Vec::new();
    // Open rectangles: (first col, end col, first row, end row).
    let mut open: Vec<(u16, u16, u16, u16)> = Vec::new();
    let mut next = Vec::new();
    let mut runs = Vec::new();
    for r in 0..rows {
        runs.clear();
        runs_of(r, &mut runs);
        for &(c0, c1) in &runs {
            let rows_cap = max_rows(c1 - c0, col_px, row_px);
            match open.iter().position(|o| o.0 == c0 && o.1 == c1) {
                Some(i) if open[i].3 - open[i].2 < rows_cap => {
                    let o = open.swap_remove(i);
                    next.push((o.0, o.1, o.2, r + 1));
                }
                _ => next.push((c0, c1, r, r + 1)),
            }
        }
        rects.append(&mut open);
        std::mem::swap(&mut open, &mut next);
    }
    rects.extend(open);
    rects
}

/// u64 words holding one line of `cols` tiles.
fn words_per_line(cols: u16) -> usize {
    usize::from(cols).div_ceil(64)
}

/// The tile columns an in-screen area touches: (first col, end col).
fn col_span(a: Area) -> (u16, u16) {
    let end = (u32::from(a.x) + u32::from(a.width)).div_ceil(u32::from(TILE_WIDTH));
    (a.x / TILE_WIDTH, u16::try_from(end).unwrap_or(u16::MAX))
}

/// The bits of columns `c0..c1` of a line: (word index, mask) for each word they touch.
fn masks(c0: u16, c1: u16) -> impl Iterator<Item = (usize, u64)> {
    let (c0, c1) = (usize::from(c0), usize::from(c1));
    (c0 / 64..c1.div_ceil(64)).map(move |w| {
        let lo = c0.max(w * 64) - w * 64;
        let hi = c1.min(w * 64 + 64) - w * 64;
        let upper = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
        (w, upper & !((1u64 << lo) - 1))
    })
}

/// The first column at or after `from` whose bit is `set` (one, or zero) in `line`.
fn next_bit(line: &[u64], from: usize, set: bool) -> Option<usize> {
    let word = |i: usize| line.get(i).map(|w| if set { *w } else { !*w });
    let mut i = from / 64;
    let mut bits = word(i)? & (u64::MAX << (from % 64));
    loop {
        if bits != 0 {
            return Some(i * 64 + bits.trailing_zeros() as usize);
        }
        i += 1;
        bits = word(i)?;
    }
}

/// Most rows of `row_px` lines merged into one rectangle `cols` columns of `col_px` wide, so
/// that no rectangle holds more than 4 Mi pixels (16 MiB raw at 32 bpp, well inside a
/// viewer's limits).
fn max_rows(cols: u16, col_px: u16, row_px: u16) -> u16 {
    let px_per_row = u32::from(cols.max(1)) * u32::from(col_px) * u32::from(row_px);
    u16::try_from(((4u32 << 20) / px_per_row).max(1)).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_a_line_and_equal_lines_merge() {
        let mut d = Damage::new(1024, 768, false);
        d.mark(Area::new(130, 10, 150, 100)); // cols 8..18, lines 10..110
        d.mark(Area::new(0, 140, 1, 1)); // col 0, line 140
        let (copies, rects) = d.take(1024, 768, Cover::Exact);
        assert!(copies.is_empty());
        assert_eq!(
            rects,
            vec![Area::new(128, 10, 160, 100), Area::new(0, 140, 16, 1)]
        );
        assert!(d.is_clean());
    }

    #[test]
    fn blocks_cover_every_64_pixel_block_with_a_dirty_tile_whole() {
        let mut d = Damage::new(200, 130, false);
        d.mark(Area::new(10, 70, 1, 1)); // block (0, 1)
        d.mark(Area::new(70, 127, 60, 1)); // blocks (1, 1) and (2, 1)
        d.mark(Area::new(199, 0, 1, 1)); // block (3, 0), cut to the screen
        d.mark(Area::new(150, 129, 1, 1)); // block (2, 2), one line tall
        let (_, rects) = d.take(200, 130, Cover::Blocks);
        assert_eq!(
            rects,
            vec![
                Area::new(192, 0, 8, 64),
                Area::new(0, 64, 192, 64),
                Area::new(128, 128, 64, 2),
            ]
        );
        assert!(d.is_clean());
    }

    #[test]
    fn edge_tiles_are_clipped_to_the_screen_and_the_viewer() {
        let mut d = Damage::new(727, 400, true);
        assert_eq!(d.dirty_tiles(), 46 * 400);
        let (_, rects) = d.take(727, 400, Cover::Exact);
        assert_eq!(rects, vec![Area::new(0, 0, 727, 400)]);
        d.mark_all();
        let (_, rects) = d.take(640, 480, Cover::Exact);
        assert_eq!(rects, vec![Area::new(0, 0, 640, 400)]);
    }

    #[test]
    fn lines_wider_than_a_word_keep_their_runs() {
        // 2000 pixels: 125 tiles, two words per line; a run across the word boundary.
        let mut d = Damage::new(2000, 3, false);
        d.mark(Area::new(1000, 1, 100, 1)); // cols 62..69
        d.mark(Area::new(1990, 2, 10, 1)); // col 124, the last
        assert!(d.any_dirty(Area::new(1020, 0, 1, 2)));
        assert!(!d.any_dirty(Area::new(0, 0, 992, 3)));
        let (_, rects) = d.take(2000, 3, Cover::Exact);
        assert_eq!(
            rects,
            vec![Area::new(992, 1, 112, 1), Area::new(1984, 2, 16, 1)]
        );
    }

    #[test]
    fn copy_is_queued_only_from_a_clean_source() {
        let mut d = Damage::new(256, 256, false);
        assert!(d.copy(0, 0, Area::new(64, 64, 64, 64), true));
        d.mark(Area::new(0, 0, 1, 1));
        assert!(
            !d.copy(0, 0, Area::new(128, 128, 64, 64), true),
            "dirty source"
        );
        assert!(
            !d.copy(64, 0, Area::new(128, 0, 64, 64), false),
            "not allowed"
        );
        let (copies, rects) = d.take(256, 256, Cover::Exact);
        assert_eq!(copies.len(), 1);
        assert_eq!(rects.len(), 3);
    }

    #[test]
    fn copy_queue_is_bounded() {
        let mut d = Damage::new(256, 256, false);
        for _ in 0..MAX_COPIES {
            assert!(d.copy(0, 0, Area::new(64, 0, 8, 8), true));
        }
        assert!(!d.copy(0, 0, Area::new(64, 0, 8, 8), true));
        assert_eq!(d.dirty_tiles(), 8);
    }

    #[test]
    fn tall_rectangles_are_split() {
        let mut d = Damage::new(16384, 1024, true);
        let (_, rects) = d.take(16384, 1024, Cover::Exact);
        assert!(rects.len() > 1);
        assert!(rects
            .iter()
            .all(|r| u32::from(r.width) * u32::from(r.height) <= 4 << 20));
    }
}

//! ZRLE (RFC 6143 §7.7.6): 64×64 tiles of run-length and palette sub-encodings, compressed
//! by one zlib stream that lives as long as the connection.
//!
//! A ZRLE rectangle's payload is a `u32` big-endian length and that many bytes of the
//! connection's zlib stream. The message codec writes and checks the length prefix; the data
//! here is what follows it (the codec's `RectPayload::Zrle`). [`ZrleEncoder`] (server role)
//! owns the stream's compressor and ends every rectangle with a sync flush, as real servers
//! do, so each rectangle's data is complete on its own; [`ZrleDecoder`] (client role) owns
//! the inflater.
//!
//! # Freezing for a migration
//!
//! zlib cannot export a compressor's state, but the viewer's inflater never needs it:
//!
//! ```text
//!  encoder 1 (zlib header) ─ rect A ─ sync ─ rect B ─ sync ─┤ freeze: ZrleEncoderState
//!                                                            │ (serde) travels to the new host
//!  encoder 2 (raw deflate)                                   └ rect C ─ sync ─ rect D ─ sync
//!  viewer:   one inflater reads A B C D as one stream
//! ```
//!
//! After a sync flush the stream is byte-aligned at a block boundary and every input byte has
//! been emitted, so the receiver has nothing pending. A fresh *raw* deflate compressor
//! (no zlib header) then writes blocks that are a valid continuation: they never refer back
//! into data it has not seen, and RFB never ends the stream, so no checksum is checked. That
//! boundary is what a full flush would give; a full flush's only extra, resetting the old
//! compressor's dictionary, is moot once that compressor is dropped, and emitting one would
//! need a rectangle to carry it. An encoder that never emitted anything still owes the zlib
//! header; [`ZrleEncoderState::header_sent`] records which.

mod tile;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use super::Error;
use crate::translate::{Pixels, PixelsMut, Translator};
pub use tile::TILE;

/// Encoding number of ZRLE.
pub const ENCODING: i32 = 16;

/// How much inflated or deflated output to make room for at a time.
const CHUNK: usize = 64 * 1024;

/// Tiles of a `width`×`height` rectangle as (x, y, w, h), left to right, top to bottom.
fn tiles(width: usize, height: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..height).step_by(TILE).flat_map(move |y| {
        (0..width)
            .step_by(TILE)
            .map(move |x| (x, y, TILE.min(width - x), TILE.min(height - y)))
    })
}

/// Most bytes the inflated ZRLE data of a `width`×`height` rectangle can take in `tr`'s
/// format, `None` on overflow. Decoders refuse to inflate more.
pub fn max_inflated_len(tr: &Translator, width: usize, height: usize) -> Option<usize> {
    let cpix = tr.bytes_per_cpixel();
    let full = tile::max_len(TILE, TILE, cpix);
    let (fx, fy) = (width / TILE, height / TILE);
    let (rx, ry) = (width % TILE, height % TILE);
    let mut total = fx.checked_mul(fy)?.checked_mul(full)?;
    if rx > 0 {
        total = total.checked_add(fy.checked_mul(tile::max_len(rx, TILE, cpix))?)?;
    }
    if ry > 0 {
        total = total.checked_add(fx.checked_mul(tile::max_len(TILE, ry, cpix))?)?;
    }
    if rx > 0 && ry > 0 {
        total = total.checked_add(tile::max_len(rx, ry, cpix))?;
    }
    Some(total)
}

/// A generous bound on the compressed ZRLE data a sane server sends for a `width`×`height`
/// rectangle: the inflated bound plus deflate's worst-case expansion and slack. For the
/// message codec, to refuse absurd lengths before reading them.
pub fn max_data_len(tr: &Translator, width: usize, height: usize) -> Option<usize> {
    let inflated = max_inflated_len(tr, width, height)?;
    inflated.checked_add(inflated / 16)?.checked_add(1024)
}

/// The part of a ZRLE encoder that survives a migration: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZrleEncoderState {
    /// zlib compression level, 0..=9.
    pub level: u32,
    /// The zlib header was emitted: a continuing encoder writes raw deflate.
    pub header_sent: bool,
}

/// The server side of a connection's ZRLE stream.
pub struct ZrleEncoder {
    deflate: Compress,
    level: u32,
    header_sent: bool,
    frozen: bool,
    raw: Vec<u8>,
    scratch: tile::Scratch,
}

impl std::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleEncoder")
            .field("level", &self.level)
            .field("header_sent", &self.header_sent)
            .field("frozen", &self.frozen)
            .finish_non_exhaustive()
    }
}

impl ZrleEncoder {
    /// A good default compression level for interactive use.
    pub const DEFAULT_LEVEL: u32 = 6;

    /// An encoder for a new connection: its first rectangle starts with the zlib header.
    /// `level` (0..=9, clamped) trades CPU for bytes.
    pub fn new(level: u32) -> Self {
        Self::with_state(ZrleEncoderState {
            level: level.min(9),
            header_sent: false,
        })
    }

    /// The encoder that continues a frozen one's stream, in this or another process: raw
    /// deflate if the zlib header already went out, a fresh zlib stream otherwise.
    pub fn resume_after_freeze(state: &ZrleEncoderState) -> Self {
        Self::with_state(*state)
    }

    fn with_state(state: ZrleEncoderState) -> Self {
        let level = state.level.min(9);
        ZrleEncoder {
            deflate: Compress::new(Compression::new(level), !state.header_sent),
            level,
            header_sent: state.header_sent,
            frozen: false,
            raw: Vec::new(),
            scratch: tile::Scratch::default(),
        }
    }

    /// Freezes the stream for a snapshot: from here on [`ZrleEncoder::encode`] fails with
    /// [`Error::Frozen`] until [`ZrleEncoder::thaw`] (the migration failed and this side goes
    /// on), so the snapshot stays the stream's true end. Nothing needs flushing: each
    /// rectangle already ended at a sync-flush boundary (see the module docs).
    pub fn freeze(&mut self) -> ZrleEncoderState {
        self.frozen = true;
        self.state()
    }

    /// Lets a frozen encoder go on with its own stream (the migration did not happen).
    pub fn thaw(&mut self) {
        self.frozen = false;
    }

    /// The serialisable state as of now.
    pub fn state(&self) -> ZrleEncoderState {
        ZrleEncoderState {
            level: self.level,
            header_sent: self.header_sent,
        }
    }

    /// Appends the ZRLE data of `src` in `tr`'s format: compressed tiles, without the `u32`
    /// length prefix (the message codec writes it). On an error the stream is broken and the
    /// connection must be closed.
    pub fn encode(
        &mut self,
        tr: &Translator,
        src: Pixels<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if self.frozen {
            return Err(Error::Frozen);
        }
        self.raw.clear();
        for (x, y, w, h) in tiles(src.width(), src.height()) {
            if let Some(t) = src.sub(x, y, w, h) {
                tile::encode(tr, t, &mut self.scratch, &mut self.raw);
            }
        }
        let start = out.len();
        let mut pos = 0;
        loop {
            // Room for all of it and the flush in one call: deflate's worst case adds a few
            // bytes per 16 KiB block plus the sync marker. When the output ran out exactly as
            // the input did, the next call (no input) did not finish the sync flush, and the
            // rectangle's last bytes never left (a 163x139 rectangle lost 7 bytes; found by
            // `zrle_round_trips`).
            let left = self.raw.len() - pos;
            out.reserve(left + left / 8 + 1024);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(self.raw.get(pos..).unwrap_or(&[]), out, FlushCompress::Sync)
                .map_err(Error::Deflate)?;
            pos += usize::try_from(self.deflate.total_in() - before).unwrap_or(usize::MAX);
            if pos >= self.raw.len() && out.len() < out.capacity() {
                break;
            }
        }
        self.header_sent = true;
        if u32::try_from(out.len() - start).is_err() {
            return Err(Error::TooLarge {
                width: src.width(),
                height: src.height(),
            });
        }
        Ok(())
    }
}

/// The client side of a connection's ZRLE stream.
pub struct ZrleDecoder {
    inflate: Decompress,
    buf: Vec<u8>,
    tile: Vec<u32>,
}

impl std::fmt::Debug for ZrleDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleDecoder")
            .field("total_in", &self.inflate.total_in())
            .finish_non_exhaustive()
    }
}

impl Default for ZrleDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ZrleDecoder {
    /// A decoder for a new connection (its stream starts with a zlib header).
    pub fn new() -> Self {
        ZrleDecoder {
            inflate: Decompress::new(true),
            buf: Vec::new(),
            tile: Vec::new(),
        }
    }

    /// Decodes one rectangle's ZRLE `data` (what follows the length prefix) in `tr`'s format
    /// into `dst`, whose size is the rectangle's. On an error `dst` may be partly written and
    /// the stream is out of step: the connection must be closed.
    pub fn decode(
        &mut self,
        tr: &Translator,
        data: &[u8],
        dst: &mut PixelsMut<'_>,
    ) -> Result<(), Error> {
        let (width, height) = (dst.width(), dst.height());
        let limit = max_inflated_len(tr, width, height).ok_or(Error::TooLarge { width, height })?;
        self.inflate_all(data, limit).map_err(|e| match e {
            Error::InflateLimit { limit, .. } => Error::InflateLimit {
                limit,
                width,
                height,
            },
            e => e,
        })?;

        let mut input = tile::Reader::new(&self.buf);
        for (x, y, w, h) in tiles(width, height) {
            self.tile.clear();
            self.tile.resize(w * h, 0);
            tile::decode(tr, &mut input, w, &mut self.tile).map_err(|error| Error::Tile {
                x,
                y,
                error,
            })?;
            for (row, src) in self.tile.chunks_exact(w).enumerate() {
                if let Some(d) = dst.row_mut(y + row).get_mut(x..x + w) {
                    d.copy_from_slice(src);
                }
            }
        }
        match input.remaining() {
            0 => Ok(()),
            n => Err(Error::TrailingData(n)),
        }
    }

    /// Inflates all of `data` into `self.buf`, refusing to produce more than `limit` bytes.
    fn inflate_all(&mut self, data: &[u8], limit: usize) -> Result<(), Error> {
        self.buf.clear();
        let too_much = || Error::InflateLimit {
            limit,
            width: 0,
            height: 0,
        };
        let mut pos = 0;
        loop {
            if self.buf.len() > limit {
                return Err(too_much());
            }
            self.buf.reserve((limit + 1 - self.buf.len()).min(CHUNK));
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress_vec(
                    data.get(pos..).unwrap_or(&[]),
                    &mut self.buf,
                    FlushDecompress::Sync,
                )
                .map_err(Error::Inflate)?;
            let read = usize::try_from(self.inflate.total_in() - in0).unwrap_or(usize::MAX);
            let wrote = self.inflate.total_out() - out0;
            pos = pos.saturating_add(read);
            if status == Status::StreamEnd {
                return Err(Error::StreamEnded);
            }
            let full = self.buf.len() == self.buf.capacity();
            if pos >= data.len() && !full {
                break;
            }
            if read == 0 && wrote == 0 && !full {
                return Err(Error::InflateStalled(data.len().saturating_sub(pos)));
            }
        }
        if self.buf.len() > limit {
            return Err(too_much());
        }
        Ok(())
    }
}

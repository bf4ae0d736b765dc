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
//! The stream continues in another process as any of the connection's zlib streams does (see
//! [`zstream`](super::zstream)); [`ZrleEncoder::freeze`] makes sure nothing more is emitted
//! after its state was taken.

mod tile;

use super::zstream::{DeflateStream, InflateStream, StreamState};
use super::Error;
use crate::translate::{Pixels, PixelsMut, Translator};
pub use tile::TILE;

/// Encoding number of ZRLE.
pub const ENCODING: i32 = 16;

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

/// The part of a ZRLE encoder that survives a migration: its zlib stream's.
pub type ZrleEncoderState = StreamState;

/// The server side of a connection's ZRLE stream.
pub struct ZrleEncoder {
    stream: DeflateStream,
    frozen: bool,
    raw: Vec<u8>,
    scratch: tile::Scratch,
}

impl std::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleEncoder")
            .field("stream", &self.stream)
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
        ZrleEncoder {
            stream: DeflateStream::resume(&state),
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
        self.stream.state()
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
        let compressed = self.stream.compress(&self.raw, out);
        crate::scratch::release_large(&mut self.raw);
        compressed?;
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
    inflate: InflateStream,
    buf: Vec<u8>,
    tile: Vec<u32>,
}

impl std::fmt::Debug for ZrleDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleDecoder")
            .field("inflate", &self.inflate)
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
            inflate: InflateStream::new(),
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
        self.inflate
            .inflate(data, limit, &mut self.buf)
            .map_err(|e| match e {
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
}

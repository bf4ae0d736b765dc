//! The zlib streams RFB encodings keep for a connection's lifetime (ZRLE's, Zlib's, Tight's
//! four): a compressor that ends every rectangle with a sync flush, an inflater that refuses to
//! make more than a rectangle can need, and the state that lets a stream continue in another
//! process.
//!
//! # Continuing a stream elsewhere
//!
//! zlib cannot export a compressor's state, but the viewer's inflater never needs it:
//!
//! ```text
//!  compressor 1 (zlib header) ─ rect A ─ sync ─ rect B ─ sync ─┤ StreamState (serde)
//!                                                               │ travels to the new host
//!  compressor 2 (raw deflate)                                   └ rect C ─ sync ─ rect D ─ sync
//!  viewer:   one inflater reads A B C D as one stream
//! ```
//!
//! After a sync flush the stream is byte-aligned at a block boundary and every input byte has
//! been emitted, so the receiver has nothing pending. A fresh *raw* deflate compressor
//! (no zlib header) then writes blocks that are a valid continuation: they never refer back
//! into data it has not seen, and RFB never ends the stream, so no checksum is checked. That
//! boundary is what a full flush would give; a full flush's only extra, resetting the old
//! compressor's dictionary, is moot once that compressor is dropped, and emitting one would
//! need a rectangle to carry it. A stream that never emitted anything still owes the zlib
//! header; [`StreamState::header_sent`] records which.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use super::Error;

/// How much inflated output to make room for at a time.
const CHUNK: usize = 64 * 1024;

/// The part of a compressor that survives a migration: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// zlib compression level, 0..=9.
    pub level: u32,
    /// The zlib header was emitted: a continuing compressor writes raw deflate.
    pub header_sent: bool,
}

/// The server side of one zlib stream.
pub struct DeflateStream {
    /// Made for the first rectangle: a viewer's encoder holds a stream for each encoding it
    /// might be sent (ZRLE, Zlib, Tight's four), and a compressor takes ~320 KiB.
    deflate: Option<Compress>,
    state: StreamState,
}

impl std::fmt::Debug for DeflateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflateStream")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DeflateStream {
    /// A new stream at `level` (0..=9, clamped): its first bytes are the zlib header.
    pub fn new(level: u32) -> Self {
        Self::resume(&StreamState {
            level,
            header_sent: false,
        })
    }

    /// The stream that continues one whose state is `state`, in this or another process: raw
    /// deflate if the zlib header already went out, a fresh zlib stream otherwise.
    pub fn resume(state: &StreamState) -> Self {
        let state = StreamState {
            level: state.level.min(9),
            header_sent: state.header_sent,
        };
        DeflateStream {
            deflate: None,
            state,
        }
    }

    /// Where the stream stands, as of the last rectangle.
    pub fn state(&self) -> StreamState {
        self.state
    }

    /// Compresses all of `input` onto `out` and sync-flushes, so the bytes appended are
    /// complete on their own. On an error the stream is broken.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let StreamState { level, header_sent } = self.state;
        let deflate = self
            .deflate
            .get_or_insert_with(|| Compress::new(Compression::new(level), !header_sent));
        let mut pos = 0;
        loop {
            // Room for all of it and the flush in one call: deflate's worst case adds a few
            // bytes per 16 KiB block plus the sync marker. When the output ran out exactly as
            // the input did, the next call (no input) did not finish the sync flush, and the
            // rectangle's last bytes never left (a 163x139 ZRLE rectangle lost 7 bytes; found
            // by `zrle_round_trips`).
            let left = input.len() - pos;
            out.reserve(left + left / 8 + 1024);
            let before = deflate.total_in();
            deflate
                .compress_vec(input.get(pos..).unwrap_or(&[]), out, FlushCompress::Sync)
                .map_err(Error::Deflate)?;
            pos += usize::try_from(deflate.total_in() - before).unwrap_or(usize::MAX);
            if pos >= input.len() && out.len() < out.capacity() {
                break;
            }
        }
        self.state.header_sent = true;
        Ok(())
    }
}

/// The client side of one zlib stream.
pub struct InflateStream {
    /// Made for the first rectangle, as [`DeflateStream`]'s compressor (~43 KiB).
    inflate: Option<Decompress>,
}

impl std::fmt::Debug for InflateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflateStream")
            .field("total_in", &self.inflate.as_ref().map(Decompress::total_in))
            .finish_non_exhaustive()
    }
}

impl Default for InflateStream {
    fn default() -> Self {
        Self::new()
    }
}

impl InflateStream {
    /// A stream that starts with a zlib header.
    pub fn new() -> Self {
        InflateStream { inflate: None }
    }

    /// Inflates all of `data` into `buf` (cleared first), refusing to produce more than
    /// `limit` bytes ([`Error::InflateLimit`] with a zero size: callers fill in theirs).
    pub fn inflate(&mut self, data: &[u8], limit: usize, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.clear();
        let inflate = self.inflate.get_or_insert_with(|| Decompress::new(true));
        let too_much = || Error::InflateLimit {
            limit,
            width: 0,
            height: 0,
        };
        let mut pos = 0;
        loop {
            if buf.len() > limit {
                return Err(too_much());
            }
            buf.reserve((limit + 1 - buf.len()).min(CHUNK));
            let (in0, out0) = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress_vec(data.get(pos..).unwrap_or(&[]), buf, FlushDecompress::Sync)
                .map_err(Error::Inflate)?;
            let read = usize::try_from(inflate.total_in() - in0).unwrap_or(usize::MAX);
            let wrote = inflate.total_out() - out0;
            pos = pos.saturating_add(read);
            if status == Status::StreamEnd {
                return Err(Error::StreamEnded);
            }
            let full = buf.len() == buf.capacity();
            if pos >= data.len() && !full {
                break;
            }
            if read == 0 && wrote == 0 && !full {
                return Err(Error::InflateStalled(data.len().saturating_sub(pos)));
            }
        }
        if buf.len() > limit {
            return Err(too_much());
        }
        Ok(())
    }
}

//! Zlib (encoding 6, rfbproto): a rectangle's Raw pixels compressed by one zlib stream that
//! lives as long as the connection. The payload is a `u32` big-endian length and that many
//! bytes of the stream; the message codec writes and checks the length, the data here is what
//! follows it (`RectPayload::Zlib`). The stream continues across a migration as ZRLE's does
//! (see [`zstream`](super::zstream)).

use super::zstream::{DeflateStream, InflateStream, StreamState};
use super::{raw, Error};
use crate::translate::{Pixels, PixelsMut, Translator};

/// Encoding number of Zlib.
pub const ENCODING: i32 = 6;

/// The server side of a connection's Zlib stream.
#[derive(Debug)]
pub struct ZlibEncoder {
    stream: DeflateStream,
    raw: Vec<u8>,
}

impl ZlibEncoder {
    /// The level for a viewer that names none: QEMU's own VNC compresses Zlib at 9 then
    /// (ui/vnc.c `set_encodings`), so a viewer gets no more bytes from dmore than from it.
    pub const DEFAULT_LEVEL: u32 = 9;

    /// An encoder for a new connection at zlib `level` (0..=9).
    pub fn new(level: u32) -> Self {
        Self::resume(&StreamState {
            level,
            header_sent: false,
        })
    }

    /// The encoder that continues a stream whose state is `state`.
    pub fn resume(state: &StreamState) -> Self {
        ZlibEncoder {
            stream: DeflateStream::resume(state),
            raw: Vec::new(),
        }
    }

    /// Where the stream stands.
    pub fn state(&self) -> StreamState {
        self.stream.state()
    }

    /// Appends the compressed Raw pixels of `src` in `tr`'s format (without the length
    /// prefix). On an error the stream is broken and the connection must be closed.
    pub fn encode(
        &mut self,
        tr: &Translator,
        src: Pixels<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        self.raw.clear();
        raw::encode(tr, src, &mut self.raw);
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

/// The client side of a connection's Zlib stream.
#[derive(Debug, Default)]
pub struct ZlibDecoder {
    stream: InflateStream,
    buf: Vec<u8>,
}

impl ZlibDecoder {
    /// A decoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one rectangle's `data` (what follows the length prefix) into `dst`. On an
    /// error the stream is out of step and the connection must be closed.
    pub fn decode(
        &mut self,
        tr: &Translator,
        data: &[u8],
        dst: &mut PixelsMut<'_>,
    ) -> Result<(), Error> {
        let (width, height) = (dst.width(), dst.height());
        let limit = raw::payload_len(tr, width, height).ok_or(Error::TooLarge { width, height })?;
        self.stream
            .inflate(data, limit, &mut self.buf)
            .map_err(|e| match e {
                Error::InflateLimit { limit, .. } => Error::InflateLimit {
                    limit,
                    width,
                    height,
                },
                e => e,
            })?;
        raw::decode(tr, &self.buf, dst)
    }
}

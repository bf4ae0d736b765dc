//! Tight (encoding 7, rfbproto): a solid rectangle is a fill, a rectangle of few colours a
//! palette and indices, any other its pixels, or a JPEG image when the viewer allowed lossy
//! ones with a quality level; data of 12 bytes or more goes through one of four zlib streams
//! that live as long as the connection.
//!
//! ```text
//! control byte   bits 0-3: reset zlib stream n before this rectangle
//!                bits 4-7: 1000 fill: one TPIXEL
//!                          1001 JPEG: a compact length and a baseline JPEG image
//!                          0 f ss basic: stream ss, f = a filter byte follows
//! filter         0 copy: TPIXELs | 1 palette: u8 n-1, n TPIXELs, then indices (1 bit per
//!                pixel MSB first, rows padded, when n = 2; else a byte) | 2 gradient (not
//!                sent by dmore, refused by this decoder)
//! data           under 12 bytes: as is; else a compact length (7 bits a byte, low first,
//!                high bit = more; the third byte is 8 bits) and that much zlib data
//! TPIXEL         R, G, B when the format is 32 bits, depth 24, every maximum 255; else a PIXEL
//! ```
//!
//! Streams as QEMU uses them: 0 full colour, 1 two-colour palettes, 2 bigger palettes. A
//! stream's level is fixed when it starts; [`TightEncoder::reset`] starts all four anew at
//! another level, and the next rectangle's control byte tells the viewer to reset its own. The
//! streams continue in another process as every zlib stream here does
//! ([`zstream`](super::zstream)).
//!
//! JPEG goes only to a viewer that listed a quality level (-32..-23), only for rectangles of
//! many colours (past the palette limit) and at least [`JPEG_MIN_PIXELS`], and only in a
//! 24-bit format (3-byte TPIXELs), as QEMU does; text stays lossless. Levels map to JPEG
//! qualities as TigerVNC's server maps them ([`JPEG_QUALITY`]). `jpeg-encoder` compresses (pure
//! Rust without dependencies: no C library to build or link, no FFI, and it is the encoder
//! the `image` crate uses); `jpeg-decoder` reads them back here (tests, fuzzing, client role).
//!
//! The payload has no length prefix: its end is found by reading it. Rectangles are at most
//! [`MAX_WIDTH`] wide (TigerVNC refuses wider ones); callers split wider ones.

use super::zstream::{DeflateStream, InflateStream, StreamState};
use super::{Error, Input};
use crate::translate::{Pixels, PixelsMut, Translator};
use crate::PixelFormat;

/// Encoding number of Tight.
pub const ENCODING: i32 = 7;

/// Widest rectangle a Tight viewer must accept.
pub const MAX_WIDTH: usize = 2048;

/// Data shorter than this is sent as is, neither compressed nor length-prefixed.
const MIN_TO_COMPRESS: usize = 12;

/// JPEG quality (1..=100) per quality level 0..=9, TigerVNC's table.
pub const JPEG_QUALITY: [u8; 10] = [15, 29, 41, 42, 62, 77, 79, 86, 92, 100];

/// Smallest rectangle, in pixels, sent as JPEG: smaller ones gain little and show artefacts.
pub const JPEG_MIN_PIXELS: usize = 4096;

/// Most colours dmore sends as a palette: more is sent as full colour (one index byte per
/// pixel buys little against 3-byte pixels through zlib, and counting costs).
const PALETTE_LIMIT: usize = 64;

const FILL: u8 = 0x80;
const JPEG: u8 = 0x90;
const FILTER_FOLLOWS: u8 = 0x40;
const FILTER_COPY: u8 = 0;
const FILTER_PALETTE: u8 = 1;

/// The streams by their use.
const STREAM_FULL: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;

const NAME: &str = "Tight";

/// Whether `tr`'s format sends 3-byte TPIXELs (R, G, B).
fn tpixel24(tr: &Translator) -> bool {
    format_tpixel24(tr.format())
}

/// Whether format `f` sends 3-byte TPIXELs (R, G, B).
fn format_tpixel24(f: &PixelFormat) -> bool {
    f.bits_per_pixel == 32
        && f.depth == 24
        && f.true_colour
        && f.red_max == 255
        && f.green_max == 255
        && f.blue_max == 255
}

/// Appends the TPIXEL of pixel value `v`.
fn put_tpixel(tr: &Translator, v: u32, out: &mut Vec<u8>) {
    if tpixel24(tr) {
        let [b, g, r, _] = tr.rgbx(v).to_le_bytes();
        out.extend_from_slice(&[r, g, b]);
    } else {
        tr.put_pixel(v, out);
    }
}

/// Bytes of a TPIXEL in `tr`'s format.
fn tpixel_len(tr: &Translator) -> usize {
    format_tpixel_len(tr.format())
}

/// Bytes of a TPIXEL in format `f`.
fn format_tpixel_len(f: &PixelFormat) -> usize {
    if format_tpixel24(f) {
        3
    } else {
        f.bytes_per_pixel()
    }
}

/// Bytes of the filtered data of a basic rectangle, before compression: `None` for a filter
/// this module does not know, or a one-colour palette.
fn basic_len(filter: u8, colours: usize, tpixel: usize, w: usize, h: usize) -> Option<usize> {
    match (filter, colours) {
        (FILTER_COPY, _) => Some(w * h * tpixel),
        (FILTER_PALETTE, 2) => Some(w.div_ceil(8) * h),
        (FILTER_PALETTE, 3..) => Some(w * h),
        _ => None,
    }
}

/// The length of the Tight payload of a `width`×`height` rectangle in format `pf` at the
/// front of `data`, read without decoding it (for the message codec, which must find the
/// rectangle's end); [`Error::Truncated`] if `data` ends first. JPEG rectangles are measured
/// too (a compact length and the data), though not decoded.
pub fn payload_len(
    pf: &PixelFormat,
    width: usize,
    height: usize,
    data: &[u8],
) -> Result<usize, Error> {
    let mut input = Input::new(data, NAME);
    let tpixel = format_tpixel_len(pf);
    let kind = input.byte()? & 0xf0;
    if kind == FILL {
        input.take(tpixel)?;
        return Ok(input.pos());
    }
    if kind == JPEG {
        let len = input.compact_len()?;
        input.take(len)?;
        return Ok(input.pos());
    }
    if kind & 0x80 != 0 {
        return Err(malformed("an undefined compression type"));
    }
    let filter = if kind & FILTER_FOLLOWS != 0 {
        input.byte()?
    } else {
        FILTER_COPY
    };
    let colours = if filter == FILTER_PALETTE {
        let n = usize::from(input.byte()?) + 1;
        input.take(n * tpixel)?;
        n
    } else {
        0
    };
    let len = basic_len(filter, colours, tpixel, width, height)
        .ok_or_else(|| malformed("an unknown filter or a one-colour palette"))?;
    let len = if len < MIN_TO_COMPRESS {
        len
    } else {
        input.compact_len()?
    };
    input.take(len)?;
    Ok(input.pos())
}

/// Appends a compact length (1 to 3 bytes; `len` < 2^22).
fn put_compact_len(len: usize, out: &mut Vec<u8>) {
    let byte = |shift: usize| (len >> shift) as u8;
    if len < 0x80 {
        out.push(byte(0));
    } else if len < 0x4000 {
        out.extend_from_slice(&[byte(0) | 0x80, byte(7) & 0x7f]);
    } else {
        out.extend_from_slice(&[byte(0) | 0x80, byte(7) | 0x80, byte(14)]);
    }
}

/// Where a [`TightEncoder`]'s four streams stand, for a snapshot.
pub type TightStreams = [StreamState; 4];

/// The server side of a connection's Tight streams.
#[derive(Debug)]
pub struct TightEncoder {
    streams: [DeflateStream; 4],
    /// Streams to reset with the next rectangle (bit n: stream n).
    reset: u8,
    /// The viewer's JPEG quality level, if it allowed JPEG.
    quality: Option<u8>,
    values: Vec<u32>,
    palette: Vec<u32>,
    data: Vec<u8>,
}

impl TightEncoder {
    /// An encoder for a new connection, its streams at zlib `level` (0..=9).
    pub fn new(level: u32) -> Self {
        let fresh = StreamState {
            level,
            header_sent: false,
        };
        Self::resume(&[fresh; 4])
    }

    /// The encoder that continues streams whose states are `states`.
    pub fn resume(states: &TightStreams) -> Self {
        TightEncoder {
            streams: states.each_ref().map(DeflateStream::resume),
            reset: 0,
            quality: None,
            values: Vec::new(),
            palette: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Where the streams stand.
    pub fn states(&self) -> TightStreams {
        self.streams.each_ref().map(DeflateStream::state)
    }

    /// The level the streams compress at.
    pub fn level(&self) -> u32 {
        self.streams.first().map_or(0, |s| s.state().level)
    }

    /// Allows JPEG at quality level `level` (0..=9, clamped), or forbids it (`None`).
    pub fn set_quality(&mut self, level: Option<u8>) {
        self.quality = level.map(|l| l.min(9));
    }

    /// Starts all four streams anew at `level`; the next rectangle tells the viewer to reset
    /// its inflaters, which then expect the new streams' zlib headers.
    pub fn reset(&mut self, level: u32) {
        for s in &mut self.streams {
            if s.state().header_sent {
                self.reset = 0x0f;
            }
            *s = DeflateStream::new(level);
        }
    }

    /// Appends the Tight payload of `src` (at most [`MAX_WIDTH`] wide) in `tr`'s format. On
    /// an error a stream is broken and the connection must be closed.
    pub fn encode(
        &mut self,
        tr: &Translator,
        src: Pixels<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let result = self.encode_scratch(tr, src, out);
        crate::scratch::release_large(&mut self.values);
        crate::scratch::release_large(&mut self.data);
        result
    }

    /// [`encode`](Self::encode), through the scratch buffers `values` and `data`.
    fn encode_scratch(
        &mut self,
        tr: &Translator,
        src: Pixels<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let (w, h) = (src.width(), src.height());
        if w > MAX_WIDTH {
            return Err(Error::TooLarge {
                width: w,
                height: h,
            });
        }
        self.values.clear();
        for y in 0..h {
            self.values
                .extend(src.row(y).iter().map(|&p| tr.pixel_value(p)));
        }
        self.palette.clear();
        let mut last = None;
        for &v in &self.values {
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            if !self.palette.contains(&v) {
                if self.palette.len() == PALETTE_LIMIT {
                    self.palette.clear();
                    break;
                }
                self.palette.push(v);
            }
        }
        let reset = std::mem::take(&mut self.reset);
        self.data.clear();
        match self.palette.len() {
            1 => {
                out.push(FILL | reset);
                if let Some(&v) = self.palette.first() {
                    put_tpixel(tr, v, out);
                }
                return Ok(());
            }
            0 if self.jpeg_quality(tr, w, h).is_some() => {
                let quality = self.jpeg_quality(tr, w, h).unwrap_or(100);
                for &v in &self.values {
                    put_tpixel(tr, v, &mut self.data);
                }
                let mut image = Vec::new();
                let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
                    return Err(Error::TooLarge {
                        width: w,
                        height: h,
                    });
                };
                jpeg_encoder::Encoder::new(&mut image, quality)
                    .encode(&self.data, w16, h16, jpeg_encoder::ColorType::Rgb)
                    .map_err(|_| malformed("the JPEG encoder refused the image"))?;
                if image.len() >= 1 << 22 {
                    return Err(Error::TooLarge {
                        width: w,
                        height: h,
                    });
                }
                out.push(JPEG | reset);
                put_compact_len(image.len(), out);
                out.extend_from_slice(&image);
                return Ok(());
            }
            0 => {
                out.push(reset | FILTER_FOLLOWS | (STREAM_FULL as u8) << 4);
                out.push(FILTER_COPY);
                for &v in &self.values {
                    put_tpixel(tr, v, &mut self.data);
                }
            }
            n => {
                let stream = if n == 2 { STREAM_MONO } else { STREAM_INDEXED };
                out.push(reset | FILTER_FOLLOWS | (stream as u8) << 4);
                out.push(FILTER_PALETTE);
                out.push((n - 1) as u8);
                for &v in &self.palette {
                    put_tpixel(tr, v, out);
                }
                let index = |v: u32| self.palette.iter().position(|&p| p == v).unwrap_or(0) as u8;
                if n == 2 {
                    for row in self.values.chunks_exact(w.max(1)) {
                        for bits in row.chunks(8) {
                            let byte = bits
                                .iter()
                                .enumerate()
                                .fold(0u8, |b, (i, &v)| b | (index(v) << (7 - i)));
                            self.data.push(byte);
                        }
                    }
                } else {
                    let mut last = (u32::MAX, 0u8);
                    for &v in &self.values {
                        if v != last.0 {
                            last = (v, index(v));
                        }
                        self.data.push(last.1);
                    }
                }
            }
        }
        let stream = match self.palette.len() {
            0 => STREAM_FULL,
            2 => STREAM_MONO,
            _ => STREAM_INDEXED,
        };
        if self.data.len() < MIN_TO_COMPRESS {
            out.extend_from_slice(&self.data);
            return Ok(());
        }
        let mut zipped = Vec::new();
        if let Some(s) = self.streams.get_mut(stream) {
            s.compress(&self.data, &mut zipped)?;
        }
        if zipped.len() >= 1 << 22 {
            return Err(Error::TooLarge {
                width: w,
                height: h,
            });
        }
        put_compact_len(zipped.len(), out);
        out.extend_from_slice(&zipped);
        Ok(())
    }
}

impl TightEncoder {
    /// The JPEG quality for a many-coloured `w`×`h` rectangle, if it goes as JPEG.
    fn jpeg_quality(&self, tr: &Translator, w: usize, h: usize) -> Option<u8> {
        let level = self.quality?;
        (tpixel24(tr) && w * h >= JPEG_MIN_PIXELS && w > 0 && h > 0)
            .then(|| JPEG_QUALITY.get(usize::from(level)).copied())
            .flatten()
    }
}

/// Decodes a JPEG image of exactly `dst`'s size into it.
fn decode_jpeg(image: &[u8], dst: &mut PixelsMut<'_>) -> Result<(), Error> {
    let (w, h) = (dst.width(), dst.height());
    let mut decoder = jpeg_decoder::Decoder::new(image);
    // Nothing larger than the rectangle's own pixels is ever needed.
    decoder.set_max_decoding_buffer_size(w.saturating_mul(h).saturating_mul(4).max(64));
    decoder
        .read_info()
        .map_err(|_| malformed("an unreadable JPEG header"))?;
    let info = decoder
        .info()
        .ok_or_else(|| malformed("a JPEG image without a header"))?;
    if (usize::from(info.width), usize::from(info.height)) != (w, h) {
        return Err(malformed("a JPEG image of another size than its rectangle"));
    }
    let pixels = decoder
        .decode()
        .map_err(|_| malformed("an undecodable JPEG image"))?;
    let step = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::L8 => 1,
        _ => return Err(malformed("a JPEG image neither RGB nor grey")),
    };
    if pixels.len() != w * h * step {
        return Err(malformed("a JPEG image of the wrong length"));
    }
    for (y, row) in pixels.chunks_exact((w * step).max(1)).take(h).enumerate() {
        for (px, c) in dst.row_mut(y).iter_mut().zip(row.chunks_exact(step)) {
            *px = match c {
                [r, g, b] => u32::from_be_bytes([0, *r, *g, *b]),
                [l] => u32::from_be_bytes([0, *l, *l, *l]),
                _ => 0,
            };
        }
    }
    Ok(())
}

impl Input<'_> {
    fn tpixel(&mut self, tr: &Translator) -> Result<u32, Error> {
        let b = self.take(tpixel_len(tr))?;
        Ok(match b {
            [r, g, b] if tpixel24(tr) => u32::from_be_bytes([0, *r, *g, *b]),
            _ => tr.rgbx(tr.read_pixel(b)),
        })
    }

    fn compact_len(&mut self) -> Result<usize, Error> {
        let mut len = 0usize;
        for (i, shift) in [0usize, 7, 14].into_iter().enumerate() {
            let b = self.byte()?;
            if i == 2 {
                return Ok(len | usize::from(b) << shift);
            }
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok(len)
    }
}

fn malformed(reason: &'static str) -> Error {
    Error::Malformed {
        encoding: NAME,
        reason,
    }
}

/// The client side of a connection's Tight streams (the gradient filter is refused, since
/// dmore never sends it).
#[derive(Debug, Default)]
pub struct TightDecoder {
    streams: [InflateStream; 4],
    buf: Vec<u8>,
}

impl TightDecoder {
    /// A decoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the Tight payload at the front of `data` into `dst` (the rectangle's size) and
    /// returns how many bytes it took. On an error the streams are out of step and the
    /// connection must be closed.
    pub fn decode(
        &mut self,
        tr: &Translator,
        data: &[u8],
        dst: &mut PixelsMut<'_>,
    ) -> Result<usize, Error> {
        let (w, h) = (dst.width(), dst.height());
        let mut input = Input::new(data, NAME);
        let control = input.byte()?;
        for (n, s) in self.streams.iter_mut().enumerate() {
            if control & (1 << n) != 0 {
                *s = InflateStream::new();
            }
        }
        let kind = control & 0xf0;
        if kind == FILL {
            let c = input.tpixel(tr)?;
            for y in 0..h {
                dst.row_mut(y).fill(c);
            }
            return Ok(input.pos());
        }
        if kind == JPEG {
            let len = input.compact_len()?;
            decode_jpeg(input.take(len)?, dst)?;
            return Ok(input.pos());
        }
        if kind & 0x80 != 0 {
            return Err(malformed("an undefined compression type"));
        }
        let stream = usize::from(kind >> 4 & 3);
        let filter = if kind & FILTER_FOLLOWS != 0 {
            input.byte()?
        } else {
            FILTER_COPY
        };
        let mut palette = Vec::new();
        if filter == FILTER_PALETTE {
            let n = usize::from(input.byte()?) + 1;
            for _ in 0..n {
                palette.push(input.tpixel(tr)?);
            }
        }
        let len = basic_len(filter, palette.len(), tpixel_len(tr), w, h)
            .ok_or_else(|| malformed("an unknown filter or a one-colour palette"))?;
        let pixels: &[u8] = if len < MIN_TO_COMPRESS {
            input.take(len)?
        } else {
            let zipped = input.compact_len()?;
            let zipped = input.take(zipped)?;
            let s = self
                .streams
                .get_mut(stream)
                .ok_or_else(|| malformed("a stream past the fourth"))?;
            s.inflate(zipped, len, &mut self.buf).map_err(|e| match e {
                Error::InflateLimit { limit, .. } => Error::InflateLimit {
                    limit,
                    width: w,
                    height: h,
                },
                e => e,
            })?;
            if self.buf.len() != len {
                return Err(Error::Length {
                    what: "inflated Tight data",
                    expected: len,
                    got: self.buf.len(),
                });
            }
            &self.buf
        };
        let colour = |i: u8| {
            palette
                .get(usize::from(i))
                .copied()
                .ok_or_else(|| malformed("a palette index past the palette"))
        };
        match (filter, palette.len()) {
            (FILTER_COPY, _) => {
                let step = tpixel_len(tr);
                for (y, row) in pixels.chunks_exact((w * step).max(1)).take(h).enumerate() {
                    let d = dst.row_mut(y);
                    for (px, b) in d.iter_mut().zip(row.chunks_exact(step)) {
                        *px = match b {
                            [r, g, b] if step == 3 => u32::from_be_bytes([0, *r, *g, *b]),
                            _ => tr.rgbx(tr.read_pixel(b)),
                        };
                    }
                }
            }
            (_, 2) => {
                for (y, row) in pixels
                    .chunks_exact(w.div_ceil(8).max(1))
                    .take(h)
                    .enumerate()
                {
                    let d = dst.row_mut(y);
                    for (x, px) in d.iter_mut().enumerate() {
                        let byte = row.get(x / 8).copied().unwrap_or(0);
                        *px = colour(byte >> (7 - x % 8) & 1)?;
                    }
                }
            }
            _ => {
                for (y, row) in pixels.chunks_exact(w.max(1)).take(h).enumerate() {
                    for (px, &i) in dst.row_mut(y).iter_mut().zip(row) {
                        *px = colour(i)?;
                    }
                }
            }
        }
        Ok(input.pos())
    }
}

//! Pixel translation between dmore's framebuffer and a peer's true-colour pixel format.
//!
//! dmore's framebuffer holds pixels as `u32` values `0x00RRGGBB`
//! ([`PixelFormat::RGBX32_LE`] when stored little-endian). Each viewer asks for its own format
//! (RFC 6143 §7.4) and every update is translated on the way out; QEMU's updates are decoded
//! on the way in. A [`Translator`] is built once per format: it precomputes per-channel lookup
//! tables and the byte layout, so the per-pixel work is three table look-ups and a store, with
//! the pixel size and byte order chosen once per row, not per pixel.
//!
//! Colour scaling rounds to the nearest value: 8 bits → n bits is `round(c · max / 255)`, and
//! n bits → 8 bits is `round(v · 255 / max)` on the top 8 bits of the value. For formats of 8
//! bits per channel both directions are exact.
//!
//! A 32-bit pixel's bits outside its colour fields are set, not left zero: viewers that read
//! the spare byte of a depth-24 format as alpha (noVNC 1.3's Raw decoder, HTML canvases
//! generally) then paint it opaque, and the rest ignore it (RFC 6143 §7.4 gives those bits no
//! meaning). Encodings that drop the spare byte (ZRLE's CPIXEL, Tight's TPIXEL) drop it as
//! before. 8 and 16-bit pixels keep their spare bits zero, as every server sends them.
//!
//! The module also owns ZRLE's compressed pixel (CPIXEL, RFC 6143 §7.7.6): a 32 bpp pixel of
//! depth ≤ 24 whose colour bits fit in its low or high three bytes is sent as those 3 bytes.

use crate::pixel_format::{PixelFormat, PixelFormatError};

/// A read-only rectangle of framebuffer pixels (`0x00RRGGBB` values) inside a larger buffer.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    data: &'a [u32],
    stride: usize,
    width: usize,
    height: usize,
}

impl<'a> Pixels<'a> {
    /// A `width`×`height` view whose rows start `stride` pixels apart in `data`; `None` if the
    /// view would reach past `data` or `stride < width`.
    pub fn new(data: &'a [u32], stride: usize, width: usize, height: usize) -> Option<Self> {
        check_view(data.len(), stride, width, height)?;
        Some(Pixels {
            data,
            stride,
            width,
            height,
        })
    }

    /// A tightly packed `width`×`height` view (stride = width).
    pub fn packed(data: &'a [u32], width: usize, height: usize) -> Option<Self> {
        Self::new(data, width, width, height)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row `y` (empty past the last row).
    pub fn row(&self, y: usize) -> &'a [u32] {
        if y >= self.height {
            return &[];
        }
        let start = y * self.stride;
        self.data.get(start..start + self.width).unwrap_or(&[])
    }

    /// The sub-rectangle at (`x`, `y`) of `width`×`height`; `None` if it leaves this view.
    pub fn sub(&self, x: usize, y: usize, width: usize, height: usize) -> Option<Pixels<'a>> {
        if x.checked_add(width)? > self.width || y.checked_add(height)? > self.height {
            return None;
        }
        let start = y * self.stride + x;
        let data = if height == 0 || width == 0 {
            &[]
        } else {
            self.data.get(start..)?
        };
        Pixels::new(data, self.stride, width, height)
    }
}

/// A writable rectangle of framebuffer pixels inside a larger buffer: where decoders put what
/// a peer sent.
#[derive(Debug)]
pub struct PixelsMut<'a> {
    data: &'a mut [u32],
    stride: usize,
    width: usize,
    height: usize,
}

impl<'a> PixelsMut<'a> {
    /// A `width`×`height` view whose rows start `stride` pixels apart in `data`; `None` if the
    /// view would reach past `data` or `stride < width`.
    pub fn new(data: &'a mut [u32], stride: usize, width: usize, height: usize) -> Option<Self> {
        check_view(data.len(), stride, width, height)?;
        Some(PixelsMut {
            data,
            stride,
            width,
            height,
        })
    }

    /// A tightly packed `width`×`height` view (stride = width).
    pub fn packed(data: &'a mut [u32], width: usize, height: usize) -> Option<Self> {
        Self::new(data, width, width, height)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row `y`, writable (empty past the last row).
    pub fn row_mut(&mut self, y: usize) -> &mut [u32] {
        if y >= self.height {
            return &mut [];
        }
        let start = y * self.stride;
        self.data
            .get_mut(start..start + self.width)
            .unwrap_or(&mut [])
    }

    /// A read-only view of the same pixels.
    pub fn as_pixels(&self) -> Pixels<'_> {
        Pixels {
            data: self.data,
            stride: self.stride,
            width: self.width,
            height: self.height,
        }
    }
}

/// Checks that a strided view fits in a buffer of `len` pixels.
fn check_view(len: usize, stride: usize, width: usize, height: usize) -> Option<()> {
    if width == 0 || height == 0 {
        return Some(());
    }
    if stride < width {
        return None;
    }
    let needed = (height - 1).checked_mul(stride)?.checked_add(width)?;
    (needed <= len).then_some(())
}

/// Where a (C)PIXEL's bytes sit in the 4 bytes of its value written in the format's byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    start: usize,
    len: usize,
}

impl Slot {
    /// The wire bytes of `value` for this slot, written into `out`.
    #[inline]
    fn put(self, value: u32, big_endian: bool, out: &mut Vec<u8>) {
        let bytes = if big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        out.extend_from_slice(bytes.get(self.start..self.start + self.len).unwrap_or(&[]));
    }

    /// The value whose wire bytes for this slot are `bytes` (`bytes.len()` must equal the
    /// slot's length; missing bytes read as zero).
    #[inline]
    fn get(self, bytes: &[u8], big_endian: bool) -> u32 {
        let mut b = [0u8; 4];
        if let Some(dst) = b.get_mut(self.start..self.start + self.len) {
            for (d, s) in dst.iter_mut().zip(bytes) {
                *d = *s;
            }
        }
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
}

/// Pixel translation for one validated true-colour format, with its tables precomputed.
#[derive(Clone)]
pub struct Translator {
    format: PixelFormat,
    /// Per channel: 8-bit intensity → its field in the pixel value, already shifted.
    to_wire: [[u32; 256]; 3],
    /// Per channel: the top (at most) 8 bits of the field → 8-bit intensity.
    from_wire: [[u8; 256]; 3],
    /// Per channel: (shift of the field, max, extra right shift to keep its top 8 bits).
    fields: [(u32, u32, u32); 3],
    /// Bits set in every 32-bit pixel value: those outside the colour fields (see the module
    /// docs); 0 for smaller pixels.
    opaque: u32,
    pixel: Slot,
    cpixel: Slot,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("format", &self.format)
            .field("cpixel_len", &self.cpixel.len)
            .finish_non_exhaustive()
    }
}

impl Translator {
    /// Builds the tables for `format`, which must pass [`PixelFormat::validate`].
    pub fn new(format: PixelFormat) -> Result<Self, PixelFormatError> {
        format.validate()?;
        let mut to_wire = [[0u32; 256]; 3];
        let mut from_wire = [[0u8; 256]; 3];
        let mut fields = [(0u32, 0u32, 0u32); 3];
        for (i, &(_, max, shift)) in format.channels().iter().enumerate() {
            let max = u32::from(max);
            // A channel with no bits may sit at shift 32; park it at 0 so shifts stay < 32.
            let shift = if max == 0 { 0 } else { u32::from(shift) };
            let bits = 32 - max.leading_zeros();
            let down = bits.saturating_sub(8);
            if let (Some(tw), Some(fw), Some(field)) =
                (to_wire.get_mut(i), from_wire.get_mut(i), fields.get_mut(i))
            {
                for (c, slot) in (0u32..).zip(tw.iter_mut()) {
                    // validate() checked shift + bits <= bpp <= 32.
                    *slot = ((c * max + 127) / 255) << shift;
                }
                let top_max = max >> down;
                if top_max > 0 {
                    for (v, slot) in (0u32..=top_max).zip(fw.iter_mut()) {
                        // v <= top_max <= 255, so the quotient is <= 255.
                        *slot = u8::try_from((v * 255 + top_max / 2) / top_max).unwrap_or(255);
                    }
                }
                *field = (shift, max, down);
            }
        }
        let bpp = format.bytes_per_pixel();
        let pixel = if format.big_endian {
            Slot {
                start: 4 - bpp,
                len: bpp,
            }
        } else {
            Slot { start: 0, len: bpp }
        };
        let cpixel = cpixel_slot(&format).unwrap_or(pixel);
        let opaque = if format.bits_per_pixel == 32 {
            !format.colour_mask()
        } else {
            0
        };
        Ok(Translator {
            format,
            to_wire,
            from_wire,
            fields,
            opaque,
            pixel,
            cpixel,
        })
    }

    /// The format this translator serves.
    pub fn format(&self) -> &PixelFormat {
        &self.format
    }

    /// Bytes of one PIXEL on the wire (1, 2 or 4).
    pub fn bytes_per_pixel(&self) -> usize {
        self.pixel.len
    }

    /// Bytes of one ZRLE CPIXEL on the wire (3 where RFC 6143 §7.7.6 allows it, else as PIXEL).
    pub fn bytes_per_cpixel(&self) -> usize {
        self.cpixel.len
    }

    /// The pixel value, in this format, of framebuffer pixel `rgbx` (`0x00RRGGBB`); a 32-bit
    /// value has its bits outside the colour fields set (opaque to a viewer reading alpha).
    #[inline]
    pub fn pixel_value(&self, rgbx: u32) -> u32 {
        let [b, g, r, _] = rgbx.to_le_bytes();
        let [tr, tg, tb] = &self.to_wire;
        tr[usize::from(r)] | tg[usize::from(g)] | tb[usize::from(b)] | self.opaque
    }

    /// The framebuffer pixel (`0x00RRGGBB`) of a pixel value in this format; bits outside the
    /// colour fields are ignored.
    #[inline]
    pub fn rgbx(&self, value: u32) -> u32 {
        let mut out = 0u32;
        for ((&(shift, max, down), table), out_shift) in
            self.fields.iter().zip(&self.from_wire).zip([16u32, 8, 0])
        {
            let top = (value.wrapping_shr(shift) & max) >> down;
            // top <= 255 because max >> down < 256.
            let c = table.get(top as usize).copied().unwrap_or(0);
            out |= u32::from(c) << out_shift;
        }
        out
    }

    /// Appends the wire bytes of one pixel value (a PIXEL).
    #[inline]
    pub fn put_pixel(&self, value: u32, out: &mut Vec<u8>) {
        self.pixel.put(value, self.format.big_endian, out);
    }

    /// Appends the wire bytes of one pixel value as a ZRLE CPIXEL.
    #[inline]
    pub fn put_cpixel(&self, value: u32, out: &mut Vec<u8>) {
        self.cpixel.put(value, self.format.big_endian, out);
    }

    /// The pixel value of a PIXEL's wire bytes (`bytes.len()` should be
    /// [`Translator::bytes_per_pixel`]).
    #[inline]
    pub fn read_pixel(&self, bytes: &[u8]) -> u32 {
        self.pixel.get(bytes, self.format.big_endian)
    }

    /// The pixel value of a CPIXEL's wire bytes (`bytes.len()` should be
    /// [`Translator::bytes_per_cpixel`]).
    #[inline]
    pub fn read_cpixel(&self, bytes: &[u8]) -> u32 {
        self.cpixel.get(bytes, self.format.big_endian)
    }

    /// Translates one row of framebuffer pixels and appends their wire bytes.
    pub fn encode_row(&self, src: &[u32], out: &mut Vec<u8>) {
        out.reserve(src.len() * self.pixel.len);
        match (self.format.bits_per_pixel, self.format.big_endian) {
            (8, _) => self.encode_row_with(src, out, |v| [v as u8]),
            (16, false) => self.encode_row_with(src, out, |v| (v as u16).to_le_bytes()),
            (16, true) => self.encode_row_with(src, out, |v| (v as u16).to_be_bytes()),
            (_, false) => self.encode_row_with(src, out, u32::to_le_bytes),
            (_, true) => self.encode_row_with(src, out, u32::to_be_bytes),
        }
    }

    /// The monomorphic inner loop of [`Translator::encode_row`]; `bytes` truncates the value
    /// to the pixel size (the value never has bits above it, as validate() checked).
    #[inline(always)]
    fn encode_row_with<const N: usize>(
        &self,
        src: &[u32],
        out: &mut Vec<u8>,
        bytes: impl Fn(u32) -> [u8; N],
    ) {
        for &p in src {
            out.extend_from_slice(&bytes(self.pixel_value(p)));
        }
    }

    /// Translates a rectangle of framebuffer pixels and appends its wire bytes, rows in order
    /// (the Raw encoding's body, RFC 6143 §7.7.1).
    pub fn encode_rect(&self, src: Pixels<'_>, out: &mut Vec<u8>) {
        out.reserve(src.width() * src.height() * self.pixel.len);
        for y in 0..src.height() {
            self.encode_row(src.row(y), out);
        }
    }

    /// Decodes one row of wire pixels into framebuffer pixels. Decodes
    /// `min(dst.len(), src.len() / bytes_per_pixel)` pixels; callers check the lengths.
    pub fn decode_row(&self, src: &[u8], dst: &mut [u32]) {
        match (self.format.bits_per_pixel, self.format.big_endian) {
            (8, _) => self.decode_row_with::<1>(src, dst, |b| u32::from(b[0])),
            (16, false) => {
                self.decode_row_with::<2>(src, dst, |b| u32::from(u16::from_le_bytes(*b)))
            }
            (16, true) => {
                self.decode_row_with::<2>(src, dst, |b| u32::from(u16::from_be_bytes(*b)))
            }
            (_, false) => self.decode_row_with::<4>(src, dst, |b| u32::from_le_bytes(*b)),
            (_, true) => self.decode_row_with::<4>(src, dst, |b| u32::from_be_bytes(*b)),
        }
    }

    /// The monomorphic inner loop of [`Translator::decode_row`].
    #[inline(always)]
    fn decode_row_with<const N: usize>(
        &self,
        src: &[u8],
        dst: &mut [u32],
        value: impl Fn(&[u8; N]) -> u32,
    ) {
        for (d, b) in dst.iter_mut().zip(src.chunks_exact(N)) {
            if let Ok(b) = <&[u8; N]>::try_from(b) {
                *d = self.rgbx(value(b));
            }
        }
    }

    /// Decodes a rectangle of wire pixels (rows in order, as Raw sends them) into `dst`.
    /// Returns `false`, writing nothing, unless `src` holds exactly `dst`'s pixels.
    pub fn decode_rect(&self, src: &[u8], dst: &mut PixelsMut<'_>) -> bool {
        let row_len = dst.width() * self.pixel.len;
        if Some(src.len()) != row_len.checked_mul(dst.height()) {
            return false;
        }
        if row_len == 0 {
            return true;
        }
        for (y, row) in src.chunks_exact(row_len).enumerate() {
            self.decode_row(row, dst.row_mut(y));
        }
        true
    }
}

/// The CPIXEL slot of a format when it is 3 bytes (RFC 6143 §7.7.6), else `None`.
///
/// When the colour bits fit both the low and the high 3 bytes, the slot that drops the *last*
/// wire byte wins, as in TigerVNC and libvncserver.
fn cpixel_slot(format: &PixelFormat) -> Option<Slot> {
    if format.bits_per_pixel != 32 || format.depth > 24 || !format.true_colour {
        return None;
    }
    let mask = format.colour_mask();
    let fits_low = mask & 0xff00_0000 == 0;
    let fits_high = mask & 0x0000_00ff == 0;
    // The last wire byte is the value's top byte when little-endian, its bottom one otherwise.
    let drop_last = if format.big_endian {
        fits_high
    } else {
        fits_low
    };
    let drop_first = if format.big_endian {
        fits_low
    } else {
        fits_high
    };
    if drop_last {
        Some(Slot { start: 0, len: 3 })
    } else if drop_first {
        Some(Slot { start: 1, len: 3 })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(bpp: u8, depth: u8, be: bool, max: [u16; 3], shift: [u8; 3]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: bpp,
            depth,
            big_endian: be,
            true_colour: true,
            red_max: max[0],
            green_max: max[1],
            blue_max: max[2],
            red_shift: shift[0],
            green_shift: shift[1],
            blue_shift: shift[2],
        }
    }

    #[test]
    fn rgbx32_le_is_identity_on_the_wire() {
        let t = Translator::new(PixelFormat::RGBX32_LE).unwrap();
        let mut out = Vec::new();
        t.encode_row(&[0x0012_3456, 0x00ab_cdef], &mut out);
        // The spare fourth byte is 0xff: opaque to a viewer that reads it as alpha.
        assert_eq!(out, [0x56, 0x34, 0x12, 0xff, 0xef, 0xcd, 0xab, 0xff]);
        assert_eq!(t.bytes_per_cpixel(), 3);
        let mut c = Vec::new();
        t.put_cpixel(0x0012_3456, &mut c);
        assert_eq!(c, [0x56, 0x34, 0x12]);
        assert_eq!(t.read_cpixel(&c), 0x0012_3456);
    }

    #[test]
    fn rgb565_big_endian_scales_and_orders_bytes() {
        let t = Translator::new(format(16, 16, true, [31, 63, 31], [11, 5, 0])).unwrap();
        let mut out = Vec::new();
        t.encode_row(
            &[0x00ff_0000, 0x0000_ff00, 0x0000_00ff, 0x0080_8080],
            &mut out,
        );
        // 0x80 = 128 → round(128·31/255) = 16, round(128·63/255) = 32.
        let grey = (16u16 << 11) | (32 << 5) | 16;
        let [gh, gl] = grey.to_be_bytes();
        assert_eq!(out, [0xf8, 0x00, 0x07, 0xe0, 0x00, 0x1f, gh, gl]);
        let mut back = [0u32; 4];
        t.decode_row(&out, &mut back);
        // 16/31 → round(16·255/31) = 132; 32/63 → 130.
        assert_eq!(back, [0x00ff_0000, 0x0000_ff00, 0x0000_00ff, 0x0084_8284]);
    }

    #[test]
    fn bgr233_eight_bits() {
        let t = Translator::new(format(8, 8, false, [7, 7, 3], [0, 3, 6])).unwrap();
        assert_eq!(t.pixel_value(0x00ff_ffff), 0xff);
        assert_eq!(t.pixel_value(0x0000_00ff), 0xc0);
        assert_eq!(t.rgbx(0xc0), 0x0000_00ff);
        assert_eq!(t.bytes_per_cpixel(), 1);
    }

    #[test]
    fn cpixel_high_bytes_when_colour_sits_high() {
        // Little-endian, colours in bits 8..32: CPIXEL drops the first wire byte.
        let t = Translator::new(format(32, 24, false, [255; 3], [24, 16, 8])).unwrap();
        let v = t.pixel_value(0x0011_2233);
        assert_eq!(v, 0x1122_33ff);
        let mut c = Vec::new();
        t.put_cpixel(v, &mut c);
        assert_eq!(c, [0x33, 0x22, 0x11]);
        // The dropped spare byte reads back as zero; the colour is the same.
        assert_eq!(t.read_cpixel(&c), 0x1122_3300);
        assert_eq!(t.rgbx(t.read_cpixel(&c)), 0x0011_2233);
        // Big-endian with colours low: the first wire byte is the spare top byte.
        let t = Translator::new(format(32, 24, true, [255; 3], [16, 8, 0])).unwrap();
        let mut c = Vec::new();
        t.put_cpixel(t.pixel_value(0x0011_2233), &mut c);
        assert_eq!(c, [0x11, 0x22, 0x33]);
        // Depth 32 never gets 3-byte CPIXELs.
        let t = Translator::new(format(32, 32, false, [255; 3], [16, 8, 0])).unwrap();
        assert_eq!(t.bytes_per_cpixel(), 4);
    }

    #[test]
    fn sixteen_bit_maxima_round_trip_exactly() {
        let t = Translator::new(format(32, 32, false, [1023, 1023, 1023], [20, 10, 0])).unwrap();
        for c in [0u32, 1, 127, 128, 254, 255] {
            let p = c << 16 | (255 - c) << 8 | c;
            assert_eq!(t.rgbx(t.pixel_value(p)), p);
        }
    }

    #[test]
    fn views_check_bounds() {
        let data = [0u32; 10];
        assert!(Pixels::new(&data, 4, 4, 3).is_none());
        let p = Pixels::new(&data, 4, 2, 3).unwrap();
        assert_eq!(p.row(2).len(), 2);
        assert!(p.sub(1, 1, 2, 2).is_none());
        assert_eq!(p.sub(0, 1, 2, 2).unwrap().row(1).len(), 2);
        assert!(Pixels::new(&data, 1, 2, 1).is_none());
    }
}

//! Properties of pixel translation and the encodings, for any true-colour format dmore serves:
//! translate→decode keeps colours up to the format's precision, Raw and ZRLE round-trip, a
//! ZRLE stream survives freeze/continue, Hextile, Zlib and Tight round-trip (Zlib and Tight
//! across resumed streams too, Tight across a level change), and hostile ZRLE, Hextile, Zlib
//! and Tight data never panics.

use proptest::prelude::*;
use rfb::encoding::hextile::{self, HextileEncoder};
use rfb::encoding::tight::{TightDecoder, TightEncoder};
use rfb::encoding::zlib::{ZlibDecoder, ZlibEncoder};
use rfb::encoding::zrle::{max_inflated_len, ZrleDecoder, ZrleEncoder, ZrleEncoderState};
use rfb::encoding::{cursor, raw, Error};
use rfb::framebuffer::{Framebuffer, UpdateDecoder, UpdateEncoder};
use rfb::translate::{Pixels, PixelsMut, Translator};
use rfb::{Encoding, Limits, PixelFormat, ServerMessage, ServerMessageDecoder};

/// A valid true-colour format: channel widths that fit the pixel, placed in any order with
/// gaps, any byte order and depth.
fn any_format() -> impl Strategy<Value = PixelFormat> {
    prop_oneof![Just(8u8), Just(16u8), Just(32u8)]
        .prop_flat_map(|bpp| {
            let cap = bpp.min(16);
            (Just(bpp), 0..=cap).prop_flat_map(move |(bpp, r)| {
                (Just(bpp), Just(r), 0..=(bpp - r).min(16)).prop_flat_map(move |(bpp, r, g)| {
                    (
                        Just(bpp),
                        Just([r, g]),
                        0..=(bpp - r - g).min(16),
                        Just([0usize, 1, 2]).prop_shuffle(),
                        [0u8..=32, 0u8..=32, 0u8..=32],
                        any::<bool>(),
                        1..=bpp,
                    )
                })
            })
        })
        .prop_map(|(bpp, [r, g], b, order, gaps, big_endian, depth)| {
            let bits = [r, g, b];
            let mut free = bpp - r - g - b;
            let (mut at, mut shift) = (0u8, [0u8; 3]);
            for (&c, gap) in order.iter().zip(gaps) {
                let gap = gap.min(free);
                free -= gap;
                at += gap;
                shift[c] = at;
                at += bits[c];
            }
            let max = |n: u8| ((1u32 << n) - 1) as u16;
            PixelFormat {
                bits_per_pixel: bpp,
                depth,
                big_endian,
                true_colour: true,
                red_max: max(r),
                green_max: max(g),
                blue_max: max(b),
                red_shift: shift[0],
                green_shift: shift[1],
                blue_shift: shift[2],
            }
        })
}

/// What an 8-bit intensity becomes after a trip through an n-bit channel with maximum `max`,
/// computed the slow, obvious way.
fn reduce_channel(c: u32, max: u32) -> u32 {
    if max == 0 {
        return 0;
    }
    if max >= 255 {
        return c; // 8 or more bits keep every 8-bit value.
    }
    let v = (f64::from(c) * f64::from(max) / 255.0).round();
    (v * 255.0 / f64::from(max)).round() as u32
}

fn reduce(p: u32, f: &PixelFormat) -> u32 {
    let r = reduce_channel(p >> 16 & 0xff, u32::from(f.red_max));
    let g = reduce_channel(p >> 8 & 0xff, u32::from(f.green_max));
    let b = reduce_channel(p & 0xff, u32::from(f.blue_max));
    r << 16 | g << 8 | b
}

/// Deterministic pixels for a rectangle: `kind` 0 noise, 1 a few colours scattered, 2 runs of
/// a few colours, 3 solid with a stripe.
fn pixels(kind: u8, colours: usize, seed: u64, n: usize) -> Vec<u32> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let palette: Vec<u32> = (0..colours.max(1))
        .map(|_| next() as u32 & 0xff_ffff)
        .collect();
    let pick = |x: u64| palette[x as usize % palette.len()];
    match kind {
        0 => (0..n).map(|_| next() as u32 & 0xff_ffff).collect(),
        1 => (0..n).map(|_| pick(next())).collect(),
        2 => {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let run = 1 + next() as usize % 300;
                let c = pick(next());
                out.resize(out.len() + run.min(n - out.len()), c);
            }
            out
        }
        _ => (0..n)
            .map(|i| {
                if i % 97 < 3 {
                    palette[0] ^ 0xff
                } else {
                    palette[0]
                }
            })
            .collect(),
    }
}

#[derive(Debug, Clone)]
struct RectSpec {
    w: usize,
    h: usize,
    kind: u8,
    colours: usize,
    seed: u64,
}

impl RectSpec {
    fn pixels(&self) -> Vec<u32> {
        pixels(self.kind, self.colours, self.seed, self.w * self.h)
    }
}

fn any_rect() -> impl Strategy<Value = RectSpec> {
    (
        1usize..=200,
        1usize..=200,
        0u8..4,
        1usize..=200,
        any::<u64>(),
    )
        .prop_map(|(w, h, kind, colours, seed)| RectSpec {
            w,
            h,
            kind,
            colours,
            seed,
        })
}

/// Encodes `rect` with `encode` and decodes it with `decode`, checking the colours.
fn trip(
    tr: &Translator,
    rect: &RectSpec,
    encode: impl FnOnce(Pixels<'_>, &mut Vec<u8>),
    decode: impl FnOnce(&[u8], &mut PixelsMut<'_>),
) {
    let src = rect.pixels();
    let mut data = Vec::new();
    encode(Pixels::packed(&src, rect.w, rect.h).unwrap(), &mut data);
    let mut got = vec![0u32; src.len()];
    decode(
        &data,
        &mut PixelsMut::packed(&mut got, rect.w, rect.h).unwrap(),
    );
    let want: Vec<u32> = src.iter().map(|&p| reduce(p, tr.format())).collect();
    assert!(
        got == want,
        "rect {}x{} kind {} differs",
        rect.w,
        rect.h,
        rect.kind
    );
}

/// [`trip`] through a ZRLE stream.
fn zrle_trip(enc: &mut ZrleEncoder, dec: &mut ZrleDecoder, tr: &Translator, rect: &RectSpec) {
    trip(
        tr,
        rect,
        |src, out| enc.encode(tr, src, out).unwrap(),
        |data, dst| dec.decode(tr, data, dst).unwrap(),
    );
}

/// [`trip`] through a Zlib stream.
fn zlib_trip(enc: &mut ZlibEncoder, dec: &mut ZlibDecoder, tr: &Translator, rect: &RectSpec) {
    trip(
        tr,
        rect,
        |src, out| enc.encode(tr, src, out).unwrap(),
        |data, dst| dec.decode(tr, data, dst).unwrap(),
    );
}

/// [`trip`] through Tight streams; the decoder must take every byte, and nothing more.
fn tight_trip(enc: &mut TightEncoder, dec: &mut TightDecoder, tr: &Translator, rect: &RectSpec) {
    trip(
        tr,
        rect,
        |src, out| enc.encode(tr, src, out).unwrap(),
        |data, dst| {
            let mut more = data.to_vec();
            more.push(0xee);
            assert_eq!(dec.decode(tr, &more, dst).unwrap(), data.len());
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Hextile decodes to the colours encoded and reads exactly the bytes written, also with
    /// garbage after them.
    #[test]
    fn hextile_round_trips(f in any_format(), rect in any_rect(), tail in any::<u8>()) {
        let tr = Translator::new(f).unwrap();
        let mut enc = HextileEncoder::new();
        trip(
            &tr,
            &rect,
            |src, out| enc.encode(&tr, src, out),
            |data, dst| {
                let mut more = data.to_vec();
                more.push(tail);
                assert_eq!(hextile::decode(&tr, &more, dst).unwrap(), data.len());
            },
        );
    }

    #[test]
    fn generated_formats_are_valid(f in any_format()) {
        prop_assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn translate_then_decode_keeps_colours_to_precision(
        f in any_format(),
        px in proptest::collection::vec(0u32..=0xff_ffff, 1..64),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut wire = Vec::new();
        raw::encode(&tr, Pixels::packed(&px, px.len(), 1).unwrap(), &mut wire);
        prop_assert_eq!(wire.len(), px.len() * tr.bytes_per_pixel());
        let mut back = vec![0u32; px.len()];
        raw::decode(&tr, &wire, &mut PixelsMut::packed(&mut back, px.len(), 1).unwrap()).unwrap();
        for (&p, &b) in px.iter().zip(&back) {
            prop_assert_eq!(b, reduce(p, &f), "pixel {:06x}", p);
            // CPIXELs carry the same value.
            let mut c = Vec::new();
            tr.put_cpixel(tr.pixel_value(p), &mut c);
            prop_assert_eq!(c.len(), tr.bytes_per_cpixel());
            prop_assert_eq!(tr.rgbx(tr.read_cpixel(&c)), reduce(p, &f));
        }
        // A 32-bit pixel's bits outside the colour fields are all set (opaque as alpha).
        if f.bits_per_pixel == 32 {
            let spare = !f.colour_mask();
            for w in wire.chunks_exact(4) {
                let v = if f.big_endian {
                    u32::from_be_bytes([w[0], w[1], w[2], w[3]])
                } else {
                    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
                };
                prop_assert_eq!(v & spare, spare, "wire pixel {:08x}", v);
            }
        }
    }

    #[test]
    fn eight_bit_channels_in_32_bits_are_exact(
        order in Just([0u8, 8, 16]).prop_shuffle(),
        high in any::<bool>(),
        big_endian in any::<bool>(),
        px in proptest::collection::vec(0u32..=0xff_ffff, 1..64),
    ) {
        let o = if high { 8 } else { 0 };
        let f = PixelFormat {
            bits_per_pixel: 32, depth: 24, big_endian, true_colour: true,
            red_max: 255, green_max: 255, blue_max: 255,
            red_shift: order[0] + o, green_shift: order[1] + o, blue_shift: order[2] + o,
        };
        let tr = Translator::new(f).unwrap();
        prop_assert_eq!(tr.bytes_per_cpixel(), 3);
        for &p in &px {
            prop_assert_eq!(tr.rgbx(tr.pixel_value(p)), p);
        }
    }

    #[test]
    fn cursor_round_trips(f in any_format(), w in 0usize..40, h in 0usize..40, seed in any::<u64>()) {
        let tr = Translator::new(f).unwrap();
        let image = pixels(0, 1, seed, w * h);
        let mask = cursor::mask_from_fn(w, h, |x, y| (x * 7 + y * 3 + seed as usize) % 5 < 2);
        let (wire_px, wire_mask) =
            cursor::encode(&tr, Pixels::packed(&image, w, h).unwrap(), &mask).unwrap();
        let c = cursor::decode(&tr, w, h, &wire_px, &wire_mask).unwrap();
        let want: Vec<u32> = image.iter().map(|&p| reduce(p, &f)).collect();
        prop_assert_eq!(&c.pixels, &want);
        for y in 0..h {
            for x in 0..w {
                prop_assert_eq!(c.visible(x, y), (x * 7 + y * 3 + seed as usize) % 5 < 2);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Three rectangles through one encoder and one decoder: the stream stays in step.
    #[test]
    fn zrle_round_trips(f in any_format(), rects in proptest::collection::vec(any_rect(), 1..4)) {
        let tr = Translator::new(f).unwrap();
        let mut enc = ZrleEncoder::new(ZrleEncoder::DEFAULT_LEVEL);
        let mut dec = ZrleDecoder::new();
        for r in &rects {
            zrle_trip(&mut enc, &mut dec, &tr, r);
        }
    }

    /// Rects A, B from encoder 1; freeze; C, D from an encoder resumed from the state in
    /// another "process": one decoder reads all four.
    #[test]
    fn zrle_freeze_and_continue(
        f in any_format(),
        level in 0u32..=9,
        ab in proptest::collection::vec(any_rect(), 0..3),
        cd in proptest::collection::vec(any_rect(), 1..3),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut dec = ZrleDecoder::new();
        let mut first = ZrleEncoder::new(level);
        for r in &ab {
            zrle_trip(&mut first, &mut dec, &tr, r);
        }
        let state = first.freeze();
        prop_assert_eq!(state, ZrleEncoderState { level, header_sent: !ab.is_empty() });
        let one = [0u32; 1];
        let frozen = first.encode(&tr, Pixels::packed(&one, 1, 1).unwrap(), &mut Vec::new());
        prop_assert!(matches!(frozen, Err(Error::Frozen)));
        drop(first);
        let mut second = ZrleEncoder::resume_after_freeze(&state);
        for r in &cd {
            zrle_trip(&mut second, &mut dec, &tr, r);
        }
        // And a second hand-over on top of the first.
        let mut third = ZrleEncoder::resume_after_freeze(&second.freeze());
        zrle_trip(&mut third, &mut dec, &tr, &cd[0]);
    }

    /// Hextile, Zlib and Tight rectangles as a FramebufferUpdate message, fed to the message
    /// codec in small chunks: it finds every rectangle's end (reading Hextile and Tight through),
    /// and a viewer's decoder rebuilds the pixels.
    #[test]
    fn updates_in_every_encoding_cross_the_message_codec(
        f in any_format(),
        rects in proptest::collection::vec(any_rect(), 1..4),
        chunk in 1usize..300,
    ) {
        for encoding in [Encoding::Hextile, Encoding::Zlib, Encoding::Tight] {
            let mut encoder = UpdateEncoder::new();
            encoder.set_pixel_format(f).unwrap();
            encoder.set_encodings(&[encoding]);
            let mut decoder = ServerMessageDecoder::new(f, Limits::default());
            let mut viewer = UpdateDecoder::new(f).unwrap();
            for r in &rects {
                let (w, h) = (r.w as u16, r.h as u16);
                let mut fb = Framebuffer::new(w, h);
                let mut view = fb.view_mut(0, 0, w, h).unwrap();
                for (y, row) in r.pixels().chunks_exact(r.w).enumerate() {
                    view.row_mut(y).copy_from_slice(row);
                }
                let rect = encoder.encode(&fb, 0, 0, w, h).unwrap();
                prop_assert_eq!(rect.payload.encoding(), encoding);
                let msg = ServerMessage::FramebufferUpdate(vec![rect]);
                let mut wire = Vec::new();
                msg.encode(&mut wire);
                let mut got = None;
                for c in wire.chunks(chunk) {
                    decoder.feed(c);
                    if let Some(m) = decoder.next_message().unwrap() {
                        got = Some(m);
                    }
                }
                prop_assert_eq!(got.as_ref(), Some(&msg));
                let mut copy = Framebuffer::new(w, h);
                let ServerMessage::FramebufferUpdate(back) = got.unwrap() else { unreachable!() };
                viewer.apply(&mut copy, &back[0]).unwrap();
                let want: Vec<u32> = fb.pixels().iter().map(|&p| reduce(p, &f)).collect();
                prop_assert_eq!(copy.pixels(), &want[..], "{:?}", encoding);
            }
        }
    }

    /// Tight: rectangles from one encoder, a level change (the streams reset by the protocol),
    /// then rectangles from one resumed from its state: one decoder reads them all.
    #[test]
    fn tight_round_trips_resets_and_continues(
        f in any_format(),
        level in 0u32..=9,
        ab in proptest::collection::vec(any_rect(), 0..3),
        cd in proptest::collection::vec(any_rect(), 1..3),
        new_level in 0u32..=9,
    ) {
        let tr = Translator::new(f).unwrap();
        let mut dec = TightDecoder::new();
        let mut first = TightEncoder::new(level);
        for r in &ab {
            tight_trip(&mut first, &mut dec, &tr, r);
        }
        first.reset(new_level);
        tight_trip(&mut first, &mut dec, &tr, &cd[0]);
        let mut second = TightEncoder::resume(&first.states());
        drop(first);
        for r in &cd {
            tight_trip(&mut second, &mut dec, &tr, r);
        }
    }

    /// Zlib: rectangles from one encoder, then from one resumed from its state: one decoder
    /// reads them all.
    #[test]
    fn zlib_round_trips_and_continues(
        f in any_format(),
        level in 0u32..=9,
        ab in proptest::collection::vec(any_rect(), 0..3),
        cd in proptest::collection::vec(any_rect(), 1..3),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut dec = ZlibDecoder::new();
        let mut first = ZlibEncoder::new(level);
        for r in &ab {
            zlib_trip(&mut first, &mut dec, &tr, r);
        }
        let mut second = ZlibEncoder::resume(&first.state());
        drop(first);
        for r in &cd {
            zlib_trip(&mut second, &mut dec, &tr, r);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random bytes as ZRLE data: an error or some pixels, never a panic.
    #[test]
    fn hostile_zrle_data_never_panics(
        f in any_format(),
        w in 1usize..80, h in 1usize..80,
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut px = vec![0u32; w * h];
        let _ = ZrleDecoder::new().decode(&tr, &data, &mut PixelsMut::packed(&mut px, w, h).unwrap());
    }

    /// Random bytes as Hextile data: an error or some pixels, never a panic, and never more
    /// read than there is.
    #[test]
    fn hostile_hextile_data_never_panics(
        f in any_format(),
        w in 1usize..80, h in 1usize..80,
        data in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut px = vec![0u32; w * h];
        if let Ok(n) = hextile::decode(&tr, &data, &mut PixelsMut::packed(&mut px, w, h).unwrap()) {
            prop_assert!(n <= data.len());
        }
    }

    /// Random bytes as Tight data, with any control byte: an error or pixels, never a panic,
    /// never more read than there is.
    #[test]
    fn hostile_tight_data_never_panics(
        f in any_format(),
        w in 1usize..80, h in 1usize..80,
        data in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut px = vec![0u32; w * h];
        let mut dec = TightDecoder::new();
        if let Ok(n) = dec.decode(&tr, &data, &mut PixelsMut::packed(&mut px, w, h).unwrap()) {
            prop_assert!(n <= data.len());
        }
    }

    /// Random bytes inside a valid zlib stream as Zlib data: an error or pixels, and more
    /// than the rectangle's Raw size is refused.
    #[test]
    fn hostile_zlib_data_never_panics(
        f in any_format(),
        w in 1usize..80, h in 1usize..80,
        inner in proptest::collection::vec(any::<u8>(), 0..8192),
    ) {
        let tr = Translator::new(f).unwrap();
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut data = Vec::with_capacity(inner.len() * 2 + 64);
        c.compress_vec(&inner, &mut data, flate2::FlushCompress::Sync).unwrap();
        let mut px = vec![0u32; w * h];
        let r = ZlibDecoder::new().decode(&tr, &data, &mut PixelsMut::packed(&mut px, w, h).unwrap());
        prop_assert_eq!(r.is_ok(), inner.len() == raw::payload_len(&tr, w, h).unwrap());
    }

    /// Random *tile* bytes inside a valid zlib stream reach the tile parser: an error or
    /// pixels, never a panic, and inflating stops at the rectangle's bound.
    #[test]
    fn hostile_tiles_never_panic(
        f in any_format(),
        w in 1usize..140, h in 1usize..140,
        mut tiles in proptest::collection::vec(any::<u8>(), 0..4096),
        sub in any::<u8>(),
    ) {
        let tr = Translator::new(f).unwrap();
        if let Some(first) = tiles.first_mut() {
            *first = sub;
        }
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut data = Vec::with_capacity(tiles.len() * 2 + 64);
        c.compress_vec(&tiles, &mut data, flate2::FlushCompress::Sync).unwrap();
        let mut px = vec![0u32; w * h];
        let r = ZrleDecoder::new().decode(&tr, &data, &mut PixelsMut::packed(&mut px, w, h).unwrap());
        if tiles.len() > max_inflated_len(&tr, w, h).unwrap() {
            prop_assert!(r.is_err());
        }
    }
}

/// PSNR in dB of `got` against `want` over the three channels.
fn psnr(want: &[u32], got: &[u32]) -> f64 {
    let mut se = 0f64;
    for (&a, &b) in want.iter().zip(got) {
        for shift in [0, 8, 16] {
            let d = f64::from((a >> shift & 0xff) as u8) - f64::from((b >> shift & 0xff) as u8);
            se += d * d;
        }
    }
    let mse = se / (want.len() * 3) as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// A smooth many-coloured picture: a photo's kind of content.
fn smooth(w: usize, h: usize, seed: u32) -> Vec<u32> {
    (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            let s = f64::from(seed % 97);
            let r = 128.0 + 100.0 * ((x + s) / 17.0).sin();
            let g = 128.0 + 100.0 * ((y - s) / 23.0).cos();
            let b = 128.0 + 60.0 * ((x + y) / 31.0).sin();
            (r as u32) << 16 | (g as u32) << 8 | b as u32
        })
        .collect()
}

/// Tight JPEG: with a quality level, a smooth picture goes as JPEG (control 0x90), the decoder
/// of this crate reads it back through the same connection as lossless rectangles, within a
/// PSNR that rises with the level; without a level it stays lossless.
#[test]
fn tight_jpeg_round_trips_within_psnr() {
    let tr = Translator::new(PixelFormat::RGBX32_LE).unwrap();
    let (w, h) = (96, 80);
    let src = smooth(w, h, 5);
    let mut dec = TightDecoder::new();
    let mut last = 0.0;
    for (level, floor) in [(0u8, 25.0), (5, 30.0), (9, 40.0)] {
        let mut enc = TightEncoder::new(6);
        enc.set_quality(Some(level));
        let mut data = Vec::new();
        enc.encode(&tr, Pixels::packed(&src, w, h).unwrap(), &mut data)
            .unwrap();
        assert_eq!(data[0], 0x90, "level {level}: a JPEG rectangle");
        let mut got = vec![0u32; w * h];
        let used = dec
            .decode(&tr, &data, &mut PixelsMut::packed(&mut got, w, h).unwrap())
            .unwrap();
        assert_eq!(used, data.len());
        let p = psnr(&src, &got);
        println!(
            "Tight JPEG level {level}: {} bytes, PSNR {p:.1} dB",
            data.len()
        );
        assert!(p >= floor && p > last, "level {level}: PSNR {p:.1} dB");
        last = p;
    }
    let mut lossless = TightEncoder::new(6);
    lossless.set_quality(None);
    let rect = RectSpec {
        w,
        h,
        kind: 0,
        colours: 1,
        seed: 3,
    };
    tight_trip(&mut lossless, &mut dec, &tr, &rect);
}

/// Found by `zrle_round_trips`: with this rectangle the deflate output filled up exactly as
/// the input ran out, and the rectangle's last bytes (the sync flush) never left the encoder.
#[test]
fn zrle_sends_every_byte_when_the_output_fills_as_the_input_ends() {
    let f = PixelFormat {
        bits_per_pixel: 32,
        depth: 1,
        big_endian: false,
        true_colour: true,
        red_max: 1023,
        green_max: 15,
        blue_max: 8191,
        red_shift: 5,
        green_shift: 28,
        blue_shift: 15,
    };
    let tr = Translator::new(f).unwrap();
    let rect = RectSpec {
        w: 163,
        h: 139,
        kind: 0,
        colours: 19,
        seed: 11063672144058278482,
    };
    zrle_trip(
        &mut ZrleEncoder::new(ZrleEncoder::DEFAULT_LEVEL),
        &mut ZrleDecoder::new(),
        &tr,
        &rect,
    );
}

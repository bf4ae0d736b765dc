//! Hand-made ZRLE tiles (RFC 6143 §7.7.6) decoded, the encoder's choice of sub-encoding,
//! malformed data refused with the right error, and Raw/Cursor/Hextile/Tight golden bytes.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use rfb::encoding::hextile::HextileEncoder;
use rfb::encoding::tight::TightEncoder;
use rfb::encoding::zrle::{ZrleDecoder, ZrleEncoder};
use rfb::encoding::{cursor, raw, Error, TileError};
use rfb::translate::{Pixels, PixelsMut, Translator};
use rfb::PixelFormat;

const A: u32 = 0x0012_3456;
const B: u32 = 0x00ab_cdef;
/// CPIXELs of A and B in RGBX32_LE: the three low bytes, little-endian.
const CA: [u8; 3] = [0x56, 0x34, 0x12];
const CB: [u8; 3] = [0xef, 0xcd, 0xab];

fn rgbx() -> Translator {
    Translator::new(PixelFormat::RGBX32_LE).unwrap()
}

/// Compresses `tiles` as one zlib stream's first rectangle, as a server would.
fn zlib(tiles: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), true);
    let mut out = Vec::with_capacity(tiles.len() + 64);
    c.compress_vec(tiles, &mut out, FlushCompress::Sync)
        .unwrap();
    assert_eq!(c.total_in() as usize, tiles.len());
    out
}

/// Decodes hand-made tile bytes of a `w`×`h` rectangle in RGBX32_LE.
fn decode(tiles: &[u8], w: usize, h: usize) -> Result<Vec<u32>, Error> {
    let mut px = vec![0u32; w * h];
    let mut dst = PixelsMut::packed(&mut px, w, h).unwrap();
    ZrleDecoder::new().decode(&rgbx(), &zlib(tiles), &mut dst)?;
    Ok(px)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn solid_tile() {
    let px = decode(&cat(&[&[1], &CA]), 4, 2).unwrap();
    assert_eq!(px, [A; 8]);
}

#[test]
fn raw_tile() {
    let px = decode(&cat(&[&[0], &CA, &CB, &CB]), 3, 1).unwrap();
    assert_eq!(px, [A, B, B]);
}

#[test]
fn packed_palette_two_colours() {
    // 10×2, 1 bit per pixel, each row padded to 2 bytes, MSB first.
    // Row 0: A B A B A B A B A B → 0101010101; row 1: B×5 A×5 → 1111100000.
    let bytes = cat(&[
        &[2],
        &CA,
        &CB,
        &[0b0101_0101, 0b0100_0000, 0b1111_1000, 0b0000_0000],
    ]);
    let px = decode(&bytes, 10, 2).unwrap();
    let row0: Vec<u32> = (0..10).map(|i| if i % 2 == 0 { A } else { B }).collect();
    let row1: Vec<u32> = (0..10).map(|i| if i < 5 { B } else { A }).collect();
    assert_eq!(px, [row0, row1].concat());
}

#[test]
fn packed_palette_three_colours_two_bits() {
    let c = 0x0000_00ff;
    // 3×1: indices 2, 0, 1 → 10 00 01 00.
    let bytes = cat(&[&[3], &CA, &CB, &[0xff, 0, 0], &[0b1000_0100]]);
    assert_eq!(decode(&bytes, 3, 1).unwrap(), [c, A, B]);
}

#[test]
fn plain_rle_runs_cross_rows() {
    // 5×2: A×3 then B×7 (run lengths are length - 1).
    let bytes = cat(&[&[128], &CA, &[2], &CB, &[6]]);
    let px = decode(&bytes, 5, 2).unwrap();
    assert_eq!(px, [[A; 3].as_slice(), &[B; 7]].concat());
}

#[test]
fn plain_rle_long_run_uses_255_continuations() {
    // One full 64×64 tile of A: 4096 = 1 + 16·255 + 15.
    let mut bytes = cat(&[&[128], &CA]);
    bytes.extend([255; 16]);
    bytes.push(15);
    assert_eq!(decode(&bytes, 64, 64).unwrap(), vec![A; 4096]);
}

#[test]
fn palette_rle() {
    // 4×4, palette [A, B]: run of 10 A, single B, run of 5 B.
    let bytes = cat(&[&[130], &CA, &CB, &[0x80, 9, 1, 0x81, 4]]);
    let px = decode(&bytes, 4, 4).unwrap();
    assert_eq!(px, [[A; 10].as_slice(), &[B; 6]].concat());
}

#[test]
fn tiles_go_left_to_right_then_down() {
    // 65×65: four tiles (64×64, 1×64, 64×1, 1×1), each solid.
    let c = [0xff, 0, 0];
    let d = [0, 0xff, 0];
    let bytes = cat(&[&[1], &CA, &[1], &CB, &[1], &c, &[1], &d]);
    let px = decode(&bytes, 65, 65).unwrap();
    assert_eq!(px[0], A);
    assert_eq!(px[64], B);
    assert_eq!(px[63 * 65 + 64], B);
    assert_eq!(px[64 * 65], 0xff);
    assert_eq!(px[64 * 65 + 64], 0xff00);
}

#[test]
fn sixteen_bit_big_endian_cpixels_are_whole_pixels() {
    let rgb565be = PixelFormat {
        big_endian: true,
        ..PixelFormat::RGB565_LE
    };
    let tr = Translator::new(rgb565be).unwrap();
    let mut px = [0u32; 2];
    let mut dst = PixelsMut::packed(&mut px, 2, 1).unwrap();
    ZrleDecoder::new()
        .decode(&tr, &zlib(&[0, 0xf8, 0x00, 0x00, 0x1f]), &mut dst)
        .unwrap();
    assert_eq!(px, [0x00ff_0000, 0x0000_00ff]);
}

fn tile_error(result: Result<Vec<u32>, Error>) -> TileError {
    match result {
        Err(Error::Tile { error, .. }) => error,
        other => panic!("expected a tile error, got {other:?}"),
    }
}

#[test]
fn malformed_tiles_are_typed_errors() {
    // Palette of 3 with 2-bit index 3.
    let e = tile_error(decode(&cat(&[&[3], &CA, &CB, &CB, &[0b1100_0000]]), 1, 1));
    assert_eq!(e, TileError::PaletteIndex { index: 3, size: 3 });
    // Palette RLE index past the palette.
    let e = tile_error(decode(&cat(&[&[130], &CA, &CB, &[5]]), 1, 1));
    assert_eq!(e, TileError::PaletteIndex { index: 5, size: 2 });
    // A run of 3 in a 2-pixel tile.
    let e = tile_error(decode(&cat(&[&[128], &CA, &[2]]), 2, 1));
    assert_eq!(e, TileError::RunTooLong { run: 3, left: 2 });
    // Undefined sub-encodings.
    assert_eq!(tile_error(decode(&[17], 1, 1)), TileError::Subencoding(17));
    assert_eq!(
        tile_error(decode(&[129], 1, 1)),
        TileError::Subencoding(129)
    );
    // Data ends inside the tile.
    assert_eq!(
        tile_error(decode(&cat(&[&[0], &CA]), 2, 1)),
        TileError::Truncated
    );
    // Bytes after the last tile.
    assert!(matches!(
        decode(&cat(&[&[1], &CA, &[9, 9]]), 1, 1),
        Err(Error::TrailingData(2))
    ));
}

#[test]
fn inflating_more_than_the_rect_can_need_is_refused() {
    // 1×1 rect: at most 1 + 127·3 + 2 bytes; send 1 MiB of zeros.
    let bomb = zlib(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 2048, "a zip bomb is small");
    assert!(matches!(
        ZrleDecoder::new().decode(
            &rgbx(),
            &bomb,
            &mut PixelsMut::packed(&mut [0u32; 1], 1, 1).unwrap()
        ),
        Err(Error::InflateLimit {
            width: 1,
            height: 1,
            ..
        })
    ));
}

#[test]
fn corrupt_and_ended_streams_are_refused() {
    let mut px = [0u32; 1];
    let mut dst = PixelsMut::packed(&mut px, 1, 1).unwrap();
    let e = ZrleDecoder::new().decode(&rgbx(), &[0x78, 0x9c, 0xff, 0xff, 0xff], &mut dst);
    assert!(matches!(e, Err(Error::Inflate(_))), "{e:?}");
    let mut ended = Vec::with_capacity(64);
    Compress::new(Compression::new(6), true)
        .compress_vec(&cat(&[&[1], &CA]), &mut ended, FlushCompress::Finish)
        .unwrap();
    let e = ZrleDecoder::new().decode(&rgbx(), &ended, &mut dst);
    assert!(matches!(e, Err(Error::StreamEnded)), "{e:?}");
}

/// Inflates one encoder rectangle's data with a fresh zlib inflater: the tiles' bytes.
fn tiles_of(tr: &Translator, px: &[u32], w: usize, h: usize) -> Vec<u8> {
    let mut data = Vec::new();
    ZrleEncoder::new(6)
        .encode(tr, Pixels::packed(px, w, h).unwrap(), &mut data)
        .unwrap();
    let mut out = Vec::with_capacity(100_000);
    Decompress::new(true)
        .decompress_vec(&data, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

#[test]
fn encoder_picks_solid_palette_rle_and_raw() {
    let tr = rgbx();
    assert_eq!(tiles_of(&tr, &[A; 16], 4, 4), cat(&[&[1], &CA]));
    // A checkerboard of two colours: packed palette, 1 bit per pixel.
    let checker: Vec<u32> = (0..64)
        .map(|i| if (i + i / 8) % 2 == 0 { A } else { B })
        .collect();
    let t = tiles_of(&tr, &checker, 8, 8);
    assert_eq!(t.len(), 1 + 2 * 3 + 8, "{t:?}");
    assert_eq!(t[0], 2);
    // Eight long runs of two colours: palette RLE (a byte per run beats a CPIXEL per run).
    let runs: Vec<u32> = (0..64 * 64)
        .map(|i| if (i / 512) % 2 == 0 { A } else { B })
        .collect();
    let t = tiles_of(&tr, &runs, 64, 64);
    assert_eq!(t[0], 130, "{t:?}");
    // All-different colours: raw.
    let noise: Vec<u32> = (0..256u32)
        .map(|i| i.wrapping_mul(0x9e37_79b9) >> 8)
        .collect();
    let t = tiles_of(&tr, &noise, 16, 16);
    assert_eq!((t[0], t.len()), (0, 1 + 256 * 3));
}

#[test]
fn raw_golden_and_lengths_checked() {
    let tr = rgbx();
    let mut out = Vec::new();
    raw::encode(&tr, Pixels::packed(&[A, B], 2, 1).unwrap(), &mut out);
    // The spare fourth byte is opaque (0xff), for viewers that read it as alpha.
    assert_eq!(out, cat(&[&CA, &[0xff], &CB, &[0xff]]));
    let mut px = [0u32; 2];
    raw::decode(&tr, &out, &mut PixelsMut::packed(&mut px, 2, 1).unwrap()).unwrap();
    assert_eq!(px, [A, B]);
    let short = raw::decode(
        &tr,
        &out[1..],
        &mut PixelsMut::packed(&mut px, 2, 1).unwrap(),
    );
    assert!(matches!(
        short,
        Err(Error::Length {
            expected: 8,
            got: 7,
            ..
        })
    ));
}

#[test]
fn cursor_round_trip_and_mask_layout() {
    let tr = rgbx();
    // 9×2 arrow-ish cursor: row 0 visible at x=0 and x=8, row 1 everywhere.
    let image: Vec<u32> = (0..18).map(|i| if i % 3 == 0 { A } else { B }).collect();
    let mask = cursor::mask_from_fn(9, 2, |x, y| y == 1 || x == 0 || x == 8);
    assert_eq!(mask, [0x80, 0x80, 0xff, 0x80]);
    let (pixels, wire_mask) =
        cursor::encode(&tr, Pixels::packed(&image, 9, 2).unwrap(), &mask).unwrap();
    assert_eq!(pixels.len(), 18 * 4);
    let c = cursor::decode(&tr, 9, 2, &pixels, &wire_mask).unwrap();
    assert_eq!(c.pixels, image);
    assert!(c.visible(8, 0) && !c.visible(7, 0) && c.visible(4, 1) && !c.visible(9, 1));
    assert!(matches!(
        cursor::decode(&tr, 9, 2, &pixels, &wire_mask[1..]),
        Err(Error::Length {
            what: "cursor mask",
            ..
        })
    ));
}

/// Tight as rfbproto lays it out: a solid rectangle is a fill (control 0x80, one RGB
/// TPIXEL); two colours a palette on stream 1 (control 0x50, filter 1, n-1, TPIXELs, one bit
/// per pixel, rows padded), sent as is under 12 bytes; a level change resets all four streams
/// in the next control byte once any has started.
#[test]
fn tight_golden() {
    let tr = rgbx();
    let mut enc = TightEncoder::new(6);
    let mut out = Vec::new();
    enc.encode(&tr, Pixels::packed(&[A; 6], 3, 2).unwrap(), &mut out)
        .unwrap();
    assert_eq!(out, [0x80, 0x12, 0x34, 0x56]);
    let mono = [A, B, B, A, A, A, A, A, B, A];
    out.clear();
    enc.encode(&tr, Pixels::packed(&mono, 10, 1).unwrap(), &mut out)
        .unwrap();
    let want = cat(&[
        &[0x50, 1, 1],
        &[0x12, 0x34, 0x56, 0xab, 0xcd, 0xef],
        &[0b0110_0000, 0b1000_0000],
    ]);
    assert_eq!(out, want);
    // 16 rows of that: 32 bytes of indices, compressed on stream 1 with a length before.
    let tall: Vec<u32> = mono.iter().copied().cycle().take(160).collect();
    out.clear();
    enc.encode(&tr, Pixels::packed(&tall, 10, 16).unwrap(), &mut out)
        .unwrap();
    assert_eq!(&out[..9], &want[..9]);
    assert_eq!(usize::from(out[9]), out.len() - 10, "compact length");
    enc.reset(1);
    out.clear();
    enc.encode(&tr, Pixels::packed(&[B], 1, 1).unwrap(), &mut out)
        .unwrap();
    assert_eq!(out, [0x8f, 0xab, 0xcd, 0xef]);
}

/// Hextile as RFC 6143 §7.7.4 lays it out: a solid tile specifies its background once, the
/// next tile of the same colour is a bare 0; two colours are a background, a foreground and
/// uncoloured subrectangles.
#[test]
fn hextile_golden() {
    let tr = rgbx();
    let mut out = Vec::new();
    HextileEncoder::new().encode(&tr, Pixels::packed(&[A; 32], 32, 1).unwrap(), &mut out);
    assert_eq!(out, [2, 0x56, 0x34, 0x12, 0xff, 0]);
    let two = [A, A, B, B, A, A];
    out.clear();
    HextileEncoder::new().encode(&tr, Pixels::packed(&two, 6, 1).unwrap(), &mut out);
    // Background A, foreground B, one subrectangle at (2, 0) of 2x1.
    assert_eq!(
        out,
        [
            2 | 4 | 8,
            0x56,
            0x34,
            0x12,
            0xff,
            0xef,
            0xcd,
            0xab,
            0xff,
            1,
            0x20,
            0x10
        ]
    );
}

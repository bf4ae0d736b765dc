//! Pixels read back from a viewer (an `xwd` window dump or a PNG capture) or from QEMU (its
//! `screendump`, a PPM).

use std::path::Path;

use super::{Result, ViewerError};

/// An RGB image read back from a viewer, one `0x00RRGGBB` word per pixel, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, `0x00RRGGBB`, row-major.
    pub pixels: Vec<u32>,
}

impl Image {
    /// The pixel at (x, y), if inside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<u32> {
        if x < self.width && y < self.height {
            self.pixels.get(y * self.width + x).copied()
        } else {
            None
        }
    }

    /// The sub-image at (x, y) of size w×h, if it lies inside the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Option<Image> {
        if x + w > self.width || y + h > self.height {
            return None;
        }
        let pixels = (y..y + h)
            .flat_map(|row| {
                let start = row * self.width + x;
                self.pixels[start..start + w].iter().copied()
            })
            .collect();
        Some(Image {
            width: w,
            height: h,
            pixels,
        })
    }

    /// How many distinct colours the image has (a blank screen has one).
    pub fn colour_count(&self) -> usize {
        let mut colours = self.pixels.clone();
        colours.sort_unstable();
        colours.dedup();
        colours.len()
    }
}

impl Image {
    /// Writes the image as a PNG file (for a person to look at when a test fails).
    pub fn save_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let width = u32::try_from(self.width).map_err(std::io::Error::other)?;
        let height = u32::try_from(self.height).map_err(std::io::Error::other)?;
        let mut encoder = png::Encoder::new(file, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        let data: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
            .collect();
        writer
            .write_image_data(&data)
            .map_err(std::io::Error::other)
    }
}

/// Decodes an X window dump (`xwd`, ZPixmap, 24/32 bits per pixel, TrueColor).
pub fn parse_xwd(data: &[u8]) -> Result<Image> {
    let bad = |reason: &str| ViewerError::BadImage {
        program: "xwd",
        reason: reason.to_owned(),
    };
    let word = |index: usize| -> Result<u32> {
        let at = index * 4;
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated header"))
    };
    let to_usize = |v: u32| usize::try_from(v).map_err(|_| bad("size overflows"));
    let header_size = to_usize(word(0)?)?;
    let (format, width, height) = (word(2)?, to_usize(word(4)?)?, to_usize(word(5)?)?);
    let byte_order = word(7)?;
    let bits_per_pixel = word(11)?;
    let bytes_per_line = to_usize(word(12)?)?;
    let ncolors = to_usize(word(19)?)?;
    if format != 2 || bits_per_pixel != 32 {
        return Err(bad(&format!(
            "unsupported format {format} at {bits_per_pixel} bpp (want ZPixmap, 32 bpp)"
        )));
    }
    if (word(14)?, word(15)?, word(16)?) != (0x00ff_0000, 0x0000_ff00, 0x0000_00ff) {
        return Err(bad("colour masks are not 8-bit RGB"));
    }
    let start = header_size + ncolors * 12;
    let needed = bytes_per_line
        .checked_mul(height)
        .and_then(|n| n.checked_add(start))
        .ok_or_else(|| bad("size overflows"))?;
    if data.len() < needed || bytes_per_line < width * 4 {
        return Err(bad("truncated pixel data"));
    }
    let mut pixels = Vec::with_capacity(width * height);
    for row in 0..height {
        let line = &data[start + row * bytes_per_line..][..width * 4];
        pixels.extend(line.chunks_exact(4).map(|p| {
            let value = if byte_order == 0 {
                u32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            };
            value & 0x00ff_ffff
        }));
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// Decodes a binary PPM (P6, maxval 255), as QEMU's `screendump` writes it.
pub fn parse_ppm(data: &[u8]) -> Result<Image> {
    let bad = |reason: &str| ViewerError::BadImage {
        program: "screendump",
        reason: reason.to_owned(),
    };
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let start = at;
        while data.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
            at += 1;
        }
        if at == start {
            return Err(bad("header ends early"));
        }
        fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
    }
    if fields[0] != "P6" || fields[3] != "255" {
        return Err(bad(&format!("not an 8-bit P6 PPM: {fields:?}")));
    }
    let (Ok(width), Ok(height)) = (fields[1].parse::<usize>(), fields[2].parse::<usize>()) else {
        return Err(bad(&format!("size {} x {}", fields[1], fields[2])));
    };
    // One whitespace byte ends the header; the pixels follow.
    let body = data.get(at + 1..).ok_or_else(|| bad("no pixel data"))?;
    let needed = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| bad("size overflows"))?;
    let body = body
        .get(..needed)
        .ok_or_else(|| bad("truncated pixel data"))?;
    let pixels = body
        .chunks_exact(3)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// Decodes an 8-bit RGB or RGBA PNG into an [`Image`].
pub fn decode_png(data: &[u8]) -> Result<Image> {
    let bad = |reason: String| ViewerError::BadImage {
        program: "vncdo",
        reason,
    };
    let mut decoder = png::Decoder::new(data);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(bad(format!("unexpected colour type {other:?}"))),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x2 ZPixmap dump as `xwd` writes it: a 100-byte header, two colour-map entries,
    /// then rows padded to 12 bytes.
    fn xwd_2x2(byte_order: u32, pixels: [u32; 4]) -> Vec<u8> {
        let mut header = [0u32; 25];
        header[0] = 100; // header size (no window name)
        header[2] = 2; // ZPixmap
        header[4] = 2; // width
        header[5] = 2; // height
        header[7] = byte_order;
        header[11] = 32; // bits per pixel
        header[12] = 12; // bytes per line: 8 of pixels + 4 of padding
        header[14] = 0x00ff_0000;
        header[15] = 0x0000_ff00;
        header[16] = 0x0000_00ff;
        header[19] = 2; // colour-map entries that follow the header
        let mut data: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
        data.extend([0xee; 24]);
        for row in pixels.chunks(2) {
            for &p in row {
                let bytes = if byte_order == 0 {
                    p.to_le_bytes()
                } else {
                    p.to_be_bytes()
                };
                data.extend(bytes);
            }
            data.extend([0xaa; 4]);
        }
        data
    }

    #[test]
    fn xwd_pixels_skip_colour_map_and_row_padding_in_both_byte_orders() {
        let pixels = [0xff11_2233, 0x0044_5566, 0x0077_8899, 0x00aa_bbcc];
        for byte_order in [0, 1] {
            let image = parse_xwd(&xwd_2x2(byte_order, pixels)).expect("valid dump");
            assert_eq!((image.width, image.height), (2, 2));
            assert_eq!(
                image.pixels,
                vec![0x0011_2233, 0x0044_5566, 0x0077_8899, 0x00aa_bbcc]
            );
        }
    }

    #[test]
    fn truncated_xwd_is_an_error_not_a_panic() {
        let data = xwd_2x2(0, [0; 4]);
        for len in [0, 10, 99, 120, data.len() - 1] {
            assert!(parse_xwd(&data[..len]).is_err(), "length {len} accepted");
        }
    }

    #[test]
    fn ppm_pixels_follow_the_header_and_truncation_is_an_error() {
        let mut data = b"P6\n2 1\n255\n".to_vec();
        data.extend([0x11, 0x22, 0x33, 0xaa, 0xbb, 0xcc]);
        let image = parse_ppm(&data).expect("valid PPM");
        assert_eq!((image.width, image.height), (2, 1));
        assert_eq!(image.pixels, vec![0x0011_2233, 0x00aa_bbcc]);
        for len in [0, 3, 10, data.len() - 1] {
            assert!(parse_ppm(&data[..len]).is_err(), "length {len} accepted");
        }
        assert!(parse_ppm(b"P5\n1 1\n255\n\0").is_err());
    }

    #[test]
    fn crop_and_colour_count() {
        let image = Image {
            width: 3,
            height: 2,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let cropped = image.crop(1, 0, 2, 2).expect("inside");
        assert_eq!(cropped.pixels, vec![2, 3, 5, 6]);
        assert!(image.crop(2, 0, 2, 1).is_none());
        assert_eq!(image.colour_count(), 6);
    }
}

//! The pixel format of RFC 6143 §7.4: how a pixel value is laid out on the wire.

use serde::{Deserialize, Serialize};

/// A pixel format (RFC 6143 §7.4), as sent in ServerInit and SetPixelFormat.
///
/// dmore keeps its framebuffer in [`PixelFormat::RGBX32_LE`]; every viewer gets its own format
/// and pixels are translated on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PixelFormat {
    /// Bits one pixel takes on the wire: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits in a pixel value.
    pub depth: u8,
    /// Multi-byte pixel values are big-endian.
    pub big_endian: bool,
    /// Pixel values are colours made of shifted maxima (true), or colour-map indices (false).
    pub true_colour: bool,
    /// Largest red value (2^n - 1).
    pub red_max: u16,
    /// Largest green value (2^n - 1).
    pub green_max: u16,
    /// Largest blue value (2^n - 1).
    pub blue_max: u16,
    /// Shift of red within a pixel value.
    pub red_shift: u8,
    /// Shift of green within a pixel value.
    pub green_shift: u8,
    /// Shift of blue within a pixel value.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// Length of a pixel format on the wire (RFC 6143 §7.4: 13 bytes and 3 of padding).
    pub const WIRE_LEN: usize = 16;

    /// 32 bpp, depth 24, little-endian, red at bit 16, green 8, blue 0: what QEMU's VNC server
    /// offers and what dmore's screen cache holds.
    pub const RGBX32_LE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Bytes one pixel takes on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// Encodes the format into its 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; Self::WIRE_LEN] {
        let [rh, rl] = self.red_max.to_be_bytes();
        let [gh, gl] = self.green_max.to_be_bytes();
        let [bh, bl] = self.blue_max.to_be_bytes();
        [
            self.bits_per_pixel,
            self.depth,
            u8::from(self.big_endian),
            u8::from(self.true_colour),
            rh,
            rl,
            gh,
            gl,
            bh,
            bl,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
            0,
            0,
            0,
        ]
    }

    /// Decodes the 16 wire bytes of a pixel format. Any non-zero flag byte counts as true, as
    /// RFC 6143 says; whether the format is usable is [`PixelFormat::validate`]'s question.
    pub fn from_bytes(b: &[u8; Self::WIRE_LEN]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }
}

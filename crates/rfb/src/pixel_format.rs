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

    /// 16 bpp "RGB565", little-endian: red 5 bits at 11, green 6 at 5, blue 5 at 0 — what
    /// low-bandwidth viewers ask for (TigerVNC's medium colour level, noVNC's low quality).
    pub const RGB565_LE: PixelFormat = PixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: false,
        true_colour: true,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
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

/// One colour channel of a true-colour pixel format, named in [`PixelFormatError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The red field.
    Red,
    /// The green field.
    Green,
    /// The blue field.
    Blue,
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Channel::Red => "red",
            Channel::Green => "green",
            Channel::Blue => "blue",
        })
    }
}

/// Why dmore cannot serve (or read) pixels in a given [`PixelFormat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PixelFormatError {
    /// Only 8, 16 and 32 bits per pixel exist in RFB.
    #[error("{0} bits per pixel is not supported (only 8, 16 or 32)")]
    BitsPerPixel(u8),
    /// Depth must be 1..=bits_per_pixel.
    #[error("depth {depth} does not fit {bits_per_pixel} bits per pixel")]
    Depth {
        /// The depth asked for.
        depth: u8,
        /// The pixel size asked for.
        bits_per_pixel: u8,
    },
    /// Colour-map (indexed) formats are out of dmore's scope: it serves true colour only.
    #[error("colour-map pixel formats are not supported (true colour only)")]
    ColourMap,
    /// A channel's maximum is not 2^n - 1 (n ≤ 16).
    #[error("{channel} maximum {max} is not of the form 2^n - 1")]
    Max {
        /// The channel.
        channel: Channel,
        /// Its maximum.
        max: u16,
    },
    /// A channel's bits, shifted, reach past the pixel's size.
    #[error("{channel} field (shift {shift}, {bits} bits) does not fit in {bits_per_pixel} bits")]
    FieldOutOfRange {
        /// The channel.
        channel: Channel,
        /// Its shift.
        shift: u8,
        /// Its number of bits.
        bits: u32,
        /// The pixel size.
        bits_per_pixel: u8,
    },
    /// Two channels share bits, so colours could not be told apart.
    #[error("{0} and {1} fields overlap")]
    FieldsOverlap(Channel, Channel),
}

impl PixelFormat {
    /// Checks that dmore can translate pixels to and from this format: a true-colour format of
    /// 8, 16 or 32 bits per pixel, depth 1..=bpp, maxima 2^n - 1 and channel fields that fit
    /// in the pixel without overlapping. Viewers' SetPixelFormat must pass this before use.
    pub fn validate(&self) -> Result<(), PixelFormatError> {
        let bpp = self.bits_per_pixel;
        if !matches!(bpp, 8 | 16 | 32) {
            return Err(PixelFormatError::BitsPerPixel(bpp));
        }
        if self.depth == 0 || self.depth > bpp {
            return Err(PixelFormatError::Depth {
                depth: self.depth,
                bits_per_pixel: bpp,
            });
        }
        if !self.true_colour {
            return Err(PixelFormatError::ColourMap);
        }
        let mut masks = [(Channel::Red, 0u32); 3];
        for (slot, (channel, max, shift)) in masks.iter_mut().zip(self.channels()) {
            if max & max.wrapping_add(1) != 0 {
                return Err(PixelFormatError::Max { channel, max });
            }
            let bits = channel_bits(max);
            if u32::from(shift) + bits > u32::from(bpp) {
                return Err(PixelFormatError::FieldOutOfRange {
                    channel,
                    shift,
                    bits,
                    bits_per_pixel: bpp,
                });
            }
            // shift + bits <= 32 was checked above, so this shift cannot overflow.
            *slot = (
                channel,
                u32::from(max).checked_shl(u32::from(shift)).unwrap_or(0),
            );
        }
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                if masks[i].1 & masks[j].1 != 0 {
                    return Err(PixelFormatError::FieldsOverlap(masks[i].0, masks[j].0));
                }
            }
        }
        Ok(())
    }

    /// The three channels as (channel, max, shift), red first.
    pub fn channels(&self) -> [(Channel, u16, u8); 3] {
        [
            (Channel::Red, self.red_max, self.red_shift),
            (Channel::Green, self.green_max, self.green_shift),
            (Channel::Blue, self.blue_max, self.blue_shift),
        ]
    }

    /// The bits of a pixel value that carry colour: the union of every max << shift (bits
    /// shifted past bit 31, possible only in formats [`PixelFormat::validate`] rejects, drop).
    pub fn colour_mask(&self) -> u32 {
        self.channels().iter().fold(0, |acc, &(_, max, shift)| {
            acc | u32::from(max).checked_shl(u32::from(shift)).unwrap_or(0)
        })
    }
}

/// Number of bits of a maximum of the form 2^n - 1.
fn channel_bits(max: u16) -> u32 {
    16 - max.leading_zeros()
}

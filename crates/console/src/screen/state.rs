//! The screen cache's snapshot: size, pixels (deflated, since a framebuffer is MiBs and a text
//! screen compresses a hundredfold), cursor and LEDs.

use super::{check_size, CursorShape, Screen};
use flate2::{read::DeflateDecoder, write::DeflateEncoder, Compression};
use rfb::encoding::cursor::{mask_len, Cursor};
use rfb::framebuffer::Framebuffer;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// Version of [`ScreenState`]'s layout; [`Screen::restore`] refuses any other.
pub const SCREEN_STATE_VERSION: u32 = 1;

/// Largest cursor side accepted on restore (QEMU's cursors are at most 64x64).
const MAX_CURSOR: u16 = 256;

/// The cursor in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CursorState {
    hotspot_x: u16,
    hotspot_y: u16,
    width: u16,
    height: u16,
    pixels: Vec<u32>,
    #[serde(with = "serde_bytes")]
    mask: Vec<u8>,
}

/// The screen cache's whole state, serde-serialisable. Made by [`Screen::freeze`], consumed
/// by [`Screen::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenState {
    version: u32,
    width: u16,
    height: u16,
    /// `0x00RRGGBB` pixels as 3 bytes R, G, B each, raw deflate.
    #[serde(with = "serde_bytes")]
    rgb_deflated: Vec<u8>,
    cursor: Option<CursorState>,
    leds: Option<u8>,
}

/// A screen snapshot that cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum ScreenRestoreError {
    /// Made by another version of dmore.
    #[error("screen state version {found}, this dmore reads version {expected}")]
    Version {
        /// In the snapshot.
        found: u32,
        /// Understood here.
        expected: u32,
    },
    /// Contents that no screen could have frozen.
    #[error("invalid screen state: {0}")]
    Invalid(&'static str),
    /// The pixel data does not inflate.
    #[error("inflating the screen's pixels")]
    Inflate(#[source] std::io::Error),
}

impl Screen {
    /// Snapshots the screen. Nothing changes; the screen can carry on.
    pub fn freeze(&self) -> ScreenState {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
        let mut row = Vec::with_capacity(usize::from(self.width()) * 3);
        for line in self.fb.pixels().chunks(usize::from(self.width()).max(1)) {
            row.clear();
            for p in line {
                let [_, r, g, b] = p.to_be_bytes();
                row.extend_from_slice(&[r, g, b]);
            }
            // Writing to a Vec cannot fail.
            let _ = enc.write_all(&row);
        }
        let rgb_deflated = enc.finish().unwrap_or_default();
        ScreenState {
            version: SCREEN_STATE_VERSION,
            width: self.width(),
            height: self.height(),
            rgb_deflated,
            cursor: self.cursor.as_ref().map(|c| CursorState {
                hotspot_x: c.hotspot_x,
                hotspot_y: c.hotspot_y,
                width: u16::try_from(c.cursor.width).unwrap_or(0),
                height: u16::try_from(c.cursor.height).unwrap_or(0),
                pixels: c.cursor.pixels.clone(),
                mask: c.cursor.mask.clone(),
            }),
            leds: self.leds,
        }
    }

    /// Rebuilds a screen from a snapshot, checking every size before allocating.
    pub fn restore(state: ScreenState) -> Result<Screen, ScreenRestoreError> {
        if state.version != SCREEN_STATE_VERSION {
            return Err(ScreenRestoreError::Version {
                found: state.version,
                expected: SCREEN_STATE_VERSION,
            });
        }
        check_size(state.width, state.height)
            .map_err(|_| ScreenRestoreError::Invalid("screen size beyond the limits"))?;
        let (w, h) = (usize::from(state.width), usize::from(state.height));
        let want = w * h * 3;
        let mut rgb = Vec::with_capacity(want);
        DeflateDecoder::new(state.rgb_deflated.as_slice())
            .take(u64::try_from(want).unwrap_or(u64::MAX).saturating_add(1))
            .read_to_end(&mut rgb)
            .map_err(ScreenRestoreError::Inflate)?;
        if rgb.len() != want {
            return Err(ScreenRestoreError::Invalid(
                "pixel data has the wrong length",
            ));
        }
        let mut fb = Framebuffer::new(state.width, state.height);
        if let Some(mut view) = fb.view_mut(0, 0, state.width, state.height) {
            for (y, src) in rgb.chunks_exact(w * 3).enumerate() {
                for (d, s) in view.row_mut(y).iter_mut().zip(src.chunks_exact(3)) {
                    if let [r, g, b] = *s {
                        *d = u32::from_be_bytes([0, r, g, b]);
                    }
                }
            }
        }
        let cursor = match state.cursor {
            None => None,
            Some(c) => Some(restore_cursor(c)?),
        };
        Ok(Screen {
            fb,
            cursor,
            leds: state.leds.map(|l| l & 0x7),
        })
    }
}

fn restore_cursor(c: CursorState) -> Result<CursorShape, ScreenRestoreError> {
    if c.width > MAX_CURSOR || c.height > MAX_CURSOR {
        return Err(ScreenRestoreError::Invalid("cursor too large"));
    }
    let (w, h) = (usize::from(c.width), usize::from(c.height));
    if c.pixels.len() != w * h || Some(c.mask.len()) != mask_len(w, h) {
        return Err(ScreenRestoreError::Invalid(
            "cursor data has the wrong length",
        ));
    }
    Ok(CursorShape {
        hotspot_x: c.hotspot_x,
        hotspot_y: c.hotspot_y,
        cursor: Cursor {
            width: w,
            height: h,
            pixels: c.pixels,
            mask: c.mask,
        },
    })
}

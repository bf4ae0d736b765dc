//! The console's screen cache: QEMU's whole framebuffer, its size, cursor and keyboard LEDs,
//! and (in [`damage`]) what each viewer has not received yet.
//!
//! ```text
//!  QEMU --rect--> Screen::apply --Change--> Session::handle_screen_change (each viewer)
//!                   |                                 |  marks its Damage
//!                   v                                 v
//!              Framebuffer  <--------------  Session::poll_update(&screen) -> UpdatePlan
//! ```
//!
//! The back end (the RFB client of QEMU) feeds every rectangle it decodes to
//! [`Screen::apply`] and hands the returned [`Change`] to every viewer's session. After a
//! [`Change::Resized`] the cache is black until QEMU sends the new content: the back end asks
//! for a non-incremental update.
//!
//! **CopyRect rule** (the simplest correct one): a CopyRect from QEMU is forwarded to a viewer
//! as CopyRect only if the viewer accepts CopyRect, sees the current screen size, and every
//! tile of the source is clean for it (it holds those pixels); otherwise the destination is
//! marked dirty and sent as pixels.

pub mod damage;
mod state;

pub use damage::{Area, CopyOp, Cover, Damage, MAX_COPIES, TILE_WIDTH};
pub use state::{ScreenRestoreError, ScreenState, SCREEN_STATE_VERSION};

use rfb::encoding::cursor::Cursor;
use rfb::framebuffer::{Applied, ApplyError, Framebuffer, UpdateDecoder};
use rfb::{RectPayload, Rectangle};

/// Largest width or height the cache accepts.
pub const MAX_DIMENSION: u16 = 8192;
/// Most pixels the cache holds (128 MiB at 4 bytes each).
pub const MAX_PIXELS: usize = 1 << 25;

/// The cursor shape with its hotspot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorShape {
    /// Hotspot column within the image.
    pub hotspot_x: u16,
    /// Hotspot row within the image.
    pub hotspot_y: u16,
    /// Image and mask (0x0 means no visible cursor).
    pub cursor: Cursor,
}

/// What one rectangle from QEMU changed, for every viewer's damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// These pixels changed.
    Pixels(Area),
    /// `dst` was copied from (`src_x`, `src_y`) (QEMU's CopyRect).
    Copy {
        /// Source left edge.
        src_x: u16,
        /// Source top edge.
        src_y: u16,
        /// Destination and size.
        dst: Area,
    },
    /// The screen has a new size and is black until QEMU repaints it.
    Resized {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// The cursor shape changed.
    Cursor,
    /// The keyboard LEDs changed: bit 0 scroll lock, 1 num lock, 2 caps lock.
    Leds(u8),
}

/// Why a rectangle from QEMU could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    /// The rectangle did not decode or lies outside the screen.
    #[error("applying QEMU's rectangle")]
    Apply(#[from] ApplyError),
    /// QEMU announced a size beyond the cache's limits.
    #[error("screen size {width}x{height} exceeds the cache's limits")]
    TooLarge {
        /// Announced width.
        width: u16,
        /// Announced height.
        height: u16,
    },
}

/// The cached screen. Pure: fed decoded rectangles, read by the sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    fb: Framebuffer,
    cursor: Option<CursorShape>,
    leds: Option<u8>,
}

impl Screen {
    /// A black screen of QEMU's ServerInit size.
    pub fn new(width: u16, height: u16) -> Result<Self, ScreenError> {
        check_size(width, height)?;
        Ok(Screen {
            fb: Framebuffer::new(width, height),
            cursor: None,
            leds: None,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.fb.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.fb.height()
    }

    /// The cached pixels.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.fb
    }

    /// The cursor, once QEMU sent one.
    pub fn cursor(&self) -> Option<&CursorShape> {
        self.cursor.as_ref()
    }

    /// The keyboard LEDs, once QEMU sent them.
    pub fn leds(&self) -> Option<u8> {
        self.leds
    }

    /// Applies one rectangle of a FramebufferUpdate from QEMU, decoded with the back end's
    /// `decoder` (which owns QEMU's ZRLE stream). A (Extended)DesktopSize of the current size
    /// changes nothing: only a real size change blanks the cache.
    pub fn apply(
        &mut self,
        decoder: &mut UpdateDecoder,
        rect: &Rectangle,
    ) -> Result<Option<Change>, ScreenError> {
        let (width, height) = (rect.width, rect.height);
        match &rect.payload {
            RectPayload::DesktopSize | RectPayload::ExtendedDesktopSize(_) => {
                if (width, height) == (self.width(), self.height()) {
                    return Ok(None);
                }
                check_size(width, height)?;
                self.fb.resize(width, height);
                return Ok(Some(Change::Resized { width, height }));
            }
            RectPayload::QemuLedState(b) => return Ok(self.set_leds(*b)),
            RectPayload::VmwareLedState(v) => {
                return Ok(self.set_leds(u8::try_from(v & 0x7).unwrap_or(0)))
            }
            _ => {}
        }
        Ok(match decoder.apply(&mut self.fb, rect)? {
            Applied::Pixels {
                x,
                y,
                width,
                height,
            } => {
                let dst = Area::new(x, y, width, height);
                Some(match rect.payload {
                    RectPayload::CopyRect { src_x, src_y } => Change::Copy { src_x, src_y, dst },
                    _ => Change::Pixels(dst),
                })
            }
            Applied::Cursor => {
                self.cursor = decoder.cursor().map(|c| CursorShape {
                    hotspot_x: rect.x,
                    hotspot_y: rect.y,
                    cursor: c.clone(),
                });
                Some(Change::Cursor)
            }
            Applied::Resized => Some(Change::Resized { width, height }),
            Applied::LastRect | Applied::State(_) => None,
        })
    }

    fn set_leds(&mut self, leds: u8) -> Option<Change> {
        let leds = leds & 0x7;
        (self.leds != Some(leds)).then(|| {
            self.leds = Some(leds);
            Change::Leds(leds)
        })
    }
}

fn check_size(width: u16, height: u16) -> Result<(), ScreenError> {
    if width > MAX_DIMENSION
        || height > MAX_DIMENSION
        || usize::from(width) * usize::from(height) > MAX_PIXELS
    {
        return Err(ScreenError::TooLarge { width, height });
    }
    Ok(())
}

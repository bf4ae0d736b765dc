//! Screen changes into a viewer's damage, and damage into FramebufferUpdates.

use super::{Session, SessionError};
use crate::screen::{Area, Change, Cover, Screen};
use rfb::encoding::cursor;
use rfb::framebuffer::ApplyError;
use rfb::translate::Translator;
use rfb::{Encoding, RectPayload, Rectangle, ServerMessage};

/// Which LED pseudo-encoding a viewer gets: QEMU's if it listed it, else VMware's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedKind {
    /// QEMU LED state (-261), one byte.
    Qemu,
    /// VMware LED state, four bytes.
    Vmware,
}

/// One rectangle of a planned update, in the order it goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanItem {
    /// DesktopSize: the viewer's framebuffer is now this size.
    DesktopSize {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// ExtendedDesktopSize with one screen covering the framebuffer.
    ExtendedDesktopSize {
        /// Why (0 server, 1 this client asked, 2 another client asked).
        reason: u16,
        /// 0 success, 1 resize prohibited.
        status: u16,
        /// Framebuffer width.
        width: u16,
        /// Framebuffer height.
        height: u16,
    },
    /// CopyRect within the viewer's framebuffer.
    CopyRect {
        /// Source left edge.
        src_x: u16,
        /// Source top edge.
        src_y: u16,
        /// Destination and size.
        dst: Area,
    },
    /// Pixels of the screen cache, in the viewer's format and encoding.
    Pixels(Area),
    /// The cursor shape.
    Cursor,
    /// The keyboard LEDs.
    Leds(LedKind, u8),
    /// QEMU extended key event acknowledgement (-258).
    ExtKeyAck,
}

/// What to send a viewer now: the rectangles of one FramebufferUpdate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdatePlan {
    /// The rectangles, in order.
    pub items: Vec<PlanItem>,
}

impl Session {
    /// Records a change of the screen cache (every viewer gets every change).
    pub fn handle_screen_change(&mut self, change: &Change) {
        match *change {
            Change::Pixels(a) => self.damage.mark(a),
            Change::Copy { src_x, src_y, dst } => {
                let allowed = self.accepts(Encoding::CopyRect)
                    && !self.due.resize
                    && self.size == self.damage.size();
                self.damage.copy(src_x, src_y, dst, allowed);
            }
            Change::Resized { width, height } => self.resized(width, height),
            Change::Cursor => self.due.cursor |= self.accepts(Encoding::Cursor),
            Change::Leds(_) => self.due.leds |= self.led_kind().is_some(),
        }
    }

    fn supports_resize(&self) -> bool {
        self.accepts(Encoding::DesktopSize) || self.accepts(Encoding::ExtendedDesktopSize)
    }

    fn resized(&mut self, width: u16, height: u16) {
        self.damage.resize(width, height);
        self.due.resize |= self.supports_resize();
    }

    fn led_kind(&self) -> Option<LedKind> {
        if self.accepts(Encoding::QemuLedState) {
            Some(LedKind::Qemu)
        } else if self.accepts(Encoding::VmwareLedState) {
            Some(LedKind::Vmware)
        } else {
            None
        }
    }

    /// The next update, if one is wanted (a request waits, or continuous updates are on) and
    /// anything is owed. Taking it clears the viewer's damage and the pseudo-rects it holds;
    /// the shell then encodes it with [`Session::encode_update`] and writes it. Call it when
    /// the viewer's socket has room, after messages and screen changes.
    pub fn poll_update(&mut self, screen: &Screen) -> Option<UpdatePlan> {
        let screen_size = (screen.width(), screen.height());
        if self.damage.size() != screen_size {
            // A resize this session was not told about (it started before it).
            self.resized(screen_size.0, screen_size.1);
        }
        if !self.requested && self.continuous.is_none() {
            return None;
        }
        let mut items = Vec::new();
        if self.due.resize && self.supports_resize() {
            let (width, height) = screen_size;
            items.push(if self.accepts(Encoding::ExtendedDesktopSize) {
                PlanItem::ExtendedDesktopSize {
                    reason: 0,
                    status: 0,
                    width,
                    height,
                }
            } else {
                PlanItem::DesktopSize { width, height }
            });
            self.size = screen_size;
        }
        self.due.resize = false;
        if let Some((reason, status)) = self.due.layout.take() {
            if self.accepts(Encoding::ExtendedDesktopSize) {
                items.push(PlanItem::ExtendedDesktopSize {
                    reason,
                    status,
                    width: self.size.0,
                    height: self.size.1,
                });
            }
        }
        // Raw pays for every pixel; the others pay per rectangle (see `Cover`).
        let cover = if self.encoder.pixel_encoding() == Encoding::Raw {
            Cover::Exact
        } else {
            Cover::Blocks
        };
        let (copies, rects) = self.damage.take(self.size.0, self.size.1, cover);
        items.extend(copies.into_iter().map(|c| PlanItem::CopyRect {
            src_x: c.src_x,
            src_y: c.src_y,
            dst: c.dst,
        }));
        items.extend(rects.into_iter().map(PlanItem::Pixels));
        if std::mem::take(&mut self.due.cursor)
            && self.accepts(Encoding::Cursor)
            && screen.cursor().is_some()
        {
            items.push(PlanItem::Cursor);
        }
        if std::mem::take(&mut self.due.leds) {
            if let (Some(kind), Some(leds)) = (self.led_kind(), screen.leds()) {
                items.push(PlanItem::Leds(kind, leds));
            }
        }
        if std::mem::take(&mut self.due.ext_key_ack) {
            items.push(PlanItem::ExtKeyAck);
        }
        if items.is_empty() && !self.force {
            return None;
        }
        self.requested = false;
        self.force = false;
        Some(UpdatePlan { items })
    }

    /// Encodes a plan from [`Session::poll_update`] against the same screen, in the viewer's
    /// pixel format and encodings (its ZRLE stream advances).
    pub fn encode_update(
        &mut self,
        screen: &Screen,
        plan: &UpdatePlan,
    ) -> Result<ServerMessage, SessionError> {
        let mut rects = Vec::with_capacity(plan.items.len());
        for item in &plan.items {
            let rect = |x, y, width, height, payload| Rectangle {
                x,
                y,
                width,
                height,
                payload,
            };
            rects.push(match *item {
                PlanItem::DesktopSize { width, height } => {
                    rect(0, 0, width, height, RectPayload::DesktopSize)
                }
                PlanItem::ExtendedDesktopSize {
                    reason,
                    status,
                    width,
                    height,
                } => rect(
                    reason,
                    status,
                    width,
                    height,
                    RectPayload::ExtendedDesktopSize(vec![rfb::Screen {
                        id: 0,
                        x: 0,
                        y: 0,
                        width,
                        height,
                        flags: 0,
                    }]),
                ),
                PlanItem::CopyRect { src_x, src_y, dst } => rect(
                    dst.x,
                    dst.y,
                    dst.width,
                    dst.height,
                    RectPayload::CopyRect { src_x, src_y },
                ),
                PlanItem::Pixels(a) => self
                    .encoder
                    .encode(screen.framebuffer(), a.x, a.y, a.width, a.height)
                    .map_err(SessionError::Encode)?,
                PlanItem::Cursor => match self.cursor_rect(screen)? {
                    Some(r) => r,
                    None => continue,
                },
                PlanItem::Leds(LedKind::Qemu, l) => rect(0, 0, 0, 0, RectPayload::QemuLedState(l)),
                PlanItem::Leds(LedKind::Vmware, l) => {
                    rect(0, 0, 0, 0, RectPayload::VmwareLedState(u32::from(l)))
                }
                PlanItem::ExtKeyAck => rect(
                    0,
                    0,
                    screen.width(),
                    screen.height(),
                    RectPayload::QemuExtendedKeyEvent,
                ),
            });
        }
        Ok(ServerMessage::FramebufferUpdate(rects))
    }

    fn cursor_rect(&self, screen: &Screen) -> Result<Option<Rectangle>, SessionError> {
        let Some(shape) = screen.cursor() else {
            return Ok(None);
        };
        let c = &shape.cursor;
        let (Ok(width), Ok(height)) = (u16::try_from(c.width), u16::try_from(c.height)) else {
            return Ok(None);
        };
        let (pixels, mask) = match c.image() {
            Some(image) => {
                let bad = |source| {
                    SessionError::Encode(ApplyError::Encoding {
                        encoding: Encoding::Cursor,
                        source,
                    })
                };
                let tr = Translator::new(self.pixel_format)
                    .map_err(|e| SessionError::Encode(ApplyError::PixelFormat(e)))?;
                cursor::encode(&tr, image, &c.mask).map_err(bad)?
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Some(Rectangle {
            x: shape.hotspot_x,
            y: shape.hotspot_y,
            width,
            height,
            payload: RectPayload::Cursor { pixels, mask },
        }))
    }
}

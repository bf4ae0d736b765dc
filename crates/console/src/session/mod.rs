//! One viewer connection after the RFB handshake, as a pure state machine: what was
//! negotiated, what the viewer's messages mean, and what to send it next.
//!
//! ```text
//!  viewer --ClientMessage--> handle_message --> [Input(event)]    -> the input journal
//!                                           \-> [Reply(message)]  -> write to the viewer now
//!                                           \-> [CutText(text)]   -> the clipboard
//!                                           \-> Err(SessionError) -> close this viewer
//!  QEMU --Change--> handle_screen_change (marks damage, pseudo-rects due)
//!  shell, when the viewer's socket has room:
//!     poll_update(&screen) -> UpdatePlan --encode_update--> FramebufferUpdate -> viewer
//! ```
//!
//! Extensions, each answered the way rfbproto describes and TigerVNC 1.12 / noVNC expect:
//!
//! ```text
//!  SetEncodings lists    first listing                         later
//!  -313 ContUpdates      Reply(EndOfContinuousUpdates)          EnableContinuousUpdates ok
//!  -312 Fence            Reply(Fence request, announces)        client Fence+Request: echo
//!  -308 ExtDesktopSize   layout rect (reason 0, status 0) due   SetDesktopSize: status 1
//!  -258 QEMU ext key     ack rect due (on every listing)        255/0 keys accepted
//!  -261 / VMware LEDs    LED rect due                           on every LED change
//!  -239 Cursor           cursor rect due                        on every cursor change
//! ```
//!
//! While continuous updates are on, incremental requests are ignored and updates flow
//! whenever there is damage; the shell only polls when the viewer's socket has room, so a
//! slow viewer just accumulates (bounded) damage. Updates cover the whole screen's damage
//! whatever area a request names (as QEMU does).

mod state;
mod update;

pub use state::{SessionRestoreError, SessionState, SESSION_STATE_VERSION};
pub use update::{LedKind, PlanItem, UpdatePlan};

use crate::journal::{Button, InputEvent, ViewerId};
use crate::screen::{Area, Damage};
use rfb::framebuffer::{ApplyError, UpdateEncoder};
use rfb::{ClientMessage, Encoding, Fence, PixelFormat, ServerMessage, Version};

/// Fence flags rfbproto defines and dmore honours: BlockBefore, BlockAfter, SyncNext. The
/// session handles messages strictly in order, so all three hold by construction.
pub const FENCE_SUPPORTED: u32 = 0b111;
/// The Fence flag asking the peer to answer.
pub const FENCE_REQUEST: u32 = 1 << 31;
/// Most encodings kept from one SetEncodings (the rest are ignored).
pub const MAX_ENCODINGS: usize = 256;
/// ExtendedDesktopSize status: the resize is administratively prohibited (rfbproto).
pub const RESIZE_PROHIBITED: u16 = 1;

/// What the handshake settled, and the console's configuration for this viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The RFB version spoken.
    pub version: Version,
    /// ClientInit's shared flag (the console decides what a non-shared viewer does to others).
    pub shared: bool,
    /// The viewer's input is ignored (console configuration).
    pub view_only: bool,
    /// The framebuffer size ServerInit announced.
    pub width: u16,
    /// See `width`.
    pub height: u16,
}

/// What handling a viewer message asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Input for the journal (never for view-only viewers).
    Input(InputEvent),
    /// A message to write to this viewer now, before any later update.
    Reply(ServerMessage),
    /// The viewer's clipboard (Latin-1), for the guest or the other viewers.
    CutText(Vec<u8>),
}

/// Why a viewer must be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// SetPixelFormat named a format dmore cannot produce.
    #[error("the viewer asked for an unusable pixel format")]
    PixelFormat(#[source] ApplyError),
    /// The viewer used an extension it never negotiated.
    #[error("{message} without listing the {encoding:?} pseudo-encoding")]
    NotNegotiated {
        /// The message the viewer sent.
        message: &'static str,
        /// The pseudo-encoding that announces it.
        encoding: Encoding,
    },
    /// An update could not be encoded (the ZRLE stream is frozen or broken).
    #[error("encoding an update for the viewer")]
    Encode(#[source] ApplyError),
}

/// Pseudo-rectangles owed to the viewer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) resize: bool,
    /// An ExtendedDesktopSize (reason, status) that is not a resize.
    pub(crate) layout: Option<(u16, u16)>,
    pub(crate) cursor: bool,
    pub(crate) leds: bool,
    pub(crate) ext_key_ack: bool,
}

/// Sticky facts about what the viewer listed at some point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) continuous_updates: bool,
    pub(crate) fence: bool,
    pub(crate) ext_desktop_size: bool,
    pub(crate) ext_key: bool,
    pub(crate) leds: bool,
    pub(crate) cursor: bool,
}

/// One viewer's session. See the module docs for the call order.
#[derive(Debug)]
pub struct Session {
    pub(crate) id: ViewerId,
    pub(crate) negotiated: Negotiated,
    pub(crate) pixel_format: PixelFormat,
    pub(crate) encodings: Vec<Encoding>,
    pub(crate) encoder: UpdateEncoder,
    pub(crate) damage: Damage,
    /// The framebuffer size the viewer believes in.
    pub(crate) size: (u16, u16),
    /// A FramebufferUpdateRequest waits for an answer.
    pub(crate) requested: bool,
    /// Answer it even if there is nothing to send (a non-incremental request).
    pub(crate) force: bool,
    pub(crate) continuous: Option<Area>,
    pub(crate) seen: Seen,
    pub(crate) due: Due,
    pub(crate) buttons: u8,
    pub(crate) pointer: Option<(u16, u16)>,
}

impl Session {
    /// The session of a viewer whose handshake just finished. Its pixel format is the one
    /// ServerInit announced ([`PixelFormat::RGBX32_LE`]), and the whole screen is owed to it.
    pub fn new(id: ViewerId, negotiated: Negotiated) -> Self {
        Session {
            id,
            negotiated,
            pixel_format: PixelFormat::RGBX32_LE,
            encodings: Vec::new(),
            encoder: UpdateEncoder::new(),
            damage: Damage::new(negotiated.width, negotiated.height, true),
            size: (negotiated.width, negotiated.height),
            requested: false,
            force: false,
            continuous: None,
            seen: Seen::default(),
            due: Due::default(),
            buttons: 0,
            pointer: None,
        }
    }

    /// The viewer's id.
    pub fn id(&self) -> ViewerId {
        self.id
    }

    /// What the handshake settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The viewer's pixel format.
    pub fn pixel_format(&self) -> PixelFormat {
        self.pixel_format
    }

    /// The viewer's encodings, as last listed.
    pub fn encodings(&self) -> &[Encoding] {
        &self.encodings
    }

    /// Whether continuous updates are on, and for which area.
    pub fn continuous_updates(&self) -> Option<Area> {
        self.continuous
    }

    /// The pending damage (for tests and memory accounting).
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// Whether the viewer listed this (pseudo-)encoding in its last SetEncodings.
    pub fn accepts(&self, e: Encoding) -> bool {
        self.encodings.contains(&e)
    }

    /// Handles one message from the viewer, in order.
    pub fn handle_message(
        &mut self,
        msg: ClientMessage,
    ) -> Result<Vec<SessionOutput>, SessionError> {
        let mut out = Vec::new();
        match msg {
            ClientMessage::SetPixelFormat(pf) => {
                self.encoder
                    .set_pixel_format(pf)
                    .map_err(SessionError::PixelFormat)?;
                self.pixel_format = pf;
                // The cursor's pixels are in the viewer's format: send them anew.
                self.due.cursor |= self.accepts(Encoding::Cursor);
            }
            ClientMessage::SetEncodings(list) => self.set_encodings(list, &mut out),
            ClientMessage::FramebufferUpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                if !incremental {
                    self.damage.mark(Area::new(x, y, width, height));
                    self.requested = true;
                    self.force = true;
                } else if self.continuous.is_none() {
                    self.requested = true;
                }
            }
            ClientMessage::EnableContinuousUpdates {
                enable,
                x,
                y,
                width,
                height,
            } => {
                if !self.seen.continuous_updates {
                    return Err(SessionError::NotNegotiated {
                        message: "EnableContinuousUpdates",
                        encoding: Encoding::ContinuousUpdates,
                    });
                }
                if enable {
                    self.continuous = Some(Area::new(x, y, width, height));
                } else {
                    self.continuous = None;
                    out.push(SessionOutput::Reply(ServerMessage::EndOfContinuousUpdates));
                }
            }
            ClientMessage::Fence(f) => {
                if f.flags & FENCE_REQUEST != 0 {
                    out.push(SessionOutput::Reply(ServerMessage::Fence(Fence {
                        flags: f.flags & FENCE_SUPPORTED,
                        payload: f.payload,
                    })));
                }
                // A Fence without the request flag answers ours: nothing waits on it.
            }
            ClientMessage::SetDesktopSize { .. } => {
                // Its answer is an ExtendedDesktopSize rectangle: the current list must have it.
                if !self.accepts(Encoding::ExtendedDesktopSize) {
                    return Err(SessionError::NotNegotiated {
                        message: "SetDesktopSize",
                        encoding: Encoding::ExtendedDesktopSize,
                    });
                }
                // The VM decides its size: reason 1 (this client asked), status 1.
                self.due.layout = Some((1, RESIZE_PROHIBITED));
            }
            ClientMessage::KeyEvent { down, keysym } => self.input(
                &mut out,
                InputEvent::Key {
                    down,
                    keysym,
                    scancode: None,
                },
            ),
            ClientMessage::QemuExtendedKeyEvent {
                down,
                keysym,
                keycode,
            } => {
                if !self.seen.ext_key {
                    return Err(SessionError::NotNegotiated {
                        message: "QEMU extended key event",
                        encoding: Encoding::QemuExtendedKeyEvent,
                    });
                }
                let scancode = u16::try_from(keycode).ok().filter(|c| *c != 0);
                self.input(
                    &mut out,
                    InputEvent::Key {
                        down,
                        keysym,
                        scancode,
                    },
                );
            }
            ClientMessage::PointerEvent { buttons, x, y } => self.pointer(&mut out, buttons, x, y),
            ClientMessage::ClientCutText(text) => {
                if !self.negotiated.view_only {
                    out.push(SessionOutput::CutText(text));
                }
            }
            // dmore never offers audio; decoded only to stay in step.
            ClientMessage::QemuAudio(_) => {}
        }
        Ok(out)
    }

    fn set_encodings(&mut self, mut list: Vec<Encoding>, out: &mut Vec<SessionOutput>) {
        list.truncate(MAX_ENCODINGS);
        self.encoder.set_encodings(&list);
        self.encodings = list;
        let has = |e| self.encodings.contains(&e);
        if has(Encoding::ContinuousUpdates) && !self.seen.continuous_updates {
            self.seen.continuous_updates = true;
            out.push(SessionOutput::Reply(ServerMessage::EndOfContinuousUpdates));
        }
        if has(Encoding::Fence) && !self.seen.fence {
            self.seen.fence = true;
            out.push(SessionOutput::Reply(ServerMessage::Fence(Fence {
                flags: FENCE_REQUEST,
                payload: Vec::new(),
            })));
        }
        if has(Encoding::ExtendedDesktopSize) && !self.seen.ext_desktop_size {
            self.seen.ext_desktop_size = true;
            self.due.layout.get_or_insert((0, 0));
        }
        if has(Encoding::QemuExtendedKeyEvent) {
            self.seen.ext_key = true;
            self.due.ext_key_ack = true;
        }
        let leds = has(Encoding::QemuLedState) || has(Encoding::VmwareLedState);
        if leds && !self.seen.leds {
            self.seen.leds = true;
            self.due.leds = true;
        }
        if has(Encoding::Cursor) && !self.seen.cursor {
            self.seen.cursor = true;
            self.due.cursor = true;
        }
    }

    fn input(&mut self, out: &mut Vec<SessionOutput>, event: InputEvent) {
        if !self.negotiated.view_only {
            out.push(SessionOutput::Input(event));
        }
    }

    /// Motion first (so a click lands where the pointer now is), then one event per button
    /// whose bit changed.
    fn pointer(&mut self, out: &mut Vec<SessionOutput>, buttons: u8, x: u16, y: u16) {
        if self.negotiated.view_only {
            return;
        }
        if self.pointer != Some((x, y)) {
            self.pointer = Some((x, y));
            out.push(SessionOutput::Input(InputEvent::Motion { x, y }));
        }
        for button in BUTTONS {
            let bit = button.rfb_mask();
            if (self.buttons ^ buttons) & bit != 0 {
                out.push(SessionOutput::Input(InputEvent::Button {
                    down: buttons & bit != 0,
                    button,
                }));
            }
        }
        // Bit 7 has no button; it is kept out of the state.
        self.buttons = buttons & 0x7f;
    }
}

const BUTTONS: [Button; 7] = [
    Button::Left,
    Button::Middle,
    Button::Right,
    Button::WheelUp,
    Button::WheelDown,
    Button::WheelLeft,
    Button::WheelRight,
];

//! A viewer session's snapshot: everything negotiated, owed and pending, and where its zlib
//! streams (ZRLE's, Zlib's) stand.

use super::{Due, Negotiated, Seen, Session, MAX_ENCODINGS};
use crate::journal::ViewerId;
use crate::screen::{Area, Damage};
use rfb::framebuffer::{EncoderStreams, UpdateEncoder};
use rfb::{Encoding, PixelFormat, Version};
use serde::{Deserialize, Serialize};

/// Version of [`SessionState`]'s layout; [`Session::restore`] refuses any other. Version 3:
/// the damage bitmap holds 16 pixels of one line per bit (64x64 tiles before).
pub const SESSION_STATE_VERSION: u32 = 3;

/// A session's whole state, serde-serialisable. Made by [`Session::freeze`], consumed by
/// [`Session::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    version: u32,
    id: ViewerId,
    /// RFB minor version: 3, 7 or 8.
    rfb_minor: u8,
    shared: bool,
    view_only: bool,
    init_size: (u16, u16),
    pixel_format: PixelFormat,
    /// Encoding numbers as the viewer listed them.
    encodings: Vec<i32>,
    /// The zlib streams: ZRLE's (version 1), and Zlib's (version 2 on).
    streams: EncoderStreams,
    damage: Damage,
    size: (u16, u16),
    requested: bool,
    force: bool,
    continuous: Option<Area>,
    /// Sticky listings: continuous updates, fence, ext desktop size, ext key, LEDs, cursor.
    seen: [bool; 6],
    /// Owed: resize, cursor, LEDs, ext key ack; and an ExtendedDesktopSize (reason, status).
    due: [bool; 4],
    due_layout: Option<(u16, u16)>,
    buttons: u8,
    pointer: Option<(u16, u16)>,
}

impl SessionState {
    /// The viewer this state belongs to.
    pub fn id(&self) -> ViewerId {
        self.id
    }
}

/// A session snapshot that cannot be taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRestoreError {
    /// Made by another version of dmore.
    #[error("session state version {found}, this dmore reads version {expected}")]
    Version {
        /// In the snapshot.
        found: u32,
        /// Understood here.
        expected: u32,
    },
    /// Contents that no session could have frozen.
    #[error("invalid session state: {0}")]
    Invalid(&'static str),
}

impl Session {
    /// Snapshots the session and freezes its encoder: [`Session::encode_update`] fails from
    /// here on until [`Session::thaw`], so the snapshot stays its zlib streams' true end.
    pub fn freeze(&mut self) -> SessionState {
        let streams = self.encoder.freeze();
        let s = self.seen;
        let d = self.due;
        SessionState {
            version: SESSION_STATE_VERSION,
            id: self.id,
            rfb_minor: match self.negotiated.version {
                Version::V3_3 => 3,
                Version::V3_7 => 7,
                Version::V3_8 => 8,
            },
            shared: self.negotiated.shared,
            view_only: self.negotiated.view_only,
            init_size: (self.negotiated.width, self.negotiated.height),
            pixel_format: self.pixel_format,
            encodings: self.encodings.iter().map(|e| i32::from(*e)).collect(),
            streams,
            damage: self.damage.clone(),
            size: self.size,
            requested: self.requested,
            force: self.force,
            continuous: self.continuous,
            seen: [
                s.continuous_updates,
                s.fence,
                s.ext_desktop_size,
                s.ext_key,
                s.leds,
                s.cursor,
            ],
            due: [d.resize, d.cursor, d.leds, d.ext_key_ack],
            due_layout: d.layout,
            buttons: self.buttons,
            pointer: self.pointer,
        }
    }

    /// Allows Tight JPEG to this viewer if it asks with a quality level (a console's setting,
    /// not the viewer's: set anew on a restored session).
    pub fn set_lossy(&mut self, lossy: bool) {
        self.encoder.set_lossy(lossy);
    }

    /// Lets a frozen session go on with its own zlib streams (the migration did not happen).
    pub fn thaw(&mut self) {
        self.encoder.thaw();
    }

    /// Rebuilds a session from a snapshot (on the destination). Its zlib streams continue the
    /// frozen ones with fresh raw deflate compressors (see `rfb::encoding::zstream`).
    pub fn restore(state: SessionState) -> Result<Session, SessionRestoreError> {
        if state.version != SESSION_STATE_VERSION {
            return Err(SessionRestoreError::Version {
                found: state.version,
                expected: SESSION_STATE_VERSION,
            });
        }
        let version = match state.rfb_minor {
            3 => Version::V3_3,
            7 => Version::V3_7,
            8 => Version::V3_8,
            _ => return Err(SessionRestoreError::Invalid("unknown RFB version")),
        };
        if state.encodings.len() > MAX_ENCODINGS {
            return Err(SessionRestoreError::Invalid("too many encodings"));
        }
        state
            .damage
            .validate()
            .map_err(SessionRestoreError::Invalid)?;
        let encodings: Vec<Encoding> = state.encodings.iter().map(|n| Encoding::from(*n)).collect();
        let mut encoder = UpdateEncoder::new();
        encoder
            .set_pixel_format(state.pixel_format)
            .map_err(|_| SessionRestoreError::Invalid("unusable pixel format"))?;
        encoder.set_encodings(&encodings);
        encoder.resume(&state.streams);
        let [continuous_updates, fence, ext_desktop_size, ext_key, leds, cursor] = state.seen;
        let [resize, due_cursor, due_leds, ext_key_ack] = state.due;
        Ok(Session {
            id: state.id,
            negotiated: Negotiated {
                version,
                shared: state.shared,
                view_only: state.view_only,
                width: state.init_size.0,
                height: state.init_size.1,
            },
            pixel_format: state.pixel_format,
            encodings,
            encoder,
            damage: state.damage,
            size: state.size,
            requested: state.requested,
            force: state.force,
            continuous: state.continuous,
            seen: Seen {
                continuous_updates,
                fence,
                ext_desktop_size,
                ext_key,
                leds,
                cursor,
            },
            due: Due {
                resize,
                layout: state.due_layout,
                cursor: due_cursor,
                leds: due_leds,
                ext_key_ack,
            },
            buttons: state.buttons,
            pointer: state.pointer,
        })
    }
}

//! Sans-I/O RFB (the VNC protocol, RFC 6143), for both roles.
//!
//! dmore is an RFB server to its viewers and an RFB client of QEMU's built-in VNC server, so
//! every message here both encodes and decodes. Nothing in this crate touches a socket or a
//! clock: callers feed bytes in and take typed messages and bytes out.
//!
//! - [`ServerHandshake`] / [`ClientHandshake`]: versions 3.3, 3.7, 3.8; None and VNC
//!   Authentication.
//! - [`ClientMessage`] / [`ServerMessage`]: every message, `encode` and `decode`.
//! - [`ClientMessageDecoder`] / [`ServerMessageDecoder`]: the message stream after the
//!   handshake, fed in chunks of any size.
//! - [`Limits`]: every length a peer announces is checked before anything is allocated.
#![warn(missing_docs)]

mod client_msg;
mod common;
mod decoder;
pub mod encoding;
mod encoding_type;
mod error;
pub mod framebuffer;
pub mod handshake;
mod limits;
pub mod pixel_format;
mod rect;
pub mod scratch;
mod security;
mod server_msg;
pub mod translate;
mod version;
mod wire;

pub use client_msg::{ClientMessage, QemuAudio};
pub use common::{Colour, Fence, Screen, MAX_FENCE_PAYLOAD};
pub use decoder::{ClientMessageDecoder, ServerMessageDecoder};
pub use encoding_type::Encoding;
pub use error::{HandshakeError, MessageError};
pub use handshake::{
    ClientConfig, ClientDone, ClientHandshake, Password, ServerConfig, ServerDone, ServerHandshake,
    ServerInit,
};
pub use limits::Limits;
pub use pixel_format::PixelFormat;
pub use rect::{RectPayload, Rectangle};
pub use security::{vnc_auth_response, SecurityType, CHALLENGE_LEN};
pub use server_msg::ServerMessage;
pub use version::{Version, VERSION_LEN};

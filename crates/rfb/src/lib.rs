//! Sans-I/O RFB (the VNC protocol, RFC 6143), for both roles.
//!
//! dmore is an RFB server to its viewers and an RFB client of QEMU's built-in VNC server, so
//! every message here both encodes and decodes. Nothing in this crate touches a socket or a
//! clock: callers feed bytes in and take typed messages and bytes out.
#![warn(missing_docs)]

pub mod encoding;
pub mod pixel_format;
pub mod translate;

pub use pixel_format::PixelFormat;

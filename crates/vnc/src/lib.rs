//! RFB over tokio streams: the thin I/O shell around the sans-I/O [`rfb`] crate.
//!
//! - [`client`]: a VNC client that runs the handshake, keeps the server's framebuffer up to
//!   date and sends input — dmore's back end on QEMU's VNC socket, and the scripted viewers of
//!   the tests and the demo.
//! - [`server`]: one viewer's connection to a server built on [`rfb`] — the handshake, the
//!   viewer's messages, and updates in the viewer's own pixel format and encodings.
//!
//! Each side is split into a reader and a writer so one task can `select!` over inbound
//! messages and outbound work; every `read_*` method is cancel-safe.
#![warn(missing_docs)]

pub mod client;
mod handshake;
pub mod server;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a VNC connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("VNC connection I/O failed")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the VNC peer closed the connection")]
    Closed,
    /// The handshake failed (wrong password, unsupported security type, bad bytes...).
    #[error("RFB handshake failed")]
    Handshake(#[from] rfb::HandshakeError),
    /// The peer sent a malformed message.
    #[error("malformed RFB message")]
    Message(#[from] rfb::MessageError),
    /// A rectangle could not be applied or encoded.
    #[error("bad framebuffer update")]
    Update(#[from] rfb::framebuffer::ApplyError),
}

/// Reads more bytes from `reader` into `buf` (cancel-safe: a cancelled read loses nothing).
/// End of stream is [`Error::Closed`].
async fn read_more<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    match reader.read(buf).await? {
        0 => Err(Error::Closed),
        n => Ok(n),
    }
}

/// Size of the read buffer of each connection.
const READ_CHUNK: usize = 64 * 1024;

//! The RFB handshakes (RFC 6143 §7.1–§7.3), one sans-I/O state machine per role.
//!
//! ```text
//!  server                                   client
//!  ProtocolVersion ───────────────────────>
//!                  <─────────────────────── ProtocolVersion (min of both is spoken)
//!  3.3: security type (u32) ──────────────>            (the server decides)
//!  3.7+: security types (u8 n, n × u8) ───>
//!                  <─────────────────────── chosen type (3.7+)
//!  VncAuth: 16-byte challenge ────────────>
//!                  <─────────────────────── 16-byte DES response
//!  SecurityResult (u32, 3.8: + reason) ───>  (3.8 always; 3.3/3.7 after VncAuth only)
//!                  <─────────────────────── ClientInit (shared flag)
//!  ServerInit ────────────────────────────>  done on both sides
//! ```
//!
//! Both machines are driven the same way: [`feed`](ServerHandshake::feed) received bytes,
//! send whatever [`poll_output`](ServerHandshake::poll_output) yields, and take the outcome
//! from `poll_done` once it is there. Bytes the peer sent beyond the handshake (a client
//! pipelining SetEncodings after ClientInit) are kept in the outcome's `leftover`, to feed to
//! the message decoder. After an error, `poll_output` may still hold the failure notice to
//! send before closing (a failed SecurityResult).
//!
//! ```
//! use rfb::*;
//! let init = ServerInit { width: 720, height: 400, pixel_format: PixelFormat::RGBX32_LE, name: "vm".into() };
//! let mut server = ServerHandshake::new(ServerConfig {
//!     version: Version::V3_8,
//!     security: vec![SecurityType::VncAuth],
//!     password: Some(Password(b"secret".to_vec())),
//!     challenge: [42; 16], // from the caller's RNG
//!     init: init.clone(),
//! })?;
//! let mut client = ClientHandshake::new(ClientConfig {
//!     version: Version::V3_8,
//!     security: vec![SecurityType::VncAuth],
//!     password: Some(Password(b"secret".to_vec())),
//!     shared: true,
//!     limits: Limits::default(),
//! });
//! // In real use each side reads and writes a socket; here bytes go straight across.
//! while !(server.is_done() && client.is_done()) {
//!     while let Some(bytes) = server.poll_output() { client.feed(&bytes)?; }
//!     while let Some(bytes) = client.poll_output() { server.feed(&bytes)?; }
//! }
//! assert_eq!(client.poll_done().unwrap().server_init, init);
//! assert!(server.poll_done().unwrap().shared);
//! # Ok::<(), HandshakeError>(())
//! ```

mod client;
mod server;

pub use client::{ClientConfig, ClientDone, ClientHandshake};
pub use server::{ServerConfig, ServerDone, ServerHandshake};

use crate::error::HandshakeError;
use crate::limits::Limits;
use crate::wire::{len_usize, put_len_u32, Parse, Reader, Stop};
use crate::PixelFormat;

/// A VNC password. Only its first 8 bytes count (RFC 6143 §7.2.2). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Vec<u8>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The ServerInit message (RFC 6143 §7.3.2): what the client learns about the desktop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerInit {
    /// Framebuffer width.
    pub width: u16,
    /// Framebuffer height.
    pub height: u16,
    /// The server's natural pixel format.
    pub pixel_format: PixelFormat,
    /// Desktop name (decoded as UTF-8, invalid sequences replaced).
    pub name: String,
}

impl ServerInit {
    /// Appends the message's wire bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.width.to_be_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.pixel_format.to_bytes());
        put_string(out, &self.name);
    }

    fn parse(r: &mut Reader<'_>, limits: &Limits) -> Parse<ServerInit, HandshakeError> {
        let (width, height) = (r.u16()?, r.u16()?);
        if width > limits.max_dimension || height > limits.max_dimension {
            return Err(Stop::Invalid(HandshakeError::FramebufferTooLarge {
                width,
                height,
                limit: limits.max_dimension,
            }));
        }
        let pixel_format = PixelFormat::from_bytes(&r.array()?);
        let name = parse_string(r, limits)?;
        Ok(ServerInit {
            width,
            height,
            pixel_format,
            name,
        })
    }
}

/// SecurityResult values (RFC 6143 §7.1.3).
const RESULT_OK: u32 = 0;
const RESULT_FAILED: u32 = 1;

/// Writes a u32-length-prefixed string (reasons, desktop names); cut off at `u32::MAX` bytes.
fn put_string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let b = b.get(..len_usize(u32::MAX)).unwrap_or(b);
    put_len_u32(out, b.len());
    out.extend_from_slice(b);
}

/// Reads a u32-length-prefixed string, checked against [`Limits::max_name`].
fn parse_string(r: &mut Reader<'_>, limits: &Limits) -> Parse<String, HandshakeError> {
    let len = r.u32()?;
    let n = len_usize(len);
    if n > limits.max_name {
        return Err(Stop::Invalid(HandshakeError::StringTooLong {
            len,
            limit: limits.max_name,
        }));
    }
    Ok(String::from_utf8_lossy(r.take(n)?).into_owned())
}

/// Bytes in, bytes out, and where the handshake stands: what both roles share.
#[derive(Debug)]
struct Io<D> {
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    end: End<D>,
}

/// Whether a handshake still runs, has finished with its outcome waiting, or is over (failed,
/// or its outcome was taken).
#[derive(Debug)]
enum End<D> {
    Running,
    Done(D),
    Over,
}

/// A handshake's outcome, which carries the peer's bytes that followed the handshake.
trait Outcome {
    fn leftover_mut(&mut self) -> &mut Vec<u8>;
}

impl<D> Default for Io<D> {
    fn default() -> Self {
        Io {
            inbox: Vec::new(),
            outbox: Vec::new(),
            end: End::Running,
        }
    }
}

impl<D: Outcome> Io<D> {
    /// Adds received bytes and runs `step` on them until it needs more, finishes, or fails;
    /// bytes fed after the end go to the outcome's `leftover`. An error ends the handshake.
    fn feed(
        &mut self,
        data: &[u8],
        step: impl FnMut(&mut Reader<'_>, &mut Vec<u8>) -> Parse<Option<D>, HandshakeError>,
    ) -> Result<(), HandshakeError> {
        match &mut self.end {
            End::Over => return Err(HandshakeError::Over),
            End::Done(done) => {
                done.leftover_mut().extend_from_slice(data);
                return Ok(());
            }
            End::Running => self.inbox.extend_from_slice(data),
        }
        match self.drive(step) {
            Ok(Some(mut done)) => {
                *done.leftover_mut() = std::mem::take(&mut self.inbox);
                self.end = End::Done(done);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.end = End::Over;
                Err(e)
            }
        }
    }

    fn poll_output(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    fn is_done(&self) -> bool {
        matches!(self.end, End::Done(_))
    }

    fn poll_done(&mut self) -> Option<D> {
        match std::mem::replace(&mut self.end, End::Over) {
            End::Done(done) => Some(done),
            other => {
                self.end = other;
                None
            }
        }
    }

    /// Runs `step` on the received bytes until it needs more, finishes (`Some`), or fails;
    /// consumes what each successful step read.
    fn drive(
        &mut self,
        mut step: impl FnMut(&mut Reader<'_>, &mut Vec<u8>) -> Parse<Option<D>, HandshakeError>,
    ) -> Result<Option<D>, HandshakeError> {
        loop {
            let mut r = Reader::new(&self.inbox);
            match step(&mut r, &mut self.outbox) {
                Ok(done) => {
                    let n = r.pos();
                    self.inbox.drain(..n);
                    if done.is_some() {
                        return Ok(done);
                    }
                }
                Err(Stop::Incomplete(_)) => return Ok(None),
                Err(Stop::Invalid(e)) => return Err(e),
            }
        }
    }
}

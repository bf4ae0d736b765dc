//! Stream decoders: bytes in, in chunks of any size; whole messages out, one at a time.
//!
//! ```text
//!   feed(&[u8]) ──> [ buffer ] ──> next_message() ─> Ok(Some(msg))   a whole message
//!                                                 └> Ok(None)        wait for more bytes
//!                                                 └> Err(e)          stream unusable
//! ```
//!
//! A partial message is never consumed: bytes stay buffered until the whole message is there.
//! An error is sticky in effect — the same bytes fail again — since RFB cannot resynchronise.

use crate::client_msg::ClientMessage;
use crate::error::MessageError;
use crate::limits::Limits;
use crate::server_msg::ServerMessage;
use crate::wire::{Parse, Reader, Stop};
use crate::PixelFormat;

/// Received bytes not yet decoded, and how many are needed before a retry can succeed.
#[derive(Debug, Default, Clone)]
struct Pending {
    buf: Vec<u8>,
    start: usize,
    /// Total pending bytes the last attempt needed; no retry until that many are there.
    need: usize,
}

impl Pending {
    fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn next<T>(
        &mut self,
        parse: impl FnOnce(&mut Reader<'_>) -> Parse<T>,
    ) -> Result<Option<T>, MessageError> {
        let bytes = self.bytes();
        if bytes.is_empty() || bytes.len() < self.need {
            return Ok(None);
        }
        let mut r = Reader::new(bytes);
        match parse(&mut r) {
            Ok(msg) => {
                self.start += r.pos();
                self.need = 0;
                if self.start >= self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                    crate::scratch::release_large(&mut self.buf);
                }
                Ok(Some(msg))
            }
            Err(Stop::Incomplete(need)) => {
                self.need = need;
                Ok(None)
            }
            Err(Stop::Invalid(e)) => Err(e),
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let rest = self.bytes().to_vec();
        *self = Pending::default();
        rest
    }
}

/// Client side: decodes what a server sends ([`ServerMessage`]). Raw and Cursor payload
/// lengths depend on the pixel format, so the decoder must be told whenever the client sends
/// SetPixelFormat ([`set_pixel_format`](Self::set_pixel_format)).
#[derive(Debug, Clone)]
pub struct ServerMessageDecoder {
    pending: Pending,
    pixel_format: PixelFormat,
    limits: Limits,
}

impl ServerMessageDecoder {
    /// A decoder for a server whose pixels come in `pixel_format` (ServerInit's, at first).
    pub fn new(pixel_format: PixelFormat, limits: Limits) -> Self {
        ServerMessageDecoder {
            pending: Pending::default(),
            pixel_format,
            limits,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.feed(data);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<ServerMessage>, MessageError> {
        let (pf, limits) = (self.pixel_format, self.limits);
        self.pending.next(|r| ServerMessage::parse(r, &pf, &limits))
    }

    /// Sets the pixel format for messages not yet decoded: call it when sending SetPixelFormat
    /// (the server switches at that point in the stream).
    pub fn set_pixel_format(&mut self, pixel_format: PixelFormat) {
        self.pixel_format = pixel_format;
        self.pending.need = 0;
    }

    /// The pixel format in use.
    pub fn pixel_format(&self) -> PixelFormat {
        self.pixel_format
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        self.pending.bytes()
    }

    /// Removes and returns the bytes not yet decoded (e.g. to hand the stream over).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.pending.take()
    }
}

/// Server side: decodes what a client sends ([`ClientMessage`]).
#[derive(Debug, Clone)]
pub struct ClientMessageDecoder {
    pending: Pending,
    limits: Limits,
}

impl ClientMessageDecoder {
    /// A decoder applying `limits`.
    pub fn new(limits: Limits) -> Self {
        ClientMessageDecoder {
            pending: Pending::default(),
            limits,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.feed(data);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>, MessageError> {
        let limits = self.limits;
        self.pending.next(|r| ClientMessage::parse(r, &limits))
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        self.pending.bytes()
    }

    /// Removes and returns the bytes not yet decoded (e.g. to hand the stream over).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.pending.take()
    }
}

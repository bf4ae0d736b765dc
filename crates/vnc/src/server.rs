//! One viewer's connection to a server built on [`rfb`]: the handshake, then a reader of the
//! viewer's messages and a writer of updates in the viewer's own format and encodings.
//!
//! ```text
//!  accept(stream, config) ── handshake ──┐
//!      ┌─────────────────────────────────┘
//!      ├─> ViewerReader::read_message()    SetPixelFormat / SetEncodings / requests / input
//!      │        │ every message goes through ViewerWriter::observe() first,
//!      │        v so pixel format and encodings change at the right point
//!      └─> ViewerWriter::send_update(fb, rects)
//! ```

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use rfb::framebuffer::{Framebuffer, UpdateEncoder};
use rfb::{
    ClientMessage, Encoding, RectPayload, Rectangle, ServerConfig, ServerDone, ServerHandshake,
    ServerMessage,
};

use crate::{handshake, read_more, Error, READ_CHUNK};

/// Runs the server handshake over `stream` and splits the connection.
pub async fn accept<S>(
    mut stream: S,
    config: ServerConfig,
) -> Result<(ServerDone, ViewerReader<S>, ViewerWriter<S>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let machine = ServerHandshake::new(config)?;
    let done = handshake::run(&mut stream, machine).await?;
    let mut decoder = rfb::ClientMessageDecoder::new(rfb::Limits::DEFAULT);
    decoder.feed(&done.leftover);
    let (read, write) = tokio::io::split(stream);
    Ok((
        done,
        ViewerReader {
            read,
            decoder,
            buf: vec![0; READ_CHUNK],
        },
        ViewerWriter {
            write,
            encoder: UpdateEncoder::new(),
            out: Vec::new(),
        },
    ))
}

/// The receiving half: the viewer's messages.
pub struct ViewerReader<S> {
    read: ReadHalf<S>,
    decoder: rfb::ClientMessageDecoder,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> ViewerReader<S> {
    /// The viewer's next message. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<ClientMessage, Error> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(message);
            }
            let n = read_more(&mut self.read, &mut self.buf).await?;
            self.decoder.feed(&self.buf[..n]);
        }
    }
}

/// The sending half: updates for this viewer, encoded as it asked.
pub struct ViewerWriter<S> {
    write: WriteHalf<S>,
    encoder: UpdateEncoder,
    out: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> ViewerWriter<S> {
    /// Takes note of a message from the viewer that changes how it must be sent to
    /// (SetPixelFormat, SetEncodings). Call it for every message, in order.
    pub fn observe(&mut self, message: &ClientMessage) -> Result<(), Error> {
        match message {
            ClientMessage::SetPixelFormat(pf) => self.encoder.set_pixel_format(*pf)?,
            ClientMessage::SetEncodings(list) => self.encoder.set_encodings(list),
            _ => {}
        }
        Ok(())
    }

    /// Whether the viewer listed this (pseudo-)encoding.
    pub fn accepts(&self, encoding: Encoding) -> bool {
        self.encoder.accepts(encoding)
    }

    /// Sends one FramebufferUpdate holding these parts of `fb`, plus any pseudo-rectangles
    /// given in `pseudo` (sent first).
    pub async fn send_update(
        &mut self,
        fb: &Framebuffer,
        rects: &[(u16, u16, u16, u16)],
        pseudo: Vec<Rectangle>,
    ) -> Result<(), Error> {
        let mut all = pseudo;
        for &(x, y, width, height) in rects {
            all.push(self.encoder.encode(fb, x, y, width, height)?);
        }
        self.send(&ServerMessage::FramebufferUpdate(all)).await
    }

    /// Sends a DesktopSize pseudo-rectangle followed by the whole new framebuffer.
    pub async fn send_resize(&mut self, fb: &Framebuffer) -> Result<(), Error> {
        let resize = Rectangle {
            x: 0,
            y: 0,
            width: fb.width(),
            height: fb.height(),
            payload: RectPayload::DesktopSize,
        };
        self.send_update(fb, &[(0, 0, fb.width(), fb.height())], vec![resize])
            .await
    }

    /// Sends any server message.
    pub async fn send(&mut self, message: &ServerMessage) -> Result<(), Error> {
        self.out.clear();
        message.encode(&mut self.out);
        self.write.write_all(&self.out).await?;
        Ok(())
    }

    /// The encoder, for a freeze of its ZRLE stream.
    pub fn encoder_mut(&mut self) -> &mut UpdateEncoder {
        &mut self.encoder
    }
}

//! A VNC client: handshake, then a reader that keeps the server's framebuffer and a writer
//! that sends input and update requests.
//!
//! ```text
//!  connect(stream, config, setup) ── handshake ── SetPixelFormat, SetEncodings ──┐
//!      ┌─────────────────────────────────────────────────────────────────────────┘
//!      ├─> ClientReader::read_message()   applies each update to its Framebuffer
//!      └─> ClientWriter::send(&msg)       KeyEvent, PointerEvent, update requests, ...
//! ```

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use rfb::framebuffer::{Framebuffer, UpdateDecoder};
use rfb::{
    ClientConfig, ClientDone, ClientHandshake, ClientMessage, Encoding, PixelFormat, ServerMessage,
};

use crate::{handshake, read_more, Error, READ_CHUNK};

/// What the client asks for right after the handshake.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The pixel format to ask for (`None`: keep the server's).
    pub pixel_format: Option<PixelFormat>,
    /// Encodings to announce, most preferred first.
    pub encodings: Vec<Encoding>,
}

impl Default for Setup {
    /// ZRLE, CopyRect and Raw, the size and cursor pseudo-encodings, and QEMU's extended key
    /// events; 32-bit pixels in dmore's own format.
    fn default() -> Self {
        Setup {
            pixel_format: Some(PixelFormat::RGBX32_LE),
            encodings: vec![
                Encoding::Zrle,
                Encoding::CopyRect,
                Encoding::Raw,
                Encoding::DesktopSize,
                Encoding::Cursor,
                Encoding::QemuExtendedKeyEvent,
            ],
        }
    }
}

/// Runs the handshake over `stream`, announces `setup`, and splits the connection.
pub async fn connect<S>(
    mut stream: S,
    config: ClientConfig,
    setup: &Setup,
) -> Result<(ClientDone, ClientReader<S>, ClientWriter<S>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let done = handshake::run(&mut stream, ClientHandshake::new(config)).await?;
    let init = &done.server_init;
    let pixel_format = setup.pixel_format.unwrap_or(init.pixel_format);
    let mut hello = Vec::new();
    if setup.pixel_format.is_some() {
        ClientMessage::SetPixelFormat(pixel_format).encode(&mut hello);
    }
    ClientMessage::SetEncodings(setup.encodings.clone()).encode(&mut hello);
    stream.write_all(&hello).await?;

    let mut decoder = rfb::ServerMessageDecoder::new(pixel_format, rfb::Limits::DEFAULT);
    decoder.feed(&done.leftover);
    let (read, write) = tokio::io::split(stream);
    let reader = ClientReader {
        read,
        decoder,
        updates: UpdateDecoder::new(pixel_format)?,
        framebuffer: Framebuffer::new(init.width, init.height),
        buf: vec![0; READ_CHUNK],
    };
    let writer = ClientWriter {
        write,
        out: Vec::new(),
    };
    Ok((done, reader, writer))
}

/// The receiving half: decodes the server's messages and applies updates to the framebuffer.
pub struct ClientReader<S> {
    read: ReadHalf<S>,
    decoder: rfb::ServerMessageDecoder,
    updates: UpdateDecoder,
    framebuffer: Framebuffer,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> ClientReader<S> {
    /// The next message from the server. A FramebufferUpdate has already been applied to
    /// [`framebuffer`](Self::framebuffer) when it is returned. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<ServerMessage, Error> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                if let ServerMessage::FramebufferUpdate(rects) = &message {
                    for rect in rects {
                        self.updates.apply(&mut self.framebuffer, rect)?;
                    }
                }
                return Ok(message);
            }
            let n = read_more(&mut self.read, &mut self.buf).await?;
            self.decoder.feed(&self.buf[..n]);
        }
    }

    /// The framebuffer as the server has drawn it so far.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.framebuffer
    }

    /// The last cursor shape the server sent.
    pub fn cursor(&self) -> Option<&rfb::encoding::cursor::Cursor> {
        self.updates.cursor()
    }
}

/// The sending half.
pub struct ClientWriter<S> {
    write: WriteHalf<S>,
    out: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> ClientWriter<S> {
    /// Sends one message. (SetPixelFormat is [`Setup`]'s job: the reader must switch formats
    /// at the same point of the stream.)
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), Error> {
        self.send_all(std::slice::from_ref(message)).await
    }

    /// Sends several messages in one write.
    pub async fn send_all(&mut self, messages: &[ClientMessage]) -> Result<(), Error> {
        self.out.clear();
        for message in messages {
            message.encode(&mut self.out);
        }
        self.write.write_all(&self.out).await?;
        Ok(())
    }

    /// Asks for an update of the whole `width x height` framebuffer.
    pub async fn request_update(
        &mut self,
        incremental: bool,
        width: u16,
        height: u16,
    ) -> Result<(), Error> {
        self.send(&ClientMessage::FramebufferUpdateRequest {
            incremental,
            x: 0,
            y: 0,
            width,
            height,
        })
        .await
    }

    /// Shuts the connection down for writing (the server sees end of stream).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.write.shutdown().await?;
        Ok(())
    }
}

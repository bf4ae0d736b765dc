//! One viewer's connection to a server built on [`rfb`]: the handshake, then a reader of the
//! viewer's messages and a writer of server messages.
//!
//! ```text
//!  accept(stream, config) ── handshake ──┐
//!      ┌─────────────────────────────────┘
//!      ├─> ViewerReader::read_message()    SetPixelFormat / SetEncodings / requests / input
//!      └─> ViewerWriter::send(&msg)        FramebufferUpdate, Bell, fences, ...
//! ```

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use rfb::{ClientMessage, ServerConfig, ServerDone, ServerHandshake, ServerMessage};

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

/// The sending half. What to send (which rectangles, in which encoding) is the caller's
/// business: a console's viewer session, or a test server's [`rfb::framebuffer::UpdateEncoder`].
pub struct ViewerWriter<S> {
    write: WriteHalf<S>,
    out: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> ViewerWriter<S> {
    /// Sends one server message.
    pub async fn send(&mut self, message: &ServerMessage) -> Result<(), Error> {
        self.send_all(std::slice::from_ref(message)).await
    }

    /// Sends several server messages in one write.
    pub async fn send_all(&mut self, messages: &[ServerMessage]) -> Result<(), Error> {
        self.out.clear();
        for message in messages {
            message.encode(&mut self.out);
        }
        self.write.write_all(&self.out).await?;
        Ok(())
    }

    /// Shuts the connection down for writing (the viewer sees end of stream).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.write.shutdown().await?;
        Ok(())
    }
}

//! Drives either role's sans-I/O handshake over a stream.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{read_more, Error, READ_CHUNK};

/// The shape both of [`rfb`]'s handshake machines share.
pub(crate) trait Handshake {
    type Done;
    fn feed(&mut self, data: &[u8]) -> Result<(), rfb::HandshakeError>;
    fn poll_output(&mut self) -> Option<Vec<u8>>;
    fn poll_done(&mut self) -> Option<Self::Done>;
}

macro_rules! delegate {
    ($machine:ty, $done:ty) => {
        impl Handshake for $machine {
            type Done = $done;
            fn feed(&mut self, data: &[u8]) -> Result<(), rfb::HandshakeError> {
                <$machine>::feed(self, data)
            }
            fn poll_output(&mut self) -> Option<Vec<u8>> {
                <$machine>::poll_output(self)
            }
            fn poll_done(&mut self) -> Option<$done> {
                <$machine>::poll_done(self)
            }
        }
    };
}
delegate!(rfb::ClientHandshake, rfb::ClientDone);
delegate!(rfb::ServerHandshake, rfb::ServerDone);

/// Runs `machine` to completion over `stream`. On failure, whatever the machine still has to
/// say (a failed SecurityResult with its reason) is sent before the error is returned.
pub(crate) async fn run<H, S>(stream: &mut S, mut machine: H) -> Result<H::Done, Error>
where
    H: Handshake,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0; READ_CHUNK];
    loop {
        while let Some(out) = machine.poll_output() {
            stream.write_all(&out).await?;
        }
        if let Some(done) = machine.poll_done() {
            stream.flush().await?;
            return Ok(done);
        }
        let n = read_more(stream, &mut buf).await?;
        if let Err(e) = machine.feed(&buf[..n]) {
            while let Some(out) = machine.poll_output() {
                // Best effort: the peer may already be gone, and the handshake error matters more.
                let _ = stream.write_all(&out).await;
            }
            let _ = stream.flush().await;
            return Err(e.into());
        }
    }
}

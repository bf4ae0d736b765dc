//! One viewer's socket: the RFB handshake (with a full-access and a view-only password), then
//! a reader task and a writer task that do nothing but socket I/O for the hub.
//!
//! ```text
//!  Conn ── handshake ──┬─ reader task: bytes → ClientMessageDecoder → FromViewer ─▶ hub
//!                      └─ writer task: hub ─▶ Vec<ServerMessage> (channel of 1) → bytes
//!                                           and a `Written` token back once they are out
//! ```
//!
//! The hub stops reading a viewer simply by not polling its channel: the reader then blocks on
//! a full channel and stops reading the socket, and TCP pushes back on the viewer. Both tasks
//! hand their socket half back when stopped, so a freeze can pass the connection on, with the
//! bytes the reader had taken from the socket but not yet handed over ([`ReaderParts`]). The
//! connection is a TCP socket or a resumable session from the gateway ([`Conn`]).

use super::conn::{ConnRead, ConnWrite};
use super::Access;
use crate::journal::ViewerId;
use rfb::{
    ClientMessage, ClientMessageDecoder, HandshakeError, Limits, SecurityType, ServerConfig,
    ServerDone, ServerHandshake, ServerInit, ServerMessage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Messages decoded ahead of the hub, per viewer: small, so a viewer the hub stops reading
/// stalls within a few messages.
pub(crate) const FROM_VIEWER_QUEUE: usize = 4;
const READ_CHUNK: usize = 16 * 1024;

/// Why a viewer's connection ended or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The socket failed.
    #[error("viewer socket I/O failed")]
    Io(#[from] std::io::Error),
    /// The viewer closed the connection.
    #[error("the viewer closed the connection")]
    Closed,
    /// The handshake failed (wrong password, bad bytes, unsupported security type).
    #[error("RFB handshake with the viewer failed")]
    Handshake(#[source] HandshakeError),
    /// The viewer sent a malformed message.
    #[error("malformed message from the viewer")]
    Message(#[from] rfb::MessageError),
    /// The viewer's session refused a message (unusable pixel format, extension misuse).
    #[error("the viewer's session failed")]
    Session(#[from] crate::session::SessionError),
    /// The handshake took too long.
    #[error("the viewer did not finish the handshake in time")]
    HandshakeTimeout,
}

/// How a handshake ended: what was negotiated and whether the viewer is view-only.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) done: ServerDone,
    pub(crate) view_only: bool,
}

/// Runs the server handshake. With passwords configured, VNC Authentication is offered and
/// the response is checked against both: two handshake machines run in lockstep on the same
/// challenge (their output is identical until the SecurityResult), and the one whose password
/// matched decides the viewer's access.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    access: &Access,
    init: ServerInit,
) -> Result<Admitted, ViewerError> {
    let challenge = random_challenge()?;
    let config = |password: Option<rfb::Password>| ServerConfig {
        version: rfb::Version::V3_8,
        security: if password.is_some() {
            vec![SecurityType::VncAuth]
        } else {
            vec![SecurityType::None]
        },
        password,
        challenge,
        init: init.clone(),
    };
    let mut full =
        ServerHandshake::new(config(access.password.clone())).map_err(ViewerError::Handshake)?;
    let mut view = match (&access.password, &access.view_only_password) {
        (Some(_), Some(p)) => {
            Some(ServerHandshake::new(config(Some(p.clone()))).map_err(ViewerError::Handshake)?)
        }
        _ => None,
    };
    let mut view_only = false;
    let mut buf = vec![0; READ_CHUNK];
    loop {
        while let Some(out) = full.poll_output() {
            stream.write_all(&out).await?;
        }
        if let Some(v) = &mut view {
            // Identical bytes until the SecurityResult: only `full`'s go out.
            while v.poll_output().is_some() {}
        }
        if let Some(done) = full.poll_done() {
            stream.flush().await?;
            return Ok(Admitted {
                done,
                view_only: view_only || access.all_view_only,
            });
        }
        let n = stream.read(&mut buf).await?;
        let data = buf.get(..n).unwrap_or_default();
        if n == 0 {
            return Err(ViewerError::Closed);
        }
        let full_result = full.feed(data);
        let view_result = view.as_mut().map(|v| v.feed(data));
        match (full_result, view_result) {
            (Ok(()), _) => {}
            // The view-only password matched: carry on with that machine alone.
            (Err(_), Some(Ok(()))) => {
                if let Some(v) = view.take() {
                    full = v;
                    view_only = true;
                }
            }
            (Err(e), _) => {
                while let Some(out) = full.poll_output() {
                    // Best effort: the failure reason; the handshake error matters more.
                    let _ = stream.write_all(&out).await;
                }
                let _ = stream.flush().await;
                return Err(ViewerError::Handshake(e));
            }
        }
    }
}

fn random_challenge() -> std::io::Result<[u8; rfb::CHALLENGE_LEN]> {
    let mut c = [0u8; rfb::CHALLENGE_LEN];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut c)?;
    Ok(c)
}

/// What a reader task hands to the hub.
#[derive(Debug)]
pub(crate) enum FromViewer {
    /// The viewer's next message.
    Message(ClientMessage),
    /// The connection ended (the reader has stopped).
    Ended(ViewerError),
}

/// A stopped reader's socket half and the bytes it read but did not hand over.
#[derive(Debug)]
pub struct ReaderParts {
    /// The connection's read half.
    pub read: ConnRead,
    /// Messages decoded but not yet handed over (their bytes are re-encoded on a freeze).
    pub unsent: Option<ClientMessage>,
    /// Bytes read that do not yet make a whole message.
    pub buffered: Vec<u8>,
}

/// Reads and decodes the viewer's messages until `stop` fires, the hub goes away or the
/// connection ends. Stopping is clean at any await point: nothing read is lost.
pub(crate) async fn reader(
    read: ConnRead,
    leftover: Vec<u8>,
    to_hub: mpsc::Sender<FromViewer>,
    mut stop: oneshot::Receiver<()>,
) -> ReaderParts {
    let mut decoder = ClientMessageDecoder::new(Limits::DEFAULT);
    decoder.feed(&leftover);
    let mut parts = ReaderParts {
        read,
        unsent: None,
        buffered: Vec::new(),
    };
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let next = match decoder.next_message() {
            Ok(m) => m,
            Err(e) => {
                let _ = to_hub.send(FromViewer::Ended(e.into())).await;
                break;
            }
        };
        if let Some(message) = next {
            let permit = tokio::select! {
                biased;
                _ = &mut stop => { parts.unsent = Some(message); break; }
                p = to_hub.reserve() => p,
            };
            match permit {
                Ok(p) => p.send(FromViewer::Message(message)),
                Err(_) => break,
            }
            continue;
        }
        let read = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = parts.read.read(&mut buf) => r,
        };
        match read {
            Ok(0) => {
                let _ = to_hub.send(FromViewer::Ended(ViewerError::Closed)).await;
                break;
            }
            Ok(n) => decoder.feed(buf.get(..n).unwrap_or_default()),
            Err(e) => {
                let _ = to_hub.send(FromViewer::Ended(e.into())).await;
                break;
            }
        }
    }
    parts.buffered = decoder.take_buffered();
    parts
}

/// A writer's report to the hub: a batch went out (or the socket failed).
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) viewer: ViewerId,
    pub(crate) result: Result<(), std::io::Error>,
}

/// Writes each batch the hub sends, reporting after each. Ends when the hub drops its sender
/// (handing the half back) or a write fails.
pub(crate) async fn writer(
    viewer: ViewerId,
    mut write: ConnWrite,
    mut from_hub: mpsc::Receiver<Vec<ServerMessage>>,
    done: mpsc::UnboundedSender<Written>,
) -> ConnWrite {
    let mut out = Vec::new();
    while let Some(batch) = from_hub.recv().await {
        out.clear();
        for m in &batch {
            m.encode(&mut out);
        }
        let result = write.write_all(&out).await;
        rfb::scratch::release_large(&mut out);
        let failed = result.is_err();
        if done.send(Written { viewer, result }).is_err() || failed {
            break;
        }
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    fn key(keysym: u32) -> ClientMessage {
        ClientMessage::KeyEvent { down: true, keysym }
    }

    /// Stopping a reader loses nothing: a decoded message the hub had no room for comes back
    /// as `unsent`, a partial one as `buffered`, in the stream's order.
    #[tokio::test]
    async fn a_stopped_reader_hands_back_everything_it_read() {
        let (mut viewer, console) = pair().await;
        let (read, _write) = console.into_split();
        let read = ConnRead::Tcp(read);
        let (tx, mut rx) = mpsc::channel(1);
        let (stop, stop_rx) = oneshot::channel();
        let leftover = key(1).to_bytes();
        let task = tokio::spawn(reader(read, leftover, tx, stop_rx));
        let mut bytes = key(2).to_bytes();
        bytes.extend_from_slice(&key(3).to_bytes());
        let half = key(4).to_bytes();
        bytes.extend_from_slice(half.get(..3).expect("a KeyEvent is 8 bytes"));
        viewer.write_all(&bytes).await.expect("write");
        // Key 1 fills the channel; key 2 then waits for room, decoded.
        match rx.recv().await {
            Some(FromViewer::Message(m)) => assert_eq!(m, key(1)),
            other => panic!("unexpected {other:?}"),
        }
        match rx.recv().await {
            Some(FromViewer::Message(m)) => assert_eq!(m, key(2)),
            other => panic!("unexpected {other:?}"),
        }
        // Key 3 is in the channel, waiting in the reader, or still in the socket.
        let _ = stop.send(());
        let parts = task.await.expect("reader");
        let mut rest = Vec::new();
        while let Ok(FromViewer::Message(m)) = rx.try_recv() {
            m.encode(&mut rest);
        }
        if let Some(m) = &parts.unsent {
            m.encode(&mut rest);
        }
        rest.extend_from_slice(&parts.buffered);
        // Whatever the reader had not read yet stays in the socket, which travels too.
        let mut buf = [0u8; 64];
        let ConnRead::Tcp(read) = &parts.read else {
            panic!("a TCP reader hands back its TCP half");
        };
        if let Ok(n) = read.try_read(&mut buf) {
            rest.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let mut want = key(3).to_bytes();
        want.extend_from_slice(half.get(..3).expect("prefix"));
        assert_eq!(rest, want);
    }

    /// Bytes that are no RFB message end the reader with a typed error for the hub.
    #[tokio::test]
    async fn a_malformed_message_ends_the_reader_with_its_reason() {
        let (mut viewer, console) = pair().await;
        let (read, _write) = console.into_split();
        let read = ConnRead::Tcp(read);
        let (tx, mut rx) = mpsc::channel(4);
        let (_stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(reader(read, Vec::new(), tx, stop_rx));
        viewer.write_all(&[7, 0, 0, 0]).await.expect("write");
        match rx.recv().await {
            Some(FromViewer::Ended(ViewerError::Message(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
        task.await.expect("reader ends");
    }
}

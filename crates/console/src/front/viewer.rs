//! One viewer's socket: the RFB handshake (with a full-access and a view-only password), then
//! a reader task and a writer task that do nothing but socket I/O for the hub.
//!
//! ```text
//!  TcpStream ── handshake ──┬─ reader task: bytes → ClientMessageDecoder → FromViewer ─▶ hub
//!                           └─ writer task: hub ─▶ Vec<ServerMessage> (channel of 1) → bytes
//!                                           and a `Written` token back once they are out
//! ```
//!
//! The hub stops reading a viewer simply by not polling its channel: the reader then blocks on
//! a full channel and stops reading the socket, and TCP pushes back on the viewer. Both tasks
//! hand their socket half back when stopped, so a freeze can pass the connection on, with the
//! bytes the reader had taken from the socket but not yet handed over ([`ReaderParts`]).

use super::Access;
use crate::journal::ViewerId;
use rfb::{
    ClientMessage, ClientMessageDecoder, HandshakeError, Limits, SecurityType, ServerConfig,
    ServerDone, ServerHandshake, ServerInit, ServerMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
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
pub(crate) async fn handshake(
    stream: &mut TcpStream,
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
    /// The socket's read half.
    pub read: OwnedReadHalf,
    /// Messages decoded but not yet handed over (their bytes are re-encoded on a freeze).
    pub unsent: Option<ClientMessage>,
    /// Bytes read that do not yet make a whole message.
    pub buffered: Vec<u8>,
}

/// Reads and decodes the viewer's messages until `stop` fires, the hub goes away or the
/// connection ends. Stopping is clean at any await point: nothing read is lost.
pub(crate) async fn reader(
    read: OwnedReadHalf,
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
    mut write: OwnedWriteHalf,
    mut from_hub: mpsc::Receiver<Vec<ServerMessage>>,
    done: mpsc::UnboundedSender<Written>,
) -> OwnedWriteHalf {
    let mut out = Vec::new();
    while let Some(batch) = from_hub.recv().await {
        out.clear();
        for m in &batch {
            m.encode(&mut out);
        }
        let result = write.write_all(&out).await;
        let failed = result.is_err();
        if done.send(Written { viewer, result }).is_err() || failed {
            break;
        }
    }
    write
}

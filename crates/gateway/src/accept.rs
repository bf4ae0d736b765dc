//! The console's side: connections accepted, routed to their session by the opening's
//! session id, each session relayed to a local TCP service. A newer connection for a session
//! replaces its current one (the gateway reattached).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resume::{peek_session, Config, SessionId, Stream};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::relay::{relay, App, Ended};
use crate::GatewayError;

/// Most bytes read from a new connection while waiting for its opening (a Resume frame is
/// 111 bytes with its length field).
const MAX_OPENING_READ: usize = 512;

/// How long a new connection may take to send its opening: an unauthenticated peer cannot
/// hold a task and a socket for longer.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// A new connection for a session, with the bytes already read from it.
type Incoming = (TcpStream, Vec<u8>);

type Sessions = Arc<Mutex<HashMap<SessionId, mpsc::Sender<Incoming>>>>;

/// Accepts resumable streams on `listener` and relays each session to `service` (one TCP
/// connection to it per session), until the listener fails.
pub async fn serve_sessions(
    listener: TcpListener,
    config: Config,
    service: SocketAddr,
) -> std::io::Result<()> {
    let sessions: Sessions = Arc::default();
    loop {
        let (conn, peer) = listener.accept().await?;
        let (config, sessions) = (config.clone(), sessions.clone());
        tokio::spawn(async move {
            if let Err(e) = route(conn, config, sessions, service).await {
                tracing::info!(%peer, error = %e, "resumable session ended");
            }
        });
    }
}

/// Reads a connection's opening and hands the connection to its session.
async fn route(
    mut conn: TcpStream,
    config: Config,
    sessions: Sessions,
    service: SocketAddr,
) -> Result<(), GatewayError> {
    let mut buf = Vec::new();
    let peeked = loop {
        if buf.len() >= MAX_OPENING_READ {
            return Ok(());
        }
        let mut chunk = [0; MAX_OPENING_READ];
        let read = conn.read(&mut chunk[..MAX_OPENING_READ - buf.len()]);
        match tokio::time::timeout(OPENING_TIMEOUT, read).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        match peek_session(&config, &buf) {
            Ok(Some(p)) => break p,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "refused a connection's opening");
                return Ok(());
            }
        }
    };
    let session = peeked.session;
    let incoming = (conn, buf);
    let rx = {
        let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&session) {
            Some(tx) => {
                // Refused only if the session ended meanwhile or has a newer connection
                // waiting already: then this one is dropped and the gateway dials again.
                let _ = tx.try_send(incoming);
                return Ok(());
            }
            // Not ours: the session lives elsewhere (or ended); nothing is revealed.
            None if peeked.resume => {
                tracing::debug!("refused a Resume for a session this side does not hold");
                return Ok(());
            }
            None => {
                let (tx, rx) = mpsc::channel(1);
                map.insert(session, tx);
                (rx, incoming)
            }
        }
    };
    let res = run_session(session, config, service, rx).await;
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&session);
    res
}

/// One session: its connections in turn, relayed to one connection to the service.
async fn run_session(
    session: SessionId,
    config: Config,
    service: SocketAddr,
    (mut rx, first): (mpsc::Receiver<Incoming>, Incoming),
) -> Result<(), GatewayError> {
    let app = TcpStream::connect(service)
        .await
        .map_err(|e| GatewayError::Service(service, e))?;
    let mut app = App::new(app);
    let mut stream = Stream::new(config, session)?;
    let mut next = Some(first);
    while let Some((conn, opening)) = next.take() {
        stream.attach(rand::random())?;
        if let Err(e) = stream.handle_input(&opening) {
            if e.ends_session() {
                return Err(e.into());
            }
            next = rx.recv().await;
            continue;
        }
        next = match relay(&mut stream, conn, &mut app, rx.recv()).await? {
            Ended::Finished => return Ok(()),
            Ended::Lost(_) => {
                stream.detach();
                rx.recv().await
            }
            Ended::Interrupted(newer) => newer,
        };
    }
    Ok(())
}

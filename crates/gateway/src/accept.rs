//! The console's side: connections accepted, routed to their session by the opening's
//! session id ([`Router`]). [`serve_sessions`] relays each session to a local TCP service
//! (`dmore gateway endpoint`); a console serves them itself ([`crate::pipe`]). A newer
//! connection for a session replaces its current one (the gateway reattached).

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

/// A new connection for a session, with the bytes already read from it (its opening).
pub type Incoming = (TcpStream, Vec<u8>);

type Sessions = Arc<Mutex<HashMap<SessionId, mpsc::Sender<Incoming>>>>;

/// Routes new connections to the sessions this side serves, by the session id of their
/// (authenticated) opening.
#[derive(Clone)]
pub struct Router {
    config: Config,
    sessions: Sessions,
}

/// A connection that opens a session this side does not serve yet (a Hello).
pub struct NewSession {
    /// The session.
    pub session: SessionId,
    /// Its first connection.
    pub first: Incoming,
    /// Its later connections.
    pub connections: Connections,
}

/// A session's later connections, in order of arrival. Dropping it ends the session here:
/// later connections for it are refused.
pub struct Connections {
    rx: mpsc::Receiver<Incoming>,
    tx: mpsc::Sender<Incoming>,
    session: SessionId,
    sessions: Sessions,
}

impl Connections {
    /// The next connection (the gateway reattached); never ends while registered.
    pub async fn next(&mut self) -> Incoming {
        match self.rx.recv().await {
            Some(c) => c,
            // We hold a sender: the channel never closes.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.session)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            map.remove(&self.session);
        }
    }
}

impl Router {
    /// A router for streams with this configuration (role [`resume::Role::Console`]).
    pub fn new(config: Config) -> Router {
        Router {
            config,
            sessions: Arc::default(),
        }
    }

    /// The streams' configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers a session served here from now on (e.g. one that moved here): its
    /// connections come through the answer, which replaces any earlier registration.
    pub fn register(&self, session: SessionId) -> Connections {
        // One waiting connection: a second one replaces it (the gateway dials again).
        let (tx, rx) = mpsc::channel(1);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, tx.clone());
        Connections {
            rx,
            tx,
            session,
            sessions: self.sessions.clone(),
        }
    }

    /// Reads a new connection's opening and hands the connection to its session; answers a
    /// connection that opens a new session (a Hello) for the caller to serve. A connection
    /// whose opening is refused, slow, or a Resume for a session not served here (it may live
    /// on another console) is dropped, revealing nothing.
    pub async fn route(&self, mut conn: TcpStream) -> Option<NewSession> {
        let mut buf = Vec::new();
        let peeked = loop {
            if buf.len() >= MAX_OPENING_READ {
                return None;
            }
            let mut chunk = [0; MAX_OPENING_READ];
            let read = conn.read(&mut chunk[..MAX_OPENING_READ - buf.len()]);
            match tokio::time::timeout(OPENING_TIMEOUT, read).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
            match peek_session(&self.config, &buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "refused a connection's opening");
                    return None;
                }
            }
        };
        let session = peeked.session;
        let incoming = (conn, buf);
        let known = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session)
            .cloned();
        match known {
            Some(tx) => {
                // Refused only if a newer connection is waiting already: then this one is
                // dropped and the gateway dials again.
                let _ = tx.try_send(incoming);
                None
            }
            None if peeked.resume => {
                tracing::debug!("refused a Resume for a session this side does not hold");
                None
            }
            None => Some(NewSession {
                session,
                first: incoming,
                connections: self.register(session),
            }),
        }
    }
}

/// Accepts resumable streams on `listener` and relays each session to `service` (one TCP
/// connection to it per session), until the listener fails.
pub async fn serve_sessions(
    listener: TcpListener,
    config: Config,
    service: SocketAddr,
) -> std::io::Result<()> {
    let router = Router::new(config);
    loop {
        let (conn, peer) = listener.accept().await?;
        let router = router.clone();
        tokio::spawn(async move {
            let Some(new) = router.route(conn).await else {
                return;
            };
            if let Err(e) = run_session(router.config().clone(), service, new).await {
                tracing::info!(%peer, error = %e, "resumable session ended");
            }
        });
    }
}

/// One session: its connections in turn, relayed to one connection to the service.
async fn run_session(
    config: Config,
    service: SocketAddr,
    new: NewSession,
) -> Result<(), GatewayError> {
    let NewSession {
        session,
        first,
        mut connections,
    } = new;
    let app = TcpStream::connect(service)
        .await
        .map_err(|e| GatewayError::Service(service, e))?;
    let mut app = App::new(app);
    let mut stream = Stream::new(config, session)?;
    let mut next = first;
    loop {
        let (conn, opening) = next;
        stream.attach(rand::random())?;
        if let Err(e) = stream.handle_input(&opening) {
            if e.ends_session() {
                return Err(e.into());
            }
            next = connections.next().await;
            continue;
        }
        next = match relay(&mut stream, conn, &mut app, connections.next()).await? {
            Ended::Finished => return Ok(()),
            Ended::Lost(_) => {
                stream.detach();
                connections.next().await
            }
            Ended::Interrupted(newer) => newer,
        };
    }
}

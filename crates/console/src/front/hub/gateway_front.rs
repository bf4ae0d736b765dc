//! The hub's gateway front (gateway mode): the listener for the gateway's resumable streams,
//! the router that finds a connection's session, and the sessions that move with the console
//! (exported into the snapshot, imported where it arrives).

use ::gateway::accept::Router;
use ::gateway::pipe::Pipe;
use resume::{Config, Role};

use super::*;
use crate::front::GatewayConfig;
use crate::snapshot::StreamPiece;

/// How long a console retries binding the gateway's address: a local hand-over's old console
/// still holds it until it exits.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// The listener and the router.
pub(super) struct GatewayFront {
    listener: TcpListener,
    router: Router,
    /// New sessions, once routed, to the hub for their RFB handshake.
    new_tx: mpsc::Sender<(Pipe, SocketAddr)>,
    port: u16,
}

/// New gateway sessions waiting for the hub.
pub(super) type NewSessions = mpsc::Receiver<(Pipe, SocketAddr)>;

impl GatewayFront {
    /// Binds the gateway's address (retrying for [`BIND_RETRY`]).
    pub(super) async fn bind(config: &GatewayConfig) -> Result<(Self, NewSessions), ConsoleError> {
        let addr = config.listen;
        let deadline = Instant::now() + BIND_RETRY;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(source) if Instant::now() >= deadline => {
                    return Err(ConsoleError::GatewayListen { addr, source })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let port = listener
            .local_addr()
            .map_err(|source| ConsoleError::GatewayListen { addr, source })?
            .port();
        println!("dmore console: listening for the gateway on {addr}");
        let (new_tx, new_rx) = mpsc::channel(4);
        let front = GatewayFront {
            listener,
            router: Router::new(Config::new(Role::Console, config.psk.clone())),
            new_tx,
            port,
        };
        Ok((front, new_rx))
    }

    /// Where the session lives after a move to the console at `destination` (its
    /// console-to-console address): that host, this console's gateway port.
    pub(super) fn moved_to(&self, destination: SocketAddr) -> SocketAddr {
        SocketAddr::new(destination.ip(), self.port)
    }

    /// Reads a new connection's opening on a task of its own: a new session goes to the hub
    /// for its handshake, a later connection of a session to that session.
    fn route(&self, conn: TcpStream, peer: SocketAddr) {
        let (router, tx) = (self.router.clone(), self.new_tx.clone());
        tokio::spawn(async move {
            match Pipe::accept(&router, conn).await {
                Some(Ok(pipe)) => {
                    let _ = tx.send((pipe, peer)).await;
                }
                Some(Err(e)) => {
                    tracing::info!(%peer, error = %error_chain(&e), "gateway session refused")
                }
                None => {}
            }
        });
    }
}

/// The next connection on the gateway's listener, or never without one.
pub(super) async fn accept(
    front: Option<&GatewayFront>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match front {
        Some(f) => f.listener.accept().await,
        None => std::future::pending().await,
    }
}

impl Hub {
    /// A connection on the gateway's listener.
    pub(super) fn gateway_accepted(&mut self, accepted: std::io::Result<(TcpStream, SocketAddr)>) {
        match (accepted, &self.gateway) {
            (Ok((conn, peer)), Some(front)) => front.route(conn, peer),
            (Err(e), _) => tracing::warn!(error = %e, "accepting a gateway connection failed"),
            (Ok(_), None) => {}
        }
    }

    /// Serves the streams of a snapshot here (they moved with the console): each waits for
    /// the gateway to reattach. Without a gateway front they are dropped (logged).
    pub(super) fn import_streams(
        &self,
        streams: BTreeMap<ViewerId, StreamPiece>,
    ) -> Vec<(ViewerId, Pipe, Vec<u8>)> {
        let mut pipes = Vec::new();
        for (id, piece) in streams {
            let Some(front) = &self.gateway else {
                tracing::warn!(
                    viewer = id.0,
                    "a gateway viewer moved here but this console has no --gateway-listen: dropped"
                );
                continue;
            };
            match Pipe::import(&front.router, piece.stream) {
                Ok(pipe) => pipes.push((id, pipe, piece.unread)),
                Err(e) => tracing::warn!(viewer = id.0, error = %error_chain(&e),
                    "a gateway viewer's stream cannot be served here: dropped"),
            }
        }
        pipes
    }

    /// Where a move's gateway sessions live next: the destination console's host, this
    /// console's gateway port (when both are known).
    pub(super) fn gateway_moved_to(&self) -> Option<SocketAddr> {
        let front = self.gateway.as_ref()?;
        let destination = self.mig.as_ref()?.to_destination?;
        Some(front.moved_to(destination))
    }
}

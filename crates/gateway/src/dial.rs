//! The gateway's side of a session: a viewer's connection relayed to a console over a
//! resumable stream that survives connections lost (the console moved, the network cut).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use resume::{Config, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::relay::{relay, App, Ended};
use crate::GatewayError;

/// The longest wait between two attempts to reach a console.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// Where and how a gateway reaches a viewer's console.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The stream's configuration (role [`resume::Role::Gateway`]).
    pub stream: Config,
    /// The console's addresses, tried in turn (e.g. a migration's source and destination).
    pub consoles: Vec<SocketAddr>,
    /// Consecutive failed attempts (refused connections, or connections lost before any
    /// frame) after which the session gives up.
    pub max_attempts: u32,
    /// Wait after a failed attempt before the next address; it doubles after each round of
    /// the addresses that failed, up to [`MAX_RETRY_WAIT`].
    pub retry_after: Duration,
}

/// Accepts viewers on `listener` and serves each on its own task (one session per viewer),
/// until the listener fails.
pub async fn serve_viewers(listener: TcpListener, dial: Dial) -> std::io::Result<()> {
    let dial = Arc::new(dial);
    loop {
        let (viewer, peer) = listener.accept().await?;
        let dial = dial.clone();
        tokio::spawn(async move {
            match serve_viewer(viewer, &dial).await {
                Ok(()) => tracing::info!(%peer, "viewer's session finished"),
                Err(e) => tracing::warn!(%peer, error = %e, "viewer's session ended"),
            }
        });
    }
}

/// Relays one viewer until both ends close: a new session, dialed to the console, and dialed
/// again whenever its connection is lost: where a Moved frame said the session went, else
/// the same console if it had answered, else the next address in turn.
pub async fn serve_viewer<V>(viewer: V, dial: &Dial) -> Result<(), GatewayError>
where
    V: AsyncRead + AsyncWrite + Unpin,
{
    if dial.consoles.is_empty() {
        return Err(GatewayError::NoConsole {
            addresses: Vec::new(),
            attempts: 0,
        });
    }
    let mut stream = Stream::new(dial.stream.clone(), rand::random())?;
    let mut app = App::new(viewer);
    let mut attempt: usize = 0;
    let mut failures: u32 = 0;
    // Where the console said the session went (a Moved frame): tried next.
    let mut moved_to: Option<SocketAddr> = None;
    loop {
        let addr = match moved_to.take() {
            Some(to) => to,
            None => {
                attempt = attempt.wrapping_add(1);
                dial.consoles[(attempt - 1) % dial.consoles.len()]
            }
        };
        let before = (stream.received(), stream.acknowledged());
        let progressed = match TcpStream::connect(addr).await {
            Err(e) => {
                tracing::debug!(%addr, error = %e, "console unreachable");
                false
            }
            Ok(conn) => {
                let _ = conn.set_nodelay(true);
                stream.attach(rand::random())?;
                match relay(&mut stream, conn, &mut app, std::future::pending::<()>()).await? {
                    Ended::Finished => return Ok(()),
                    Ended::Lost(_) | Ended::Interrupted(()) => {
                        stream.detach();
                        if let Some(to) = stream.take_moved() {
                            tracing::info!(from = %addr, %to, "the console moved: reattaching there");
                            moved_to = Some(to);
                            failures = 0;
                            continue;
                        }
                        // The console answered if anything moved; stay with it then.
                        let moved = (stream.received(), stream.acknowledged()) != before;
                        if moved {
                            moved_to = Some(addr);
                        }
                        moved
                    }
                }
            }
        };
        if progressed {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures >= dial.max_attempts {
            return Err(GatewayError::NoConsole {
                addresses: dial.consoles.clone(),
                attempts: failures,
            });
        }
        // Capped back-off: each address in turn, waiting longer after each round that failed.
        let round = (failures - 1) / u32::try_from(dial.consoles.len()).unwrap_or(1).max(1);
        let wait = dial
            .retry_after
            .saturating_mul(1 << round.min(5))
            .min(MAX_RETRY_WAIT);
        tokio::time::sleep(wait).await;
    }
}

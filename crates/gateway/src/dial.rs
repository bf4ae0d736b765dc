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
    /// Wait after a failed attempt before the next address.
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
/// again (the next address in turn) whenever its connection is lost.
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
    loop {
        let addr = dial.consoles[attempt % dial.consoles.len()];
        attempt = attempt.wrapping_add(1);
        let before = (stream.received(), stream.acknowledged());
        let progressed = match TcpStream::connect(addr).await {
            Err(e) => {
                tracing::debug!(%addr, error = %e, "console unreachable");
                false
            }
            Ok(conn) => {
                stream.attach(rand::random())?;
                match relay(&mut stream, conn, &mut app, std::future::pending::<()>()).await? {
                    Ended::Finished => return Ok(()),
                    Ended::Lost(_) | Ended::Interrupted(()) => {
                        stream.detach();
                        // The console answered if anything moved; stay with it then.
                        let moved = (stream.received(), stream.acknowledged()) != before;
                        if moved {
                            attempt = attempt.wrapping_sub(1);
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
        tokio::time::sleep(dial.retry_after).await;
    }
}

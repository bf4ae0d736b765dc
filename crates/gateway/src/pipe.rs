//! A resumable session served inside the console process: the application (a viewer session)
//! reads and writes a [`Pipe`] as it would a socket, and a driver task carries the session
//! over the gateway's connections, one after another.
//!
//! ```text
//!  viewer reader/writer ⇄ Pipe (AsyncRead + AsyncWrite) ⇄ Stream ⇄ driver task ⇄ connection
//!                                                                      ▲ newer connections
//!                                                                  Router (by session id)
//! ```
//!
//! No byte waits anywhere but in the [`Stream`]: a read takes bytes straight out of it (and
//! only then are they acknowledged), a write is taken only as far as the replay buffer has
//! room (the socket-writability counterpart). So [`Pipe::export`] is the whole session's
//! transport state whenever the application is not in the middle of a read or a write, e.g.
//! once a console froze its viewers: what a moving console carries (`Stream::export`).
//!
//! A pipe ends in one of three ways: dropped (the application closed the viewer: the stream is
//! closed, and the driver flushes that for a short while), [`Pipe::hand_off`] (the session
//! lives on another console now: the gateway is told where, the connection closes, the stream
//! is never closed), or the session fails (the ends disagree, or no connection came for
//! [`DETACHED_LIMIT`]): reads and writes then fail.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use resume::{SessionId, State, Stream, StreamState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accept::{Connections, Incoming, NewSession, Router};
use crate::GatewayError;

/// How long a session may stay without a connection before it is given up.
pub const DETACHED_LIMIT: Duration = Duration::from_secs(60);

/// How long a closed pipe's driver keeps trying to tell the gateway (its Close).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Read buffer for the connection; frames written in batches up to this size.
const CHUNK: usize = 64 * 1024;

/// How a pipe's application ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppEnd {
    /// Still in use.
    Using,
    /// Dropped: the stream is closed.
    Closed,
    /// Handed off: tell the gateway where the session went (if known), never close.
    HandedOff(Option<SocketAddr>),
}

struct Inner {
    stream: Stream,
    reader: Option<Waker>,
    writer: Option<Waker>,
    app: AppEnd,
    /// The driver gave the session up (no connection in time).
    abandoned: bool,
}

impl Inner {
    fn wake_app(&mut self) {
        for w in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }

    fn broken(&self) -> Option<io::Error> {
        if let Some(e) = self.stream.failure() {
            return Some(io::Error::other(e.clone()));
        }
        self.abandoned.then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the gateway did not reattach the resumable session in time",
            )
        })
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the driver: the application wrote, read (acknowledgements due) or ended.
    driver: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One resumable session as the application's byte pipe. See the module docs.
pub struct Pipe {
    shared: Arc<Shared>,
    /// The driver task: awaited after a hand-off, so the Moved frame leaves before the
    /// process does.
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe").finish_non_exhaustive()
    }
}

impl Pipe {
    /// Serves a session the gateway opened here (from [`Router::route`]).
    pub fn serve(router: &Router, new: NewSession) -> Result<Pipe, GatewayError> {
        let stream = Stream::new(router.config().clone(), new.session)?;
        Ok(Pipe::spawn(stream, Some(new.first), new.connections))
    }

    /// Routes a connection the gateway opened here by its opening ([`Router::route`]): a new
    /// session is served as a pipe (`Some`); a later connection of a known session is handed
    /// to that session, and a bad opening dropped (`None`).
    pub async fn accept(
        router: &Router,
        conn: tokio::net::TcpStream,
    ) -> Option<Result<Pipe, GatewayError>> {
        let new = router.route(conn).await?;
        Some(Pipe::serve(router, new))
    }

    /// Serves a session that moved here (its state from [`Pipe::export`] on the console it
    /// left): registered with `router`, it waits for the gateway to reattach.
    pub fn import(router: &Router, state: StreamState) -> Result<Pipe, GatewayError> {
        let stream = Stream::import(router.config().clone(), state)?;
        let connections = router.register(stream.session());
        Ok(Pipe::spawn(stream, None, connections))
    }

    fn spawn(stream: Stream, first: Option<Incoming>, connections: Connections) -> Pipe {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                stream,
                reader: None,
                writer: None,
                app: AppEnd::Using,
                abandoned: false,
            }),
            driver: Notify::new(),
        });
        let driver = tokio::spawn(drive(shared.clone(), first, connections));
        Pipe {
            shared,
            driver: Some(driver),
        }
    }

    /// The session's id.
    pub fn session(&self) -> SessionId {
        self.shared.lock().stream.session()
    }

    /// The session's transport state, to carry to another console ([`Pipe::import`]). Exact
    /// while the application neither reads nor writes.
    pub fn export(&self) -> StreamState {
        self.shared.lock().stream.export()
    }

    /// The session lives elsewhere now: the gateway is told `to` (when given) on the current
    /// connection, which then closes. The stream is never closed here. Await the answer
    /// (the driver task) before the process exits, or the Moved frame may not leave.
    pub fn hand_off(mut self, to: Option<SocketAddr>) -> Option<tokio::task::JoinHandle<()>> {
        self.shared.lock().app = AppEnd::HandedOff(to);
        self.shared.driver.notify_one();
        self.driver.take()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if inner.app == AppEnd::Using {
            inner.app = AppEnd::Closed;
        }
        drop(inner);
        self.shared.driver.notify_one();
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let n = inner.stream.read_some(buf.initialize_unfilled());
        if n > 0 {
            buf.advance(n);
            drop(inner);
            // An acknowledgement is due.
            self.shared.driver.notify_one();
            return Poll::Ready(Ok(()));
        }
        if inner.stream.read_closed() {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = inner.broken() {
            return Poll::Ready(Err(e));
        }
        inner.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.lock();
        if let Some(e) = inner.broken() {
            return Poll::Ready(Err(e));
        }
        if inner.stream.send_capacity() == 0 && !data.is_empty() {
            inner.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let written = inner.stream.write(data).map_err(io::Error::other);
        drop(inner);
        self.shared.driver.notify_one();
        Poll::Ready(written)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().stream.close();
        self.shared.driver.notify_one();
        Poll::Ready(Ok(()))
    }
}

/// How one connection ended.
enum Next {
    /// A newer connection for the session arrived.
    Newer(Incoming),
    /// The connection broke: wait for the next.
    Lost,
    /// Nothing more to do here: the session finished, failed or left.
    End,
}

/// The session's connections in turn, until it ends here.
async fn drive(shared: Arc<Shared>, mut next: Option<Incoming>, mut connections: Connections) {
    let mut closed_at: Option<Instant> = None;
    loop {
        let incoming = match next.take() {
            Some(c) => c,
            None => {
                let app = shared.lock().app;
                if app != AppEnd::Using {
                    // Closed or handed off with no connection to say so on.
                    closed_at.get_or_insert_with(Instant::now);
                }
                let limit = match closed_at {
                    Some(at) => at + CLOSE_GRACE,
                    None => Instant::now() + DETACHED_LIMIT,
                };
                tokio::select! {
                    c = connections.next() => c,
                    () = shared.driver.notified() => continue,
                    () = tokio::time::sleep_until(limit) => {
                        if closed_at.is_none() {
                            tracing::info!("a resumable session without a connection was given up");
                            let mut inner = shared.lock();
                            inner.abandoned = true;
                            inner.wake_app();
                        }
                        return;
                    }
                }
            }
        };
        next = match connection(&shared, incoming, &mut connections, &mut closed_at).await {
            Next::Newer(c) => Some(c),
            Next::Lost => {
                shared.lock().stream.detach();
                None
            }
            Next::End => return,
        };
    }
}

/// Drives the session over one connection.
async fn connection(
    shared: &Shared,
    (conn, opening): Incoming,
    connections: &mut Connections,
    closed_at: &mut Option<Instant>,
) -> Next {
    if shared.lock().stream.attach(rand::random()).is_err() {
        return Next::End;
    }
    if let Err(e) = feed(shared, &opening) {
        tracing::debug!(error = %e, "a resumable connection's opening was refused");
        return if e.ends_session() {
            Next::End
        } else {
            Next::Lost
        };
    }
    let _ = conn.set_nodelay(true);
    let (mut conn_r, mut conn_w) = conn.into_split();
    let mut to_conn: Vec<u8> = Vec::new();
    let mut buf = vec![0; CHUNK];
    let mut moved_sent = false;
    loop {
        if prepare(shared, &mut to_conn, &mut moved_sent, closed_at) && to_conn.is_empty() {
            let _ = conn_w.shutdown().await;
            return Next::End;
        }
        let grace = async {
            match closed_at {
                Some(at) => tokio::time::sleep_until(*at + CLOSE_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn_r.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return Next::Lost,
                    Ok(n) => n,
                };
                if let Err(e) = feed(shared, &buf[..n]) {
                    tracing::debug!(error = %e, "a resumable connection refused a frame");
                    return if e.ends_session() { Next::End } else { Next::Lost };
                }
            }
            r = conn_w.write(&to_conn), if !to_conn.is_empty() => match r {
                Ok(n) if n > 0 => {
                    to_conn.drain(..n);
                }
                _ => return Next::Lost,
            },
            () = shared.driver.notified() => {}
            newer = connections.next() => return Next::Newer(newer),
            () = grace => return Next::End,
        }
    }
}

/// Bytes from the connection into the stream; the application learns of what changed.
fn feed(shared: &Shared, bytes: &[u8]) -> Result<(), resume::Error> {
    let mut inner = shared.lock();
    let fed = inner.stream.handle_input(bytes);
    inner.wake_app();
    fed
}

/// Acts on how the application ended, and takes the frames due (up to [`CHUNK`] bytes
/// pending); answers whether the connection is done once they are written.
fn prepare(
    shared: &Shared,
    to_conn: &mut Vec<u8>,
    moved_sent: &mut bool,
    closed_at: &mut Option<Instant>,
) -> bool {
    let mut inner = shared.lock();
    match inner.app {
        AppEnd::Using => {}
        AppEnd::Closed => {
            inner.stream.close();
            closed_at.get_or_insert_with(Instant::now);
        }
        AppEnd::HandedOff(to) => {
            if !*moved_sent {
                match (to, inner.stream.state()) {
                    (Some(to), State::Open) => {
                        *moved_sent = inner.stream.send_moved(to).is_ok();
                    }
                    // A Moved leaves only on an open connection: wait for it, a while.
                    (Some(_), State::Opening) => {
                        closed_at.get_or_insert_with(Instant::now);
                    }
                    _ => *moved_sent = true,
                }
            }
        }
    }
    while to_conn.len() < CHUNK {
        match inner.stream.poll_transmit() {
            Some(frame) => to_conn.extend_from_slice(&frame),
            None => break,
        }
    }
    match inner.stream.state() {
        State::Finished | State::Failed => true,
        _ => *moved_sent,
    }
}

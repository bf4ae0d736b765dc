//! One connection of a resumable session, driven: the connection's bytes into the
//! [`Stream`], its frames out; the application's bytes in, the peer's out to it.
//!
//! ```text
//!  application (viewer socket, or the console's RFB port) ⇄ App ⇄ Stream ⇄ connection
//! ```
//!
//! Every read and write waits in one `select!`, so neither end can block the other by
//! writing while its peer writes too (full socket buffers both ways). Reads and writes are
//! cancel-safe there: a write reports how much it wrote, and the rest stays pending. Bytes
//! taken out of the stream for the application stay pending in [`App`] across connections.

use std::future::Future;

use resume::{State, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// Read buffer size for the connection and the application.
const CHUNK: usize = 64 * 1024;

/// The application side of a session: it outlives the session's connections.
pub struct App<A> {
    reader: ReadHalf<A>,
    writer: WriteHalf<A>,
    /// Bytes of the peer's stream taken from the stream, not yet written to the application.
    pending: Vec<u8>,
    /// The application sent its last byte (its read side ended).
    eof: bool,
    /// We shut its write side (the peer closed and everything was written).
    shut: bool,
    /// Writing to it failed: the peer's later bytes are discarded.
    gone: bool,
}

impl<A: AsyncRead + AsyncWrite> App<A> {
    /// Wraps the application's connection.
    pub fn new(io: A) -> App<A> {
        let (reader, writer) = tokio::io::split(io);
        App {
            reader,
            writer,
            pending: Vec::new(),
            eof: false,
            shut: false,
            gone: false,
        }
    }

    /// The application will send nothing more: our stream ends.
    fn end_input(&mut self, stream: &mut Stream) {
        if !self.eof {
            self.eof = true;
            stream.close();
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended<R> {
    /// Both ends closed and every byte arrived: the session is over.
    Finished,
    /// The connection broke or was refused (the error, if the stream refused a frame): attach
    /// another one.
    Lost(Option<resume::Error>),
    /// The caller's interrupt fired (e.g. a newer connection for this session arrived).
    Interrupted(R),
}

/// Drives `stream` over `conn` until the connection ends, the session finishes, or
/// `interrupt` completes. The stream must be attached. An error that ends the session is
/// returned as `Err`.
pub async fn relay<C, A, I>(
    stream: &mut Stream,
    conn: C,
    app: &mut App<A>,
    interrupt: I,
) -> Result<Ended<I::Output>, resume::Error>
where
    C: AsyncRead + AsyncWrite,
    A: AsyncRead + AsyncWrite,
    I: Future,
{
    tokio::pin!(interrupt);
    let (mut conn_r, mut conn_w) = tokio::io::split(conn);
    let mut to_conn: Vec<u8> = Vec::new();
    let mut conn_buf = vec![0; CHUNK];
    let mut app_buf = vec![0; CHUNK];
    loop {
        while to_conn.len() < CHUNK {
            match stream.poll_transmit() {
                Some(frame) => to_conn.extend_from_slice(&frame),
                None => break,
            }
        }
        if app.pending.is_empty() {
            stream.read(&mut app.pending);
            if app.gone {
                app.pending.clear();
            }
        }
        if app.pending.is_empty() && stream.read_closed() && !app.shut && !app.gone {
            app.shut = true;
            // The application may be gone already; its reader will say so.
            let _ = app.writer.shutdown().await;
        }
        // Finished once the application has every byte, and the peer our last frames.
        let app_done = app.shut || app.gone;
        if stream.state() == State::Finished && to_conn.is_empty() && app_done {
            return Ok(Ended::Finished);
        }
        let room = stream.send_capacity().min(CHUNK);
        tokio::select! {
            r = conn_r.read(&mut conn_buf) => match r {
                Ok(0) => return Ok(Ended::Lost(None)),
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return Ok(Ended::Lost(None));
                }
                Ok(n) => {
                    if let Err(e) = stream.handle_input(&conn_buf[..n]) {
                        if e.ends_session() {
                            return Err(e);
                        }
                        tracing::debug!(error = %e, "connection refused a frame");
                        return Ok(Ended::Lost(Some(e)));
                    }
                    if stream.has_moved() {
                        // The console moved: this connection is done (`take_moved` says where).
                        return Ok(Ended::Lost(None));
                    }
                }
            },
            r = conn_w.write(&to_conn), if !to_conn.is_empty() => match r {
                Ok(n) if n > 0 => {
                    to_conn.drain(..n);
                }
                _ => return Ok(Ended::Lost(None)),
            },
            r = app.reader.read(&mut app_buf[..room]), if !app.eof && room > 0 => match r {
                Ok(0) | Err(_) => app.end_input(stream),
                Ok(n) => {
                    // `n ≤ room ≤ send_capacity`: all of it fits.
                    stream.write(&app_buf[..n])?;
                }
            },
            r = app.writer.write(&app.pending), if !app.pending.is_empty() => match r {
                Ok(n) if n > 0 => {
                    app.pending.drain(..n);
                }
                _ => {
                    tracing::debug!("the application's connection failed; closing the stream");
                    app.gone = true;
                    app.pending.clear();
                    app.end_input(stream);
                }
            },
            r = &mut interrupt => return Ok(Ended::Interrupted(r)),
        }
    }
}
